/**
 * Reading the mount table: the I/O around the pure parser in mountinfo.ts, and `list()`.
 */
import { readFile, stat } from "node:fs/promises";
import { constants } from "node:os";
import { posix } from "node:path";
import {
  type PathEncoding,
  type PathLike,
  bytesOf,
  checkEncoding,
  checkPathLike,
  decodeBytes,
  isAscii,
  nativePath,
  pathBytes,
  toBuffer,
} from "../kernel/bytes.js";
import { OverlayError, fromNative, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { mountInfoOut, parseMountInfoBytes, type MountInfoIssue } from "./mountinfo.js";
import { type NativeAddon, type NativeFailure, native } from "../kernel/native.js";
import { toOverlayMount, unescapeOverlayPath } from "../mounting/overlay-options.js";
import type { MountInfo, OverlayMount } from "../types.js";

export interface ListOptions {
  /** Every mount, not only overlays. */
  all?: boolean;
  /** Read another process's mount namespace (/proc/PID/mountinfo). */
  pid?: number;
  /** Read a saved mountinfo file instead (findmnt's `-F`): a table from another machine or a bug report. */
  file?: PathLike;
  /** Only the mount at, or containing, this path (a string, or a Buffer of its exact bytes). */
  target?: PathLike;
  /** Throw on a malformed mountinfo line instead of skipping it (every line is checked). */
  strict?: boolean;
  /**
   * Called with each malformed line that was skipped. Without `all` or `strict` only the lines that can be
   * overlays (they contain ` - overlay `) are parsed, so only those are reported.
   */
  onIssue?: (issue: MountInfoIssue) => void;
  /**
   * Path fields as strings (`"utf8"`, the default: bytes that are not UTF-8 as U+DC80-U+DCFF, named in each
   * entry's `nonUtf8`) or as Buffers (`"buffer"`), byte for byte what the kernel holds.
   */
  encoding?: PathEncoding;
}

/** The array `list()` returns; `issues` holds the malformed lines that were skipped. */
export type MountList<T> = T[] & { issues: MountInfoIssue[] };

export function isOverlay(m: MountInfo<string | Buffer>): boolean {
  return String(m.fstype) === "overlay";
}

const isDirectory = (path: string) => stat(toBuffer(path)).then((st) => st.isDirectory(), () => false);

/** An overlay entry's path fields beyond the mount's own, for mountInfoOut(). */
export const OVERLAY_PATHS = ["lower", "data", "upper", "work"] as const;

/**
 * In the new-API form (`lowerdir+=`) the kernel prints `upperdir=`/`workdir=` literally when they were passed
 * as file descriptors, but as typed, with overlay's backslash escapes, when they were passed as strings; the
 * text alone cannot tell which. Where the two readings differ (the path holds a backslash), ask the
 * filesystem: the reading that names an existing directory wins, the literal one (fds, ovl's default) when
 * both do. `root` is the prefix under which the mount's paths resolve (`/proc/PID/root` for another process).
 * Works on byte strings (src/kernel/bytes.ts) as the parser gives them.
 */
export async function settleUpperWork(m: OverlayMount, root = ""): Promise<OverlayMount> {
  if (!m.superOptions.some((o) => o.startsWith("lowerdir+=") || o.startsWith("datadir+="))) return m;
  const settled: Partial<Pick<OverlayMount, "upper" | "work">> = {};
  for (const key of ["upper", "work"] as const) {
    const raw = m.superOptions.find((o) => o.startsWith(`${key}dir=`))?.slice(key.length + 4);
    if (raw === undefined || !raw.includes("\\")) continue;
    const escapedReading = unescapeOverlayPath(raw);
    if (escapedReading === raw) continue;
    const literalExists = await isDirectory(root + raw);
    settled[key] = literalExists || !(await isDirectory(root + escapedReading)) ? raw : escapedReading;
  }
  return Object.keys(settled).length ? { ...m, ...settled } : m;
}

/**
 * Reads /proc/self/mountinfo, or /proc/PID/mountinfo: opened, read whole and decoded in one trip to the
 * thread pool (the addon's readText). That costs about what the kernel takes to format
 * the table; fs.readFile of the same file took half as long again on top (10,000 mounts: ~31 ms vs ~45 ms).
 */
export async function readMountTable(pid?: number): Promise<string> {
  return decodeBytes(await readMountTableBytes(pid));
}

let prefetched: Promise<string> | undefined;

/**
 * Starts reading this process's mount table now, for the next readMountTableBytes() to take: a command line
 * that will list mounts lets the kernel write the table (tens of ms with thousands of mounts) on the thread
 * pool while its own code loads. Taken once; a failure is the reader's, as if read then.
 */
export function prefetchMountTable(): void {
  prefetched = readMountTableBytes();
  prefetched.catch(() => undefined);
}

/** The mount table as a byte string (one character per byte: every byte the kernel printed). */
export async function readMountTableBytes(pid?: number): Promise<string> {
  if (pid === undefined && prefetched) {
    const p = prefetched;
    prefetched = undefined;
    return p;
  }
  const file = pid === undefined ? "/proc/self/mountinfo" : `/proc/${pid}/mountinfo`;
  let addon: NativeAddon;
  try {
    addon = native();
  } catch (e) {
    // No addon: list() without `target` still works.
    if ((e as { code?: unknown }).code === "ERR_OVL_NATIVE_MISSING") return readWithNode(file, pid);
    throw e;
  }
  try {
    return await addon.readText(file, true);
  } catch (e) {
    const f = e as NativeFailure;
    if (pid !== undefined && f.errno === constants.errno.ENOENT && f.syscall === "open") throw noSuchProcess(pid, file);
    throw fromNative(f, { path: file, what: `reading '${file}'` });
  }
}

function noSuchProcess(pid: number, file: string): OverlayError {
  return new OverlayError("ESRCH", `no process with pid ${pid}`, { syscall: "open", path: file });
}

async function readWithNode(file: string, pid: number | undefined): Promise<string> {
  try {
    return bytesOf(await readFile(file));
  } catch (e) {
    if (pid !== undefined && (e as NodeJS.ErrnoException).code === "ENOENT") throw noSuchProcess(pid, file);
    throw e;
  }
}

/** A saved mountinfo file, as a byte string. */
async function readSavedTable(file: string): Promise<string> {
  try {
    return bytesOf(await readFile(toBuffer(file)));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const shown = decodeBytes(file);
    throw new OverlayError(err.code ?? "EIO", `cannot read the mountinfo file '${shown}': ${err.message.replace(/^[A-Z]+: /, "")}`, {
      syscall: err.syscall ?? "open",
      path: shown,
    });
  }
}

/** Checks the options list() and watch() share: `all`, `pid`, `strict`, `onIssue`. */
export function checkTableOptions<T extends object>(opts: unknown): T {
  if (opts === undefined) return {} as T;
  if (typeof opts !== "object" || opts === null || Array.isArray(opts)) {
    throw invalidArgType("options", "of type object", opts);
  }
  const o = opts as ListOptions;
  for (const key of ["all", "strict"] as const) {
    if (o[key] !== undefined && typeof o[key] !== "boolean") throw invalidArgType(`options.${key}`, "of type boolean", o[key]);
  }
  if (o.pid !== undefined) {
    if (typeof o.pid !== "number") throw invalidArgType("options.pid", "of type number", o.pid);
    if (!Number.isSafeInteger(o.pid) || o.pid <= 0) throw invalidArgValue("options.pid", o.pid, "must be a positive integer");
  }
  if (o.onIssue !== undefined && typeof o.onIssue !== "function") {
    throw invalidArgType("options.onIssue", "of type function", o.onIssue);
  }
  return opts as T;
}

function checkListOptions(opts: unknown): ListOptions {
  const o = checkTableOptions<ListOptions>(opts);
  if (o.target !== undefined) checkPathLike(o.target, "options.target");
  if (o.file !== undefined) checkPathLike(o.file, "options.file");
  if (o.file !== undefined && o.pid !== undefined) throw invalidArgValue("options.file", o.file, "cannot be combined with options.pid");
  checkEncoding(o.encoding);
  return o;
}

/** The mount at or containing `path`, by longest matching mount point (last mounted wins). */
function containingMount<T extends MountInfo>(mounts: T[], path: string): T | undefined {
  let best: T | undefined;
  for (const m of mounts) {
    const t = m.target;
    if (path === t || t === "/" || path.startsWith(`${t}/`)) {
      if (!best || t.length >= best.target.length) best = m;
    }
  }
  return best;
}

/** A path (byte string) made absolute against the current directory, as text. */
export function absoluteBytes(b: string): string {
  return posix.resolve(b.startsWith("/") ? "/" : pathBytes(process.cwd()), b);
}

/**
 * Overlays in this mount namespace (or every mount with `all`, another process's with `pid`, a saved table
 * with `file`, or only the one at or containing `target`).
 */
export async function list(opts?: ListOptions & { all?: false; encoding?: "utf8" }): Promise<MountList<OverlayMount>>;
export async function list(opts: ListOptions & { all?: false; encoding: "buffer" }): Promise<MountList<OverlayMount<Buffer>>>;
export async function list(opts: ListOptions & { encoding: "buffer" }): Promise<MountList<MountInfo<Buffer> | OverlayMount<Buffer>>>;
export async function list(opts: ListOptions): Promise<MountList<MountInfo | OverlayMount>>;
export async function list(opts?: ListOptions): Promise<MountList<MountInfo<string | Buffer> | OverlayMount<string | Buffer>>> {
  const o = checkListOptions(opts);
  const encoding = checkEncoding(o.encoding);
  const { target, file, ...rest } = o;
  const raw = await listBytes({
    ...rest,
    ...(target !== undefined ? { target: pathBytes(target) } : {}),
    ...(file !== undefined ? { file: pathBytes(file) } : {}),
  });
  // An all-ASCII table (the usual one) reads the same in the string view: nothing to convert.
  if (encoding === "utf8" && asciiTables.has(raw)) return raw;
  const out = raw.map((m) => ("lower" in m ? mountInfoOut(m, encoding, OVERLAY_PATHS) : mountInfoOut(m, encoding)));
  Object.defineProperty(out, "issues", { value: raw.issues, enumerable: false });
  return out as MountList<MountInfo<string | Buffer> | OverlayMount<string | Buffer>>;
}

/**
 * list() with every path field a byte string (src/kernel/bytes.ts), for ovl's own callers: `target` and `file` are
 * byte strings too. Options already checked.
 */
export async function listBytes(o: Omit<ListOptions, "target" | "file"> & { target?: string; file?: string }): Promise<MountList<MountInfo | OverlayMount>> {
  const text = o.file !== undefined ? await readSavedTable(o.file) : await readMountTableBytes(o.pid);
  const here = o.pid === undefined && o.file === undefined; // this process's own table: the kernel can be asked
  // Overlays only: parse just the lines that can be overlays, unless the whole table is needed (to find the
  // innermost mount containing a path in another table) or asked to be checked (strict).
  const overlaysOnly = !o.all && !o.strict && !(o.target !== undefined && !here);
  const { mounts, issues: rawIssues } = parseMountInfoBytes(text, overlaysOnly ? { fstype: "overlay" } : { strict: o.strict ?? false });
  const issues = rawIssues.map((i) => ({ ...i, text: decodeBytes(i.text) }));
  if (o.onIssue) for (const issue of issues) o.onIssue(issue);

  let chosen: MountInfo[] = mounts;
  if (o.target !== undefined) {
    const path = absoluteBytes(o.target);
    let hit: MountInfo | undefined;
    if (here) {
      // Ask the kernel which mount serves the path: exact where paths are ambiguous (stacked mounts).
      let id: number;
      try {
        id = (await native().mountId(nativePath(path), false)).mountId;
      } catch (e) {
        const shown = decodeBytes(path);
        throw fromNative(e as NativeFailure, { path: shown, what: `looking up the mount of '${shown}'` });
      }
      hit = mounts.find((m) => m.id === id);
    } else {
      hit = containingMount(mounts, path);
    }
    chosen = hit ? [hit] : [];
  }
  const out = [] as unknown as MountList<MountInfo | OverlayMount>;
  // Another process's paths resolve under its root; a saved table's paths are nowhere here.
  const root = o.pid !== undefined ? `/proc/${o.pid}/root` : "";
  for (const m of chosen) {
    if (isOverlay(m)) {
      const overlay = toOverlayMount(m);
      out.push(o.file !== undefined ? overlay : await settleUpperWork(overlay, root));
    } else if (o.all) out.push(m);
  }
  Object.defineProperty(out, "issues", { value: issues, enumerable: false });
  if (isAscii(text)) asciiTables.add(out);
  return out;
}

/** listBytes() results read from a table that is all ASCII. */
const asciiTables = new WeakSet<object>();
