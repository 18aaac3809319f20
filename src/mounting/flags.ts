/**
 * Mount flags as a named set, and their three encodings: fsmount() attributes, fsconfig() superblock flags,
 * and mount(2)'s MS_* bits.
 */
import { invalidArgType, invalidArgValue } from "../kernel/errors.js";

/** Generic mount flags (as `mount -o` takes them), independent of overlay's own options. */
export interface MountFlags {
  /** Read-only mount and superblock (`ro`). */
  readonly?: boolean;
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  /** Atime mode: at most one of these three; the kernel's default is `relatime`. */
  noatime?: boolean;
  relatime?: boolean;
  strictatime?: boolean;
  nodiratime?: boolean;
  nosymfollow?: boolean;
  /** Superblock flags. */
  sync?: boolean;
  dirsync?: boolean;
  lazytime?: boolean;
}

const flagNames = [
  "readonly",
  "nosuid",
  "nodev",
  "noexec",
  "noatime",
  "relatime",
  "strictatime",
  "nodiratime",
  "nosymfollow",
  "sync",
  "dirsync",
  "lazytime",
] as const satisfies readonly (keyof MountFlags)[];

// uapi/linux/mount.h MOUNT_ATTR_*
export const MOUNT_ATTR = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  ATIME_MASK: 0x70,
  RELATIME: 0x0,
  NOATIME: 0x10,
  STRICTATIME: 0x20,
  NODIRATIME: 0x80,
  IDMAP: 0x100000,
  NOSYMFOLLOW: 0x200000,
} as const;

// uapi/linux/mount.h MS_*
export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  SYNCHRONOUS: 0x10,
  MANDLOCK: 0x40,
  DIRSYNC: 0x80,
  NOSYMFOLLOW: 0x100,
  NOATIME: 0x400,
  NODIRATIME: 0x800,
  UNBINDABLE: 1 << 17,
  PRIVATE: 1 << 18,
  SLAVE: 1 << 19,
  SHARED: 1 << 20,
  RELATIME: 1 << 21,
  STRICTATIME: 1 << 24,
  LAZYTIME: 1 << 25,
} as const;

/** Checks a flags argument and returns a clean copy holding only `true` entries. */
export function checkMountFlags(value: unknown, name = "spec.flags"): MountFlags {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalidArgType(name, "of type object", value);
  }
  const out: MountFlags = {};
  for (const [key, v] of Object.entries(value)) {
    if (!(flagNames as readonly string[]).includes(key)) {
      throw invalidArgValue(`${name}.${key}`, v, `is not a mount flag (known: ${flagNames.join(", ")})`);
    }
    if (v === undefined) continue;
    if (typeof v !== "boolean") throw invalidArgType(`${name}.${key}`, "of type boolean", v);
    if (v) out[key as keyof MountFlags] = true;
  }
  const atime = (["noatime", "relatime", "strictatime"] as const).filter((k) => out[k]);
  if (atime.length > 1) {
    throw invalidArgValue(name, value, `sets more than one atime mode (${atime.join(", ")}); choose one`);
  }
  return out;
}

/** fsmount() attribute bits. */
export function mountAttrFlags(flags: MountFlags): number {
  let attr = 0;
  if (flags.readonly) attr |= MOUNT_ATTR.RDONLY;
  if (flags.nosuid) attr |= MOUNT_ATTR.NOSUID;
  if (flags.nodev) attr |= MOUNT_ATTR.NODEV;
  if (flags.noexec) attr |= MOUNT_ATTR.NOEXEC;
  if (flags.noatime) attr |= MOUNT_ATTR.NOATIME;
  if (flags.strictatime) attr |= MOUNT_ATTR.STRICTATIME;
  if (flags.nodiratime) attr |= MOUNT_ATTR.NODIRATIME;
  if (flags.nosymfollow) attr |= MOUNT_ATTR.NOSYMFOLLOW;
  return attr;
}

/** Superblock flags as fsconfig(FSCONFIG_SET_FLAG) names. */
export function superblockFlagNames(flags: MountFlags): string[] {
  const out: string[] = [];
  if (flags.readonly) out.push("ro");
  if (flags.sync) out.push("sync");
  if (flags.dirsync) out.push("dirsync");
  if (flags.lazytime) out.push("lazytime");
  return out;
}

/** mount(2) MS_* bits. */
export function legacyMountFlags(flags: MountFlags): number {
  let ms = 0;
  if (flags.readonly) ms |= MS.RDONLY;
  if (flags.nosuid) ms |= MS.NOSUID;
  if (flags.nodev) ms |= MS.NODEV;
  if (flags.noexec) ms |= MS.NOEXEC;
  if (flags.noatime) ms |= MS.NOATIME;
  if (flags.relatime) ms |= MS.RELATIME;
  if (flags.strictatime) ms |= MS.STRICTATIME;
  if (flags.nodiratime) ms |= MS.NODIRATIME;
  if (flags.nosymfollow) ms |= MS.NOSYMFOLLOW;
  if (flags.sync) ms |= MS.SYNCHRONOUS;
  if (flags.dirsync) ms |= MS.DIRSYNC;
  if (flags.lazytime) ms |= MS.LAZYTIME;
  return ms >>> 0;
}
