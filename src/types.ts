/** Public data types shared by the mount, mount-table and CLI modules. */

/**
 * One line of /proc/PID/mountinfo, every field decoded. Path-like fields are strings (`P = string`: UTF-8,
 * bytes that are not UTF-8 as U+DC80-U+DCFF) or, with `encoding: "buffer"`, Buffers byte for byte.
 */
export interface MountInfo<P extends string | Buffer = string> {
  /** Mount id (field 1); unique while the mount exists. */
  id: number;
  /** Id of the parent mount (field 2); equals `id` for the root of the namespace. */
  parentId: number;
  /** Device major number of the filesystem (field 3). */
  major: number;
  /** Device minor number of the filesystem (field 3). */
  minor: number;
  /** Path inside the filesystem that forms the root of this mount (field 4). */
  root: P;
  /** Mount point, relative to the process's root (field 5). */
  target: P;
  /** Per-mount options (field 6), e.g. `["rw", "relatime"]`. */
  mountOptions: P[];
  /** Zero or more `tag[:value]` fields before the lone `-`, e.g. `["shared:1"]`. */
  optionalFields: string[];
  /** Filesystem type, `type` or `type.subtype`. */
  fstype: P;
  /** Filesystem-specific source, or `""` when the kernel printed none. */
  source: P;
  /** Per-superblock options, e.g. `["rw", "lowerdir+=/a", "upperdir=/u"]`. */
  superOptions: P[];
  /**
   * In the string view only: the fields whose bytes are not valid UTF-8 (shown with U+DC80-U+DCFF for those
   * bytes; pass such a string back to ovl and it means the same bytes). Absent when every field is UTF-8.
   */
  nonUtf8?: string[];
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
export interface OverlayMount<P extends string | Buffer = string> extends MountInfo<P> {
  /** Lower layers, top-most first, as exact paths. */
  lower: P[];
  /** Data-only lower layers (after `::`, or `datadir+=`). */
  data: P[];
  /** Upper layer, absent for a read-only overlay. */
  upper?: P;
  /** Work directory, absent for a read-only overlay. */
  work?: P;
  /** Overlay feature options parsed from `superOptions`. */
  features: OverlayFeatures;
  /**
   * Layers the kernel holds as detached mounts (idmapped layers, `mount({ idmap })`), which the mount table
   * cannot name: it prints such a layer by its path inside its own detached tree (`lowerdir+=/`), not by where
   * it is. Absent when there are none. See `DetachedLayers`.
   */
  detached?: DetachedLayers;
}

/**
 * Which layers of an overlay are detached mounts: indexes into `lower` and `data`.
 *
 * - From `mount()`: ovl made them, so `pathsKnown` is true and `lower`/`data` hold the real directories.
 * - From `list()` (and `watch()`, `toOverlayMount()`): every layer the new mount API printed as exactly `/`
 *   (`lowerdir+=/`, `datadir+=/`) is taken for a detached tree's root, since ovl never mounts the root
 *   directory itself as a layer; `pathsKnown` is false and `lower[i]` stays the table's text (`/`), which names
 *   no directory here. Nothing in the mount table, statmount or /proc says which directory a detached layer
 *   was cloned from, or whether it is idmapped and how (an overlay made by another program with a real `/`
 *   layer is reported the same way). `diff()`, `which()`, `stack()` of such a mount by its mount point refuse;
 *   pass them the layers instead.
 */
export interface DetachedLayers {
  lower: number[];
  data: number[];
  pathsKnown: boolean;
}
