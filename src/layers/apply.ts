/**
 * applyLayer(): an OCI/Docker image layer (a tar stream, plain, gzip or zstd) unpacked into a directory as an
 * overlay lower layer. Every rule about names lives here: what an entry may be called, what `.wh.` files
 * mean, what replaces what. The writing itself is batches of *at() calls beneath the directory's fd
 * (native/tree.cc), so no name, symlink or hard link in the archive can reach outside it, even one that
 * passed these rules.
 */
import { mkdirSync, rmdirSync, closeSync, fstatSync, write as fsWrite } from "node:fs";
import { promisify } from "node:util";
import { native, type NativeFailure } from "../kernel/native.js";
import { OverlayError, fromNative, describeErrno } from "../kernel/errors.js";
import { decodeBytes, nativePath, pathBytes, checkPathLike, type PathLike } from "../kernel/bytes.js";
import { inUserNamespace } from "../kernel/userns.js";
import { openLayer } from "./compression.js";
import { printableName, readTar, type TarEntry, type TarItem } from "./tar.js";
import { OpBatch, OpFlag, OpKind, type TreeOp } from "./tree-ops.js";

const writeFd = promisify(fsWrite);

/** A layer: a file path, its bytes, or a stream of them. */
export type LayerSource = string | Uint8Array | NodeJS.ReadableStream | AsyncIterable<Uint8Array>;

export interface ApplyLayerOptions {
  /** The digest of the bytes as given (`sha256:...`, compressed if they are): a mismatch is an error and nothing is kept. */
  digest?: string;
  /** The digest of the uncompressed tar (the image config's diff_id): a mismatch is an error and nothing is kept. */
  diffId?: string;
  /**
   * Overlay's xattrs (the opaque marker) in `user.overlay.*`, for overlays mounted with `userxattr`; default:
   * when this process is in a user namespace (where `trusted.*` cannot be written), as mount() does.
   */
  userxattr?: boolean;
  /** Give entries the archive's owners (default) or leave them owned by the caller (`false`: rootless use). */
  owners?: boolean;
  /**
   * The layers this one goes on, top-most first (an image's layers below it). A directory the archive only
   * implies (it has entries below it but none for it) then gets what the top-most of them gives it (mode,
   * owner, mtime, xattrs) instead of tar's defaults, which would show through the overlay instead (umoci and
   * containerd do the same). Without them, implied directories are 0755 root.
   */
  parents?: PathLike[];
  /** Called every few thousand entries or megabytes, and once at the end. */
  onProgress?: (p: ApplyProgress) => void;
}

export interface ApplyProgress {
  /** Archive entries read so far, and the bytes of file contents among them. */
  entries: number;
  bytes: number;
}

export interface ApplyLayerResult {
  digest: string;
  diffId: string;
  compression: "none" | "gzip" | "zstd";
  /** Bytes of the source, and of the tar inside it. */
  size: number;
  uncompressedSize: number;
  /** Archive entries read (whiteouts and markers included). */
  entries: number;
  whiteouts: number;
  opaqueDirs: number;
}

/** What this apply has made at a path: all that is in the directory, since it started empty. */
type Made = "dir" | "file" | "symlink" | "node" | "whiteout";

interface DirMeta {
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  xattrs: Array<[string, Buffer]>;
  opaque: boolean;
}

/** Names longer than this are refused before they reach the kernel (PATH_MAX). */
const PATH_MAX = 4096;
const BATCH_RECORDS = 2048;
const BATCH_BYTES = 8 * 1024 * 1024;
/** Bodies up to this size travel in the batch; larger ones are streamed through their own fd. */
const INLINE_LIMIT = 1024 * 1024;
const WHITEOUT = ".wh.";
const OPAQUE = ".wh..wh..opq";

export class LayerError extends OverlayError {
  /** The archive entry the error is about (a byte string shown printable in the message), if any. */
  readonly entry?: string;
  constructor(code: string, detail: string, info: { entry?: string; syscall?: string; path?: string; errno?: number }) {
    super(code, detail, { syscall: info.syscall ?? "applyLayer", ...(info.path !== undefined ? { path: info.path } : {}), ...(info.errno !== undefined ? { errno: info.errno } : {}) });
    this.name = "LayerError";
    if (info.entry !== undefined) this.entry = info.entry;
  }
}

/** A refusal of an archive entry: names the entry and the rule. */
function refuse(entry: string, rule: string): LayerError {
  return new LayerError("ERR_OVL_LAYER_ENTRY", `entry '${printableName(entry)}': ${rule}`, { entry });
}

/**
 * An entry's name as path components, or why it is refused. `./` in front is allowed (most layers have it);
 * a trailing `/` (directories) is dropped; everything else that could mean something other than one plain
 * path below the root is refused: absolute names, `..`, `.` inside, empty components, NUL.
 */
export function entryPath(name: string): string[] | string {
  if (name.length === 0) return "the name is empty";
  if (name.includes("\0")) return "the name contains a NUL byte";
  if (name.length > PATH_MAX) return `the name is longer than ${PATH_MAX} bytes`;
  if (name.startsWith("/")) return "absolute names are refused (the layer would write outside its directory)";
  let s = name;
  while (s.startsWith("./")) s = s.slice(2);
  if (s.endsWith("/")) s = s.slice(0, -1);
  if (s === "" || s === ".") return [];
  const parts = s.split("/");
  for (const p of parts) {
    if (p === "..") return "'..' in a name is refused (it would lead outside the layer's directory)";
    if (p === "." || p === "") return "the name has an empty or '.' component in the middle";
  }
  return parts;
}

/**
 * Unpacks the layer in `source` (a file path, a Buffer, a readable stream or an async iterable of bytes) into
 * `dir`, which must be an empty directory or not exist yet (then it is made). On any failure, the digests'
 * included, everything this call made is removed again.
 */
export async function applyLayer(source: LayerSource, dir: PathLike, options: ApplyLayerOptions = {}): Promise<ApplyLayerResult> {
  const dirBytes = checkPathLike(dir, "dir");
  const shown = decodeBytes(dirBytes);
  const userxattr = options.userxattr ?? inUserNamespace();
  const owners = options.owners ?? true;
  const xattrPrefix = userxattr ? "user.overlay." : "trusted.overlay.";

  let created = false;
  try {
    mkdirSync(nativePath(dirBytes), { mode: 0o755 });
    created = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const { paths } = await native().openPaths([nativePath(dirBytes)], [0]);
  const opened = paths[0]!;
  if (opened.errno !== undefined) {
    const { code, description } = describeErrno(opened.errno);
    throw new OverlayError(opened.notDirectory ? "ENOTDIR" : code, opened.notDirectory ? "the layer directory is not a directory" : description, { syscall: opened.syscall, path: shown });
  }
  const root = opened.fd;
  if ((opened.entryCount ?? 0) > 0 || opened.listErrno !== undefined) {
    // Checked before anything is written: undoing a failed apply removes everything in the directory.
    closeSync(root);
    if (opened.listErrno !== undefined) throw fromNative({ errno: opened.listErrno, syscall: "getdents64", messages: [] }, { path: shown, what: "listing the layer directory" });
    throw new OverlayError("ENOTEMPTY", "a layer is applied into an empty directory (this one has entries)", { syscall: "applyLayer", path: shown });
  }
  let parentFds: number[] = [];
  if (options.parents !== undefined && options.parents.length > 0) {
    const opened = await native().openPaths(options.parents.map((p, i) => nativePath(checkPathLike(p, `options.parents[${i}]`))));
    parentFds = opened.paths.map((p) => p.fd).filter((fd): fd is number => fd !== undefined);
    if (parentFds.length !== options.parents.length) {
      for (const fd of parentFds) closeSync(fd);
      closeSync(root);
      throw new OverlayError("ENOENT", "a parent layer cannot be opened", { syscall: "open", path: shown });
    }
  }
  const app = new Applier(root, shown, { owners, xattrPrefix, onProgress: options.onProgress, parents: parentFds });
  try {
    const layer = openLayer(source instanceof Uint8Array ? oneChunk(source) : source);
    for await (const item of readTar(layer.chunks, { inlineLimit: INLINE_LIMIT })) {
      await app.entry(item);
    }
    await app.finish();
    const r = layer.result();
    if (options.digest !== undefined && options.digest !== r.digest) {
      throw new LayerError("ERR_OVL_DIGEST", `the layer's digest is ${r.digest}, not the ${options.digest} expected; nothing was kept`, { path: shown });
    }
    if (options.diffId !== undefined && options.diffId !== r.diffId) {
      throw new LayerError("ERR_OVL_DIGEST", `the layer's diff id is ${r.diffId}, not the ${options.diffId} expected; nothing was kept`, { path: shown });
    }
    return { ...r, compression: layer.compression, entries: app.count, whiteouts: app.whiteouts, opaqueDirs: app.opaqueCount };
  } catch (e) {
    await app.undo().catch(() => undefined);
    closeSync(root);
    if (created) {
      try {
        rmdirSync(nativePath(dirBytes));
      } catch {
        // Someone else put something there meanwhile: theirs, left alone.
      }
    }
    throw e;
  } finally {
    for (const fd of parentFds) closeSync(fd);
    try {
      closeSync(root);
    } catch {
      // closed above on failure
    }
  }
}

async function* oneChunk(b: Uint8Array): AsyncGenerator<Uint8Array> {
  yield b;
}

class Applier {
  count = 0;
  whiteouts = 0;
  opaqueCount = 0;
  private readonly made = new Map<string, Made>();
  private readonly dirs = new Map<string, DirMeta>();
  private batch = new OpBatch();
  private lastProgress = 0;
  private bytes = 0;

  constructor(
    private readonly root: number,
    private readonly shown: string,
    private readonly opts: { owners: boolean; xattrPrefix: string; onProgress?: ((p: ApplyProgress) => void) | undefined; parents: number[] },
  ) {}

  async entry(item: TarItem): Promise<void> {
    const e = item.entry;
    this.count++;
    this.bytes += e.size;
    const parts = entryPath(e.name);
    if (typeof parts === "string") throw refuse(e.name, parts);
    if (parts.length === 0) {
      // "./": the directory itself; only its metadata can change.
      if (e.type !== "dir") throw refuse(e.name, "the layer's root can only be a directory");
      this.noteDir("", e, false);
      return this.progress();
    }
    const base = parts[parts.length - 1]!;
    const parent = parts.slice(0, -1).join("/");
    if (base.startsWith(WHITEOUT)) return this.whiteout(e, parent, base);
    this.checkXattrs(e);
    const path = parent === "" ? base : `${parent}/${base}`;
    this.ensureParents(e.name, parts);
    const existing = this.made.get(path);
    if (e.type === "dir") {
      if (existing === "dir") {
        this.noteDir(path, e, this.dirs.get(path)?.opaque ?? false);
        return this.progress();
      }
      // A whiteout of this name earlier in the layer, then the directory: the directory, hiding what is below.
      if (existing !== undefined) this.remove(e.name, parent, base, path);
      this.add({ kind: OpKind.Dir, parent, name: base }, e.name);
      this.made.set(path, "dir");
      this.noteDir(path, e, existing === "whiteout");
      return this.progress();
    }
    if (e.type === "hardlink") return this.hardlink(e, parent, base, path, existing);
    if (existing !== undefined) this.remove(e.name, parent, base, path);
    const meta = this.metaFlags(e);
    switch (e.type) {
      case "file":
        if (item.data !== undefined || e.size === 0) {
          const op: TreeOp = { kind: OpKind.File, ...meta, parent, name: base };
          if (item.data !== undefined && item.data.length > 0) op.dataIndex = this.batch.addData(item.data);
          this.add(op, e.name);
        } else {
          await this.streamFile(e, item, parent, base, meta);
        }
        this.made.set(path, "file");
        break;
      case "symlink":
        if (e.linkname.length === 0) throw refuse(e.name, "a symlink with an empty target");
        if (e.linkname.includes("\0")) throw refuse(e.name, "a symlink target with a NUL byte");
        // The text is stored, never followed here: every later entry's parents are checked against what this
        // layer made, and the kernel refuses symlinks on the way (RESOLVE_NO_SYMLINKS).
        this.add({ kind: OpKind.Symlink, ...meta, flags: (meta.flags ?? 0) & ~OpFlag.Chmod, parent, name: base, target: e.linkname }, e.name);
        this.made.set(path, "symlink");
        break;
      case "char":
      case "block":
      case "fifo": {
        const type = e.type === "char" ? 0o020000 : e.type === "block" ? 0o060000 : 0o010000;
        this.add({ kind: OpKind.Node, ...meta, mode: type | e.mode, parent, name: base, rdevMajor: e.devmajor, rdevMinor: e.devminor }, e.name);
        this.made.set(path, "node");
        break;
      }
      default:
        throw refuse(e.name, `entries of type ${String(e.type)} are not supported`);
    }
    return this.progress();
  }

  private metaFlags(e: TarEntry): Pick<TreeOp, "flags" | "mode" | "uid" | "gid" | "mtimeSec" | "mtimeNsec" | "xattrs"> {
    return {
      flags: (this.opts.owners ? OpFlag.Chown : 0) | OpFlag.Chmod | OpFlag.Times,
      mode: e.mode & 0o7777,
      uid: e.uid,
      gid: e.gid,
      mtimeSec: e.mtime.sec,
      mtimeNsec: e.mtime.nsec,
      ...(e.xattrs.length > 0 ? { xattrs: e.xattrs } : {}),
    };
  }

  /** Overlay's own xattrs in an archive would forge redirects, metacopy or opaque markers: refused. */
  private checkXattrs(e: TarEntry): void {
    for (const [name] of e.xattrs) {
      if (name.startsWith("trusted.overlay.") || name.startsWith("user.overlay.")) {
        throw refuse(e.name, `carries overlay's own xattr '${printableName(name)}' (a layer says what it hides with .wh. files, never with xattrs)`);
      }
    }
  }

  /** Missing parents are made as tar makes them (0755, root); a parent that is not a directory is refused. */
  private ensureParents(entry: string, parts: string[]): void {
    let path = "";
    for (let i = 0; i < parts.length - 1; i++) {
      const parent = path;
      const name = parts[i]!;
      path = path === "" ? name : `${path}/${name}`;
      const m = this.made.get(path);
      if (m === "dir") continue;
      if (m === "symlink") throw refuse(entry, `its path goes through '${printableName(path)}', a symlink this layer made (refused: it could lead outside the layer)`);
      if (m === "whiteout") {
        // Whited out, then filled: the directory replaces the whiteout and hides the lower one.
        this.remove(entry, parent, name, path);
      } else if (m !== undefined) {
        throw refuse(entry, `its parent '${printableName(path)}' is not a directory in this layer`);
      }
      this.add({ kind: OpKind.Dir, parent, name }, entry);
      this.made.set(path, "dir");
      // An implied directory: what the layers below give it, else tar's defaults (and the kernel's mtime).
      this.dirs.set(path, { ...(this.fromParents(path) ?? { mode: 0o755, uid: 0, gid: 0, mtimeSec: Number.NaN, mtimeNsec: 0, xattrs: [] }), opaque: m === "whiteout" });
    }
  }

  /**
   * The directory at `path` in the top-most parent layer that has it (a whiteout or a non-directory there
   * ends the search: nothing below shows), as the metadata of a directory this layer only implies.
   */
  fromParents(path: string): Omit<DirMeta, "opaque"> | undefined {
    if (this.opts.parents.length === 0) return undefined;
    if (path === "") {
      // The root: its facts from the top-most parent's fd (statx of the fd; its xattrs are not carried).
      const [fd] = this.opts.parents;
      const st = fstatSync(fd!, { bigint: true });
      return { mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), mtimeSec: Number(st.mtimeNs / 1000000000n), mtimeNsec: Number(st.mtimeNs % 1000000000n), xattrs: [] };
    }
    const slash = path.lastIndexOf("/");
    const dir = path === "" ? "" : slash === -1 ? "" : path.slice(0, slash);
    const name = path === "" ? "." : path.slice(slash + 1);
    for (const fd of this.opts.parents) {
      const [r] = native().lstatXattrsSync([[fd, nativePath(dir), nativePath(name)]], "");
      if (!r || r.errno !== undefined) continue; // not in this layer (or not reachable): look below
      if ((r.mode & 0o170000) !== 0o040000) return undefined; // a whiteout or a file hides what is below
      const xattrs: Array<[string, Buffer]> = Object.entries(r.xattrs).filter(([n]) => !n.startsWith("trusted.overlay.") && !n.startsWith("user.overlay."));
      return { mode: r.mode & 0o7777, uid: r.uid, gid: r.gid, mtimeSec: r.mtimeSec, mtimeNsec: r.mtimeNsec, xattrs };
    }
    return undefined;
  }

  private noteDir(path: string, e: TarEntry, opaque: boolean): void {
    const prior = this.dirs.get(path);
    this.checkXattrs(e);
    this.dirs.set(path, { mode: e.mode & 0o7777, uid: e.uid, gid: e.gid, mtimeSec: e.mtime.sec, mtimeNsec: e.mtime.nsec, xattrs: e.xattrs, opaque: opaque || (prior?.opaque ?? false) });
  }

  private whiteout(e: TarEntry, parent: string, base: string): Promise<void> {
    const parts = parent === "" ? [] : parent.split("/");
    // Below a file, symlink or whiteout this layer made (a directory replaced by one: umoci writes the
    // replacement, then whiteouts of what the directory held), a whiteout hides nothing: nothing is written,
    // and a symlink is never followed to write one.
    for (let i = 1; i <= parts.length; i++) {
      const m = this.made.get(parts.slice(0, i).join("/"));
      if (m !== undefined && m !== "dir") return this.progress();
    }
    if (base === OPAQUE) {
      this.ensureParents(e.name, [...parts, base]);
      if (parent !== "" && this.made.get(parent) !== "dir") throw refuse(e.name, "an opaque marker whose directory is not a directory");
      const d = this.dirs.get(parent);
      if (d) d.opaque = true;
      else this.dirs.set(parent, { mode: 0o755, uid: 0, gid: 0, mtimeSec: Number.NaN, mtimeNsec: 0, xattrs: [], opaque: true });
      this.opaqueCount++;
      return this.progress();
    }
    // Other .wh..wh. names are aufs's bookkeeping (hard-link dirs and the like): they mean nothing to overlay.
    if (base.startsWith(`${WHITEOUT}${WHITEOUT}`)) return this.progress();
    const hidden = base.slice(WHITEOUT.length);
    if (hidden === "" || hidden === "." || hidden === "..") throw refuse(e.name, `a whiteout of '${printableName(hidden)}' is refused (it names no entry of the directory)`);
    if (e.type === "dir") throw refuse(e.name, "a whiteout must not be a directory");
    this.ensureParents(e.name, [...parts, hidden]);
    const path = parent === "" ? hidden : `${parent}/${hidden}`;
    // The layer's own entry of that name wins over its whiteout (a whiteout hides lower layers only).
    if (this.made.has(path)) return this.progress();
    this.add({ kind: OpKind.Node, flags: 0, mode: 0o020000, parent, name: hidden, rdevMajor: 0, rdevMinor: 0 }, e.name);
    this.made.set(path, "whiteout");
    this.whiteouts++;
    return this.progress();
  }

  private hardlink(e: TarEntry, parent: string, base: string, path: string, existing: Made | undefined): Promise<void> {
    const to = entryPath(e.linkname);
    if (typeof to === "string") throw refuse(e.name, `its hard link target: ${to}`);
    if (to.length === 0) throw refuse(e.name, "a hard link to the layer's root directory");
    const target = to.join("/");
    const kind = this.made.get(target);
    if (kind === undefined || kind === "whiteout") {
      throw refuse(e.name, `a hard link to '${printableName(e.linkname)}', which this layer has not made (links to anything outside the layer are refused)`);
    }
    if (kind === "dir") throw refuse(e.name, `a hard link to '${printableName(e.linkname)}', a directory`);
    if (target === path) return this.progress(); // a link to itself: already there
    if (existing !== undefined) this.remove(e.name, parent, base, path);
    const tparts = to.slice(0, -1).join("/");
    this.add({ kind: OpKind.Hardlink, parent, name: base, target: tparts, target2: to[to.length - 1]! }, e.name);
    this.made.set(path, kind);
    return this.progress();
  }

  private remove(entry: string, parent: string, name: string, path: string): void {
    const kind = this.made.get(path);
    this.add({ kind: OpKind.Remove, flags: kind === "dir" ? OpFlag.Recursive : 0, parent, name }, entry);
    if (kind === "dir") {
      const prefix = `${path}/`;
      for (const k of [...this.made.keys()]) if (k.startsWith(prefix)) this.made.delete(k);
      for (const k of [...this.dirs.keys()]) if (k === path || k.startsWith(prefix)) this.dirs.delete(k);
    }
    this.made.delete(path);
  }

  private async streamFile(e: TarEntry, item: TarItem, parent: string, base: string, meta: ReturnType<Applier["metaFlags"]>): Promise<void> {
    this.add({ kind: OpKind.OpenFile, parent, name: base }, e.name);
    const fds = await this.flush();
    const fd = fds[fds.length - 1]!;
    try {
      for await (const chunk of item.body!) {
        let off = 0;
        while (off < chunk.length) off += (await writeFd(fd, chunk, off, chunk.length - off)).bytesWritten;
      }
    } catch (err) {
      closeSync(fd);
      const x = err as NodeJS.ErrnoException;
      if (x.code && x.syscall) throw new LayerError(x.code, `entry '${printableName(e.name)}': writing its body: ${x.message}`, { entry: e.name, syscall: x.syscall, path: this.shown });
      throw err;
    }
    this.add({ kind: OpKind.FdMeta, ...meta, parent: "", name: "", dataIndex: fd }, e.name);
  }

  private add(op: TreeOp, entry: string): void {
    this.batch.add(op, entry);
    if (this.batch.count >= BATCH_RECORDS || this.batch.dataBytes >= BATCH_BYTES) {
      // Backpressure: the next entry waits for the batch sent before this one, so that at most one batch
      // is built while another runs, and memory stays bounded.
      this.waitFor = this.lastSent;
      this.lastSent = this.send();
      this.lastSent.catch(() => undefined);
    }
  }

  /**
   * Sends the batch being built. Batches run one after another (a later one may need what an earlier one
   * made), while the archive is read and the next batch built.
   */
  private send(): Promise<number[]> {
    const batch = this.batch;
    this.batch = new OpBatch();
    const run = this.chain.then(async () => {
      if (this.failed) throw this.failed;
      if (batch.count === 0) return [];
      try {
        return (await native().applyOps(this.root, batch.bytes(), batch.data)).fds;
      } catch (err) {
        this.failed ??= this.batchError(err as NativeFailure, batch);
        throw this.failed;
      }
    });
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Sends the batch and waits for it: the fds of its OpenFile records. */
  private flush(): Promise<number[]> {
    this.lastSent = this.send();
    return this.lastSent;
  }

  private chain: Promise<void> = Promise.resolve();
  private lastSent: Promise<number[]> | undefined;
  private waitFor: Promise<number[]> | undefined;
  private failed: unknown;

  private batchError(f: NativeFailure, batch: OpBatch): Error {
    if (typeof f !== "object" || f === null || typeof f.errno !== "number") return f as unknown as Error;
    const entry = batch.entries[f.step ?? -1];
    const err = fromNative(f, { path: `${this.shown}/${decodeBytes(f.path ?? "")}`, what: entry !== undefined ? `entry '${printableName(entry)}'` : "applying the layer" });
    const hint = hintFor(err.code, f.syscall, this.opts.owners);
    return new LayerError(err.code, `${err.message}${hint ? `. Hint: ${hint}` : ""}`, { syscall: f.syscall, errno: f.errno, ...(entry !== undefined ? { entry } : {}), path: this.shown });
  }

  private async progress(): Promise<void> {
    if (this.waitFor) {
      const w = this.waitFor;
      this.waitFor = undefined;
      await w.catch(() => undefined);
    }
    if (this.failed) throw this.failed;
    if (this.opts.onProgress && this.count - this.lastProgress >= 2000) {
      this.lastProgress = this.count;
      this.opts.onProgress({ entries: this.count, bytes: this.bytes });
    }
  }

  /** Directory modes, owners' setuid bits, opaque markers and times, now that nothing more goes in them. */
  async finish(): Promise<void> {
    // No `./` entry: the layer's root is implied too.
    if (!this.dirs.has("")) {
      const root = this.fromParents("");
      if (root) this.dirs.set("", { ...root, opaque: false });
    }
    for (const [path, d] of this.dirs) {
      const slash = path.lastIndexOf("/");
      const parent = path === "" ? "" : slash === -1 ? "" : path.slice(0, slash);
      const name = path === "" ? "." : path.slice(slash + 1);
      const xattrs = [...d.xattrs];
      if (d.opaque) xattrs.push([`${this.opts.xattrPrefix}opaque`, Buffer.from("y")]);
      const times = !Number.isNaN(d.mtimeSec);
      this.add(
        {
          kind: OpKind.Meta,
          flags: (this.opts.owners ? OpFlag.Chown : 0) | OpFlag.Chmod | (times ? OpFlag.Times : 0),
          parent,
          name,
          mode: d.mode,
          uid: d.uid,
          gid: d.gid,
          mtimeSec: times ? d.mtimeSec : 0,
          mtimeNsec: times ? d.mtimeNsec : 0,
          xattrs,
        },
        path === "" ? "./" : `${path}/`,
      );
    }
    await this.flush();
    if (this.opts.onProgress) this.opts.onProgress({ entries: this.count, bytes: this.bytes });
  }

  /** Removes everything made (the directory was empty before): each top-level entry, recursively. */
  async undo(): Promise<void> {
    await this.chain;
    const batch = new OpBatch();
    for (const [path, kind] of this.made) {
      if (path.includes("/")) continue;
      batch.add({ kind: OpKind.Remove, flags: kind === "dir" ? OpFlag.Recursive : 0, parent: "", name: path }, path);
    }
    // An entry a failed batch made but this map does not list yet is found by listing the root.
    const { entries } = (await native().scanDirs([[this.root, ""]], "user.ovl-none."))[0] as { entries?: Array<{ name: string; mode: number }> };
    for (const e of entries ?? []) {
      if (!this.made.has(e.name)) batch.add({ kind: OpKind.Remove, flags: OpFlag.Recursive, parent: "", name: e.name }, e.name);
    }
    if (batch.count > 0) await native().applyOps(this.root, batch.bytes(), []);
  }
}

function hintFor(code: string, syscall: string, owners: boolean): string | undefined {
  if (syscall === "chown" && (code === "EINVAL" || code === "EPERM") && owners) {
    return "in a user namespace only mapped ids can own files: apply with { owners: false } to keep them the caller's";
  }
  if (syscall === "mknodat" && code === "EPERM") return "device nodes need CAP_MKNOD (root outside a user namespace)";
  if (syscall === "setxattr" && code === "EPERM") return "trusted.* xattrs need CAP_SYS_ADMIN; in a user namespace apply with { userxattr: true }";
  if (syscall === "openat2" && code === "ELOOP") return "a symlink stood in the way of a path inside the layer's directory: it was not followed";
  return undefined;
}
