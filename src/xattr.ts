/**
 * Reading overlay layers as the kernel sees them: each entry's type and the overlay xattrs that mark
 * whiteouts, opaque directories, redirects and metadata-only copies. Node has no xattr API; the addon's
 * `lstatXattrs`/`scanDirs` read them off the main thread, many paths per trip to the thread pool.
 */
import { constants } from "node:os";
import { dirname, basename } from "node:path";
import { inUserNamespace } from "./userns.js";
import { OverlayError, fromNative } from "./errors.js";
import { native, type NativeEntry, type NativeFailure } from "./native.js";

/** Where overlay keeps its xattrs: `trusted.overlay.`, or `user.overlay.` on mounts with `userxattr`. */
export type OverlayXattrPrefix = "trusted.overlay." | "user.overlay.";

export function overlayXattrPrefix(userxattr: boolean | undefined): OverlayXattrPrefix {
  return userxattr ? "user.overlay." : "trusted.overlay.";
}

export type EntryType = "file" | "directory" | "symlink" | "char" | "block" | "fifo" | "socket";

/** One entry of a layer, with what overlay's xattrs say about it. */
export interface LayerEntry {
  type: EntryType;
  mode: number;
  size: number;
  /** Overlay xattrs by short name (`opaque`, `redirect`, `origin`, ...), prefix removed. */
  overlay: Record<string, Buffer>;
  /** A whiteout: character device 0/0, or an empty regular file with `overlay.whiteout`. */
  whiteout: boolean;
  /** A directory with `overlay.opaque` = `y`: nothing below it in lower layers shows through. */
  opaque: boolean;
  /** `overlay.redirect`: where lower layers hold this (renamed) entry; absolute (`/a/b`) or one name. */
  redirect?: string;
  /** `overlay.metacopy`: a metadata-only copy, its data still in a lower layer. */
  metacopy: boolean;
}

const S_IFMT = 0o170000;
const typeByFormat: Record<number, EntryType> = {
  0o100000: "file",
  0o040000: "directory",
  0o120000: "symlink",
  0o020000: "char",
  0o060000: "block",
  0o010000: "fifo",
  0o140000: "socket",
};

/** Gives meaning to one entry's lstat facts and overlay xattrs. */
export function interpretEntry(raw: NativeEntry & { errno?: undefined }, prefix: OverlayXattrPrefix): LayerEntry {
  const type = typeByFormat[raw.mode & S_IFMT] ?? "file";
  const overlay: Record<string, Buffer> = {};
  for (const [name, value] of Object.entries(raw.xattrs)) {
    if (name.startsWith(prefix)) overlay[name.slice(prefix.length)] = value;
  }
  const whiteout =
    (type === "char" && raw.rdevMajor === 0 && raw.rdevMinor === 0) ||
    (type === "file" && raw.size === 0 && overlay.whiteout !== undefined);
  // `opaque` = "x" marks a directory that holds xattr whiteouts; only "y" makes it opaque.
  const opaque = type === "directory" && overlay.opaque?.toString("latin1") === "y";
  const redirect = overlay.redirect && overlay.redirect.length > 0 ? overlay.redirect.toString("utf8") : undefined;
  return {
    type,
    mode: raw.mode,
    size: raw.size,
    overlay,
    whiteout,
    opaque,
    ...(redirect !== undefined && (type === "directory" || type === "file") ? { redirect } : {}),
    metacopy: type === "file" && overlay.metacopy !== undefined,
  };
}

/**
 * A redirect the kernel would follow, split into names: absolute (`/a/b` → ["a", "b"]) or one relative
 * name. Anything else (empty components, `.`/`..`, a slash in a relative one) the kernel ignores: undefined.
 */
export function parseRedirect(redirect: string): { absolute: boolean; names: string[] } | undefined {
  if (redirect.startsWith("/")) {
    const names = redirect.slice(1).split("/");
    if (names.some((n) => n === "" || n === "." || n === "..")) return undefined;
    return { absolute: true, names };
  }
  if (redirect.includes("/") || redirect === "." || redirect === "..") return undefined;
  return { absolute: false, names: [redirect] };
}

/**
 * Refuses up front when `trusted.*` xattrs cannot be read: the kernel hides them (without an error) from
 * anyone but real root, and a layer read without them would be read wrong.
 */
export function checkXattrAccess(prefix: OverlayXattrPrefix, path: string): void {
  if (prefix !== "trusted.overlay.") return;
  if (process.geteuid?.() !== 0 || inUserNamespace()) {
    throw new OverlayError("EPERM", "reading trusted.overlay.* xattrs needs root in the initial user namespace", {
      syscall: "llistxattr",
      path,
      hint: "run as root; layers of a `userxattr` mount keep their xattrs in user.overlay.* instead",
    });
  }
}

/** `dir/name`, also when `dir` is `/`. */
export function childPath(dir: string, name: string): string {
  return dir.endsWith("/") ? `${dir}${name}` : `${dir}/${name}`;
}

/** Directories per native scan, and paths per native lookup: a huge level is several trips, run in parallel. */
const SCAN_BATCH = 256;
const LOOKUP_BATCH = 8192;
const { ENOENT, ENOTDIR } = constants.errno;

/**
 * Reads entries of layer directories with a cache: whole directories are scanned in batches (one trip for
 * many directories), single paths are looked up in one trip per batch; answers come from the cache.
 */
export class LayerReader {
  private readonly dirs = new Map<string, Map<string, LayerEntry>>();
  private readonly paths = new Map<string, LayerEntry | null>();

  constructor(readonly prefix: OverlayXattrPrefix) {}

  /** Scans directories not yet cached; a directory that cannot be read is an error naming it. */
  async scan(dirs: string[]): Promise<void> {
    const wanted = [...new Set(dirs)].filter((d) => !this.dirs.has(d));
    const batches: string[][] = [];
    for (let i = 0; i < wanted.length; i += SCAN_BATCH) batches.push(wanted.slice(i, i + SCAN_BATCH));
    await Promise.all(
      batches.map(async (batch) => {
        const results = await native().scanDirs(batch, this.prefix);
        results.forEach((r, i) => {
          const dir = batch[i]!;
          if (r.errno !== undefined) {
            throw fromNative({ errno: r.errno, syscall: r.syscall, messages: [] }, { path: dir, what: "reading a layer directory" });
          }
          const entries = new Map<string, LayerEntry>();
          for (const e of r.entries) entries.set(e.name, this.interpret(e, childPath(dir, e.name)));
          this.dirs.set(dir, entries);
        });
      }),
    );
  }

  /** The entries of a scanned directory. */
  entries(dir: string): Map<string, LayerEntry> {
    const entries = this.dirs.get(dir);
    if (!entries) throw new Error(`ovl internal: directory not scanned: ${dir}`);
    return entries;
  }

  /** Looks up paths not yet known: one trip for up to LOOKUP_BATCH of them. */
  async prefetch(paths: string[]): Promise<void> {
    const wanted = [...new Set(paths)].filter((p) => this.known(p) === undefined);
    const batches: string[][] = [];
    for (let i = 0; i < wanted.length; i += LOOKUP_BATCH) batches.push(wanted.slice(i, i + LOOKUP_BATCH));
    await Promise.all(
      batches.map(async (batch) => {
        const results = await native().lstatXattrs(batch, this.prefix);
        results.forEach((r, k) => {
          const path = batch[k]!;
          if (r.errno === undefined) this.paths.set(path, this.interpret(r, path));
          else if (r.errno === ENOENT || r.errno === ENOTDIR) this.paths.set(path, null);
          else throw fromNative({ errno: r.errno, syscall: r.syscall, messages: [] }, { path, what: "reading a layer" });
        });
      }),
    );
  }

  /** The entry at `path` (a name inside a directory known to be real), or null when there is none. */
  async entry(path: string): Promise<LayerEntry | null> {
    const hit = this.known(path);
    if (hit !== undefined) return hit;
    await this.prefetch([path]);
    return this.known(path) ?? null;
  }

  /** Forgets everything read (a walk drops each level once it is done). */
  clear(): void {
    this.dirs.clear();
    this.paths.clear();
  }

  private known(path: string): LayerEntry | null | undefined {
    const inDir = this.dirs.get(dirname(path));
    if (inDir) return inDir.get(basename(path)) ?? null;
    return this.paths.get(path);
  }

  private interpret(raw: NativeEntry, path: string): LayerEntry {
    if (raw.errno !== undefined) {
      throw fromNative({ errno: raw.errno, syscall: raw.syscall, messages: [] } as NativeFailure, { path, what: "reading a layer" });
    }
    if (raw.xattrErrno !== undefined) {
      throw fromNative({ errno: raw.xattrErrno, syscall: raw.xattrSyscall ?? "llistxattr", messages: [] }, {
        path,
        what: `reading ${this.prefix}* xattrs`,
      });
    }
    return interpretEntry(raw, this.prefix);
  }
}
