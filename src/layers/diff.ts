/**
 * `diff`: what the upper layer changed, like `docker diff`. It walks the upper layer one directory level
 * at a time, two batched native calls a level however many files it holds, and compares each entry with
 * what the lower layers showed at that path before (following overlay's own lookup rules).
 */
import { realpath } from "node:fs/promises";
import {
  type PathEncoding,
  type PathLike,
  bytesOf,
  checkEncoding,
  checkPathLike,
  decodeBytes,
  encodeOut,
  toBuffer,
} from "../kernel/bytes.js";
import { native } from "../kernel/native.js";
import { absoluteBytes } from "../table/table.js";
import { OverlayError, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { LowerLayers, overlayServing, type LowerDir } from "./which.js";
import {
  LayerReader,
  checkXattrAccess,
  childLoc,
  closeLayerRoots,
  openLayerRoots,
  overlayXattrPrefix,
  parseRedirect,
  type LayerEntry,
  type LayerRoot,
  type Loc,
} from "./xattr.js";

/** One change, its path from the overlay's root (`/a/b`). */
export interface Change<P extends string | Buffer = string> {
  path: P;
  /** Added, Changed, or Deleted. */
  change: "A" | "C" | "D";
  /**
   * A directory that hides the lower directory that was at its path (made opaque, or new inside an opaque
   * directory): what was in it is gone, each such entry listed as `D`.
   */
  opaque?: true;
  /** A metadata-only copy (`metacopy=on`): mode, owner or times changed, the data is still the lower one. */
  metadataOnly?: true;
  /** A renamed (redirected) entry: the path it had, which is reported `D`. */
  renamedFrom?: P;
}

/** Layers that need not be mounted. */
export interface DiffLayers {
  upper: PathLike;
  /** Lower layers, top-most first. One string is one layer. */
  lower: PathLike[] | PathLike;
  /** Overlay's xattrs are `user.overlay.*` (layers of a `userxattr` mount), not `trusted.overlay.*`. */
  userxattr?: boolean;
}

interface Layers {
  upper: string;
  lower: string[];
  /** Undefined: not said (unmounted layers); found from the layers themselves. */
  userxattr: boolean | undefined;
}

/** A directory of the merged tree that has an upper directory, queued for the walk. */
interface DirToVisit {
  /** Its path from the overlay root ("" for the root). */
  path: string;
  /** The path its lower contents had before (differs from `path` under a renamed directory). */
  origin: string;
  /** The upper directory (root 0 of the reader). */
  upperDir: Loc;
  /** The lower directories it is compared with: what was at `origin` in the lower layers. */
  base: LowerDir[];
  /** Whether those lower entries still show through (false under an opaque directory). */
  merges: boolean;
}

/** Byte strings sort in byte order as they are (one character per byte). */
const byteOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

async function checkLayers(spec: unknown): Promise<Layers> {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec) || spec instanceof Uint8Array) {
    throw invalidArgType("layers", "of type string or object", spec);
  }
  const o = spec as Partial<DiffLayers>;
  const upper = checkPathLike(o.upper, "layers.upper");
  const lower = typeof o.lower === "string" || o.lower instanceof Uint8Array ? [o.lower] : o.lower;
  if (!Array.isArray(lower)) throw invalidArgType("layers.lower", "of type string or an array of strings", o.lower);
  if (lower.length === 0) throw invalidArgValue("layers.lower", lower, "must name at least one lower layer");
  const lowerBytes = lower.map((l, i) => checkPathLike(l, `layers.lower[${i}]`));
  if (o.userxattr !== undefined && typeof o.userxattr !== "boolean") {
    throw invalidArgType("layers.userxattr", "of type boolean", o.userxattr);
  }
  return { upper, lower: lowerBytes, userxattr: o.userxattr };
}

/** The layers of the overlay mounted at `target` (which must be its mount point), as byte strings. */
export async function mountedLayers(target: unknown): Promise<Layers | undefined> {
  const abs = absoluteBytes(checkPathLike(target, "target"));
  const shown = decodeBytes(abs);
  let real: string;
  try {
    real = bytesOf(await realpath(toBuffer(abs), { encoding: "buffer" }));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code !== "ENOENT" && err.code !== "ENOTDIR") throw e;
    throw new OverlayError(err.code, "no such mount point", { syscall: "realpath", path: shown });
  }
  const m = await overlayServing(real, abs);
  if (m.target !== real || m.root !== "/") {
    const mt = decodeBytes(m.target);
    throw new OverlayError("EINVAL", `not the mount point of an overlay (it is inside the overlay at ${mt})`, {
      syscall: "statx",
      path: shown,
      hint: `pass the mount point, ${mt}`,
    });
  }
  if (m.upper === undefined) return undefined; // a read-only overlay changes nothing
  return { upper: m.upper, lower: m.lower, userxattr: m.features.userxattr ?? false };
}

/**
 * Whether the upper layer keeps overlay's xattrs in `user.overlay.*`: its top directory's entries are read
 * once with every xattr; `trusted.overlay.*` ones (root's mounts) win, else `user.overlay.*` ones say so.
 */
export async function keepsUserXattrs(roots: LayerRoot[]): Promise<boolean> {
  const [top] = await native().scanDirs([[roots[0]!.fd, ""]], "");
  let user = false;
  for (const e of top?.entries ?? []) {
    if (e.errno !== undefined) continue;
    const names = Object.keys(e.xattrs);
    if (names.some((n) => n.startsWith("trusted.overlay."))) return false;
    if (names.some((n) => n.startsWith("user.overlay."))) user = true;
  }
  return user;
}

/** The names a stack of lower directories shows, each with the entry that shows it (whiteouts hide). */
export function lowerListing(reader: LayerReader, lowers: LowerLayers, base: LowerDir[]): Map<string, LayerEntry> {
  const shown = new Map<string, LayerEntry>();
  const decided = new Set<string>();
  for (const dir of base) {
    for (const [name, entry] of reader.entries(lowers.loc(dir.layer, dir.path))) {
      if (decided.has(name)) continue;
      decided.add(name);
      if (!entry.whiteout) shown.set(name, entry);
    }
  }
  return shown;
}

/** Options of diff(). */
export interface DiffOptions {
  /** Paths as strings (`"utf8"`, the default; undecodable bytes as U+DC80-U+DCFF) or Buffers (`"buffer"`). */
  encoding?: PathEncoding;
}

/**
 * What changed in an overlay's upper layer, sorted by path (byte order): `diff("/merged")` for a mounted
 * overlay, `diff({ upper, lower })` for layers that are not mounted. Paths in and out may be Buffers.
 */
export async function diff(target: PathLike | DiffLayers, options?: DiffOptions & { encoding?: "utf8" }): Promise<Change[]>;
export async function diff(target: PathLike | DiffLayers, options: DiffOptions & { encoding: "buffer" }): Promise<Change<Buffer>[]>;
export async function diff(target: PathLike | DiffLayers, options?: DiffOptions): Promise<Change<string | Buffer>[]> {
  if (options !== undefined && (typeof options !== "object" || options === null)) throw invalidArgType("options", "of type object", options);
  const encoding = checkEncoding(options?.encoding);
  const layers =
    typeof target === "string" || target instanceof Uint8Array ? await mountedLayers(target) : await checkLayers(target);
  if (!layers) return [];
  // Each layer opened once: the walk reads beneath these fds only, whatever is swapped meanwhile.
  const roots = await openLayerRoots([
    { path: layers.upper, role: "the upper layer" },
    ...layers.lower.map((l, i) => ({ path: l, role: `lower layer ${i + 1}` })),
  ]);
  try {
    // Layers of a `userxattr` mount (rootless) keep overlay's xattrs in user.overlay.*: when the caller did
    // not say, the upper layer's own entries tell.
    const userxattr = layers.userxattr ?? (await keepsUserXattrs(roots));
    const prefix = overlayXattrPrefix(userxattr);
    checkXattrAccess(prefix, decodeBytes(layers.upper));
    const changes = await walkUpper(new LayerReader(prefix, roots), layers.lower.length);
    return changes.map((c) => ({
      ...c,
      path: encodeOut(c.path, encoding),
      ...(c.renamedFrom !== undefined ? { renamedFrom: encodeOut(c.renamedFrom, encoding) } : {}),
    }));
  } finally {
    closeLayerRoots(roots);
  }
}

async function walkUpper(reader: LayerReader, lowerCount: number): Promise<Change[]> {
  const lowers = new LowerLayers(reader, Array.from({ length: lowerCount }, (_, i) => i + 1));
  const changes = new Map<string, Change>();
  const note = (c: Change) => changes.set(c.path, c);

  let level: DirToVisit[] = [{ path: "", origin: "", upperDir: { root: 0, path: "" }, base: lowers.roots(), merges: true }];
  while (level.length > 0) {
    // Two trips a level: scan every upper directory (and the lower directories an opaque one hides, which
    // are listed whole), then look up the upper names in the lower directories that still show through
    // (cheaper than reading large lower directories for a few changes).
    reader.clear();
    const lowerDir = (b: LowerDir) => lowers.loc(b.layer, b.path);
    await reader.scan(level.flatMap((d) => [d.upperDir, ...(d.merges ? [] : d.base.map(lowerDir))]));
    await reader.prefetch(
      level.flatMap((d) =>
        d.merges ? [...reader.entries(d.upperDir).keys()].flatMap((name) => d.base.map((b) => childLoc(lowerDir(b), name))) : [],
      ),
    );
    const next: DirToVisit[] = [];
    for (const dir of level) {
      const upper = reader.entries(dir.upperDir);
      const hidden = dir.merges ? undefined : lowerListing(reader, lowers, dir.base);
      if (hidden) {
        // Nothing below shows through any more: whatever the upper directory lacks is gone.
        for (const name of hidden.keys()) {
          const now = upper.get(name);
          if (!now || now.whiteout) note({ path: `${dir.path}/${name}`, change: "D" });
        }
      }
      for (const [name, entry] of upper) {
        const path = `${dir.path}/${name}`;
        const was = hidden ? hidden.get(name) : (await lowers.lookup(dir.base, name, { isDir: false })).hits[0]?.entry;
        if (entry.whiteout) {
          if (was) note({ path, change: "D" });
          continue;
        }
        const change: Change = { path, change: was ? "C" : "A" };
        const redirect = entry.redirect !== undefined ? parseRedirect(entry.redirect) : undefined;
        const origin = redirect
          ? redirect.absolute
            ? `/${redirect.names.join("/")}`
            : `${dir.origin}/${redirect.names[0]}`
          : `${dir.origin}/${name}`;
        if (redirect) change.renamedFrom = origin;
        if (entry.type === "directory") {
          // Compare its contents with what lay at its origin: the same path, or where a rename came from.
          const found = redirect
            ? await lowers.lookup(dir.merges ? dir.base : [], name, { isDir: true, redirect })
            : await lowers.lookup(dir.base, name, { isDir: true });
          const base = found.hits.filter((h) => h.entry.type === "directory").map(({ layer, path }) => ({ layer, path }));
          // Opaque itself, or new under an opaque directory: the lower directory that was here is hidden.
          const merges = !entry.opaque && (redirect !== undefined || dir.merges);
          if (!merges && was?.type === "directory") change.opaque = true;
          next.push({ path, origin, upperDir: childLoc(dir.upperDir, name), base, merges });
        } else if (entry.metacopy) {
          change.metadataOnly = true;
        }
        note(change);
      }
    }
    level = next;
  }
  reader.clear();
  return [...changes.values()].sort((a, b) => byteOrder(a.path, b.path));
}
