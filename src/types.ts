/** Public data types shared by the mount, mount-table and CLI modules. */

/** One line of /proc/PID/mountinfo, every field decoded. */
export interface MountInfo {
  /** Mount id (field 1); unique while the mount exists. */
  id: number;
  /** Id of the parent mount (field 2); equals `id` for the root of the namespace. */
  parentId: number;
  /** Device major number of the filesystem (field 3). */
  major: number;
  /** Device minor number of the filesystem (field 3). */
  minor: number;
  /** Path inside the filesystem that forms the root of this mount (field 4). */
  root: string;
  /** Mount point, relative to the process's root (field 5). */
  target: string;
  /** Per-mount options (field 6), e.g. `["rw", "relatime"]`. */
  mountOptions: string[];
  /** Zero or more `tag[:value]` fields before the lone `-`, e.g. `["shared:1"]`. */
  optionalFields: string[];
  /** Filesystem type, `type` or `type.subtype`. */
  fstype: string;
  /** Filesystem-specific source, or `""` when the kernel printed none. */
  source: string;
  /** Per-superblock options, e.g. `["rw", "lowerdir+=/a", "upperdir=/u"]`. */
  superOptions: string[];
}

/** Overlay feature options, as `mount()` takes them and as the mount table reports them. */
export interface OverlayOptions {
  /** `redirect_dir=`: whether renamed directories are redirected (needed to rename lower directories). */
  redirectDir?: "on" | "follow" | "nofollow" | "off";
  /** `index=on|off`: inode index, keeps hard links intact across copy-up. */
  index?: boolean;
  /** `nfs_export=on|off` (needs `index`). */
  nfsExport?: boolean;
  /** `xino=on|off|auto`: unique inode numbers across layers. */
  xino?: "on" | "off" | "auto";
  /** `metacopy=on|off`: copy only metadata up on chmod/chown. */
  metacopy?: boolean;
  /** `volatile`: skip all syncs to the upper layer (shown by the kernel as `fsync=volatile`). */
  volatile?: boolean;
  /** `userxattr`: keep overlay xattrs in `user.overlay.*` (needed for mounts in a user namespace). */
  userxattr?: boolean;
  /** `uuid=on|off|null|auto`. */
  uuid?: "on" | "off" | "null" | "auto";
  /** `verity=off|on|require`: fs-verity digests for metacopy files. */
  verity?: "off" | "on" | "require";
  /** `default_permissions`: check permissions like a normal filesystem instead of per layer. */
  defaultPermissions?: boolean;
}

/** Options the mount table shows for an overlay, beyond what `OverlayOptions` names. */
export interface OverlayFeatures extends OverlayOptions {
  /** `fsync=` as the kernel prints it (`volatile` when mounted volatile). */
  fsync?: string;
  /** Options the parser did not recognise, verbatim. */
  other: string[];
}

/** An overlay as the mount table describes it. */
export interface OverlayMount extends MountInfo {
  /** Lower layers, top-most first, as exact paths. */
  lower: string[];
  /** Data-only lower layers (after `::`, or `datadir+=`). */
  data: string[];
  /** Upper layer, absent for a read-only overlay. */
  upper?: string;
  /** Work directory, absent for a read-only overlay. */
  work?: string;
  /** Overlay feature options parsed from `superOptions`. */
  features: OverlayFeatures;
}
