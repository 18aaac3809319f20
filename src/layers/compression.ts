/**
 * Layer blobs: telling gzip from zstd from plain tar, decompressing as a stream, and the digests OCI names a
 * layer by (`digest` over the blob as stored, `diffId` over the tar inside). Everything is pull-driven: the
 * source is read only as fast as the consumer takes decompressed chunks, and what decompression holds at a
 * time is bounded (zlib's own backpressure; zstd fed one block at a time, windows capped at 128 MiB).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { Readable, pipeline } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { Decompress } from "fzstd";
import { TarError } from "./tar.js";

export type Compression = "none" | "gzip" | "zstd";

export interface LayerResult {
  /** "sha256:<hex>" of the bytes as given (compressed). */
  digest: string;
  /** "sha256:<hex>" of the decompressed bytes (the tar): what an image config's rootfs.diff_ids lists. */
  diffId: string;
  /** Bytes as given. */
  size: number;
  /** Bytes after decompression. */
  uncompressedSize: number;
}

export interface LayerStream {
  /** The decompressed tar bytes; can be read once. */
  chunks: AsyncIterable<Buffer>;
  /** Known once the first chunk has been asked for (it is read from the blob's first bytes). */
  readonly compression: Compression;
  /** Valid after `chunks` has been read to its end. */
  result(): LayerResult;
}

export interface OpenLayerOptions {
  /** Largest zstd window accepted, in bytes (default 128 MiB, zstd's own default limit for decoding). */
  zstdWindowLimit?: number;
}

const CODE = "ERR_OVL_LAYER";
/** Enough bytes to tell every format below apart. */
const HEAD = 10;
const FILE_CHUNK = 256 * 1024;

/**
 * The compression of a blob from its first bytes (10 are enough; fewer give "none" unless a magic fits).
 * bzip2 and xz are recognised only to be refused by name: OCI layers are tar, tar+gzip or tar+zstd.
 */
export function detectCompression(head: Uint8Array): Compression {
  const b = head;
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return "gzip";
  if (b.length >= 4 && b[0] === 0x28 && b[1] === 0xb5 && b[2] === 0x2f && b[3] === 0xfd) return "zstd";
  // A zstd skippable frame (magic 0x184D2A5?) may come first, as in the seekable format.
  if (b.length >= 4 && (b[0]! & 0xf0) === 0x50 && b[1] === 0x2a && b[2] === 0x4d && b[3] === 0x18) return "zstd";
  if (b.length >= 6 && b[0] === 0xfd && b[1] === 0x37 && b[2] === 0x7a && b[3] === 0x58 && b[4] === 0x5a && b[5] === 0) {
    throw new TarError("the layer is xz-compressed, which OCI layers are not (tar, tar+gzip or tar+zstd): decompress it first (xz -d)", { code: CODE });
  }
  // "BZh" + level, then a block or end-of-stream magic: a tar whose first name starts "BZh" is not taken for one.
  if (b.length >= 10 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68 && b[3]! >= 0x31 && b[3]! <= 0x39) {
    const m = Buffer.from(b.buffer, b.byteOffset + 4, 6).toString("hex");
    if (m === "314159265359" || m === "177245385090") {
      throw new TarError("the layer is bzip2-compressed, which OCI layers are not (tar, tar+gzip or tar+zstd): decompress it first (bzip2 -d)", { code: CODE });
    }
  }
  return "none";
}

const asBuffer = (c: Uint8Array): Buffer => (Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength));

function iterableOf(source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | string): AsyncIterable<Uint8Array> {
  if (typeof source === "string") return createReadStream(source, { highWaterMark: FILE_CHUNK });
  if (source && typeof (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === "function") return source as AsyncIterable<Uint8Array>;
  if (source && typeof (source as NodeJS.ReadableStream).on === "function") return new Readable().wrap(source as NodeJS.ReadableStream);
  throw new TypeError("openLayer: the source must be a file path, a readable stream or an async iterable of bytes");
}

/**
 * Opens a layer blob: detects its compression, decompresses it as it is read, and digests both sides.
 * Nothing is read until `chunks` is.
 */
export function openLayer(source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | string, options: OpenLayerOptions = {}): LayerStream {
  const input = iterableOf(source);
  const windowLimit = options.zstdWindowLimit ?? 128 * 1024 * 1024;
  const given = createHash("sha256");
  const plain = createHash("sha256");
  let size = 0;
  let uncompressedSize = 0;
  let compression: Compression | undefined;
  let result: LayerResult | undefined;
  let opened = false;

  async function* raw(): AsyncGenerator<Buffer, void, undefined> {
    for await (const c of input) {
      if (!(c instanceof Uint8Array)) throw new TarError(`the layer source gave ${typeof c} where bytes were expected`, { code: CODE });
      if (c.length === 0) continue;
      const b = asBuffer(c);
      given.update(b);
      size += b.length;
      yield b;
    }
  }

  async function* decompressed(): AsyncGenerator<Buffer, void, undefined> {
    const it = raw();
    try {
      const head: Buffer[] = [];
      let headLength = 0;
      while (headLength < HEAD) {
        const r = await it.next();
        if (r.done) break;
        head.push(r.value);
        headLength += r.value.length;
      }
      compression = detectCompression(Buffer.concat(head, headLength));
      async function* whole(): AsyncGenerator<Buffer, void, undefined> {
        yield* head.splice(0);
        for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
      }
      const out = compression === "gzip" ? gunzip(whole()) : compression === "zstd" ? unzstd(whole(), windowLimit) : whole();
      for await (const c of out) {
        if (compression !== "none") plain.update(c);
        uncompressedSize += c.length;
        yield c;
      }
      const digest = `sha256:${given.digest("hex")}`;
      result = { digest, diffId: compression === "none" ? digest : `sha256:${plain.digest("hex")}`, size, uncompressedSize };
    } finally {
      await it.return();
    }
  }

  return {
    chunks: {
      [Symbol.asyncIterator]() {
        if (opened) throw new Error("openLayer: chunks can be read once");
        opened = true;
        return decompressed();
      },
    },
    get compression(): Compression {
      if (compression === undefined) throw new Error("openLayer: the compression is known once chunks has been read from");
      return compression;
    },
    result(): LayerResult {
      if (!result) throw new Error("openLayer: result() is known once chunks has been read to its end");
      return { ...result };
    },
  };
}

/** zlib's errors as TarErrors naming the format; anything else (the source's own errors) as it is. */
function zlibError(err: unknown, format: string): unknown {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === "string" && e.code.startsWith("Z_")) {
    return new TarError(`${format} data is damaged or truncated: ${e.message}`, { code: CODE });
  }
  return err;
}

/** Runs chunks through a zlib transform, pulling the source only as the output is taken. */
async function* throughZlib(source: AsyncIterable<Buffer>, z: ReturnType<typeof createGunzip>, format: string): AsyncGenerator<Buffer, void, undefined> {
  const input = Readable.from(source, { objectMode: false });
  pipeline(input, z, () => {}); // errors reach the loop below through z
  try {
    for await (const c of z) yield c as Buffer;
  } catch (err) {
    throw zlibError(err, format);
  } finally {
    input.destroy();
    z.destroy();
  }
}

/** gzip, several members one after another as `gzip -d` takes them (Node's gunzip reads on past a member). */
function gunzip(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer, void, undefined> {
  return throughZlib(source, createGunzip({ chunkSize: 128 * 1024 }), "gzip");
}

export interface GzipOptions {
  /** zlib level 0-9; default 6, what docker and containerd use. */
  level?: number;
}

/**
 * Compresses chunks to one gzip member. Deterministic for one Node version: Node's gzip header has mtime 0
 * and no name; the bytes can change with the zlib Node bundles, so digests are for this build, not forever.
 */
export function gzipChunks(source: AsyncIterable<Uint8Array>, options: GzipOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  async function* bytes(): AsyncGenerator<Buffer, void, undefined> {
    for await (const c of source) if (c.length) yield asBuffer(c);
  }
  return throughZlib(bytes(), createGzip({ level: options.level ?? 6 }), "gzip");
}

/** zstd through fzstd (pure JS; Node 20's zlib has none), fed one whole unit (frame header, block, ...) at a time. */
async function* unzstd(source: AsyncIterable<Buffer>, windowLimit: number): AsyncGenerator<Buffer, void, undefined> {
  let out: Uint8Array[] = [];
  const d = new Decompress((chunk) => {
    if (chunk.length) out.push(chunk);
  });
  const frames = new ZstdFrames(windowLimit);
  const push = (u: Uint8Array, final = false) => {
    try {
      d.push(u, final);
    } catch (err) {
      throw new TarError(`zstd data is damaged near byte ${frames.offset}: ${(err as Error).message}`, { code: CODE });
    }
  };
  for await (const c of source) {
    for (const unit of frames.units(c)) {
      push(unit);
      // One block in, at most a block or two out: yield before the next, so a 4-byte RLE block that
      // makes 128 KiB cannot pile up.
      if (out.length) {
        const ready = out;
        out = [];
        for (const o of ready) yield asBuffer(o);
      }
    }
  }
  frames.end();
  push(new Uint8Array(0), true);
  for (const o of out) yield asBuffer(o);
}

const ZSTD_MAGIC = 0xfd2fb528;
const BLOCK_MAX = 128 * 1024;
const FRAME = 0;
const BLOCK_HEADER = 1;
const CHECKSUM = 2;
const SKIP = 3;

/**
 * Walks zstd's framing (frame headers, block headers, checksums, skippable frames) without decoding, to hand
 * the decoder whole units and to refuse what would make it allocate without bound: a window over the limit,
 * a block over 128 KiB, dictionaries (fzstd has none), garbage between frames, a stream that stops mid-frame.
 */
class ZstdFrames {
  /** Bytes of the blob walked so far, for messages. */
  offset = 0;
  private state = FRAME;
  private readonly head = Buffer.alloc(18);
  private headN = 0;
  private unit: Buffer | null = null;
  private unitN = 0;
  private unitLength = 0;
  private checksum = false;
  private skipLeft = 0;

  constructor(private readonly windowLimit: number) {}

  private fail(why: string): never {
    throw new TarError(`zstd data is damaged at byte ${this.offset}: ${why}`, { code: CODE });
  }

  /** The whole length of the unit whose first `n` bytes are in head, or 0 while more are needed for it. */
  private lengthOf(n: number): number {
    const h = this.head;
    switch (this.state) {
      case FRAME: {
        if (n < 4) return 0;
        const magic = h.readUInt32LE(0);
        if ((magic & 0xfffffff0) === 0x184d2a50) return n < 8 ? 0 : 8;
        if (magic !== ZSTD_MAGIC) this.fail(n === 4 && this.offset === 0 ? "not a zstd frame" : "not a zstd frame (trailing garbage?)");
        if (n < 5) return 0;
        const fhd = h[4]!;
        const single = (fhd >> 5) & 1;
        const fcs = [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
        return 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + fcs;
      }
      case BLOCK_HEADER: {
        if (n < 3) return 0;
        const b = h[0]! | (h[1]! << 8) | (h[2]! << 16);
        const type = (b >> 1) & 3;
        const size = b >>> 3;
        if (type === 3) this.fail("reserved block type");
        if (size > BLOCK_MAX) this.fail(`a block of ${size} bytes (at most ${BLOCK_MAX})`);
        return 3 + (type === 1 ? 1 : size);
      }
      default: // CHECKSUM
        return n < 4 ? 0 : 4;
    }
  }

  /** Checks a complete unit and moves to the next state. */
  private accept(u: Buffer): void {
    switch (this.state) {
      case FRAME: {
        if (u.length === 8) {
          this.skipLeft = u.readUInt32LE(4);
          this.state = this.skipLeft ? SKIP : FRAME;
          return;
        }
        const fhd = u[4]!;
        if (fhd & 0x08) this.fail("reserved bit set in the frame header");
        this.checksum = (fhd & 0x04) !== 0;
        const single = (fhd >> 5) & 1;
        let at = 5 + (single ? 0 : 1);
        const dictBytes = [0, 1, 2, 4][fhd & 3]!;
        const dict = dictBytes ? u.readUIntLE(at, dictBytes) : 0;
        at += dictBytes;
        if (dict !== 0) this.fail(`the frame needs dictionary ${dict}, and dictionaries are not supported`);
        let window: number;
        if (!single) {
          const wd = u[5]!;
          const base = 2 ** (10 + (wd >> 3));
          window = base + (base / 8) * (wd & 7);
        } else {
          const fcsBytes = u.length - at;
          window = fcsBytes === 8 ? Number(u.readBigUInt64LE(at)) : u.readUIntLE(at, fcsBytes) + (fcsBytes === 2 ? 256 : 0);
        }
        if (window > this.windowLimit) {
          this.fail(`the frame's window is ${window} bytes, over the ${this.windowLimit}-byte limit (as zstd -d refuses without --memory)`);
        }
        this.state = BLOCK_HEADER;
        return;
      }
      case BLOCK_HEADER:
        if (u[0]! & 1) this.state = this.checksum ? CHECKSUM : FRAME;
        return;
      default:
        this.state = FRAME;
    }
  }

  /** Cuts a chunk into units for the decoder: views where a unit lies in the chunk, copies where it spans. */
  *units(c: Buffer): Generator<Buffer, void, undefined> {
    let p = 0;
    while (p < c.length) {
      if (this.state === SKIP) {
        const k = Math.min(this.skipLeft, c.length - p);
        yield c.subarray(p, p + k);
        p += k;
        this.offset += k;
        this.skipLeft -= k;
        if (this.skipLeft === 0) this.state = FRAME;
        continue;
      }
      if (this.unit === null) {
        const start = p - this.headN; // the unit's start in this chunk, if it began here
        let length = 0;
        while (p < c.length && length === 0) {
          this.head[this.headN++] = c[p++]!;
          length = this.lengthOf(this.headN);
        }
        if (length === 0) break;
        if (start >= 0 && c.length - start >= length) {
          const u = c.subarray(start, start + length);
          p = start + length;
          this.headN = 0;
          this.accept(u);
          this.offset += length;
          yield u;
          continue;
        }
        this.unit = Buffer.allocUnsafe(length); // fresh: the decoder may keep a view of what it is given
        this.head.copy(this.unit, 0, 0, this.headN);
        this.unitN = this.headN;
        this.unitLength = length;
        this.headN = 0;
      }
      const k = Math.min(this.unitLength - this.unitN, c.length - p);
      c.copy(this.unit, this.unitN, p, p + k);
      this.unitN += k;
      p += k;
      if (this.unitN === this.unitLength) {
        const u = this.unit;
        this.unit = null;
        this.accept(u);
        this.offset += u.length;
        yield u;
      }
    }
  }

  /** At the end of the blob: it must not stop inside a frame. */
  end(): void {
    if (this.state !== FRAME || this.headN !== 0 || this.unit !== null) this.fail("it ends inside a frame (truncated)");
  }
}
