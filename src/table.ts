/**
 * Reading the mount table: the I/O around the pure parser in mountinfo.ts, and `list()`.
 */
import { readFile, stat } from "node:fs/promises";
import { constants } from "node:os";
import { resolve } from "node:path";
import { OverlayError, fromNative, invalidArgType, invalidArgValue } from "./errors.js";
import { parseMountInfo, type MountInfoIssue } from "./mountinfo.js";
import { type NativeAddon, type NativeFailure, native } from "./native.js";
import { toOverlayMount, unescapeOverlayPath } from "./overlay-options.js";
import type { MountInfo, OverlayMount } from "./types.js";
import { checkPathArg } from "./validate.js";

export interface ListOptions {
  /** Every mount, not only overlays. */
  all?: boolean;
  /** Read another process's mount namespace (/proc/PID/mountinfo). */
  pid?: number;
  /** Only the mount at, or containing, this path. */
  target?: string;
  /** Throw on a malformed mountinfo line instead of skipping it (every line is checked). */
  strict?: boolean;
  /**
   * Called with each malformed line that was skipped. Without `all` or `strict` only the lines that can be
   * overlays (they contain ` - overlay `) are parsed, so only those are reported.
   */
  onIssue?: (issue: MountInfoIssue) => void;
}

/** The array `list()` returns; `issues` holds the malformed lines that were skipped. */
export type MountList<T> = T[] & { issues: MountInfoIssue[] };

export function isOverlay(m: MountInfo): boolean {
  return m.fstype === "overlay";
}

const isDirectory = (path: string) => stat(path).then((st) => st.isDirectory(), () => false);

/**
 * In the new-API form (`lowerdir+=`) the kernel prints `upperdir=`/`workdir=` literally when they were passed
 * as file descriptors, but as typed, with overlay's backslash escapes, when they were passed as strings; the
 * text alone cannot tell which. Where the two readings differ (the path holds a backslash), ask the
 * filesystem: the reading that names an existing directory wins, the literal one (fds, ovl's default) when
 * both do. `root` is the prefix under which the mount's paths resolve (`/proc/PID/root` for another process).
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
    return await addon.readText(file);
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
    return await readFile(file, "utf8");
  } catch (e) {
    if (pid !== undefined && (e as NodeJS.ErrnoException).code === "ENOENT") throw noSuchProcess(pid, file);
    throw e;
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
  if (o.target !== undefined) checkPathArg(o.target, "options.target");
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

/**
 * Overlays in this mount namespace (or every mount with `all`, another process's with `pid`, or only the
 * one at or containing `target`).
 */
export async function list(opts?: ListOptions & { all?: false }): Promise<MountList<OverlayMount>>;
export async function list(opts: ListOptions): Promise<MountList<MountInfo | OverlayMount>>;
export async function list(opts?: ListOptions): Promise<MountList<MountInfo | OverlayMount>> {
  const o = checkListOptions(opts);
  const text = await readMountTable(o.pid);
  // Overlays only: parse just the lines that can be overlays, unless the whole table is needed (to find the
  // innermost mount containing a path in another namespace) or asked to be checked (strict).
  const overlaysOnly = !o.all && !o.strict && !(o.target !== undefined && o.pid !== undefined);
  const { mounts, issues } = parseMountInfo(text, overlaysOnly ? { fstype: "overlay" } : { strict: o.strict ?? false });
  if (o.onIssue) for (const issue of issues) o.onIssue(issue);

  let chosen: MountInfo[] = mounts;
  if (o.target !== undefined) {
    const path = resolve(o.target);
    let hit: MountInfo | undefined;
    if (o.pid === undefined) {
      // Ask the kernel which mount serves the path: exact where paths are ambiguous (stacked mounts).
      let id: number;
      try {
        id = (await native().mountId(path, false)).mountId;
      } catch (e) {
        throw fromNative(e as NativeFailure, { path, what: `looking up the mount of '${path}'` });
      }
      hit = mounts.find((m) => m.id === id);
    } else {
      hit = containingMount(mounts, path);
    }
    chosen = hit ? [hit] : [];
  }
  const out = [] as unknown as MountList<MountInfo | OverlayMount>;
  const root = o.pid === undefined ? "" : `/proc/${o.pid}/root`;
  for (const m of chosen) {
    if (isOverlay(m)) out.push(await settleUpperWork(toOverlayMount(m), root));
    else if (o.all) out.push(m);
  }
  Object.defineProperty(out, "issues", { value: issues, enumerable: false });
  return out;
}
