/**
 * The raw addon, typed on its own apart from the public API, and the one loader that finds it.
 *
 * Every function returns a promise settled from the libuv thread pool. A rejection is plain data
 * (`NativeFailure`), never an Error: src/kernel/errors.ts turns it into one.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** What a failed system call rejects with (or, for a `*Sync` call, throws). */
export interface NativeFailure {
  errno: number;
  syscall: string;
  path?: string;
  /** fsMount: index of the step whose fsconfig() failed. */
  step?: number;
  /** The fs-context log, one message a line, as the kernel wrote it ("e overlay: ..."). */
  messages: string[];
  /**
   * Overlay's lines in the kernel log (dmesg) written while a failed mount ran (read by position: only
   * records written after the call started), where overlay reports most refusals; empty without CAP_SYSLOG.
   */
  kernelLog?: string[];
  /** umountAt: the mount found where the expected one was not (0: none). */
  foundMountId?: number;
  /** cloneIdmapped: statfs f_type of the filesystem of the layer the kernel refused (its index is `step`). */
  fsMagic?: number;
}

/** A path as the addon takes it: a string (its UTF-8 bytes) or a Buffer (the bytes as they are). */
export type PathArg = string | Buffer;

/** fsconfig() commands the addon accepts in a step (the kernel's FSCONFIG_SET_* numbers). */
export const FsConfigKind = {
  Flag: 0,
  String: 1,
  /** The value is an open fd (FSCONFIG_SET_FD). */
  Fd: 5,
} as const;

export type FsConfigStep =
  | [kind: typeof FsConfigKind.Flag, key: string]
  | [kind: typeof FsConfigKind.String, key: string, value: PathArg]
  | [kind: typeof FsConfigKind.Fd, key: string, fd: number];

export interface FsMountResult {
  /** The new mount's id: the unique 64-bit one when `unique`, else the reusable mountinfo id. */
  mountId?: number;
  unique?: boolean;
  /** The new mount's statmount fields, when asked for and the kernel has statmount. */
  statmount?: StatMountResult;
  /** Messages the kernel left in the fs-context log of a mount that succeeded. */
  messages: string[];
  /** Overlay's lines in the kernel log written while the mount was made (warnings of a mount that succeeded). */
  warnings: string[];
}

export interface MountIdResult {
  mountId: number;
  unique: boolean;
}

/** What statx(AT_EMPTY_PATH) says of an open fd. */
export interface FdFacts {
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  devMajor: number;
  devMinor: number;
  ino: bigint;
  mountId: number;
  uniqueMountId: boolean;
  /** The fd is the root of a mount. */
  mountRoot: boolean;
  /** Directories listed: how many entries (besides . and ..), and the first 16 names (byte strings). */
  entryCount?: number;
  entries?: string[];
  listErrno?: number;
}

/**
 * One path of openPaths(): its fd (the caller's to use and close), the path the kernel holds for it (a byte
 * string: one character per byte, see src/kernel/bytes.ts), and facts.
 */
export type OpenedPath =
  | (FdFacts & { fd: number; realpath: string; errno?: undefined })
  | { errno: number; syscall: string; notDirectory?: true; fd?: undefined };

export type ProbeFacts = (FdFacts & { errno?: undefined }) | { errno: number };

export interface OpenPathsResult {
  paths: OpenedPath[];
  probes: ProbeFacts[];
  /** The file asked for as `table`, read whole in the same trip, as a byte string (absent if unreadable). */
  table?: string;
}

/** statmount(2) fields, as the kernel returns them (strings as byte strings, one character per byte). */
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
  next(timeoutMs: number): Promise<string | null>; // the table as a byte string
  /** Closes the file (after a pending next() returns). */
  close(): void;
}

/** lstat(2) facts and overlay xattrs of one entry (lstatXattrs, scanDirs); never follows links. */
export type NativeEntry =
  | {
      mode: number;
      size: number;
      ino: bigint;
      uid: number;
      gid: number;
      nlink: number;
      mtimeSec: number;
      mtimeNsec: number;
      /** A symlink's text (a byte string). */
      linkTarget?: string;
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

/** One directory read by scanDirs: its entries (no `.`/`..`; names as byte strings), or why it could not be read. */
export type NativeDirScan =
  | { entries: Array<NativeEntry & { name: string }>; errno?: undefined }
  | { errno: number; syscall: string; entries?: undefined };

/** scanDirsPacked's form of one directory: see unpackScan(). */
export type PackedDirScan =
  | { names: string; facts: Float64Array; extra: Array<PackedExtra | undefined>; errno?: undefined }
  | { errno: number; syscall: string; names?: undefined };

/** What an entry has beyond its numbers: only entries with any of it are in `extra`. */
export interface PackedExtra {
  errno?: number;
  syscall?: string;
  xattrs?: Record<string, Buffer>;
  linkTarget?: string;
  xattrErrno?: number;
  xattrSyscall?: string;
}

const PACKED_FIELDS = 11;

/**
 * A packed directory scan as scanDirs gives it: the addon sends names joined by "/" and the numbers of every
 * entry in one Float64Array (N-API objects cost about a microsecond a property), JavaScript makes the objects.
 */
export function unpackScan(d: PackedDirScan): NativeDirScan {
  if (d.errno !== undefined) return d;
  const entries: Array<NativeEntry & { name: string }> = [];
  if (d.names.length === 0 && d.facts.length === 0) return { entries };
  const names = d.names.split("/");
  const f = d.facts;
  for (let k = 0; k < names.length; k++) {
    const x = d.extra[k];
    if (x?.errno !== undefined) {
      entries.push({ name: names[k]!, errno: x.errno, syscall: x.syscall! });
      continue;
    }
    const v = k * PACKED_FIELDS;
    const mode = f[v]!;
    const e: NativeEntry & { name: string } = {
      name: names[k]!,
      mode,
      size: f[v + 1]!,
      ino: (BigInt(f[v + 9]!) << 32n) | BigInt(f[v + 10]!),
      uid: f[v + 2]!,
      gid: f[v + 3]!,
      nlink: f[v + 4]!,
      mtimeSec: f[v + 5]!,
      mtimeNsec: f[v + 6]!,
      xattrs: x?.xattrs ?? {},
    };
    const type = mode & 0o170000;
    if (type === 0o020000 || type === 0o060000) {
      e.rdevMajor = f[v + 7]!;
      e.rdevMinor = f[v + 8]!;
    }
    if (x?.linkTarget !== undefined) e.linkTarget = x.linkTarget;
    if (x?.xattrErrno !== undefined) {
      e.xattrErrno = x.xattrErrno;
      e.xattrSyscall = x.xattrSyscall!;
    }
    entries.push(e);
  }
  return { entries };
}

/** A directory below a layer's root fd: `dir` is "" for the root, else "a/b" (no leading slash). */
export type LayerDir = [rootFd: number, dir: PathArg];
/** A name in such a directory. */
export type LayerName = [rootFd: number, dir: PathArg, name: PathArg];

/** readFiles(): the bytes of every file read, one after another, and where each one's are (or why not). */
export interface ReadFilesResult {
  data: Buffer;
  /** Each file's offset and length in `data`; length -1 when `extra` says why not. */
  spans: Float64Array;
  /** Sparse: a failure, or `{ size }` for a file over `maxEach` bytes (to be streamed). */
  extra: Array<{ errno: number; syscall: string } | { size: number; errno?: undefined } | undefined>;
}

/** The calls that have a `*Sync` twin, each as (arguments) => result. */
export interface NativeCalls {
  /**
   * Opens each path once (O_PATH|O_DIRECTORY|O_CLOEXEC, resolved as the kernel resolves any path) and reads its
   * facts from the fd; the directories at the indexes in `list` are listed through their fd; each probe is a
   * name below an opened path (openat2 RESOLVE_BENEATH, no symlinks); `table` is a file read whole.
   */
  openPaths(paths: PathArg[], list?: number[], probes?: [index: number, rel: PathArg][], table?: string | null): OpenPathsResult;
  /**
   * fsopen(fstype), each fsconfig() step in order, FSCONFIG_CMD_CREATE, fsmount(attrFlags), then move_mount()
   * onto the directory `targetFd` holds. With `targetFd` null it stops after the steps and drops the context
   * (a probe). A `describeSizeHint` > 0 also runs statmount() on the new mount.
   */
  fsMount(fstype: string, steps: FsConfigStep[], attrFlags: number, targetFd: number | null, describeSizeHint?: number): FsMountResult;
  /**
   * mount(2) onto the directory `targetFd` holds (through its /proc/self/fd link); the new mount is then found
   * through the target's parent and name, for its id. `data` null passes no data page.
   */
  mount(
    source: string,
    targetFd: number,
    fstype: string,
    flags: number,
    data: PathArg | null,
  ): { mountId: number; unique: boolean; messages: string[]; warnings: string[] };
  /** umount2(2) of a path. */
  umount(target: PathArg, flags: number): void;
  /**
   * Unmounts the mount on `name` in directory `parent` only if it is the mount `mountId`: the directory is
   * opened once, the mount on the name checked, and that name in that directory unmounted. ESTALE (with
   * `foundMountId`) when another mount, or none, is there.
   */
  umountAt(parent: PathArg, name: PathArg, mountId: number, flags: number): void;
  /**
   * statx(2) of a path's mount id (follows the path into whatever is mounted there): the unique 64-bit id
   * when `unique` and the kernel has it, else the reusable id mountinfo shows.
   */
  mountId(path: PathArg, unique: boolean): MountIdResult;
  /** statmount(2) of one mount by its unique id; `sizeHint` guesses the bytes its strings need. */
  statMount(uniqueMountId: number, sizeHint?: number): StatMountResult;
  /**
   * The whole file, opened, read and closed in one trip (a proc file takes many read() calls): UTF-8 text, or
   * with `bytes` a byte string (one character per byte).
   */
  readText(path: PathArg, bytes?: boolean): string;
  /** lstat facts of each name in a directory below a layer root, plus its xattrs named `prefix*`. */
  lstatXattrs(items: LayerName[], prefix: string): NativeEntry[];
  /** Every entry of each directory below a layer root, with lstat facts and xattrs named `prefix*`. */
  scanDirs(dirs: LayerDir[], prefix: string): NativeDirScan[];
  /** scanDirs in a packed form, for walks of many entries: unpackScan() turns each into scanDirs's. */
  scanDirsPacked(dirs: LayerDir[], prefix: string): PackedDirScan[];
  /**
   * Runs the records in `ops` (src/layers/tree-ops.ts encodes them; native/tree.cc runs them) beneath the
   * directory `rootFd` holds: every parent opened with openat2 RESOLVE_BENEATH|NO_SYMLINKS|NO_XDEV, every entry
   * made with an *at() call that does not follow it. `data` holds the bodies File records name by index. A
   * failure's `step` is the index of the record that failed (those before it were done).
   */
  applyOps(rootFd: number, ops: Buffer, data: Buffer[]): { fds: number[] };
  /** An fd (O_NOFOLLOW|O_CLOEXEC added) for a name below `rootFd`, reached without symlinks, `..` or mounts. */
  openBeneath(rootFd: number, path: PathArg, flags: number): number;
  /**
   * Each regular file [dir, name] below `rootFd` read whole (opened O_NOFOLLOW from its directory, reached
   * beneath the root): its bytes, a failure, or `{ size }` when it is over `maxEach` bytes (to be streamed).
   */
  readFiles(rootFd: number, items: [dir: PathArg, name: PathArg][], maxEach: number): ReadFilesResult;
  /**
   * A new user namespace with these maps (each the text of one write to /proc/PID/uid_map or gid_map), as an
   * fd: a child is cloned into it, its maps written (`setgroups` first set to "deny" if asked), its
   * /proc/PID/ns/user opened, and the child reaped. A failure's `path` names the file the kernel refused.
   */
  newUserns(uidMap: string, gidMap: string, denySetgroups: boolean): number;
  /** The CLONE_NEW* type of the namespace an fd holds (ioctl NS_GET_NSTYPE; ENOTTY: not a namespace). */
  namespaceType(fd: number): number;
  /** Opens a namespace file (e.g. /proc/PID/ns/user) for reading, and its CLONE_NEW* type from that fd. */
  openNamespace(path: PathArg): { fd: number; type: number };
  /**
   * A detached clone of the directory each fd holds (open_tree OPEN_TREE_CLONE on the fd itself), idmapped to
   * `usernsFd` (mount_setattr MOUNT_ATTR_IDMAP): attached nowhere, alive as long as its fd, which is the
   * caller's to close. On a failure none is left open; `step` is the index refused, `fsMagic` its filesystem.
   */
  cloneIdmapped(fds: number[], usernsFd: number): number[];
}

type Async<T> = { [K in keyof T]: T[K] extends (...a: infer A) => infer R ? (...a: A) => Promise<R> : never };
type Sync<T> = { [K in keyof T & string as `${K}Sync`]: T[K] };

export type NativeAddon = Async<NativeCalls> &
  Sync<NativeCalls> & {
    MountWatcher: new (path: PathArg) => NativeMountWatcher;
  };

/** Where the loader looks for ovl.node, relative to this module (src/kernel/ or dist/kernel/). */
export function addonCandidates(moduleDir: string): string[] {
  const root = resolve(moduleDir, "..", "..");
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
      `Rebuild it with \`npm rebuild ovl\` (or \`npx node-gyp rebuild\` in ${resolve(here, "..", "..")}); ` +
      `it needs python3, make and a C++ compiler. OVL_NATIVE_PATH may name the file directly.`,
  ) as Error & { code: string; tried: string[] };
  err.code = "ERR_OVL_NATIVE_MISSING";
  err.tried = candidates;
  throw err;
}

/** One native call a plan asks for: its name and arguments. */
export type NativeRequest = { [K in keyof NativeCalls]: { call: K; args: Parameters<NativeCalls[K]> } }[keyof NativeCalls];

/**
 * A sequence of native calls written once for both forms: a generator that yields each call it needs and is
 * resumed with the result (or has the failure thrown into it). `runAsync` runs the calls on the thread pool,
 * `runSync` runs the `*Sync` twins; the logic in between is the same code.
 */
export type Plan<T> = Generator<NativeRequest, T, unknown>;

/** Asks the plan's runner for one native call: `const r = yield* nativeCall("openPaths", ...)`. */
export function* nativeCall<K extends keyof NativeCalls>(
  call: K,
  ...args: Parameters<NativeCalls[K]>
): Generator<NativeRequest, ReturnType<NativeCalls[K]>, unknown> {
  return (yield { call, args } as NativeRequest) as ReturnType<NativeCalls[K]>;
}

export async function runAsync<T>(plan: Plan<T>): Promise<T> {
  const n = native() as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    let failure: { error: unknown } | undefined;
    try {
      result = await n[step.value.call]!(...step.value.args);
    } catch (e) {
      failure = { error: e };
    }
    step = failure ? plan.throw(failure.error) : plan.next(result);
  }
  return step.value;
}

export function runSync<T>(plan: Plan<T>): T {
  const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    let failure: { error: unknown } | undefined;
    try {
      result = n[`${step.value.call}Sync`]!(...step.value.args);
    } catch (e) {
      failure = { error: e };
    }
    step = failure ? plan.throw(failure.error) : plan.next(result);
  }
  return step.value;
}
