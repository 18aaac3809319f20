/**
 * Reading overlay layers as the kernel sees them: each entry's type and the overlay xattrs that mark
 * whiteouts, opaque directories, redirects and metadata-only copies. Node has no xattr API; the addon's
 * `lstatXattrs`/`scanDirs` read them off the main thread, many paths per trip to the thread pool, each
 * beneath the layer's root fd.
 */
import { closeSync } from "node:fs";
import { constants } from "node:os";
import { inUserNamespace } from "../kernel/userns.js";
import { decodeBytes, nativePath } from "../kernel/bytes.js";
import { OverlayError, describeErrno, fromNative } from "../kernel/errors.js";
import { native, unpackScan, type NativeEntry, type NativeFailure } from "../kernel/native.js";

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
  /** The lstat facts and xattrs as read (every xattr when the reader scans with prefix ""). */
  raw: NativeEntry & { errno?: undefined };
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
  // A redirect names a path in the layers: its bytes, as a byte string like every name.
  const redirect = overlay.redirect && overlay.redirect.length > 0 ? overlay.redirect.toString("latin1") : undefined;
  return {
    type,
    mode: raw.mode,
    size: raw.size,
    overlay,
    whiteout,
    opaque,
    ...(redirect !== undefined && (type === "directory" || type === "file") ? { redirect } : {}),
    metacopy: type === "file" && overlay.metacopy !== undefined,
    raw,
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
      hint: "run as root; layers of a `userxattr` (rootless) mount keep their xattrs in user.overlay.* instead: say so with `ovl diff --userxattr` or `{ userxattr: true }`",
    });
  }
}

/** `dir/name`, also when `dir` is `/`. */
export function childPath(dir: string, name: string): string {
  return dir.endsWith("/") ? `${dir}${name}` : `${dir}/${name}`;
}

/** A place in one of a reader's layers: the layer (index into its roots) and the path below it ("" = the root, else "/a/b"). */
export interface Loc {
  root: number;
  path: string;
}

export const childLoc = (l: Loc, name: string): Loc => ({ root: l.root, path: `${l.path}/${name}` });
const locKey = (l: Loc) => `${l.root}\0${l.path}`;
const parentKey = (l: Loc) => `${l.root}\0${l.path.slice(0, l.path.lastIndexOf("/"))}`;
const lastName = (l: Loc) => l.path.slice(l.path.lastIndexOf("/") + 1);

/** A layer root, opened once: every read of the layer goes through this fd. */
export interface LayerRoot {
  /** The path the kernel holds for it (a byte string), for messages and results. */
  real: string;
  fd: number;
}

/**
 * Opens layer directories, once each (one trip for all), as the roots of a LayerReader. The caller closes
 * them with `closeLayerRoots` when done.
 */
export async function openLayerRoots(paths: { path: string; role: string }[]): Promise<LayerRoot[]> {
  const { paths: opened } = await native().openPaths(paths.map((p) => nativePath(p.path)));
  const roots: LayerRoot[] = [];
  let failure: OverlayError | undefined;
  opened.forEach((o, i) => {
    if (o.errno === undefined) roots.push({ real: o.realpath, fd: o.fd });
    else if (!failure) {
      const role = paths[i]!.role;
      const path = decodeBytes(paths[i]!.path);
      const { code, description } = describeErrno(o.errno);
      failure =
        code === "ENOENT" || code === "ENOTDIR"
          ? new OverlayError(o.notDirectory ? "ENOTDIR" : code, `${role} ${o.notDirectory ? "is not a directory" : "does not exist"}`, { syscall: "open", path })
          : new OverlayError(code, `${role} cannot be opened: ${description}`, { syscall: o.syscall, path });
    }
  });
  if (failure) {
    closeLayerRoots(roots);
    throw failure;
  }
  return roots;
}

export function closeLayerRoots(roots: LayerRoot[]): void {
  for (const r of roots) closeSync(r.fd);
}

/** Directories per native scan, and paths per native lookup: a huge level is several trips, run in parallel. */
const SCAN_BATCH = 256;
const LOOKUP_BATCH = 8192;
const { ENOENT, ENOTDIR, EXDEV, ELOOP } = constants.errno;

/**
 * Reads entries of layer directories beneath their root fds, with a cache: whole directories are scanned in
 * batches (one trip for many directories), single names are looked up in one trip per batch; answers come
 * from the cache. Nothing outside a root is ever read: the addon opens every directory with openat2
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS from the root's fd, whatever is renamed or swapped meanwhile.
 */
export class LayerReader {
  private readonly dirs = new Map<string, Map<string, LayerEntry>>();
  private readonly paths = new Map<string, LayerEntry | null>();

  constructor(
    readonly prefix: OverlayXattrPrefix,
    readonly roots: LayerRoot[],
    /** The xattrs read with each entry: overlay's (the default), or "" for all of them (exporting a layer). */
    readonly scanPrefix: string = prefix,
  ) {}

  /** The path of a place, for messages and results: its root's path plus the path below it. */
  display(l: Loc): string {
    const root = this.roots[l.root]!.real;
    if (l.path === "") return root;
    return root === "/" ? l.path : `${root}${l.path}`;
  }

  private dirArg(l: Loc): [number, string | Buffer] {
    return [this.roots[l.root]!.fd, nativePath(l.path.slice(1))];
  }

  /** Scans directories not yet cached; a directory that cannot be read is an error naming it. */
  async scan(dirs: Loc[]): Promise<void> {
    const seen = new Set<string>();
    const wanted = dirs.filter((d) => {
      const k = locKey(d);
      if (this.dirs.has(k) || seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    const batches: Loc[][] = [];
    for (let i = 0; i < wanted.length; i += SCAN_BATCH) batches.push(wanted.slice(i, i + SCAN_BATCH));
    await Promise.all(
      batches.map(async (batch) => {
        const results = (await native().scanDirsPacked(batch.map((d) => this.dirArg(d)), this.scanPrefix)).map(unpackScan);
        results.forEach((r, i) => {
          const dir = batch[i]!;
          if (r.errno !== undefined) throw this.walkError(r, dir, "reading a layer directory");
          const entries = new Map<string, LayerEntry>();
          for (const e of r.entries) entries.set(e.name, this.interpret(e, childLoc(dir, e.name)));
          this.dirs.set(locKey(dir), entries);
        });
      }),
    );
  }

  /** The entries of a scanned directory. */
  entries(dir: Loc): Map<string, LayerEntry> {
    const entries = this.dirs.get(locKey(dir));
    if (!entries) throw new Error(`ovl internal: directory not scanned: ${decodeBytes(this.display(dir))}`);
    return entries;
  }

  /** Looks up places not yet known: one trip for up to LOOKUP_BATCH of them. */
  async prefetch(places: Loc[]): Promise<void> {
    const seen = new Set<string>();
    const wanted = places.filter((p) => {
      const k = locKey(p);
      if (p.path === "" || seen.has(k) || this.known(p) !== undefined) return false;
      seen.add(k);
      return true;
    });
    // Names of one directory side by side: the addon opens each directory once for a run of its names.
    wanted.sort((a, b) => (parentKey(a) < parentKey(b) ? -1 : parentKey(a) > parentKey(b) ? 1 : 0));
    const batches: Loc[][] = [];
    for (let i = 0; i < wanted.length; i += LOOKUP_BATCH) batches.push(wanted.slice(i, i + LOOKUP_BATCH));
    await Promise.all(
      batches.map(async (batch) => {
        const items = batch.map((p) => {
          const [fd, dir] = this.dirArg({ root: p.root, path: p.path.slice(0, p.path.lastIndexOf("/")) });
          return [fd, dir, nativePath(lastName(p))] as [number, string | Buffer, string | Buffer];
        });
        const results = await native().lstatXattrs(items, this.scanPrefix);
        results.forEach((r, k) => {
          const place = batch[k]!;
          if (r.errno === undefined) this.paths.set(locKey(place), this.interpret(r, place));
          // Not there, or its directory is not one a layer walk may enter (a symlink, a mount): not in the layer.
          else if (r.errno === ENOENT || r.errno === ENOTDIR || (r.syscall === "openat2" && (r.errno === ELOOP || r.errno === EXDEV))) {
            this.paths.set(locKey(place), null);
          } else throw this.walkError(r, place, "reading a layer");
        });
      }),
    );
  }

  /** The entry at a place (a name inside a directory known to be real), or null when there is none. */
  async entry(place: Loc): Promise<LayerEntry | null> {
    const hit = this.known(place);
    if (hit !== undefined) return hit;
    await this.prefetch([place]);
    return this.known(place) ?? null;
  }

  /** Forgets everything read (a walk drops each level once it is done). */
  clear(): void {
    this.dirs.clear();
    this.paths.clear();
  }

  private known(place: Loc): LayerEntry | null | undefined {
    const inDir = this.dirs.get(parentKey(place));
    if (inDir) return inDir.get(lastName(place)) ?? null;
    return this.paths.get(locKey(place));
  }

  private walkError(r: { errno: number; syscall: string }, place: Loc, what: string): OverlayError {
    const path = decodeBytes(this.display(place));
    if (r.syscall === "openat2" && (r.errno === ELOOP || r.errno === EXDEV)) {
      return new OverlayError(
        describeErrno(r.errno).code,
        `${what}: '${path}' is ${r.errno === ELOOP ? "a symlink" : "a mount point"} inside the layer, which overlay does not follow`,
        { syscall: "openat2", path },
      );
    }
    if (r.syscall === "openat2" && r.errno === ENOTDIR) {
      return new OverlayError("ENOTDIR", `${what}: '${path}' is not a directory (was it replaced while being read?)`, {
        syscall: "openat2",
        path,
      });
    }
    return fromNative({ errno: r.errno, syscall: r.syscall, messages: [] }, { path, what });
  }

  private interpret(raw: NativeEntry, place: Loc): LayerEntry {
    if (raw.errno !== undefined) throw this.walkError(raw, place, "reading a layer");
    if (raw.xattrErrno !== undefined) {
      throw fromNative({ errno: raw.xattrErrno, syscall: raw.xattrSyscall ?? "llistxattr", messages: [] } as NativeFailure, {
        path: decodeBytes(this.display(place)),
        what: `reading ${this.prefix}* xattrs`,
      });
    }
    return interpretEntry(raw, this.prefix);
  }
}
