/**
 * The raw addon, typed on its own apart from the public API, and the one loader that finds it.
 *
 * Every function returns a promise settled from the libuv thread pool. A rejection is plain data
 * (`NativeFailure`), never an Error: src/errors.ts turns it into one.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** What a failed system call rejects with. */
export interface NativeFailure {
  errno: number;
  syscall: string;
  path?: string;
  /** Index of the fsMount step whose fsconfig() or open() failed. */
  step?: number;
  /** The fs-context log, one message a line, as the kernel wrote it ("e overlay: ..."). */
  messages: string[];
  /**
   * Overlay's lines in the kernel log (dmesg) printed while a failed mount ran, where overlay reports most
   * refusals; empty without CAP_SYSLOG. Lines of a concurrent failure elsewhere may mix in.
   */
  kernelLog?: string[];
}

/** fsconfig() commands the addon accepts in a step (the kernel's FSCONFIG_SET_* numbers). */
export const FsConfigKind = {
  Flag: 0,
  String: 1,
  /** The value is a path; the addon opens it O_PATH and passes the fd (FSCONFIG_SET_FD). */
  PathFd: 5,
} as const;

export type FsConfigStep =
  | [kind: typeof FsConfigKind.Flag, key: string]
  | [kind: typeof FsConfigKind.String | typeof FsConfigKind.PathFd, key: string, value: string];

export interface FsMountResult {
  /** The new mount's id: the unique 64-bit one when `unique`, else the reusable mountinfo id. */
  mountId?: number;
  unique?: boolean;
  /** The new mount's statmount fields, when asked for and the kernel has statmount. */
  statmount?: StatMountResult;
  /** Warnings the kernel left in the fs-context log of a mount that succeeded. */
  messages: string[];
}

export interface MountIdResult {
  mountId: number;
  unique: boolean;
}

export type PathFacts =
  | {
      realpath: string;
      mode: number;
      devMajor: number;
      devMinor: number;
      ino: number;
      mountId: number;
      uniqueMountId: boolean;
      /** For directories listed: how many entries (besides . and ..), and the first 16 names. */
      entryCount?: number;
      entries?: string[];
      listErrno?: number;
      errno?: undefined;
    }
  | { errno: number; syscall: string; realpath?: undefined };

/** statmount(2) fields, as the kernel returns them. */
export interface StatMountResult {
  mask: number;
  mountId: number;
  parentMountId: number;
  mountIdOld: number;
  parentMountIdOld: number;
  devMajor: number;
  devMinor: number;
  sbFlags: number;
  mountAttr: number;
  propagation: number;
  peerGroup: number;
  master: number;
  propagateFrom: number;
  root?: string;
  point?: string;
  fsType?: string;
  fsSubtype?: string;
  source?: string;
  options?: string[];
}

/**
 * An open mountinfo file whose changes are awaited in the event loop itself (epoll, EPOLLPRI: no thread is
 * held while waiting), re-read on the thread pool on each change.
 */
export interface NativeMountWatcher {
  /**
   * The first call reads the table. Later calls wait up to `timeoutMs` for the table to change and resolve
   * with its new text, or null when it did not change in that time; once, just after the wait is
   * registered with the kernel, the text is read again whether or not it changed. One call at a time.
   */
  next(timeoutMs: number): Promise<string | null>;
  /** Closes the file (after a pending next() returns). */
  close(): void;
}

/** lstat(2) facts and overlay xattrs of one path (lstatXattrs) or directory entry (scanDirs); never follows links. */
export type NativeEntry =
  | {
      mode: number;
      size: number;
      ino: number;
      /** Device numbers, for character and block devices only (a whiteout is a character device 0/0). */
      rdevMajor?: number;
      rdevMinor?: number;
      /** The xattrs whose names start with the prefix asked for, full name to raw value. */
      xattrs: Record<string, Buffer>;
      /** Listing or reading the xattrs failed with this errno (other than "there are none"). */
      xattrErrno?: number;
      xattrSyscall?: string;
      errno?: undefined;
    }
  | { errno: number; syscall: string; mode?: undefined };

/** One directory read by scanDirs: its entries (no `.`/`..`), or why it could not be read. */
export type NativeDirScan =
  | { entries: Array<NativeEntry & { name: string }>; errno?: undefined }
  | { errno: number; syscall: string; entries?: undefined };

export interface NativeAddon {
  /** The whole file as text, opened, read and closed in one trip (a proc file takes many read() calls). */
  readText(path: string): Promise<string>;
  /** lstat(2) of each path plus its xattrs named `prefix*`, in one trip to the thread pool. */
  lstatXattrs(paths: string[], prefix: string): Promise<NativeEntry[]>;
  /** Every entry of each directory with lstat(2) facts and xattrs named `prefix*`, in one trip. */
  scanDirs(dirs: string[], prefix: string): Promise<NativeDirScan[]>;

  MountWatcher: new (path: string) => NativeMountWatcher;
  /** mount(2). `data` null passes no data page. */
  mount(source: string, target: string, fstype: string, flags: number, data: string | null): Promise<void>;
  /** umount2(2). */
  umount(target: string, flags: number): Promise<void>;
  /**
   * fsopen(fstype), then each fsconfig() step in order, then FSCONFIG_CMD_CREATE, fsmount(attrFlags) and
   * move_mount() onto `target`. With `target` null it stops after the steps and drops the context (a probe).
   * A `describeSizeHint` > 0 also runs statmount() on the new mount in the same trip.
   */
  fsMount(
    fstype: string,
    steps: FsConfigStep[],
    attrFlags: number,
    target: string | null,
    describeSizeHint?: number,
  ): Promise<FsMountResult>;
  /**
   * statx(2) of a path's mount id (follows the path into whatever is mounted there): the unique 64-bit id
   * when `unique` and the kernel has it, else the reusable id mountinfo shows.
   */
  mountId(path: string, unique: boolean): Promise<MountIdResult>;
  /**
   * realpath(3) then statx(2) of each path, in one trip to the thread pool; the directories at the indexes in
   * `list` are also read (entry count and first names).
   */
  inspectPaths(paths: string[], list?: number[]): Promise<PathFacts[]>;
  /** statmount(2) of one mount by its unique id; `sizeHint` guesses the bytes its strings need. */
  statMount(uniqueMountId: number, sizeHint?: number): Promise<StatMountResult>;
}

/** Where the loader looks for ovl.node, relative to this module (src/ or dist/). */
export function addonCandidates(moduleDir: string): string[] {
  const root = resolve(moduleDir, "..");
  return [
    ...(process.env.OVL_NATIVE_PATH ? [resolve(process.env.OVL_NATIVE_PATH)] : []),
    join(root, "build", "Release", "ovl.node"),
    join(root, "build", "Debug", "ovl.node"),
  ];
}

let cached: NativeAddon | undefined;

/** Loads the addon once; when it is missing, one error names every path tried and how to rebuild. */
export function native(): NativeAddon {
  if (cached) return cached;
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = addonCandidates(here);
  const require = createRequire(import.meta.url);
  for (const file of candidates) {
    if (existsSync(file)) {
      cached = require(file) as NativeAddon;
      return cached;
    }
  }
  const err = new Error(
    `ovl: the native addon ovl.node was not found. Looked in:\n${candidates.map((c) => `  - ${c}`).join("\n")}\n` +
      `Rebuild it with \`npm rebuild ovl\` (or \`npx node-gyp rebuild\` in ${resolve(here, "..")}); ` +
      `it needs python3, make and a C++ compiler. OVL_NATIVE_PATH may name the file directly.`,
  ) as Error & { code: string; tried: string[] };
  err.code = "ERR_OVL_NATIVE_MISSING";
  err.tried = candidates;
  throw err;
}
