/**
 * Overlay's lookup, replayed on the layers themselves: which layer serves a path of a mounted overlay
 * (`which`), and the lower-layer lookup that `diff` shares. It follows fs/overlayfs/namei.c: upper first,
 * then the lower layers top-down, stopping at whiteouts, opaque directories and non-directories, following
 * `redirect` xattrs (relative: a new name in the same parent; absolute: a path from every layer's root) and
 * metadata-only copies down to their data (in a lower layer, or by absolute redirect in a data-only layer).
 */
import type { Stats } from "node:fs";
import { lstat, realpath } from "node:fs/promises";
import { isAbsolute, posix } from "node:path";
import { type PathEncoding, type PathLike, bytesOf, checkEncoding, checkPathLike, decodeBytes, encodeOut, toBuffer } from "../kernel/bytes.js";
import { OverlayError, invalidArgType } from "../kernel/errors.js";
import { absoluteBytes, listBytes } from "../table/table.js";
import type { MountInfo, OverlayMount } from "../types.js";
import {
  LayerReader,
  checkXattrAccess,
  childLoc,
  childPath,
  closeLayerRoots,
  openLayerRoots,
  overlayXattrPrefix,
  parseRedirect,
  type EntryType,
  type LayerEntry,
  type Loc,
} from "./xattr.js";

export type LayerKind = "upper" | "lower" | "data";

/** A directory in a lower layer: the layer (index into the lower list) and its path inside it ("" = root). */
export interface LowerDir {
  layer: number;
  path: string;
}

/** An entry a lookup found in a lower layer. */
export interface LowerHit extends LowerDir {
  entry: LayerEntry;
}

/** What overlay's lookup of one name in the lower layers finds. */
export interface LowerLookup {
  /** Directories: every one merged, top first. Non-directories: the entry, then its metacopy chain. */
  hits: LowerHit[];
  /** The name looked up last (changed by redirects): one name, or an absolute path from the layer roots. */
  name: { absolute: boolean; names: string[] };
  /** Why lookup stopped without a hit in a layer: a whiteout, or a non-directory under a directory. */
  stoppedBy?: { layer: number; path: string; why: "whiteout" | "not a directory" };
}

interface LookupState {
  absolute: boolean;
  names: string[];
  isDir: boolean;
  stop: boolean;
  metacopy: boolean;
  stoppedBy?: LowerLookup["stoppedBy"];
}

/** The lower (and data-only) layers of one overlay, read through a LayerReader (indexes into its roots). */
export class LowerLayers {
  constructor(
    readonly reader: LayerReader,
    readonly lowers: number[],
    readonly data: number[] = [],
  ) {}

  /** The root of every lower layer, top first: the lower stack of the overlay's root directory. */
  roots(): LowerDir[] {
    return this.lowers.map((_, layer) => ({ layer, path: "" }));
  }

  /** Where `path` inside lower layer `layer` is, for the reader. */
  loc(layer: number, path: string): Loc {
    return { root: this.lowers[layer]!, path };
  }

  /**
   * Looks `name` up below `parent` (the parent directory's lower stack) as overlay does. `isDir` when the
   * upper entry is a directory (lower non-directories then stop the lookup); `redirect` is the upper entry's
   * redirect, already parsed.
   */
  async lookup(
    parent: LowerDir[],
    name: string,
    opts: { isDir: boolean; redirect?: { absolute: boolean; names: string[] } },
  ): Promise<LowerLookup> {
    const d: LookupState = {
      absolute: opts.redirect?.absolute ?? false,
      names: opts.redirect ? [...opts.redirect.names] : [name],
      isDir: opts.isDir,
      stop: false,
      metacopy: false,
    };
    const hits: LowerHit[] = [];
    let onRoots = d.absolute;
    let stack = onRoots ? this.roots() : parent;
    for (let i = 0; !d.stop && i < stack.length; i++) {
      const base = stack[i]!;
      // In the last layer overlay skips the opaque and redirect checks; with data-only layers a file's
      // redirect still matters, so there no layer counts as last for a non-directory.
      const last = (d.isDir || this.data.length === 0) && base.layer === this.lowers.length - 1;
      d.metacopy = false;
      const hit = await this.lookupLayer(base, d, last);
      if (!hit) continue;
      hits.push(hit);
      if (d.stop) break;
      if (d.absolute && !onRoots) {
        // An absolute redirect found in this layer: go on in the layers below it, from their roots.
        stack = this.roots();
        onRoots = true;
        i = base.layer;
      }
    }
    return { hits, name: { absolute: d.absolute, names: d.names }, ...(d.stoppedBy ? { stoppedBy: d.stoppedBy } : {}) };
  }

  /** Looks the current name up in one layer: one name below `base`, or an absolute path from its root. */
  private async lookupLayer(base: LowerDir, d: LookupState, last: boolean): Promise<LowerHit | null> {
    if (!d.absolute) return this.lookupSingle(base.layer, base.path, d.names[0]!, d, last, [], []);
    const names = [...d.names]; // the walk goes on with these even if a redirect renames the rest
    let dir = "";
    let hit: LowerHit | null = null;
    for (let k = 0; k < names.length; k++) {
      hit = await this.lookupSingle(base.layer, dir, names[k]!, d, last, names.slice(0, k), names.slice(k + 1));
      if (!hit) return null;
      dir = `${dir}/${names[k]}`;
    }
    return hit;
  }

  private async lookupSingle(
    layer: number,
    dir: string,
    name: string,
    d: LookupState,
    last: boolean,
    before: string[],
    after: string[],
  ): Promise<LowerHit | null> {
    if (name === "." || name === "..") return null;
    const path = `${dir}/${name}`;
    const entry = await this.reader.entry(this.loc(layer, path));
    if (!entry) return null;
    const lastElement = after.length === 0;
    if (entry.whiteout) {
      d.stop = true;
      d.stoppedBy = { layer, path, why: "whiteout" };
      return null;
    }
    const hit: LowerHit = { layer, path, entry };
    if (entry.type !== "directory") {
      if (d.isDir || !lastElement) {
        d.stop = true;
        d.stoppedBy = { layer, path, why: "not a directory" };
        return null;
      }
      d.metacopy = entry.metacopy;
      d.stop = !entry.metacopy;
      if (!entry.metacopy || last) return hit;
    } else {
      if (lastElement) d.isDir = true;
      if (last) return hit;
      if (entry.opaque) {
        d.stop = true;
        return hit;
      }
    }
    if (entry.redirect !== undefined) {
      const r = parseRedirect(entry.redirect);
      if (r?.absolute) {
        d.absolute = true;
        d.names = [...r.names, ...after];
        d.stop = false;
      } else if (r) {
        d.names = d.absolute ? [...before, r.names[0]!, ...after] : [r.names[0]!];
      }
    }
    return hit;
  }

  /** Where a metacopy chain that ended without data finds it: an absolute redirect into a data-only layer. */
  async lookupData(name: { absolute: boolean; names: string[] }): Promise<{ layer: number; path: string } | undefined> {
    if (!name.absolute) return undefined;
    for (let layer = 0; layer < this.data.length; layer++) {
      let dir: Loc = { root: this.data[layer]!, path: "" };
      for (let k = 0; k < name.names.length; k++) {
        dir = childLoc(dir, name.names[k]!);
        const entry = await this.reader.entry(dir);
        if (!entry) break;
        const lastName = k === name.names.length - 1;
        if (lastName && entry.type === "file" && !entry.metacopy) return { layer, path: `/${name.names.join("/")}` };
        if (entry.type !== "directory") break;
      }
    }
    return undefined;
  }
}

// --- finding the overlay that serves a path ------------------------------------------------------------

/** A layer an answer names: its root, kind and 1-based position among layers of its kind (upper: 0). */
export interface LayerRef<P extends string | Buffer = string> {
  layer: P;
  kind: LayerKind;
  index: number;
  /** The entry itself, on the layer's own filesystem. */
  realPath: P;
}

/** Where a path of a mounted overlay comes from. */
export interface WhichResult<P extends string | Buffer = string> extends LayerRef<P> {
  /** The path asked about, absolute. */
  path: P;
  /** The overlay's mount point. */
  target: P;
  /** The path inside the overlay, from its root (`/` for the root). */
  overlayPath: P;
  type: EntryType;
  /** A metadata-only copy: `layer` gives the metadata, `data` the contents (when found). */
  metadataOnly?: true;
  data?: LayerRef<P>;
  /** Directories: every layer merged into it, top first (the first is `layer`). */
  mergedFrom?: LayerRef<P>[];
}

/**
 * An error whose message and paths were built from byte strings (src/kernel/bytes.ts): shown as UTF-8, undecodable
 * bytes as U+DC80-U+DCFF.
 */
function layerError(code: string, detail: string, info: { syscall: string; path?: string; dest?: string; hint?: string }): OverlayError {
  return new OverlayError(code, decodeBytes(detail), {
    ...info,
    ...(info.path !== undefined ? { path: decodeBytes(info.path) } : {}),
    ...(info.dest !== undefined ? { dest: decodeBytes(info.dest) } : {}),
    ...(info.hint !== undefined ? { hint: decodeBytes(info.hint) } : {}),
  });
}

/**
 * The mount table entry (byte-string fields) of the overlay mounted at or containing `dir` (a byte string),
 * or a clear error naming `path`.
 */
export async function overlayServing(dir: string, path = dir): Promise<OverlayMount> {
  const found = await listBytes({ target: dir, all: true });
  const m = found[0] as MountInfo | OverlayMount | undefined;
  if (!m || m.fstype !== "overlay" || !("lower" in m)) {
    throw layerError("EINVAL", `not inside an overlay${m ? ` (the mount at ${m.target} is ${m.fstype})` : ""}`, {
      syscall: "statx",
      path,
    });
  }
  checkLayersReadable(m);
  return m;
}

/** Layers must be readable from here: absolute, and not hidden under the overlay itself. */
function checkLayersReadable(m: OverlayMount): void {
  if (m.detached && !m.detached.pathsKnown) {
    const i = m.detached.lower[0];
    const which = i !== undefined ? `lower layer ${i + 1}` : `data layer ${m.detached.data[0]! + 1}`;
    throw layerError(
      "EINVAL",
      `${which} of the overlay at ${m.target} is a detached mount (an idmapped layer): the mount table shows it as '/', its path inside its own detached tree, and names no directory it came from`,
      { syscall: "open", path: m.target, dest: m.target, hint: "pass the layers themselves: diff({ upper, lower }), or ovl diff --upper U --lower L" },
    );
  }
  const layers = [...(m.upper !== undefined ? [m.upper] : []), ...m.lower, ...m.data];
  for (const layer of layers) {
    if (/^\/proc\/(self|thread-self|\d+)\/fd\//.test(layer)) {
      // ovl's `string` and `legacy` strategies (kernels before 6.13) hand layers over as the mounting process's
      // magic links: here the same text would name one of *this* process's fds.
      throw layerError(
        "EINVAL",
        `the mount table names layer '${layer}' by a file descriptor of the process that mounted it, which cannot be found from here`,
        { syscall: "open", path: layer, dest: m.target, hint: "pass the layers themselves: diff({ upper, lower }), or mount with the `fd` strategy (Linux 6.13+)" },
      );
    }
    if (!isAbsolute(layer)) {
      throw layerError("EINVAL", `the mount table gives layer '${layer}' as a relative path, which cannot be found from here`, {
        syscall: "open",
        path: layer,
        dest: m.target,
        hint: "mount with absolute layer paths (ovl mount always passes them resolved)",
      });
    }
    if (layer === m.target || layer.startsWith(m.target === "/" ? "/" : `${m.target}/`)) {
      throw layerError("EINVAL", `layer '${layer}' lies under the overlay's own mount point and is hidden by it`, {
        syscall: "open",
        path: layer,
        dest: m.target,
      });
    }
  }
}

/** Splits an overlay-relative path ("/a/b") into names. */
function names(overlayPath: string): string[] {
  return overlayPath.split("/").filter((n) => n !== "");
}

function ref(kind: LayerKind, layer: string, index: number, path: string): LayerRef {
  return { layer, kind, index, realPath: path === "" ? layer : childPath(layer, path.slice(1)) };
}

function enoent(path: string, why: string): OverlayError {
  return layerError("ENOENT", `no layer serves it: ${why}`, { syscall: "lstat", path });
}

const typeOfStats = (st: Stats): EntryType =>
  st.isDirectory()
    ? "directory"
    : st.isSymbolicLink()
      ? "symlink"
      : st.isCharacterDevice()
        ? "char"
        : st.isBlockDevice()
          ? "block"
          : st.isFIFO()
            ? "fifo"
            : st.isSocket()
              ? "socket"
              : "file";

/** realpath(3) of a directory the path goes through, as an OverlayError naming the path asked about. */
async function realDir(dir: string, path: string): Promise<string> {
  try {
    return bytesOf(await realpath(toBuffer(dir), { encoding: "buffer" }));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT" || err.code === "ENOTDIR") {
      throw layerError(err.code, `'${dir}' is not a directory that exists`, { syscall: "realpath", path });
    }
    throw e;
  }
}

/**
 * The layer that serves `path` in the overlay mounted at or above it: `{ path, layer, kind }` (plus where
 * exactly, metacopy data and, for directories, every merged layer). ENOENT when nothing serves it.
 */
export async function which(path: PathLike, options?: WhichOptions & { encoding?: "utf8" }): Promise<WhichResult>;
export async function which(path: PathLike, options: WhichOptions & { encoding: "buffer" }): Promise<WhichResult<Buffer>>;
export async function which(path: PathLike, options?: WhichOptions): Promise<WhichResult<string | Buffer>> {
  if (options !== undefined && (typeof options !== "object" || options === null)) throw invalidArgType("options", "of type object", options);
  const encoding = checkEncoding(options?.encoding);
  return whichOut(await whichBytes(absoluteBytes(checkPathLike(path, "path"))), encoding);
}

/** Options of which(). */
export interface WhichOptions {
  /** Paths as strings (`"utf8"`, the default; undecodable bytes as U+DC80-U+DCFF) or Buffers (`"buffer"`). */
  encoding?: PathEncoding;
}

function whichOut(r: WhichResult, encoding: PathEncoding): WhichResult<string | Buffer> {
  const refOut = (x: LayerRef): LayerRef<string | Buffer> => ({ ...x, layer: encodeOut(x.layer, encoding), realPath: encodeOut(x.realPath, encoding) });
  return {
    ...r,
    ...refOut(r),
    path: encodeOut(r.path, encoding),
    target: encodeOut(r.target, encoding),
    overlayPath: encodeOut(r.overlayPath, encoding),
    ...(r.data ? { data: refOut(r.data) } : {}),
    ...(r.mergedFrom ? { mergedFrom: r.mergedFrom.map(refOut) } : {}),
  };
}

/** which() on byte strings: `abs` is an absolute path as bytes, and so is every path of the answer. */
async function whichBytes(abs: string): Promise<WhichResult> {
  let st: Stats | undefined;
  try {
    st = await lstat(toBuffer(abs));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "ENOTDIR") throw e;
  }
  // A directory is resolved whole (it may be the overlay's root); otherwise the last name is not followed
  // (a symlink is served by a layer too) and only its parent is resolved by the kernel.
  const isDir = abs === "/" || st?.isDirectory() === true;
  const dir = isDir ? await realDir(abs, abs) : await realDir(posix.dirname(abs), abs);
  const real = isDir ? dir : childPath(dir, posix.basename(abs));
  const m = await overlayServing(dir, abs);
  const rel = posix.relative(m.target, real);
  const overlayPath = rel === "" ? m.root : posix.join(m.root, rel);
  let result: WhichResult;
  try {
    result = await lookupPath(m, overlayPath, abs);
  } catch (e) {
    // The overlay shows it, yet no layer holds it: a layer changed under the overlay (or its mount went away).
    if (st && e instanceof OverlayError && e.code === "ENOENT") {
      // (e.message is already shown as UTF-8: only the byte strings here are decoded.)
      throw new OverlayError(
        "EIO",
        `the layers and the overlay disagree about '${decodeBytes(overlayPath)}' (the overlay shows a ${typeOfStats(st)}, but ${e.message.replace(/^ENOENT: /, "").replace(/, lstat '.*$/, "")}; was a layer changed or unmounted while mounted?)`,
        { syscall: "lstat", path: decodeBytes(abs) },
      );
    }
    throw e;
  }
  // The kernel has the last word: never name a layer for something the overlay does not show.
  if (!st) throw enoent(abs, `'${overlayPath}' is not in the overlay`);
  if (typeOfStats(st) !== result.type) {
    throw layerError(
      "EIO",
      `the layers and the overlay disagree about '${overlayPath}' (${result.type} in the layers, ${typeOfStats(st)} in the overlay; was a layer changed while mounted?)`,
      { syscall: "lstat", path: abs },
    );
  }
  return result;
}

/** Replays overlay's lookup of `overlayPath` on the layers of `m`. */
export async function lookupPath(m: OverlayMount, overlayPath: string, path: string): Promise<WhichResult> {
  const prefix = overlayXattrPrefix(m.features.userxattr);
  checkXattrAccess(prefix, m.upper ?? m.lower[0] ?? m.target);
  // Every layer opened once; each is read beneath its fd, whatever its path names meanwhile.
  const hasUpper = m.upper !== undefined;
  const roots = await openLayerRoots([
    ...(hasUpper ? [{ path: m.upper!, role: "the upper layer" }] : []),
    ...m.lower.map((l, i) => ({ path: l, role: `lower layer ${i + 1}` })),
    ...m.data.map((l, i) => ({ path: l, role: `data layer ${i + 1}` })),
  ]).catch((e: OverlayError) => {
    // A layer the overlay holds but this namespace no longer reaches (its own mount is gone, say).
    throw new OverlayError("EIO", `the layers and the overlay disagree: ${e.message}`, {
      syscall: e.syscall,
      path: decodeBytes(path),
      dest: decodeBytes(m.target),
    });
  });
  try {
    const first = hasUpper ? 1 : 0;
    const reader = new LayerReader(prefix, roots);
    const lowers = new LowerLayers(
      reader,
      m.lower.map((_, i) => first + i),
      m.data.map((_, i) => first + m.lower.length + i),
    );
    return await lookupIn(m, reader, lowers, overlayPath, path);
  } finally {
    closeLayerRoots(roots);
  }
}

async function lookupIn(m: OverlayMount, reader: LayerReader, lowers: LowerLayers, overlayPath: string, path: string): Promise<WhichResult> {
  const base = { path, target: m.target, overlayPath };
  const lowerRef = (h: LowerDir) => ref("lower", m.lower[h.layer]!, h.layer + 1, h.path);

  let upperDir: string | undefined = m.upper !== undefined ? "" : undefined;
  let lowerDirs = lowers.roots();
  const parts = names(overlayPath);
  if (parts.length === 0) {
    const merged = [
      ...(upperDir !== undefined ? [ref("upper", m.upper!, 0, "")] : []),
      ...lowerDirs.map(lowerRef),
    ];
    return { ...base, ...merged[0]!, type: "directory", mergedFrom: merged };
  }
  let walked = "";
  for (let k = 0; k < parts.length; k++) {
    const name = parts[k]!;
    const here = `${walked}/${name}`;
    const upperPath = upperDir !== undefined ? `${upperDir}/${name}` : undefined;
    const upperLoc: Loc | undefined = upperPath !== undefined ? { root: 0, path: upperPath } : undefined;
    await reader.prefetch([...(upperLoc ? [upperLoc] : []), ...lowerDirs.map((dir) => lowers.loc(dir.layer, `${dir.path}/${name}`))]);
    const upper = upperLoc ? await reader.entry(upperLoc) : null;
    if (upper?.whiteout) throw enoent(path, `'${here}' was deleted (a whiteout in the upper layer ${m.upper})`);

    let lower: LowerLookup = { hits: [], name: { absolute: false, names: [name] } };
    const upperStops = upper !== null && ((upper.type === "directory" && upper.opaque) || (upper.type !== "directory" && !upper.metacopy));
    if (!upperStops) {
      const redirect = upper?.redirect !== undefined ? parseRedirect(upper.redirect) : undefined;
      lower = await lowers.lookup(redirect?.absolute ? lowers.roots() : lowerDirs, name, {
        isDir: upper?.type === "directory",
        ...(redirect ? { redirect } : {}),
      });
    }
    const top = upper ?? lower.hits[0]?.entry;
    if (!top) {
      const s = lower.stoppedBy;
      throw enoent(
        path,
        s?.why === "whiteout"
          ? `'${here}' was deleted (a whiteout in lower layer ${s.layer + 1}, ${m.lower[s.layer]})`
          : `'${here}' is in no layer`,
      );
    }
    const dirHits = lower.hits.filter((h) => h.entry.type === "directory");
    if (k < parts.length - 1) {
      if (top.type !== "directory") {
        throw layerError("ENOTDIR", `'${here}' is not a directory`, { syscall: "lstat", path });
      }
      upperDir = upper ? upperPath : undefined;
      lowerDirs = upper && upper.opaque ? [] : dirHits;
      walked = here;
      continue;
    }
    // The last name: report it.
    const served = upper ? ref("upper", m.upper!, 0, upperPath!) : lowerRef(lower.hits[0]!);
    const result: WhichResult = { ...base, ...served, type: top.type };
    if (top.type === "directory") {
      result.mergedFrom = upper ? [served, ...dirHits.map(lowerRef)] : dirHits.map(lowerRef);
    } else if (top.type === "file" && top.metacopy) {
      result.metadataOnly = true;
      const dataHit = lower.hits.find((h) => h.entry.type === "file" && !h.entry.metacopy);
      if (dataHit) result.data = lowerRef(dataHit);
      else {
        const inData = await lowers.lookupData(lower.name);
        if (inData) result.data = ref("data", m.data[inData.layer]!, inData.layer + 1, inData.path);
      }
    }
    return result;
  }
  throw new Error("ovl internal: unreachable");
}

