/**
 * Who holds a mount: the processes whose working directory, root, executable, open files or memory maps
 * are on it, found by scanning /proc the way `fuser -vm` and `lsof +D` do.
 *
 * Files are matched by **mount**, not by path: each /proc/PID/{cwd,root,exe,fd/N} link is statx()ed for its
 * mount id and compared with the target's mount (and the mounts below it, which keep it busy too). So a
 * process in another mount namespace, whose paths read differently, is still found when it holds this
 * mount, and a process sitting in the directory the mount covers is not mistaken for a holder. Memory maps
 * are matched by device number (as /proc/PID/maps shows it) and, where /proc/PID/map_files is readable
 * (root), confirmed by mount id.
 */
import { readFile, readdir, readlink, stat } from "node:fs/promises";
import { type PathEncoding, type PathLike, bytesOf, checkEncoding, checkPathLike, decodeBytes, encodeOut, nativePath } from "../kernel/bytes.js";
import { OverlayError, describeErrno, invalidArgType } from "../kernel/errors.js";
import { mountInfoOut } from "./mountinfo.js";
import { native, type NativeFailure } from "../kernel/native.js";
import { absoluteBytes, listBytes } from "./table.js";
import type { MountInfo } from "../types.js";

/** How a process holds a mount, in fuser's terms. */
export type HolderUse = "cwd" | "root" | "exe" | "open" | "map";

/** One file (or directory) by which a process holds the mount. */
export interface HeldFile<P extends string | Buffer = string> {
  use: HolderUse;
  /** The path as the kernel prints it for that process (relative to the process's root). */
  path: P;
  /** The file descriptor, for `open`. */
  fd?: number;
}

/** A process that holds the mount. */
export interface Holder<P extends string | Buffer = string> {
  pid: number;
  /** The process's command name (/proc/PID/comm, at most 15 characters). */
  command: string;
  /** The uid owning the process. */
  uid: number;
  /** How it holds the mount, each use once, in the order cwd, root, exe, open, map. */
  uses: HolderUse[];
  /** Every file by which it holds the mount. */
  files: HeldFile<P>[];
}

/** The holders, by pid; `uninspected` lists the pids whose files could not be read (other users', as non-root). */
export type HolderList<P extends string | Buffer = string> = Holder<P>[] & { uninspected: number[]; mount: MountInfo<P> };

/** Options of findHolders(). */
export interface FindHoldersOptions {
  /** Paths as strings (`"utf8"`, the default; undecodable bytes as U+DC80-U+DCFF) or Buffers (`"buffer"`). */
  encoding?: PathEncoding;
}

const USE_ORDER: readonly HolderUse[] = ["cwd", "root", "exe", "open", "map"];
/** How many processes are read at once. */
const CONCURRENCY = 16;

interface Wanted {
  /** Mount ids (as mountinfo shows them) of the target's mount and every mount below it. */
  ids: Set<number>;
  /** Their devices, `major:minor`, for /proc/PID/maps. */
  devices: Set<string>;
}

function errnoOf(e: unknown): string | undefined {
  if (typeof e !== "object" || e === null) return undefined;
  const failure = e as Partial<NativeFailure> & { code?: string };
  if (typeof failure.code === "string") return failure.code;
  if (typeof failure.errno === "number") return describeErrno(failure.errno).code;
  return undefined;
}

const VANISHED = new Set(["ENOENT", "ESRCH"]);
const DENIED = new Set(["EACCES", "EPERM"]);

/** The mount id of whatever a /proc link points at, or undefined when it cannot be read. */
async function mountIdOf(path: string, denied: { value: boolean }): Promise<number | undefined> {
  try {
    return (await native().mountId(path, false)).mountId;
  } catch (e) {
    if (DENIED.has(errnoOf(e) ?? "")) denied.value = true;
    return undefined;
  }
}

/** The text of a /proc link, or undefined when it is gone (the descriptor was closed meanwhile). */
async function linkText(path: string): Promise<string | undefined> {
  try {
    return bytesOf(await readlink(path, { encoding: "buffer" })); // the exact bytes
  } catch {
    return undefined;
  }
}

const MAPS_LINE = /^([0-9a-f]+-[0-9a-f]+) \S+ \S+ ([0-9a-f]+):([0-9a-f]+) (\d+) +(.*)$/;

async function scanMaps(pid: number, wanted: Wanted, denied: { value: boolean }): Promise<HeldFile[]> {
  let text: string;
  try {
    text = bytesOf(await readFile(`/proc/${pid}/maps`));
  } catch (e) {
    if (DENIED.has(errnoOf(e) ?? "")) denied.value = true;
    return [];
  }
  const out: HeldFile[] = [];
  const seen = new Set<string>();
  for (const line of text.split("\n")) {
    const m = MAPS_LINE.exec(line);
    if (!m || m[4] === "0") continue;
    const device = `${parseInt(m[2]!, 16)}:${parseInt(m[3]!, 16)}`;
    if (!wanted.devices.has(device)) continue;
    const key = `${device}/${m[4]}`;
    if (seen.has(key)) continue;
    seen.add(key);
    // Confirm by mount id where map_files can be read; otherwise the device alone decides, as fuser -m does.
    let id: number | undefined;
    try {
      id = (await native().mountId(`/proc/${pid}/map_files/${m[1]}`, false)).mountId;
    } catch {
      id = undefined;
    }
    if (id !== undefined && !wanted.ids.has(id)) continue;
    out.push({ use: "map", path: m[5]! });
  }
  return out;
}

/** What one process holds, or undefined when it holds nothing or vanished. */
async function scanProcess(pid: number, wanted: Wanted, uninspected: number[]): Promise<Holder | undefined> {
  const base = `/proc/${pid}`;
  let command: string;
  let uid: number;
  try {
    command = (await readFile(`${base}/comm`, "utf8")).replace(/\n$/, "");
    uid = (await stat(base)).uid;
  } catch {
    return undefined; // gone since /proc was listed
  }
  const denied = { value: false };
  const files: HeldFile[] = [];

  for (const use of ["cwd", "root", "exe"] as const) {
    const id = await mountIdOf(`${base}/${use}`, denied);
    const path = id !== undefined && wanted.ids.has(id) ? await linkText(`${base}/${use}`) : undefined;
    if (path !== undefined) files.push({ use, path });
  }

  let fds: string[] = [];
  try {
    fds = await readdir(`${base}/fd`);
  } catch (e) {
    const code = errnoOf(e) ?? "";
    if (VANISHED.has(code)) return undefined;
    if (DENIED.has(code)) denied.value = true;
  }
  const open = await Promise.all(
    fds.map(async (name): Promise<HeldFile | undefined> => {
      const link = `${base}/fd/${name}`;
      const id = await mountIdOf(link, denied);
      if (id === undefined || !wanted.ids.has(id)) return undefined;
      const path = await linkText(link);
      return path === undefined ? undefined : { use: "open", path, fd: Number(name) };
    }),
  );
  for (const f of open) if (f) files.push(f);
  files.sort((a, b) => (a.fd ?? -1) - (b.fd ?? -1));

  // The executable is always mapped too: name it once, as `exe`.
  const exePaths = new Set(files.filter((f) => f.use === "exe").map((f) => f.path));
  for (const f of await scanMaps(pid, wanted, denied)) if (!exePaths.has(f.path)) files.push(f);

  if (denied.value && files.length === 0) uninspected.push(pid);
  if (files.length === 0) return undefined;
  const uses = USE_ORDER.filter((u) => files.some((f) => f.use === u));
  return { pid, command, uid, uses, files };
}

async function inBatches<T, R>(items: T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(size, items.length) }, worker));
  return out;
}

/**
 * The processes that hold the mount at, or containing, `target` (or a mount below it): by working
 * directory, root directory, executable, open file descriptor or memory map. Sorted by pid.
 *
 * Processes that exit during the scan are left out. Without root, other users' processes cannot be read:
 * their pids are in `result.uninspected`. `result.mount` is the mount that was looked at. Only processes
 * are found: a mount can also be kept busy by the mounts below it (`submountsOf`), a loop
 * device or a swap file.
 */
export async function findHolders(target: PathLike, options?: FindHoldersOptions & { encoding?: "utf8" }): Promise<HolderList>;
export async function findHolders(target: PathLike, options: FindHoldersOptions & { encoding: "buffer" }): Promise<HolderList<Buffer>>;
export async function findHolders(target: PathLike, options?: FindHoldersOptions): Promise<HolderList<string | Buffer>> {
  if (options !== undefined && (typeof options !== "object" || options === null)) throw invalidArgType("options", "of type object", options);
  const encoding = checkEncoding(options?.encoding);
  const path = absoluteBytes(checkPathLike(target, "target"));
  const shown = decodeBytes(path);
  let rootId: number;
  try {
    rootId = (await native().mountId(nativePath(path), false)).mountId;
  } catch (e) {
    const failure = e as NativeFailure;
    if (typeof failure?.errno !== "number") throw e;
    const { code, description } = describeErrno(failure.errno);
    throw new OverlayError(code, description.charAt(0).toLowerCase() + description.slice(1), { syscall: "statx", path: shown });
  }
  const mounts = await listBytes({ all: true });
  const below = unmountOrder(mounts, rootId);
  const mount = below.find((m) => m.id === rootId);
  if (!mount) {
    throw new OverlayError("ENOENT", `the mount of '${shown}' (id ${rootId}) is not in this mount namespace's table`, {
      syscall: "statx",
      path: shown,
    });
  }
  const wanted: Wanted = {
    ids: new Set(below.map((m) => m.id)),
    devices: new Set(below.map((m) => `${m.major}:${m.minor}`)),
  };

  const pids = (await readdir("/proc"))
    .filter((name) => /^\d+$/.test(name))
    .map(Number)
    .sort((a, b) => a - b);
  const uninspected: number[] = [];
  // This process first and alone, so that the files the scan itself opens in /proc are not counted.
  const self = await scanProcess(process.pid, wanted, uninspected);
  const others = pids.filter((pid) => pid !== process.pid);
  const found = await inBatches(others, CONCURRENCY, (pid) => scanProcess(pid, wanted, uninspected));
  const holders = [self, ...found]
    .filter((h): h is Holder => h !== undefined)
    .sort((a, b) => a.pid - b.pid)
    .map((h) => ({ ...h, files: h.files.map((f) => ({ ...f, path: encodeOut(f.path, encoding) })) })) as HolderList<string | Buffer>;
  Object.defineProperty(holders, "uninspected", { value: uninspected.sort((a, b) => a - b), enumerable: false });
  Object.defineProperty(holders, "mount", { value: mountInfoOut(mount, encoding), enumerable: false });
  return holders;
}

/** The mounts strictly below the mount at `target` in this mount namespace, deepest (and last mounted) first. */
export async function submountsOf(target: PathLike): Promise<MountInfo[]> {
  const path = absoluteBytes(checkPathLike(target, "target"));
  const rootId = (await native().mountId(nativePath(path), false).catch(() => undefined))?.mountId;
  if (rootId === undefined) return [];
  const mounts = await listBytes({ all: true });
  return unmountOrder(mounts, rootId)
    .filter((m) => m.id !== rootId)
    .map((m) => mountInfoOut(m, "utf8"));
}

/**
 * The mount `rootId` and every mount below it in the order they can be unmounted: children before their
 * parent (so the deepest first), and of siblings the last mounted first.
 */
export function unmountOrder(mounts: MountInfo[], rootId: number): MountInfo[] {
  const byId = new Map(mounts.map((m) => [m.id, m]));
  const children = new Map<number, MountInfo[]>();
  for (const m of mounts) {
    if (m.parentId === m.id) continue;
    const list = children.get(m.parentId) ?? [];
    list.push(m);
    children.set(m.parentId, list);
  }
  const out: MountInfo[] = [];
  const seen = new Set<number>();
  const visit = (id: number) => {
    if (seen.has(id)) return;
    seen.add(id);
    for (const c of [...(children.get(id) ?? [])].reverse()) visit(c.id);
    const m = byId.get(id);
    if (m) out.push(m);
  };
  visit(rootId);
  return out;
}
