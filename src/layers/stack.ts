/**
 * `stack`: one directory of an overlay as its layers hold it, the "sheets on an overhead projector" picture.
 * For every layer (top first) and every name that any layer holds in that directory: what the layer has there
 * (an entry, a whiteout, an opaque directory, or something a layer above hides), and what the overlay shows
 * for the name and from which layer. The lookup is overlay's own, replayed by LowerLayers (src/layers/which.ts) on
 * layers read beneath their root fds (src/layers/xattr.ts); a mounted overlay's own listing is checked against it.
 */
import type { Dirent } from "node:fs";
import { readdir, realpath, stat } from "node:fs/promises";
import { posix } from "node:path";
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
import { OverlayError, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { absoluteBytes } from "../table/table.js";
import { LowerLayers, overlayServing, type LayerKind, type LowerDir, type LowerLookup } from "./which.js";
import {
  LayerReader,
  checkXattrAccess,
  childPath,
  closeLayerRoots,
  openLayerRoots,
  overlayXattrPrefix,
  parseRedirect,
  type EntryType,
  type LayerEntry,
  type LayerRoot,
} from "./xattr.js";

/**
 * What one layer holds at one name:
 * - `present`: an entry the overlay shows (the one it serves, or a directory merged into it);
 * - `whiteout`: a whiteout that hides the name in the layers below;
 * - `opaque`: a directory the overlay shows, which hides whatever the layers below hold at its path;
 * - `hidden`: an entry (or whiteout) the overlay does not show, because of a layer above (`hiddenBy`);
 * - `absent`: nothing.
 */
export type StackState = "present" | "whiteout" | "opaque" | "hidden" | "absent";

/** One layer's cell in a row. */
export interface StackCell<P extends string | Buffer = string> {
  state: StackState;
  /** What the layer holds at the name (every state but `absent`); `whiteout` for a 0/0 device or an xattr whiteout. */
  type?: EntryType | "whiteout";
  /**
   * `hidden`: the layer (index into `layers`) that hides it: the whiteout, opaque directory or non-directory
   * where overlay's lookup stopped, the directory above that a non-directory cannot merge into, or (for
   * everything in a directory the overlay does not merge from this layer) what hides that directory.
   */
  hiddenBy?: number;
  /** A metadata-only copy (`overlay.metacopy`): its data is in a layer below. */
  metacopy?: true;
  /** `overlay.redirect`: where the layers below hold this renamed entry. */
  redirect?: P;
}

/** A layer of the stack, top first: the upper layer, the lower ones (top-most first), then data-only ones. */
export interface StackLayer<P extends string | Buffer = string> {
  kind: LayerKind;
  /** 1-based among layers of its kind; 0 for the upper layer. */
  index: number;
  /** The layer's root. */
  layer: P;
  /**
   * The directory itself in this layer, as a cell (`present`: merged into the overlay's directory, `opaque`:
   * merged and hiding the layers below, `hidden`: the layer has it but the overlay does not merge it), and
   * where it is when the layer has it as a directory. Data-only layers are never merged into directories.
   */
  dir: StackCell<P> & { realPath?: P };
}

/** Where the overlay takes something from: a layer (index into `layers`) and the entry's path on its filesystem. */
export interface StackSource<P extends string | Buffer = string> {
  from: number;
  realPath: P;
}

/** What the overlay shows for a name: its type and the layer that serves it. */
export interface StackMerged<P extends string | Buffer = string> extends StackSource<P> {
  type: EntryType;
  /** Directories: every layer merged into it, top first (the first is the serving one). */
  mergedFrom?: StackSource<P>[];
  /** A metadata-only copy: `from` gives the metadata, `data` the contents (when found). */
  metadataOnly?: true;
  data?: StackSource<P>;
}

/** One name of the directory: one cell per layer (as `layers`), and the merged view's answer (null: not shown). */
export interface StackRow<P extends string | Buffer = string> {
  name: P;
  cells: StackCell<P>[];
  merged: StackMerged<P> | null;
}

/** One directory of an overlay, layer by layer. */
export interface Stack<P extends string | Buffer = string> {
  /** A mounted overlay: the path asked about (absolute) and the overlay's mount point. */
  path?: P;
  target?: P;
  /** The directory, from the overlay's root (`/` for the root). */
  dir: P;
  layers: StackLayer<P>[];
  /** Every name any layer holds in the directory, in byte order. */
  rows: StackRow<P>[];
}

/** Layers that need not be mounted. */
export interface StackLayers {
  /** The upper layer; without it, a read-only stack. */
  upper?: PathLike;
  /** Lower layers, top-most first. One string is one layer. */
  lower: PathLike[] | PathLike;
  /** Overlay's xattrs are `user.overlay.*` (layers of a `userxattr` mount), not `trusted.overlay.*`. */
  userxattr?: boolean;
}

/** Options of stack(). */
export interface StackOptions {
  /** Paths as strings (`"utf8"`, the default; undecodable bytes as U+DC80-U+DCFF) or Buffers (`"buffer"`). */
  encoding?: PathEncoding;
}

/** The layers to read, as byte strings, and where the directory is. */
interface Plan {
  upper?: string;
  lower: string[];
  data: string[];
  userxattr: boolean;
  /** The directory from the overlay root ("/a/b"). */
  dir: string;
  /** A mounted overlay: the path asked about, the directory as the kernel resolved it, the mount point. */
  mounted?: { path: string; real: string; target: string };
}

/** Where each layer stands in a directory: the directory in that layer, merged into the overlay's or not. */
interface Sheet {
  path: string;
  merged: boolean;
  hiddenBy?: number;
}

interface RowBytes {
  name: string;
  cells: StackCell[];
  merged: StackMerged | null;
  /** Each layer's sheet for the name, if the overlay's lookup goes into it as a directory. */
  next: (Sheet | undefined)[];
}

/** Byte strings sort in byte order as they are (one character per byte). */
const byteOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * One directory of an overlay as its layers hold it: `stack("/merged/etc")` for a directory of a mounted
 * overlay (`dir`, if given, is a directory below it), `stack({ upper, lower }, "/etc")` for layers that need
 * not be mounted (`dir` from the overlay's root, default `/`). Paths in and out may be Buffers.
 */
export async function stack(target: PathLike | StackLayers, dir?: PathLike, options?: StackOptions & { encoding?: "utf8" }): Promise<Stack>;
export async function stack(target: PathLike | StackLayers, dir: PathLike | undefined, options: StackOptions & { encoding: "buffer" }): Promise<Stack<Buffer>>;
export async function stack(target: PathLike | StackLayers, dir?: PathLike, options?: StackOptions): Promise<Stack<string | Buffer>> {
  if (options !== undefined && (typeof options !== "object" || options === null)) throw invalidArgType("options", "of type object", options);
  const encoding = checkEncoding(options?.encoding);
  const below = dir === undefined ? undefined : checkPathLike(dir, "dir");
  const plan =
    typeof target === "string" || target instanceof Uint8Array
      ? await mountedPlan(checkPathLike(target, "target"), below)
      : layersPlan(target, below);
  return encodeStack(await readStack(plan), encoding);
}

function layersPlan(spec: unknown, dir: string | undefined): Plan {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) throw invalidArgType("target", "of type string or object", spec);
  const o = spec as Partial<StackLayers>;
  const upper = o.upper === undefined ? undefined : checkPathLike(o.upper, "layers.upper");
  const lower = typeof o.lower === "string" || o.lower instanceof Uint8Array ? [o.lower] : o.lower;
  if (!Array.isArray(lower)) throw invalidArgType("layers.lower", "of type string or an array of strings", o.lower);
  if (lower.length === 0) throw invalidArgValue("layers.lower", lower, "must name at least one lower layer");
  if (o.userxattr !== undefined && typeof o.userxattr !== "boolean") throw invalidArgType("layers.userxattr", "of type boolean", o.userxattr);
  return {
    ...(upper !== undefined ? { upper: absoluteBytes(upper) } : {}),
    lower: lower.map((l, i) => absoluteBytes(checkPathLike(l, `layers.lower[${i}]`))),
    data: [],
    userxattr: o.userxattr ?? false,
    dir: posix.resolve("/", dir ?? "/"),
  };
}

async function mountedPlan(target: string, dir: string | undefined): Promise<Plan> {
  const abs = absoluteBytes(dir === undefined ? target : posix.join(target, dir));
  let real: string;
  try {
    real = bytesOf(await realpath(toBuffer(abs), { encoding: "buffer" }));
    if (!(await stat(toBuffer(real))).isDirectory()) {
      throw new OverlayError("ENOTDIR", "not a directory", { syscall: "stat", path: decodeBytes(abs) });
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code !== "ENOENT" && err.code !== "ENOTDIR") throw e;
    if (e instanceof OverlayError) throw e;
    throw new OverlayError(err.code, err.code === "ENOENT" ? "no such directory" : "a component of the path is not a directory", {
      syscall: "realpath",
      path: decodeBytes(abs),
    });
  }
  const m = await overlayServing(real, abs);
  const rel = posix.relative(m.target, real);
  return {
    ...(m.upper !== undefined ? { upper: m.upper } : {}),
    lower: m.lower,
    data: m.data,
    userxattr: m.features.userxattr ?? false,
    dir: rel === "" ? m.root : posix.join(m.root, rel),
    mounted: { path: abs, real, target: m.target },
  };
}

async function readStack(plan: Plan): Promise<Stack> {
  const prefix = overlayXattrPrefix(plan.userxattr);
  checkXattrAccess(prefix, plan.upper ?? plan.lower[0]!);
  const layers: Array<{ kind: LayerKind; index: number; layer: string }> = [
    ...(plan.upper !== undefined ? [{ kind: "upper" as const, index: 0, layer: plan.upper }] : []),
    ...plan.lower.map((layer, i) => ({ kind: "lower" as const, index: i + 1, layer })),
    ...plan.data.map((layer, i) => ({ kind: "data" as const, index: i + 1, layer })),
  ];
  // Every layer opened once; each is read beneath its fd, whatever its path names meanwhile.
  let roots: LayerRoot[];
  try {
    roots = await openLayerRoots(layers.map((l) => ({ path: l.layer, role: l.kind === "upper" ? "the upper layer" : `${l.kind} layer ${l.index}` })));
  } catch (e) {
    if (!plan.mounted || !(e instanceof OverlayError)) throw e;
    // A layer the overlay holds but this namespace no longer reaches (its own mount is gone, say).
    throw new OverlayError("EIO", `the layers and the overlay disagree: ${e.message}`, {
      syscall: e.syscall,
      path: decodeBytes(plan.mounted.path),
      dest: decodeBytes(plan.mounted.target),
    });
  }
  try {
    const walk = new StackWalk(new LayerReader(prefix, roots), layers, plan.upper !== undefined, plan.lower.length);
    const result = await walk.directory(plan.dir, plan.mounted?.path ?? plan.dir);
    if (plan.mounted) await checkWithKernel(plan.mounted.real, result, plan.mounted.path);
    return { ...(plan.mounted ? { path: plan.mounted.path, target: plan.mounted.target } : {}), ...result };
  } finally {
    closeLayerRoots(roots);
  }
}

/** Overlay's lookup of one directory, layer by layer; columns are the reader's roots (upper, lowers, data). */
class StackWalk {
  private readonly lowers: LowerLayers;
  private readonly first: number;

  constructor(
    private readonly reader: LayerReader,
    private readonly layers: Array<{ kind: LayerKind; index: number; layer: string }>,
    private readonly hasUpper: boolean,
    private readonly lowerCount: number,
  ) {
    this.first = hasUpper ? 1 : 0;
    const lowers = Array.from({ length: lowerCount }, (_, i) => this.first + i);
    const data = layers.slice(this.first + lowerCount).map((_, i) => this.first + lowerCount + i);
    this.lowers = new LowerLayers(reader, lowers, data);
  }

  private source(col: number, path: string): StackSource {
    const layer = this.layers[col]!.layer;
    return { from: col, realPath: path === "" ? layer : childPath(layer, path.slice(1)) };
  }

  /** The directory at `dir` (from the overlay root), every layer's part in it, and its rows. */
  async directory(dir: string, shown: string): Promise<Omit<Stack, "path" | "target">> {
    const cols = this.layers.map((_, col) => col);
    const isData = (col: number) => col >= this.first + this.lowerCount;
    // The root: every layer's root is merged into it (data-only layers never are).
    let sheets: (Sheet | undefined)[] = cols.map((col) => (isData(col) ? undefined : { path: "", merged: true }));
    let dirCells: StackCell[] = cols.map((col) => (isData(col) ? { state: "absent" } : { state: "present", type: "directory" }));
    let walked = "";
    for (const name of dir.split("/").filter((n) => n !== "")) {
      const here = `${walked}/${name}`;
      await this.reader.prefetch(cols.flatMap((col) => (sheets[col] ? [{ root: col, path: `${sheets[col]!.path}/${name}` }] : [])));
      const r = await this.row(sheets, name);
      if (!r.merged) throw this.enoent(shown, here, r);
      if (r.merged.type !== "directory") {
        throw new OverlayError("ENOTDIR", `'${decodeBytes(here)}' is not a directory in the overlay`, { syscall: "lstat", path: decodeBytes(shown) });
      }
      sheets = r.next;
      dirCells = r.cells;
      // A layer merged from elsewhere (a renamed directory's origin): its cell is the directory it gives.
      for (const col of cols) {
        const s = sheets[col];
        if (!s?.merged || dirCells[col]!.state === "present" || dirCells[col]!.state === "opaque") continue;
        const e = (await this.reader.entry({ root: col, path: s.path }))!;
        dirCells[col] = { state: e.opaque ? "opaque" : "present", type: "directory", ...(e.redirect !== undefined ? { redirect: e.redirect } : {}) };
      }
      walked = here;
      this.reader.clear();
    }
    // One trip for every layer's directory (those the overlay merges and those it hides), then each name.
    await this.reader.scan(cols.flatMap((col) => (sheets[col] ? [{ root: col, path: sheets[col]!.path }] : [])));
    const names = new Set<string>();
    for (const col of cols) if (sheets[col]) for (const name of this.reader.entries({ root: col, path: sheets[col]!.path }).keys()) names.add(name);
    const rows: StackRow[] = [];
    for (const name of [...names].sort(byteOrder)) {
      const { next: _, ...row } = await this.row(sheets, name);
      rows.push(row);
    }
    this.reader.clear();
    return {
      dir,
      layers: this.layers.map((l, col) => ({
        ...l,
        dir: { ...dirCells[col]!, ...(sheets[col] ? { realPath: this.source(col, sheets[col]!.path).realPath } : {}) },
      })),
      rows,
    };
  }

  private enoent(shown: string, here: string, r: RowBytes): OverlayError {
    const w = r.cells.findIndex((c) => c.state === "whiteout");
    const l = this.layers[w];
    const why = l
      ? `'${here}' was deleted (a whiteout in ${l.kind === "upper" ? "the upper layer" : `${l.kind} layer ${l.index}`}, ${l.layer})`
      : `'${here}' is in no layer`;
    return new OverlayError("ENOENT", `no layer serves it: ${decodeBytes(why)}`, { syscall: "lstat", path: decodeBytes(shown) });
  }

  /** One name of a directory whose layers stand as `sheets`: overlay's lookup of it, and every layer's cell. */
  private async row(sheets: (Sheet | undefined)[], name: string): Promise<RowBytes> {
    const cols = this.layers.map((_, col) => col);
    const at = (col: number) => `${sheets[col]!.path}/${name}`;
    const entries: (LayerEntry | null)[] = [];
    for (const col of cols) entries.push(sheets[col] ? await this.reader.entry({ root: col, path: at(col) }) : null);

    // Overlay's lookup (fs/overlayfs/namei.c, as which() replays it): upper first, then the merged lower
    // directories top-down, unless the upper entry stops it.
    const upper = this.hasUpper && sheets[0]?.merged ? entries[0]! : null;
    const upperStops = upper !== null && (upper.whiteout || (upper.type === "directory" ? upper.opaque : !upper.metacopy));
    let lower: LowerLookup = { hits: [], name: { absolute: false, names: [name] } };
    if (!upperStops) {
      const redirect = upper?.redirect !== undefined ? parseRedirect(upper.redirect) : undefined;
      const lowerDirs: LowerDir[] = [];
      for (let i = 0; i < this.lowerCount; i++) {
        const s = sheets[this.first + i];
        if (s?.merged) lowerDirs.push({ layer: i, path: s.path });
      }
      lower = await this.lowers.lookup(redirect?.absolute ? this.lowers.roots() : lowerDirs, name, {
        isDir: upper?.type === "directory",
        ...(redirect ? { redirect } : {}),
      });
    }
    const hitCol = (layer: number) => this.first + layer;

    // What the overlay shows.
    let merged: StackMerged | null = null;
    const fromUpper = upper !== null && !upper.whiteout;
    const top = fromUpper ? { col: 0, path: at(0), entry: upper } : lower.hits[0] && { col: hitCol(lower.hits[0].layer), path: lower.hits[0].path, entry: lower.hits[0].entry };
    const dirHits = lower.hits.filter((h) => h.entry.type === "directory");
    if (top) {
      merged = { type: top.entry.type, ...this.source(top.col, top.path) };
      if (top.entry.type === "directory") {
        merged.mergedFrom = [...(fromUpper ? [this.source(0, top.path)] : []), ...dirHits.map((h) => this.source(hitCol(h.layer), h.path))];
      } else if (top.entry.type === "file" && top.entry.metacopy) {
        merged.metadataOnly = true;
        const dataHit = lower.hits.find((h) => h.entry.type === "file" && !h.entry.metacopy);
        if (dataHit) merged.data = this.source(hitCol(dataHit.layer), dataHit.path);
        else {
          const inData = await this.lowers.lookupData(lower.name);
          if (inData) merged.data = this.source(this.first + this.lowerCount + inData.layer, inData.path);
        }
      }
    }
    // The cells the overlay shows: the sources of `merged` that are at this very name (a redirect takes others).
    const visible = new Set<number>();
    for (const s of merged ? [merged, ...(merged.mergedFrom ?? []), ...(merged.data ? [merged.data] : [])] : []) {
      if (sheets[s.from] && this.source(s.from, at(s.from)).realPath === s.realPath) visible.add(s.from);
    }
    // Where the lookup stopped: everything below is hidden by that layer.
    let stop: number | undefined;
    if (upperStops) stop = 0;
    else if (lower.stoppedBy) stop = hitCol(lower.stoppedBy.layer);
    else {
      const last = lower.hits[lower.hits.length - 1];
      if (last && (last.entry.type === "directory" ? last.entry.opaque : !last.entry.metacopy)) stop = hitCol(last.layer);
    }

    const cells: StackCell[] = cols.map((col) => {
      const e = entries[col];
      const s = sheets[col];
      if (!e || !s) return { state: "absent" };
      const what: StackCell = {
        state: "hidden",
        type: e.whiteout ? "whiteout" : e.type,
        ...(e.metacopy ? { metacopy: true as const } : {}),
        ...(e.redirect !== undefined ? { redirect: e.redirect } : {}),
      };
      if (!s.merged) return { ...what, ...(s.hiddenBy !== undefined ? { hiddenBy: s.hiddenBy } : {}) };
      if (visible.has(col)) return { ...what, state: e.type === "directory" && e.opaque ? "opaque" : "present" };
      if (col === stop && e.whiteout) return { ...what, state: "whiteout" };
      // Below the stop: hidden by it. Above it (a non-directory under a directory, an entry a redirect passed
      // by): by the nearest layer above that the overlay shows.
      let by = stop !== undefined && col > stop ? stop : undefined;
      for (let k = col - 1; by === undefined && k >= 0; k--) if (visible.has(k)) by = k;
      by ??= stop !== undefined && stop < col ? stop : undefined;
      return { ...what, ...(by !== undefined ? { hiddenBy: by } : {}) };
    });

    // The directories the lookup goes on into, or that a layer holds there unseen (hidden by the same layer).
    const next = cols.map((col): Sheet | undefined => {
      if (merged?.type === "directory") {
        const src = merged.mergedFrom!.find((m) => m.from === col);
        if (src) return { path: fromUpper && col === 0 ? at(0) : dirHits.find((h) => hitCol(h.layer) === col)!.path, merged: true };
      }
      if (entries[col]?.type !== "directory" || entries[col]!.whiteout) return undefined;
      const by = cells[col]!.hiddenBy ?? stop;
      return { path: at(col), merged: false, ...(by !== undefined ? { hiddenBy: by } : {}) };
    });
    return { name, cells, merged, next };
  }
}

const typeOfDirent = (d: Dirent<Buffer>): EntryType =>
  d.isDirectory()
    ? "directory"
    : d.isSymbolicLink()
      ? "symlink"
      : d.isCharacterDevice()
        ? "char"
        : d.isBlockDevice()
          ? "block"
          : d.isFIFO()
            ? "fifo"
            : d.isSocket()
              ? "socket"
              : "file";

/**
 * The kernel has the last word: the names (and types) the overlay lists must be those the layers give.
 * Otherwise a layer was changed under the mounted overlay (which overlay does not support) and the picture
 * would be wrong: an error, not a wrong picture.
 */
async function checkWithKernel(real: string, result: Omit<Stack, "path" | "target">, shown: string): Promise<void> {
  const listed = (await readdir(toBuffer(real), { withFileTypes: true, encoding: "buffer" })) as Dirent<Buffer>[];
  const kernel = new Map(listed.map((d) => [bytesOf(d.name as unknown as Buffer), typeOfDirent(d)]));
  const layers = new Map(result.rows.flatMap((r) => (r.merged ? [[r.name, r.merged.type] as const] : [])));
  const problems: string[] = [];
  for (const [name, type] of kernel) {
    const t = layers.get(name);
    if (t === undefined) problems.push(`the overlay lists '${name}', the layers do not`);
    else if (t !== type) problems.push(`'${name}' is a ${type} in the overlay, a ${t} in the layers`);
  }
  for (const name of layers.keys()) if (!kernel.has(name)) problems.push(`the layers give '${name}', the overlay does not list it`);
  if (problems.length > 0) {
    throw new OverlayError(
      "EIO",
      decodeBytes(`the layers and the overlay disagree about '${result.dir}' (${problems.slice(0, 3).join("; ")}${problems.length > 3 ? `; ${problems.length - 3} more` : ""}; was a layer changed while mounted?)`),
      { syscall: "getdents64", path: decodeBytes(shown) },
    );
  }
}

function encodeStack(s: Stack, encoding: PathEncoding): Stack<string | Buffer> {
  const out = (b: string) => encodeOut(b, encoding);
  const cell = (c: StackCell): StackCell<string | Buffer> => (c.redirect !== undefined ? { ...c, redirect: out(c.redirect) } : (c as StackCell<string | Buffer>));
  const source = (x: StackSource): StackSource<string | Buffer> => ({ ...x, realPath: out(x.realPath) });
  return {
    ...(s.path !== undefined ? { path: out(s.path) } : {}),
    ...(s.target !== undefined ? { target: out(s.target) } : {}),
    dir: out(s.dir),
    layers: s.layers.map((l) => ({
      ...l,
      layer: out(l.layer),
      dir: { ...cell(l.dir), ...(l.dir.realPath !== undefined ? { realPath: out(l.dir.realPath) } : {}) },
    })),
    rows: s.rows.map((r) => ({
      name: out(r.name),
      cells: r.cells.map(cell),
      merged: r.merged && {
        ...r.merged,
        realPath: out(r.merged.realPath),
        ...(r.merged.mergedFrom ? { mergedFrom: r.merged.mergedFrom.map(source) } : {}),
        ...(r.merged.data ? { data: source(r.merged.data) } : {}),
      },
    })),
  };
}
