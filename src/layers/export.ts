/**
 * exportLayer(): the changes of an overlay's upper directory as an OCI layer tar, the inverse of applyLayer.
 * Whiteouts (0/0 devices and xattr whiteouts) become `.wh.NAME`, opaque directories `.wh..wh..opq`; a renamed
 * (redirected) directory is written whole, its lower contents included, under an opaque marker, since a tar
 * layer cannot say "renamed"; a metacopy file gets its data from the lower layer that holds it. The same
 * tree always gives the same bytes: entries in byte order, owners by number, mtimes to the second, no
 * user or group names, PAX records only where ustar cannot hold a value.
 */
import { closeSync, createWriteStream, read as fsRead } from "node:fs";
import { createHash } from "node:crypto";
import { promisify } from "node:util";
import type { Writable } from "node:stream";
import { checkPathLike, decodeBytes, nativePath, type PathLike } from "../kernel/bytes.js";
import { OverlayError, fromNative, invalidArgType } from "../kernel/errors.js";
import { native, type NativeFailure, type ReadFilesResult } from "../kernel/native.js";
import { keepsUserXattrs, mountedLayers } from "./diff.js";
import { LowerLayers, type LowerDir } from "./which.js";
import {
  LayerReader,
  checkXattrAccess,
  closeLayerRoots,
  openLayerRoots,
  overlayXattrPrefix,
  parseRedirect,
  type LayerEntry,
  type Loc,
} from "./xattr.js";
import { TarWriter, printableName, type TarWriteEntry } from "./tar.js";
import { gzipChunks } from "./compression.js";

const readFd = promisify(fsRead);

export interface ExportLayerOptions {
  /** The lower layers under the upper, top-most first: needed for renamed directories and metacopy files. */
  lower?: PathLike[];
  /** Compress with gzip (the layer's digest is then of the compressed bytes). */
  gzip?: boolean;
  /** Overlay's xattrs are `user.overlay.*` (a `userxattr` mount); default: found from the upper layer. */
  userxattr?: boolean;
}

export interface ExportResult {
  /** `sha256:` of the bytes written (compressed, with gzip). */
  digest: string;
  /** `sha256:` of the uncompressed tar: the image config's diff_id. */
  diffId: string;
  size: number;
  uncompressedSize: number;
  mediaType: "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.v1.tar+gzip";
  entries: number;
}

export interface LayerExport {
  /** The layer's bytes; read them once. */
  chunks: AsyncIterable<Buffer>;
  /** Settles when `chunks` has been read to the end. */
  result: Promise<ExportResult>;
}

/** Where an entry's content comes from: a layer (0 upper, 1.. lowers) and the path below it. */
interface Source {
  root: number;
  path: string;
}

/** Entries planned so far: the walk appends, the writer follows behind and waits for more. */
class ItemQueue {
  private readonly list: Item[] = [];
  private done = false;
  private failed: unknown;
  private waiter: (() => void) | undefined;

  get length(): number {
    return this.list.length;
  }
  at(i: number): Item {
    return this.list[i]!;
  }
  push(it: Item): void {
    this.list.push(it);
    if (this.waiter && this.list.length % 256 === 0) this.wake();
  }
  finish(err?: unknown): void {
    if (this.done) return;
    this.done = true;
    this.failed = err;
    this.wake();
  }
  /** Resolves once more than `n` items are planned, or the plan is complete; a failed plan throws. */
  async waitFor(n: number): Promise<void> {
    while (this.list.length <= n && !this.done) await new Promise<void>((r) => (this.waiter = r));
    if (this.failed !== undefined && this.list.length <= n) throw this.failed;
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}

/** One entry of the layer to write, in order. */
interface Item {
  tar: TarWriteEntry;
  /** A file's content. */
  from?: Source;
}

/** Files up to this size are read many to a trip; larger ones are streamed. */
const SMALL_FILE = 1024 * 1024;
const READ_BATCH_FILES = 512;
const READ_BATCH_BYTES = 8 * 1024 * 1024;
const STREAM_CHUNK = 1024 * 1024;

const byteOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The layer that turns the lower layers into what the overlay shows: `upper` is an upper directory (with
 * `lower` for renames and metacopy) or the mount point of an overlay (its layers are then read from the
 * mount table).
 */
export function exportLayer(upper: PathLike, options: ExportLayerOptions = {}): LayerExport {
  if (typeof options !== "object" || options === null) throw invalidArgType("options", "of type object", options);
  const upperBytes = checkPathLike(upper, "upper");
  const lowerBytes = (options.lower ?? []).map((l, i) => checkPathLike(l, `options.lower[${i}]`));
  let settle!: { ok: (r: ExportResult) => void; fail: (e: unknown) => void };
  const result = new Promise<ExportResult>((ok, fail) => (settle = { ok, fail }));
  result.catch(() => undefined); // the reader of `chunks` sees the error first
  async function* run(): AsyncGenerator<Buffer> {
    try {
      const diffHash = createHash("sha256");
      const outHash = createHash("sha256");
      let size = 0;
      let uncompressed = 0;
      let entries = 0;
      const tar = (async function* () {
        for await (const c of tarChunks(upperBytes, lowerBytes, options, () => entries++)) {
          diffHash.update(c);
          uncompressed += c.length;
          yield c;
        }
      })();
      const out = options.gzip ? gzipChunks(tar) : tar;
      for await (const c of out) {
        if (options.gzip) outHash.update(c); // plain: the digest is the diff id, hashed once
        size += c.length;
        yield c;
      }
      const diffId = `sha256:${diffHash.digest("hex")}`;
      settle.ok({
        digest: options.gzip ? `sha256:${outHash.digest("hex")}` : diffId,
        diffId,
        size,
        uncompressedSize: uncompressed,
        mediaType: options.gzip ? "application/vnd.oci.image.layer.v1.tar+gzip" : "application/vnd.oci.image.layer.v1.tar",
        entries,
      });
    } catch (e) {
      settle.fail(e);
      throw e;
    }
  }
  return { chunks: run(), result };
}

/** exportLayer() written to a file (made or truncated) or a writable stream; resolves when all is written. */
export async function exportLayerTo(upper: PathLike, dest: PathLike | Writable, options: ExportLayerOptions = {}): Promise<ExportResult> {
  const stream = typeof dest === "string" || dest instanceof Uint8Array ? createWriteStream(nativePath(checkPathLike(dest, "dest"))) : dest;
  const { chunks, result } = exportLayer(upper, options);
  for await (const c of chunks) {
    if (!stream.write(c)) await new Promise<void>((r) => stream.once("drain", () => r()));
  }
  if (typeof dest === "string" || dest instanceof Uint8Array) await new Promise<void>((ok, fail) => stream.end((e?: Error | null) => (e ? fail(e) : ok())));
  return result;
}

async function* tarChunks(upper: string, lower: string[], options: ExportLayerOptions, count: () => void): AsyncGenerator<Buffer> {
  let layers = { upper, lower, userxattr: options.userxattr as boolean | undefined };
  if (lower.length === 0) {
    // The mount point of an overlay: its own layers (refused if `upper` is not one, as diff() refuses).
    const mounted = await mountedLayers(upper).catch(() => undefined);
    if (mounted) layers = { upper: mounted.upper, lower: mounted.lower, userxattr: options.userxattr ?? mounted.userxattr };
  }
  const roots = await openLayerRoots([
    { path: layers.upper, role: "upper layer" },
    ...layers.lower.map((l, i) => ({ path: l, role: `lower layer ${i + 1}` })),
  ]);
  try {
    const userxattr = layers.userxattr ?? (await keepsUserXattrs(roots));
    const prefix = overlayXattrPrefix(userxattr);
    checkXattrAccess(prefix, decodeBytes(layers.upper));
    // Every xattr is read (prefix ""): overlay's say what an entry is, the others go into the layer.
    const reader = new LayerReader(prefix, roots, "");
    const lowers = new LowerLayers(reader, layers.lower.map((_, i) => i + 1));
    // The walk plans every entry first (measured: overlapping it with the writing was slower, the two then
    // compete for the main thread and the pool), then the writer reads file contents ahead as it goes.
    const items = new ItemQueue();
    const planning = planUpper(reader, lowers, prefix, items).then(
      () => items.finish(),
      (e: unknown) => items.finish(e),
    );
    try {
      await planning;
      const writer = new TarWriter();
      yield* writeItems(items, roots.map((r) => r.fd), writer, count);
      yield writer.end();
    } finally {
      items.finish(new Error("export stopped"));
      await planning;
    }
  } finally {
    closeLayerRoots(roots);
  }
}

/** The tar header fields of an entry read from a layer. */
function header(name: string, e: LayerEntry, prefix: string): TarWriteEntry {
  const r = e.raw;
  const type = e.type === "directory" ? "dir" : e.type === "socket" ? undefined : e.type;
  if (type === undefined) throw new OverlayError("EINVAL", `'${printableName(name)}' is a socket, which a layer cannot hold`, { syscall: "exportLayer" });
  const xattrs: Array<[string, Buffer]> = [];
  for (const [n, v] of Object.entries(r.xattrs)) if (!n.startsWith(prefix)) xattrs.push([n, v]);
  xattrs.sort((a, b) => byteOrder(a[0], b[0]));
  return {
    name,
    type,
    mode: r.mode & 0o7777,
    uid: r.uid,
    gid: r.gid,
    size: type === "file" ? r.size : 0,
    mtime: { sec: r.mtimeSec, nsec: 0 },
    ...(type === "symlink" ? { linkname: r.linkTarget ?? "" } : {}),
    ...(type === "char" || type === "block" ? { devmajor: r.rdevMajor ?? 0, devminor: r.rdevMinor ?? 0 } : {}),
    ...(xattrs.length > 0 ? { xattrs } : {}),
  };
}

const marker = (name: string, mtimeSec: number): TarWriteEntry => ({ name, type: "file", mode: 0, uid: 0, gid: 0, size: 0, mtime: { sec: mtimeSec, nsec: 0 } });

/** The entries of the layer, in the order written: a depth-first walk of the upper, names in byte order. */
async function planUpper(reader: LayerReader, lowers: LowerLayers, prefix: string, items: ItemQueue): Promise<void> {
  const links = new Map<string, string>(); // layer:inode -> the first name written for it

  const file = async (name: string, e: LayerEntry, at: Loc, parentStack: LowerDir[], lookupName: string) => {
    const tar = header(name, e, prefix);
    if (e.metacopy) {
      // The data is in a lower layer: the one the metacopy chain ends in.
      const redirect = e.redirect !== undefined ? parseRedirect(e.redirect) : undefined;
      const found = await lowers.lookup(parentStack, lookupName, { isDir: false, ...(redirect ? { redirect } : {}) });
      const data = found.hits.find((h) => !h.entry.metacopy) ?? (await lowers.lookupData(found.name).then((d) => (d ? { layer: d.layer, path: d.path, entry: undefined } : undefined)));
      if (!data) throw new OverlayError("ENOENT", `'${printableName(name)}' is a metadata-only copy whose data no lower layer holds (pass the lower layers)`, { syscall: "exportLayer" });
      const size = data.entry?.raw.size;
      if (size !== undefined) tar.size = size;
      items.push({ tar, from: { root: lowers.loc(data.layer, data.path).root, path: data.path } });
      return;
    }
    if (e.raw.nlink > 1) {
      // Hard links of the upper, and of a lower layer's files written whole (under a renamed directory).
      const key = `${at.root}:${e.raw.ino}`;
      const first = links.get(key);
      if (first !== undefined) {
        items.push({ tar: { ...tar, type: "hardlink", size: 0, linkname: first } });
        return;
      }
      links.set(key, name);
    }
    items.push({ tar, from: { root: at.root, path: at.path } });
  };

  /**
   * A directory of the upper layer: `at` its place in the upper, `stack` the lower directories it merges
   * with, `whole` when its lower contents must be written too (inside a renamed directory).
   */
  const visit = async (dirName: string, at: Loc, stack: LowerDir[], whole: boolean) => {
    await reader.scan([at, ...(whole ? stack.map((d) => lowers.loc(d.layer, d.path)) : [])]);
    const own = reader.entries(at);
    const out: Array<{ name: string; emit: () => Promise<void> }> = [];
    const child = (n: string) => (dirName === "" ? n : `${dirName}/${n}`);
    for (const [n, e] of own) {
      const name = child(n);
      const loc = { root: 0, path: `${at.path}/${n}` };
      if (e.whiteout) {
        if (!whole) out.push({ name: child(`.wh.${n}`), emit: async () => void items.push({ tar: marker(child(`.wh.${n}`), e.raw.mtimeSec) }) });
        continue;
      }
      if (e.type === "directory") {
        out.push({
          name,
          emit: async () => {
            const redirect = e.redirect !== undefined ? parseRedirect(e.redirect) : undefined;
            // A renamed directory, or one inside it, is written whole: a layer has no way to say "renamed".
            const renamed = whole || redirect !== undefined;
            const lookedUp = e.opaque && !renamed ? { hits: [] } : await lowers.lookup(stack, n, { isDir: true, ...(redirect ? { redirect } : {}) });
            const sub = e.opaque ? [] : lookedUp.hits.filter((h) => h.entry.type === "directory").map((h) => ({ layer: h.layer, path: h.path }));
            items.push({ tar: header(`${name}/`.slice(0, -1), e, prefix) });
            if (e.opaque || (renamed && !whole)) items.push({ tar: marker(`${name}/.wh..wh..opq`, e.raw.mtimeSec) });
            await visit(name, loc, sub, renamed);
          },
        });
        continue;
      }
      out.push({ name, emit: () => (e.type === "file" ? file(name, e, loc, stack, n) : Promise.resolve(void items.push({ tar: header(name, e, prefix) }))) });
    }
    if (whole) {
      // The lower contents this directory shows that the upper does not replace (or delete).
      const seen = new Set(own.keys());
      for (const d of stack) {
        for (const [n, e] of reader.entries(lowers.loc(d.layer, d.path))) {
          if (seen.has(n)) continue;
          seen.add(n);
          if (e.whiteout) continue;
          const name = child(n);
          const loc = lowers.loc(d.layer, `${d.path}/${n}`);
          out.push({
            name,
            emit: async () => {
              if (e.type === "directory") {
                const found = await lowers.lookup(stack, n, { isDir: true });
                const sub = found.hits.filter((h) => h.entry.type === "directory").map((h) => ({ layer: h.layer, path: h.path }));
                items.push({ tar: header(name, e, prefix) });
                await visitLower(name, sub);
              } else if (e.type === "file") await file(name, e, loc, stack, n);
              else items.push({ tar: header(name, e, prefix) });
            },
          });
        }
      }
    }
    out.sort((a, b) => byteOrder(a.name, b.name));
    for (const o of out) await o.emit();
  };

  /** A lower directory inside a renamed one, with nothing of it in the upper: all it shows. */
  const visitLower = async (dirName: string, stack: LowerDir[]) => {
    await reader.scan(stack.map((d) => lowers.loc(d.layer, d.path)));
    const out: Array<{ name: string; emit: () => Promise<void> }> = [];
    const seen = new Set<string>();
    for (const d of stack) {
      for (const [n, e] of reader.entries(lowers.loc(d.layer, d.path))) {
        if (seen.has(n)) continue;
        seen.add(n);
        if (e.whiteout) continue;
        const name = `${dirName}/${n}`;
        out.push({
          name,
          emit: async () => {
            if (e.type === "directory") {
              const found = await lowers.lookup(stack, n, { isDir: true });
              items.push({ tar: header(name, e, prefix) });
              await visitLower(name, found.hits.filter((h) => h.entry.type === "directory").map((h) => ({ layer: h.layer, path: h.path })));
            } else if (e.type === "file") await file(name, e, lowers.loc(d.layer, `${d.path}/${n}`), stack, n);
            else items.push({ tar: header(name, e, prefix) });
          },
        });
      }
    }
    out.sort((a, b) => byteOrder(a.name, b.name));
    for (const o of out) await o.emit();
  };

  // The upper is read level by level first, many directories a trip (the walk below then finds them read).
  for (let level: Loc[] = [{ root: 0, path: "" }]; level.length > 0; ) {
    await reader.scan(level);
    level = level.flatMap((d) => [...reader.entries(d)].filter(([, e]) => e.type === "directory").map(([n]) => ({ root: 0, path: `${d.path}/${n}` })));
  }
  await visit("", { root: 0, path: "" }, lowers.roots(), false);
}

/** Output pieces are gathered into chunks of about this size: one write for many small entries. */
const OUT_CHUNK = 1024 * 1024;

/** Gathers small pieces (headers, small bodies, padding) into big chunks; large bodies pass through. */
class Gather {
  private parts: Buffer[] = [];
  private bytes = 0;
  add(b: Buffer): Buffer | undefined {
    this.parts.push(b);
    this.bytes += b.length;
    return this.bytes >= OUT_CHUNK ? this.take() : undefined;
  }
  take(): Buffer | undefined {
    if (this.bytes === 0) return undefined;
    const out = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.bytes);
    this.parts = [];
    this.bytes = 0;
    return out;
  }
}

/** Writes the items, file contents read ahead in batches (many small files a trip) while earlier ones go out. */
async function* writeItems(items: ItemQueue, fds: number[], writer: TarWriter, count: () => void): AsyncGenerator<Buffer> {
  type Read = { data: Buffer; spans: Float64Array; extra: ReadFilesResult["extra"]; at: number };
  type Batch = { start: number; end: number; reads: Promise<Array<Read | undefined>> };
  const fetchFrom = async (start: number): Promise<Batch | undefined> => {
    await items.waitFor(start);
    if (start >= items.length) return undefined;
    let i = start;
    const want: number[] = [];
    let bytes = 0;
    for (; i < items.length && want.length < READ_BATCH_FILES && bytes < READ_BATCH_BYTES; i++) {
      const it = items.at(i);
      if (it.from && it.tar.size > 0 && it.tar.size <= SMALL_FILE) {
        want.push(i);
        bytes += it.tar.size;
      }
    }
    // One trip per layer root that the batch reads from.
    const byRoot = new Map<number, number[]>();
    for (const k of want) {
      const r = items.at(k).from!.root;
      (byRoot.get(r) ?? byRoot.set(r, []).get(r)!).push(k);
    }
    const reads = (async () => {
      const out: Array<Read | undefined> = [];
      await Promise.all(
        [...byRoot].map(async ([root, ks]) => {
          const got = await native().readFiles(
            fds[root]!,
            ks.map((k) => {
              const p = items.at(k).from!.path;
              const slash = p.lastIndexOf("/");
              return [nativePath(p.slice(1, Math.max(slash, 0))), nativePath(p.slice(slash + 1))];
            }),
            SMALL_FILE,
          );
          ks.forEach((k, j) => (out[k - start] = { data: got.data, spans: got.spans, extra: got.extra, at: j }));
        }),
      );
      return out;
    })();
    reads.catch(() => undefined);
    return { start, end: i, reads };
  };
  const out = new Gather();
  let current = await fetchFrom(0);
  let ahead = current ? fetchFrom(current.end) : undefined;
  while (current) {
    const reads = await current.reads;
    for (let i = current.start; i < current.end; i++) {
      const it = items.at(i);
      count();
      let ready = out.add(writer.header(it.tar));
      if (ready) yield ready;
      if (!it.from || it.tar.size === 0) continue;
      const r = reads[i - current.start];
      const length = r ? r.spans[2 * r.at + 1]! : -1;
      const extra = r?.extra[r.at];
      if (r && length >= 0) {
        if (length !== it.tar.size) throw changed(it.tar.name);
        const offset = r.spans[2 * r.at]!;
        ready = out.add(r.data.subarray(offset, offset + length));
        if (ready) yield ready;
      } else if (!r || extra?.errno === undefined) {
        const pending = out.take();
        if (pending) yield pending;
        yield* streamFile(fds[it.from.root]!, it.from.path, it.tar.size, it.tar.name);
      } else {
        throw fromNative({ errno: extra.errno, syscall: extra.syscall, messages: [] } as NativeFailure, { what: `reading '${printableName(it.tar.name)}'` });
      }
      ready = out.add(writer.padding(it.tar.size));
      if (ready) yield ready;
    }
    current = await ahead;
    ahead = current ? fetchFrom(current.end) : undefined;
  }
  const rest = out.take();
  if (rest) yield rest;
}

function changed(name: string): OverlayError {
  return new OverlayError("EAGAIN", `'${printableName(name)}' changed size while the layer was written; export a layer that is not in use`, { syscall: "read" });
}

async function* streamFile(root: number, path: string, size: number, name: string): AsyncGenerator<Buffer> {
  let fd: number;
  try {
    fd = await native().openBeneath(root, nativePath(path.slice(1)), 0);
  } catch (e) {
    throw fromNative(e as NativeFailure, { what: `reading '${printableName(name)}'` });
  }
  try {
    let left = size;
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(STREAM_CHUNK, left));
      const { bytesRead } = await readFd(fd, buf, 0, buf.length, null);
      if (bytesRead === 0) throw changed(name);
      left -= bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    closeSync(fd);
  }
}
