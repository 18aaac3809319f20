/**
 * statmount(2) fields → the same MountInfo a line of /proc/self/mountinfo gives, so describing a mount just
 * made costs one syscall however many mounts the machine has.
 */
import { MOUNT_ATTR, MS } from "../mounting/flags.js";
import type { StatMountResult } from "../kernel/native.js";
import type { MountInfo } from "../types.js";

// include/linux/fs.h SB_* as statmount reports them in sb_flags.
const SB = { RDONLY: 0x1, SYNCHRONOUS: 0x10, MANDLOCK: 0x40, DIRSYNC: 0x80, LAZYTIME: 1 << 25 } as const;
const STATMOUNT_SB_SOURCE = 0x200;

/** Per-mount options in the order fs/proc_namespace.c show_mnt_opts() prints them. */
function mountOptions(attr: number): string[] {
  const out = [attr & MOUNT_ATTR.RDONLY ? "ro" : "rw"];
  if (attr & MOUNT_ATTR.NOSUID) out.push("nosuid");
  if (attr & MOUNT_ATTR.NODEV) out.push("nodev");
  if (attr & MOUNT_ATTR.NOEXEC) out.push("noexec");
  const atime = attr & MOUNT_ATTR.ATIME_MASK;
  if (atime === MOUNT_ATTR.NOATIME) out.push("noatime");
  if (attr & MOUNT_ATTR.NODIRATIME) out.push("nodiratime");
  if (atime === MOUNT_ATTR.RELATIME) out.push("relatime");
  if (attr & MOUNT_ATTR.NOSYMFOLLOW) out.push("nosymfollow");
  if (attr & MOUNT_ATTR.IDMAP) out.push("idmapped");
  return out;
}

/** Propagation fields as show_mountinfo() prints them. */
function optionalFields(sm: StatMountResult): string[] {
  const out: string[] = [];
  if (sm.propagation & MS.SHARED) out.push(`shared:${sm.peerGroup}`);
  if (sm.propagation & MS.SLAVE) {
    out.push(`master:${sm.master}`);
    if (sm.propagateFrom && sm.propagateFrom !== sm.master) out.push(`propagate_from:${sm.propagateFrom}`);
  }
  if (sm.propagation & MS.UNBINDABLE) out.push("unbindable");
  return out;
}

/** Superblock options as show_mountinfo() prints them: rw/ro, show_sb_opts(), then the filesystem's own. */
function superOptions(sm: StatMountResult): string[] {
  const out = [sm.sbFlags & SB.RDONLY ? "ro" : "rw"];
  if (sm.sbFlags & SB.SYNCHRONOUS) out.push("sync");
  if (sm.sbFlags & SB.DIRSYNC) out.push("dirsync");
  if (sm.sbFlags & SB.MANDLOCK) out.push("mand");
  if (sm.sbFlags & SB.LAZYTIME) out.push("lazytime");
  return out.concat(sm.options ?? []);
}

export function mountInfoFromStatmount(sm: StatMountResult): MountInfo {
  return {
    id: sm.mountIdOld,
    parentId: sm.parentMountIdOld,
    major: sm.devMajor,
    minor: sm.devMinor,
    root: sm.root ?? "/",
    target: sm.point ?? "",
    mountOptions: mountOptions(sm.mountAttr),
    optionalFields: optionalFields(sm),
    fstype: sm.fsSubtype ? `${sm.fsType}.${sm.fsSubtype}` : (sm.fsType ?? ""),
    source: sm.mask & STATMOUNT_SB_SOURCE && sm.source !== undefined ? sm.source : "none",
    superOptions: superOptions(sm),
  };
}
