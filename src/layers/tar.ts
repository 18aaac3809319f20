/**
 * A streaming tar codec for OCI/Docker image layers: pure code over bytes, no file system.
 *
 * Names are bytes: every name, link target, user/group name and xattr name is a *byte string* (one char per
 * byte, latin1), exactly the archive's bytes, PAX values included (never UTF-8-decoded, whatever
 * `hdrcharset` says). Nothing is normalised here: `../x`, `/abs` or `a//b` come out as stored, for the
 * caller to judge.
 *
 * The reader takes ustar, POSIX pax (`x` and `g`), GNU (`L`/`K` long names, base-256 numbers, the old GNU
 * magic) and v7. Where tar implementations disagree it follows Go's archive/tar, which Docker and containerd
 * use to apply layers, so a layer means here what it means there (noted where it matters).
 */

export type TarEntryType = "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";

export interface TarTime {
  sec: number;
  /** 0..999,999,999, also for times before 1970 (-1.5 s is `{ sec: -2, nsec: 500_000_000 }`). */
  nsec: number;
}

export interface TarEntry {
  /** Byte string, after PAX `path` / GNU `L`; not normalised. Directories keep the archive's trailing `/`. */
  name: string;
  type: TarEntryType;
  /** Permission bits, `& 0o7777` (setuid, setgid and sticky kept). */
  mode: number;
  uid: number;
  gid: number;
  /** Byte strings; "" when the archive has none (v7). */
  uname: string;
  gname: string;
  /** Body bytes: 0 for everything but files. */
  size: number;
  mtime: TarTime;
  /** Byte string (PAX `linkpath` / GNU `K`), as stored, for every type ("" when none). */
  linkname: string;
  /** Only for char and block devices; 0 otherwise. */
  devmajor: number;
  devminor: number;
  /** From PAX `SCHILY.xattr.NAME` (and `LIBARCHIVE.xattr.NAME`), global records first, in archive order. */
  xattrs: Array<[name: string, value: Buffer]>;
  /** Byte offset of the entry's first header (its PAX or GNU long-name header, if any) in the tar stream. */
  offset: number;
}

export interface ReadTarOptions {
  /** Files up to this size come whole as `data`; larger ones stream as `body`. Default 1 MiB. */
  inlineLimit?: number;
}

export interface TarItem {
  entry: TarEntry;
  /**
   * A file's whole body when `size <= inlineLimit`. It may share memory with the source's chunk (no copy
   * when the body lies in one chunk): copy it if you keep many small ones for long.
   */
  data?: Buffer;
  /**
   * A larger file's body, in chunks as they arrive (views of the source's chunks). Read it before pulling
   * the next item; what is left unread is skipped then, and reading it afterwards throws.
   */
  body?: AsyncIterable<Buffer>;
}

/** A malformed archive or an entry this codec will not write; `entry` is the byte-string name when known. */
export class TarError extends Error {
  readonly code: string;
  readonly entry?: string;
  /** Byte offset of the header concerned in the (decompressed) tar stream. */
  readonly offset?: number;

  constructor(detail: string, info: { code?: string; entry?: string; offset?: number } = {}) {
    const code = info.code ?? "ERR_OVL_TAR";
    const where: string[] = [];
    if (info.entry !== undefined) where.push(`entry '${printableName(info.entry)}'`);
    if (info.offset !== undefined) where.push(`${info.entry !== undefined ? "header " : ""}at byte ${info.offset}`);
    super(`${code}: ${where.length ? `${where.join(" ")}: ` : ""}${detail}`);
    this.name = "TarError";
    this.code = code;
    if (info.entry !== undefined) this.entry = info.entry;
    if (info.offset !== undefined) this.offset = info.offset;
  }
}

const PRINTABLE_ASCII = /^[\x20-\x5b\x5d-\x7e]*$/;
/** Past this many bytes a name in a message is cut: a PAX name may be a megabyte long. */
const MESSAGE_NAME_MAX = 300;

/**
 * A byte-string name for a message: UTF-8 shown as text; control characters, C1 controls, invisible
 * formatting characters, backslash and bytes that are not UTF-8 escaped (`\x1b`, `\xff`, `\u{202e}`).
 * (Self-contained rather than shared with src/output.ts, so src/layers/ has no imports into a tree that is
 * being rearranged.)
 */
export function printableName(bytes: string): string {
  const cut = bytes.length > MESSAGE_NAME_MAX;
  const s = cut ? bytes.slice(0, MESSAGE_NAME_MAX) : bytes;
  const tail = cut ? `...(${bytes.length} bytes)` : "";
  if (PRINTABLE_ASCII.test(s)) return s + tail;
  const b = Buffer.from(s, "latin1");
  let out = "";
  for (let i = 0; i < b.length; ) {
    const c = b[i]!;
    const n = c < 0x80 ? 1 : utf8Length(b, i);
    if (n === 1 && c >= 0x20 && c < 0x7f) out += c === 0x5c ? "\\\\" : String.fromCharCode(c);
    else if (n <= 1) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else {
      const ch = b.toString("utf8", i, i + n);
      const cp = ch.codePointAt(0)!;
      out += cp <= 0x9f || /^[\p{Cf}\u2028\u2029]$/u.test(ch) ? `\\u{${cp.toString(16)}}` : ch;
    }
    i += Math.max(n, 1);
  }
  return out + tail;
}

/** The length of the valid UTF-8 sequence starting at `i` (a byte >= 0x80), or 0 if none starts there. */
function utf8Length(b: Buffer, i: number): number {
  const c = b[i]!;
  const cont = (k: number) => i + k < b.length && (b[i + k]! & 0xc0) === 0x80;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    const c1 = b[i + 1]!;
    if ((c === 0xe0 && c1 < 0xa0) || (c === 0xed && c1 >= 0xa0)) return 0; // overlong; surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const c1 = b[i + 1]!;
    if ((c === 0xf0 && c1 < 0x90) || (c === 0xf4 && c1 >= 0x90)) return 0; // overlong; past U+10FFFF
    return 4;
  }
  return 0;
}

const BLOCK = 512;
/** Cap on one extended header (PAX `x`/`g`, GNU `L`/`K`) and on all of them before one entry. */
export const MAX_EXTENDED_HEADER = 1024 * 1024;
/** Cap on what global PAX records hold at once. */
const MAX_GLOBAL_RECORDS = 1024 * 1024;
const DEFAULT_INLINE_LIMIT = 1024 * 1024;
const EMPTY = Buffer.alloc(0);

const padOf = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

/**
 * The source, one chunk at a time, with a read position. Reads that fit in the chunk are views of it; a
 * header (or small body) that spans chunks is made contiguous by copying just its bytes (ensure).
 */
class Input {
  buf: Buffer = EMPTY;
  pos = 0;
  /** Stream offset of buf[0]. */
  base = 0;
  /** A read from the source is under way (a body being read while the next item is asked for). */
  busy = false;
  /** The source has ended. */
  ended = false;
  /** What is left of a chunk after the part that ensure() copied out of it. */
  private stash: Buffer | null = null;
  private readonly it: AsyncIterator<Uint8Array>;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.it = source[Symbol.asyncIterator]();
  }

  get offset(): number {
    return this.base + this.pos;
  }

  get avail(): number {
    return this.buf.length - this.pos;
  }

  /** The next non-empty chunk from the source (or the stash), or null at its end. */
  private async fetch(): Promise<Buffer | null> {
    if (this.stash) {
      const s = this.stash;
      this.stash = null;
      return s;
    }
    if (this.ended) return null;
    this.busy = true;
    try {
      for (;;) {
        const r = await this.it.next();
        if (r.done) {
          this.ended = true;
          return null;
        }
        const c: unknown = r.value;
        if (!(c instanceof Uint8Array)) {
          throw new TarError(`the source gave ${typeof c === "string" ? "a string" : typeof c} where bytes were expected (read files without an encoding)`);
        }
        if (c.length) return Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      }
    } finally {
      this.busy = false;
    }
  }

  /** Moves to the next chunk (the current one must be used up); false at the end of the source. */
  async next(): Promise<boolean> {
    const c = await this.fetch();
    this.base += this.buf.length;
    this.pos = 0;
    this.buf = c ?? EMPTY;
    return c !== null;
  }

  /**
   * Makes the next `n` bytes contiguous in buf from pos, copying only those bytes; false when the source
   * ends first (then buf holds all there was).
   */
  async ensure(n: number): Promise<boolean> {
    if (this.avail >= n) return true;
    // Nothing left here: the next chunk itself, no copy, if it holds them.
    if (this.avail === 0 && (!(await this.next()) || this.avail >= n)) return this.avail >= n;
    const parts = [this.buf.subarray(this.pos)];
    let have = this.avail;
    let c: Buffer | null = null;
    while (have < n && (c = await this.fetch()) !== null) {
      const want = n - have;
      if (c.length > want) {
        parts.push(c.subarray(0, want));
        this.stash = c.subarray(want);
        have = n;
      } else {
        parts.push(c);
        have += c.length;
      }
    }
    this.base += this.pos;
    this.pos = 0;
    this.buf = Buffer.concat(parts, have);
    return have >= n;
  }

  /** Skips `n` bytes; returns how many were there (fewer only at the source's end). */
  async skip(n: number): Promise<number> {
    let left = n;
    while (left > 0) {
      if (this.avail === 0 && !(await this.next())) break;
      const k = Math.min(left, this.avail);
      this.pos += k;
      left -= k;
    }
    return n - left;
  }

  async close(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      await this.it.return?.();
    }
  }
}

/** What a header's bytes say, before PAX and GNU long names are applied. */
interface Raw {
  offset: number;
  /** The name for messages: the header's own (prefix joined), then the entry's once PAX and GNU names apply. */
  entry: string;
}

type Latin1Slicer = { latin1Slice(start: number, end: number): string };
/**
 * Bytes as a byte string. Buffer's latin1Slice is what toString("latin1", start, end) ends in; called
 * directly it skips the argument handling, which shows on names read 20,000 times a layer.
 */
const latin1: (b: Buffer, start: number, end: number) => string =
  typeof (Buffer.prototype as unknown as Partial<Latin1Slicer>).latin1Slice === "function"
    ? (b, start, end) => (b as unknown as Latin1Slicer).latin1Slice(start, end)
    : (b, start, end) => b.toString("latin1", start, end);

function cstr(h: Buffer, start: number, len: number): string {
  let end = start;
  const lim = start + len;
  while (end < lim && h[end] !== 0) end++;
  return end === start ? "" : latin1(h, start, end);
}

function fieldName(h: Buffer, p: number): string {
  const name = cstr(h, p, 100);
  if (!isUstar(h, p)) return name;
  // star puts atime/ctime after a 131-byte prefix and "tar\0" at the end of the block.
  const star = h[p + 508] === 0x74 && h[p + 509] === 0x61 && h[p + 510] === 0x72 && h[p + 511] === 0;
  const prefix = cstr(h, p + 345, star ? 131 : 155);
  return prefix ? `${prefix}/${name}` : name;
}

/** POSIX ustar magic "ustar\0" (pax too). */
const isUstar = (h: Buffer, p: number) =>
  h[p + 257] === 0x75 && h[p + 258] === 0x73 && h[p + 259] === 0x74 && h[p + 260] === 0x61 && h[p + 261] === 0x72 && h[p + 262] === 0;
/** The old GNU magic "ustar  \0" (no prefix field). */
const isGnu = (h: Buffer, p: number) =>
  h[p + 257] === 0x75 && h[p + 258] === 0x73 && h[p + 259] === 0x74 && h[p + 260] === 0x61 && h[p + 261] === 0x72 &&
  h[p + 262] === 0x20 && h[p + 263] === 0x20 && h[p + 264] === 0;

/**
 * A numeric field: octal (leading spaces, ended by NUL, space or the field's end; all blank means 0, as Go
 * reads it), or GNU base-256 when the top bit of the first byte is set (negative when the next bit is too).
 */
function numField(h: Buffer, start: number, len: number, what: string, raw: Raw, signed = false): number {
  const first = h[start]!;
  if (first & 0x80) return base256(h, start, len, what, raw, signed);
  const lim = start + len;
  let i = start;
  while (i < lim && h[i] === 0x20) i++;
  let v = 0;
  for (; i < lim; i++) {
    const d = h[i]! - 0x30;
    if (d < 0 || d > 7) break;
    v = v * 8 + d; // at most 12 digits: exact
  }
  if (i < lim && h[i] !== 0 && h[i] !== 0x20) {
    throw new TarError(`the ${what} field is not an octal number (${JSON.stringify(h.toString("latin1", start, lim))})`, raw);
  }
  return v;
}

function base256(h: Buffer, start: number, len: number, what: string, raw: Raw, signed: boolean): number {
  const negative = (h[start]! & 0x40) !== 0;
  const inv = negative ? 0xff : 0;
  let v = 0;
  for (let i = 0; i < len; i++) {
    let c = h[start + i]! ^ inv;
    if (i === 0) c &= 0x7f;
    v = v * 256 + c;
    if (v > Number.MAX_SAFE_INTEGER) {
      throw new TarError(`the ${what} field (base-256) is beyond 2^53`, raw);
    }
  }
  if (!negative) return v;
  if (!signed) throw new TarError(`the ${what} field is negative`, raw);
  return -v - 1; // two's complement: -a-1 == ~a
}

const UNSUPPORTED_TYPES: Record<string, string> = {
  S: "GNU sparse file",
  V: "GNU volume label",
  M: "GNU multi-volume continuation",
  N: "old GNU long file names",
  D: "GNU incremental directory dump",
  X: "Solaris extended header",
  A: "Solaris access control list",
  E: "Solaris extended attributes",
  I: "inode metadata",
};

function typeOf(flag: number): TarEntryType | undefined {
  switch (flag) {
    case 0x30: // '0'
    case 0: // '\0', old regular file
    case 0x37: // '7', contiguous file: a regular file everywhere that matters
      return "file";
    case 0x31:
      return "hardlink";
    case 0x32:
      return "symlink";
    case 0x33:
      return "char";
    case 0x34:
      return "block";
    case 0x35:
      return "dir";
    case 0x36:
      return "fifo";
    default:
      return undefined;
  }
}

function badPax(i: number, why: string, raw: Raw): TarError {
  return new TarError(`malformed PAX record at byte ${i} of the extended header: ${why}`, raw);
}

/** Parses the PAX records in body[from, to): "LEN key=value\n", LEN counting the whole record. */
function parsePax(body: Buffer, from: number, to: number, into: Pax, raw: Raw): void {
  let i = from;
  while (i < to) {
    let len = 0;
    let j = i;
    for (; j < to && j - i < 8; j++) {
      const d = body[j]! - 0x30;
      if (d < 0 || d > 9) break;
      len = len * 10 + d;
    }
    if (j === i || j >= to || body[j] !== 0x20) throw badPax(i - from, "no length", raw);
    if (len < j - i + 4 || i + len > to) throw badPax(i - from, `length ${len} does not fit`, raw);
    const end = i + len - 1;
    if (body[end] !== 0x0a) throw badPax(i - from, "no newline at its end", raw);
    let eq = j + 1;
    while (eq < end && body[eq] !== 0x3d) eq++;
    if (eq >= end || eq === j + 1) throw badPax(i - from, "no key=value", raw);
    // atime and ctime (GNU tar writes both for every entry) are told from their bytes: no string made.
    const k = eq - j - 1;
    if (k === 5 && (body[j + 1] === 0x61 || body[j + 1] === 0x63) && body[j + 2] === 0x74 && body[j + 3] === 0x69 && body[j + 4] === 0x6d && body[j + 5] === 0x65) {
      i += len;
      continue;
    }
    into.set(latin1(body, j + 1, eq), body, eq + 1, end);
    i += len;
  }
}

const XATTR_SCHILY = "SCHILY.xattr.";
const XATTR_LIBARCHIVE = "LIBARCHIVE.xattr.";

/**
 * The PAX records that mean something for a layer, as byte strings. In an entry's own ('x') records an
 * empty value means "the header's field stands" (POSIX) and is kept as "", shadowing a global record; in
 * global ('g') records an empty value removes the record. Other keys (atime, ctime, comment, hdrcharset...)
 * are ignored.
 */
class Pax {
  path: string | undefined = undefined;
  linkpath: string | undefined = undefined;
  size: string | undefined = undefined;
  uid: string | undefined = undefined;
  gid: string | undefined = undefined;
  uname: string | undefined = undefined;
  gname: string | undefined = undefined;
  mtime: string | undefined = undefined;
  /** xattr name -> value, in archive order (a name seen again keeps its place, takes the new value). */
  xattrs: Map<string, Buffer> | null = null;
  /** A GNU.sparse.* key, if any: sparse files are refused. */
  sparse: string | null = null;

  constructor(private readonly global: boolean) {}

  /** Takes the record `key` with the value body[start, end) (a string made only for the keys kept). */
  set(key: string, body: Buffer, start: number, end: number): void {
    switch (key) {
      case "path":
        this.path = this.value(body, start, end);
        return;
      case "linkpath":
        this.linkpath = this.value(body, start, end);
        return;
      case "size":
        this.size = this.value(body, start, end);
        return;
      case "uid":
        this.uid = this.value(body, start, end);
        return;
      case "gid":
        this.gid = this.value(body, start, end);
        return;
      case "uname":
        this.uname = this.value(body, start, end);
        return;
      case "gname":
        this.gname = this.value(body, start, end);
        return;
      case "mtime":
        this.mtime = this.value(body, start, end);
        return;
      case "atime":
      case "ctime":
        return; // GNU tar writes both for every entry in pax format; a layer keeps neither
    }
    if (key.startsWith(XATTR_SCHILY)) {
      // An empty value is an empty xattr (GNU tar writes them so), not a removal. Copied: small, kept long.
      (this.xattrs ??= new Map()).set(key.slice(XATTR_SCHILY.length), Buffer.from(body.subarray(start, end)));
    } else if (key.startsWith(XATTR_LIBARCHIVE)) {
      // libarchive %-encodes the name and base64-encodes the value (and usually writes SCHILY too).
      const name = key.slice(XATTR_LIBARCHIVE.length).replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
      (this.xattrs ??= new Map()).set(name, Buffer.from(body.toString("latin1", start, end), "base64"));
    } else if (key.startsWith("GNU.sparse.")) {
      this.sparse = key;
    }
  }

  private value(body: Buffer, start: number, end: number): string | undefined {
    if (start === end) return this.global ? undefined : "";
    return latin1(body, start, end);
  }

  /** Bytes held, to cap what global records can pile up. */
  held(): number {
    let n = 0;
    for (const s of [this.path, this.linkpath, this.size, this.uid, this.gid, this.uname, this.gname, this.mtime]) n += s?.length ?? 0;
    if (this.xattrs) for (const [k, v] of this.xattrs) n += k.length + v.length;
    return n;
  }
}

/** A local record over a global one; "" (said empty locally) or none: undefined, so the header field stands. */
const pick = (local: string | undefined, global: string | undefined): string | undefined => {
  const v = local ?? global;
  return v === "" ? undefined : v;
};

const DECIMAL = /^[0-9]{1,16}$/;

function paxNumber(key: string, v: string, raw: Raw): number {
  const n = DECIMAL.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) throw new TarError(`PAX ${key} ${JSON.stringify(v)} is not a decimal number below 2^53`, raw);
  return n;
}

/** "SEC[.FRACTION]", possibly negative; digits past nanoseconds are dropped, as Go does. */
function paxTime(key: string, v: string, raw: Raw): TarTime {
  const negative = v.charCodeAt(0) === 0x2d;
  let i = negative ? 1 : 0;
  let whole = 0;
  const from = i;
  for (; i < v.length; i++) {
    const d = v.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) break;
    whole = whole * 10 + d;
  }
  let ok = i > from && i - from <= 16 && Number.isSafeInteger(whole);
  let nsec = 0;
  if (ok && i < v.length) {
    ok = v.charCodeAt(i++) === 0x2e;
    let used = 0;
    for (; ok && i < v.length; i++) {
      const d = v.charCodeAt(i) - 0x30;
      if (d < 0 || d > 9) ok = false;
      else if (used < 9) {
        nsec = nsec * 10 + d;
        used++;
      }
    }
    for (; used < 9; used++) nsec *= 10;
  }
  if (!ok) throw new TarError(`PAX ${key} ${JSON.stringify(v)} is not a time in seconds`, raw);
  if (!negative) return { sec: whole, nsec };
  return nsec === 0 ? { sec: -whole, nsec: 0 } : { sec: -whole - 1, nsec: 1e9 - nsec };
}

/**
 * Sum of a block's bytes: the checksum, and all-zero blocks. Hot (every header), so four bytes at a time
 * through a word view where the block is 4-byte aligned (the usual case: chunks start aligned and headers
 * sit at multiples of 512): two 16-bit lanes per word, which 128 words cannot overflow (128 * 510 < 2^16).
 */
function blockSum(h: Buffer, p: number): number {
  const at = h.byteOffset + p;
  if ((at & 3) === 0) {
    const w = new Uint32Array(h.buffer, at, BLOCK >> 2);
    let lanes = 0;
    for (let i = 0; i < BLOCK >> 2; i++) {
      const v = w[i]!;
      lanes += (v & 0x00ff00ff) + ((v >>> 8) & 0x00ff00ff);
    }
    return (lanes & 0xffff) + Math.floor(lanes / 0x10000);
  }
  let sum = 0;
  for (let i = p, end = p + BLOCK; i < end; i++) sum += h[i]!;
  return sum;
}

/** The extended headers before an entry (its own PAX records, GNU long name and link), and global records. */
interface Pending {
  local: Pax | null;
  global: Pax | null;
  longName: string | null;
  longLink: string | null;
  /** Set by parseEntry: a body to pass over that the entry does not own (an old-style directory's). */
  skip: number;
}

/** An entry from its header and what extended headers said before it. */
function parseEntry(h: Buffer, p: number, raw: Raw, x: Pending, offset: number): TarEntry {
  const { local, global } = x;
  const hasPax = local !== null || global !== null;
  let name = raw.entry;
  if (x.longName !== null) name = x.longName;
  if (hasPax) name = pick(local?.path, global?.path) ?? name;
  raw.entry = name;
  const sparse = local?.sparse ?? global?.sparse;
  if (sparse) throw new TarError(`GNU sparse file (PAX ${sparse}): sparse files are not supported`, raw);

  const flag = h[p + 156]!;
  let type = typeOf(flag);
  if (type === undefined) {
    const c = String.fromCharCode(flag);
    const what = UNSUPPORTED_TYPES[c];
    throw new TarError(`unsupported entry type '${printableName(c)}'${what ? ` (${what})` : ` (0x${flag.toString(16)})`}`, raw);
  }
  const named = isUstar(h, p) || isGnu(h, p); // v7 headers have no uname, gname or device fields

  let size = numField(h, p + 124, 12, "size", raw);
  const mode = numField(h, p + 100, 8, "mode", raw) & 0o7777;
  let uid = numField(h, p + 108, 8, "uid", raw);
  let gid = numField(h, p + 116, 8, "gid", raw);
  let mtime: TarTime = { sec: numField(h, p + 136, 12, "mtime", raw, true), nsec: 0 };
  let uname = named ? cstr(h, p + 265, 32) : "";
  let gname = named ? cstr(h, p + 297, 32) : "";
  let linkname = x.longLink ?? cstr(h, p + 157, 100);
  let xattrs: Array<[string, Buffer]> = [];
  if (hasPax) {
    let v: string | undefined;
    if ((v = pick(local?.linkpath, global?.linkpath)) !== undefined) linkname = v;
    if ((v = pick(local?.size, global?.size)) !== undefined) size = paxNumber("size", v, raw);
    if ((v = pick(local?.uid, global?.uid)) !== undefined) uid = paxNumber("uid", v, raw);
    if ((v = pick(local?.gid, global?.gid)) !== undefined) gid = paxNumber("gid", v, raw);
    if ((v = pick(local?.uname, global?.uname)) !== undefined) uname = v;
    if ((v = pick(local?.gname, global?.gname)) !== undefined) gname = v;
    if ((v = pick(local?.mtime, global?.mtime)) !== undefined) mtime = paxTime("mtime", v, raw);
    const gx = global?.xattrs;
    const lx = local?.xattrs;
    if (gx && lx) xattrs = [...new Map([...gx, ...lx])];
    else if (gx || lx) xattrs = [...(gx ?? lx)!];
  }
  let devmajor = 0;
  let devminor = 0;
  if (named && (type === "char" || type === "block")) {
    devmajor = numField(h, p + 329, 8, "devmajor", raw);
    devminor = numField(h, p + 337, 8, "devminor", raw);
  }

  // Old tars mark a directory by a trailing slash on a regular-file entry. Its declared body, if any, is
  // skipped (as GNU tar does); the other header-only types carry no body whatever their size field says
  // (as Go's archive/tar reads them, and so Docker and containerd).
  let skip = 0;
  if (type === "file" && name.endsWith("/")) {
    type = "dir";
    skip = size;
  }
  if (type !== "file") size = 0;
  x.skip = skip;
  return { name, type, mode, uid, gid, uname, gname, size, mtime, linkname, devmajor, devminor, xattrs, offset };
}

/** step() needs `need` bytes from the read position in one piece, or to know that the source has ended. */
const NEED = null;
/** The end-of-archive marker has been read. */
const END = 1;

/**
 * The parser proper, synchronous: step() consumes the headers and small bodies that lie whole in the
 * current chunk, and returns an item, END, or NEED when it must wait for data. Kept out of the async
 * generator so the hot path is plain optimisable code and the generator only awaits and yields.
 */
class Parser {
  readonly x: Pending = { local: null, global: null, longName: null, longLink: null, skip: 0 };
  /** Bytes step() needs contiguous, when it returns NEED. */
  need = 0;
  /** After an item: bytes to pass over before the next step (an old-style directory's body). */
  skipAfter = 0;
  /** The header of the item just returned, for messages. */
  raw: Raw = { offset: 0, entry: "" };
  /** Extended-header bytes seen for the pending entry, and where its first header was (-1: none). */
  private extended = 0;
  private first = -1;

  constructor(
    private readonly inp: Input,
    private readonly inlineLimit: number,
  ) {}

  step(): TarItem | typeof NEED | typeof END {
    const inp = this.inp;
    const x = this.x;
    for (;;) {
      const offset = inp.offset;
      const avail = inp.avail;
      if (avail < BLOCK) {
        if (!inp.ended) return this.wait(BLOCK);
        if (this.first >= 0) throw new TarError("the archive ends after an extended header, before the entry it belongs to", { offset: this.first });
        if (avail === 0) return END; // at a block boundary with no end marker: accepted, as GNU tar does
        throw new TarError(`truncated archive: it ends ${avail} bytes into a header block`, { offset });
      }
      const h = inp.buf;
      const p = inp.pos;
      const sum = blockSum(h, p);
      if (sum === 0) {
        if (this.first >= 0) throw new TarError("an end-of-archive block follows an extended header, before the entry it belongs to", { offset: this.first });
        if (avail < 2 * BLOCK && !inp.ended) return this.wait(2 * BLOCK);
        // A second zero block, or the source's end, closes the archive (Go accepts both). Data after a lone
        // zero block is an error, as in Go: GNU tar would stop there, and the two must not see different files.
        for (let i = p + BLOCK, end = p + Math.min(avail, 2 * BLOCK); i < end; i++) {
          if (h[i] !== 0) throw new TarError("a lone zero block is followed by data: a damaged archive", { offset });
        }
        inp.pos += Math.min(avail, 2 * BLOCK);
        return END;
      }
      const raw: Raw = { offset, entry: fieldName(h, p) };
      checkSum(h, p, sum, raw);
      const flag = h[p + 156]!;

      if (flag === 0x78 || flag === 0x67 || flag === 0x4c || flag === 0x4b) {
        // 'x' PAX, 'g' PAX global, 'L' GNU long name, 'K' GNU long link: their body is metadata.
        const size = numField(h, p + 124, 12, "size", raw);
        if (size > MAX_EXTENDED_HEADER || this.extended + size > MAX_EXTENDED_HEADER) {
          throw new TarError(`extended header of ${size} bytes: over the ${MAX_EXTENDED_HEADER}-byte limit for one entry's extended headers`, raw);
        }
        const whole = BLOCK + size + padOf(size);
        if (avail < whole) {
          if (!inp.ended) return this.wait(whole);
          throw new TarError(`truncated archive: it ends inside an extended header's body (${size} bytes)`, raw);
        }
        if (this.first < 0) this.first = offset;
        this.extended += size;
        const from = p + BLOCK;
        inp.pos += whole;
        if (flag === 0x78) parsePax(h, from, from + size, (x.local ??= new Pax(false)), raw);
        else if (flag === 0x67) {
          parsePax(h, from, from + size, (x.global ??= new Pax(true)), raw);
          if (x.global.held() > MAX_GLOBAL_RECORDS) throw new TarError(`global PAX records hold over ${MAX_GLOBAL_RECORDS} bytes`, raw);
          // A global header stands alone: it does not begin an entry.
          if (x.local === null && x.longName === null && x.longLink === null) {
            this.first = -1;
            this.extended = 0;
          }
        } else if (flag === 0x4c) x.longName = cstr(h, from, size);
        else x.longLink = cstr(h, from, size);
        continue;
      }

      const entry = parseEntry(h, p, raw, x, this.first >= 0 ? this.first : offset);
      const size = entry.size;
      const pad = padOf(size + x.skip);
      let data: Buffer | undefined;
      let body: AsyncIterable<Buffer> | undefined;
      if (entry.type === "file" && size <= this.inlineLimit) {
        const whole = BLOCK + size + pad;
        if (avail < whole) {
          if (!inp.ended) return this.wait(whole); // parsed again once the data is here
          throw truncatedBody(raw, entry);
        }
        data = h.subarray(p + BLOCK, p + BLOCK + size);
        inp.pos += whole;
        this.skipAfter = 0;
      } else {
        inp.pos += BLOCK;
        this.skipAfter = entry.type === "file" ? 0 : x.skip + pad;
        if (entry.type === "file") body = new Body(inp, raw, entry, pad);
      }
      x.local = null;
      x.longName = null;
      x.longLink = null;
      this.extended = 0;
      this.first = -1;
      this.raw = raw;
      return { entry, data, body };
    }
  }

  private wait(n: number): typeof NEED {
    this.need = n;
    return NEED;
  }
}

/**
 * Reads a tar stream entry by entry. Memory stays bounded whatever the sizes: bodies over `inlineLimit`
 * stream, extended headers are capped at 1 MiB. Every defect of the archive is a TarError. After the end
 * marker the rest of the source is read and ignored (GNU tar pads to 10 KiB records), so a digest taken
 * over the source sees every byte.
 */
export async function* readTar(source: AsyncIterable<Uint8Array>, options: ReadTarOptions = {}): AsyncGenerator<TarItem, void, undefined> {
  const inlineLimit = options.inlineLimit ?? DEFAULT_INLINE_LIMIT;
  if (!Number.isSafeInteger(inlineLimit) || inlineLimit < 0) throw new TarError(`inlineLimit must be a non-negative integer, not ${String(inlineLimit)}`);
  const inp = new Input(source);
  const parser = new Parser(inp, inlineLimit);
  try {
    for (;;) {
      let item = parser.step();
      while (item === NEED) {
        await inp.ensure(parser.need);
        item = parser.step();
      }
      if (item === END) break;
      if (parser.skipAfter && (await inp.skip(parser.skipAfter)) < parser.skipAfter) throw truncatedBody(parser.raw, item.entry);
      yield item;
      if (item.body) await (item.body as Body).finish();
    }
    while ((await inp.skip(1 << 30)) > 0) {} // the rest after the end marker: read, ignored
  } finally {
    await inp.close();
  }
}

function truncatedBody(raw: Raw, entry: TarEntry): TarError {
  return new TarError(`truncated archive: it ends inside the body (${entry.size} bytes) or its padding`, raw);
}

function checkSum(h: Buffer, p: number, sum: number, raw: Raw): void {
  const stored = numField(h, p + 148, 8, "checksum", raw);
  // The checksum counts its own field as eight spaces.
  let unsigned = sum + 8 * 0x20;
  for (let i = p + 148; i < p + 156; i++) unsigned -= h[i]!;
  if (stored === unsigned) return;
  // Some old tars summed signed chars; GNU tar and Go accept either.
  let high = 0;
  for (let i = p; i < p + BLOCK; i++) if (h[i]! >= 0x80 && (i < p + 148 || i >= p + 156)) high++;
  if (stored === unsigned - 256 * high) return;
  throw new TarError(`bad header checksum (stored ${stored.toString(8)}, computed ${unsigned.toString(8)}): not a tar header, or a damaged one`, raw);
}

/** A streamed body: views of the source's chunks as they come, for the consumer to read before moving on. */
class Body implements AsyncIterable<Buffer> {
  private left: number;
  private live = true;
  private started = false;

  constructor(
    private readonly inp: Input,
    private readonly raw: Raw,
    private readonly entry: TarEntry,
    private readonly pad: number,
  ) {
    this.left = entry.size;
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.started) throw new TarError("a body can be read once", this.raw);
    this.started = true;
    return this.chunks();
  }

  private async *chunks(): AsyncGenerator<Buffer, void, undefined> {
    const inp = this.inp;
    for (;;) {
      if (!this.live) throw new TarError("this body was read after the next entry had been asked for", this.raw);
      if (this.left === 0) return;
      if (inp.avail === 0 && !(await inp.next())) throw truncatedBody(this.raw, this.entry);
      const n = Math.min(this.left, inp.avail);
      const chunk = inp.buf.subarray(inp.pos, inp.pos + n);
      inp.pos += n;
      this.left -= n;
      yield chunk;
    }
  }

  /** The next item is asked for: what is unread is skipped, and reading on is refused. */
  async finish(): Promise<void> {
    this.live = false;
    if (this.inp.busy) throw new TarError("the next entry was asked for while a read of this body was still pending", this.raw);
    const rest = this.left + this.pad;
    this.left = 0;
    if ((await this.inp.skip(rest)) < rest) throw truncatedBody(this.raw, this.entry);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writer

export interface TarWriteEntry {
  /** Byte string. Directories without a trailing slash: the writer appends '/' as docker and containerd do. */
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  uname?: string;
  gname?: string;
  /** Body bytes; 0 for everything but files. */
  size: number;
  mtime: TarTime;
  /** For symlinks and hard links. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Array<[string, Buffer]>;
}

const FLAG: Record<TarEntryType, string> = { file: "0", hardlink: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6" };
const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;
const NOT_BYTES = /[^\x00-\xff]/;

/**
 * Writes ustar headers, with a PAX 'x' header before one only when ustar cannot say it: a name or link
 * target too long for the fields (bytes that fit are written raw, whatever they are, as GNU tar does, so
 * any bytes round-trip exactly), uid/gid/size/mtime past the octal fields, sub-second mtimes, xattrs.
 * Deterministic: the same entries give the same bytes (PAX records in a fixed order, xattrs sorted by name,
 * the PAX header's own name and metadata fixed).
 */
export class TarWriter {
  /** The header block(s) for an entry: its PAX header and records first when needed. */
  header(entry: TarWriteEntry): Buffer {
    const e = checkEntry(entry);
    const name = e.type === "dir" && !e.name.endsWith("/") ? `${e.name}/` : e.name;
    const records: Array<[string, Buffer | string]> = [];

    let nameField = name;
    let prefixField = "";
    if (name.length > 100) {
      const split = splitUstar(name);
      if (split) [prefixField, nameField] = split;
      else {
        records.push(["path", name]);
        nameField = name.slice(0, 100); // as GNU tar: only readers that ignore PAX see it
      }
    }
    let linkField = e.linkname;
    if (linkField.length > 100) {
      records.push(["linkpath", linkField]);
      linkField = linkField.slice(0, 100);
    }
    let sizeField = e.size;
    if (e.size > MAX_OCTAL_11) {
      records.push(["size", String(e.size)]);
      sizeField = 0; // as GNU tar and Go: the true value is in the PAX record
    }
    let uidField = e.uid;
    if (e.uid > MAX_OCTAL_7) {
      records.push(["uid", String(e.uid)]);
      uidField = 0;
    }
    let gidField = e.gid;
    if (e.gid > MAX_OCTAL_7) {
      records.push(["gid", String(e.gid)]);
      gidField = 0;
    }
    let unameField = e.uname;
    if (unameField.length > 32) {
      records.push(["uname", unameField]);
      unameField = "";
    }
    let gnameField = e.gname;
    if (gnameField.length > 32) {
      records.push(["gname", gnameField]);
      gnameField = "";
    }
    let mtimeField = e.mtime.sec;
    if (e.mtime.nsec !== 0 || e.mtime.sec < 0 || e.mtime.sec > MAX_OCTAL_11) {
      records.push(["mtime", paxTimeString(e.mtime)]);
      if (e.mtime.sec < 0 || e.mtime.sec > MAX_OCTAL_11) mtimeField = 0;
    }
    for (const [k, v] of [...e.xattrs].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) records.push([XATTR_SCHILY + k, v]);

    const main = ustarHeader({
      name: nameField,
      prefix: prefixField,
      flag: FLAG[e.type],
      mode: e.mode,
      uid: uidField,
      gid: gidField,
      size: sizeField,
      mtime: mtimeField,
      linkname: linkField,
      uname: unameField,
      gname: gnameField,
      devmajor: e.devmajor,
      devminor: e.devminor,
    });
    if (records.length === 0) return main;

    const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, typeof v === "string" ? Buffer.from(v, "latin1") : v)));
    if (data.length > MAX_EXTENDED_HEADER) {
      throw new TarError(`its PAX records take ${data.length} bytes, over the ${MAX_EXTENDED_HEADER}-byte limit readers here accept`, { entry: e.name });
    }
    const paxHeader = ustarHeader({
      name: paxHeaderName(name),
      prefix: "",
      flag: "x",
      mode: 0o644,
      uid: 0,
      gid: 0,
      size: data.length,
      mtime: 0,
      linkname: "",
      uname: "",
      gname: "",
      devmajor: 0,
      devminor: 0,
    });
    return Buffer.concat([paxHeader, data, Buffer.alloc(padOf(data.length)), main]);
  }

  /** The zero padding that follows a body of `size` bytes. */
  padding(size: number): Buffer {
    if (!Number.isSafeInteger(size) || size < 0) throw new TarError(`padding: size must be a non-negative integer, not ${String(size)}`);
    return Buffer.alloc(padOf(size));
  }

  /** The end-of-archive marker: two zero blocks. */
  end(): Buffer {
    return Buffer.alloc(2 * BLOCK);
  }
}

/**
 * The PAX header's own name: "PaxHeaders/" and the entry's last component, cut to the 100-byte field.
 * Only tars that do not know PAX use it (they extract it as a file); a fixed top-level folder keeps that
 * in one place and the name a function of the entry's name alone. GNU tar puts it beside the entry
 * (%d/PaxHeaders/%f), which for a long directory is exactly what does not fit.
 */
function paxHeaderName(name: string): string {
  const trimmed = name.replace(/\/+$/, "");
  const base = trimmed.slice(trimmed.lastIndexOf("/") + 1) || "_";
  return `PaxHeaders/${base}`.slice(0, 100);
}

/** A name split at a '/' into ustar's prefix (<= 155 bytes) and name (<= 100) fields: the longest prefix, as Go does. */
function splitUstar(name: string): [string, string] | undefined {
  let length = Math.min(name.length, 156);
  if (length === name.length && name.endsWith("/")) length--;
  const i = name.lastIndexOf("/", length - 1);
  if (i <= 0) return undefined;
  const suffix = name.length - i - 1;
  if (suffix === 0 || suffix > 100 || i > 155) return undefined;
  return [name.slice(0, i), name.slice(i + 1)];
}

function paxTimeString(t: TarTime): string {
  if (t.nsec === 0) return String(t.sec);
  // -1.5 s is { sec: -2, nsec: 500000000 }: written "-1.5".
  const [sign, sec, nsec] = t.sec < 0 ? ["-", -(t.sec + 1), 1e9 - t.nsec] : ["", t.sec, t.nsec];
  return `${sign}${sec}.${String(nsec).padStart(9, "0").replace(/0+$/, "")}`;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = key.length + value.length + 3; // " ", "=", "\n"
  let len = body + String(body).length;
  if (String(len).length > String(body).length) len++;
  return Buffer.concat([Buffer.from(`${len} ${key}=`, "latin1"), value, Buffer.from("\n")]);
}

interface UstarFields {
  name: string;
  prefix: string;
  flag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname: string;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
}

function ustarHeader(f: UstarFields): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(f.name, 0, 100, "latin1");
  octal(h, 100, 8, f.mode);
  octal(h, 108, 8, f.uid);
  octal(h, 116, 8, f.gid);
  octal(h, 124, 12, f.size);
  octal(h, 136, 12, f.mtime);
  h.write(f.flag, 156, 1, "latin1");
  h.write(f.linkname, 157, 100, "latin1");
  h.write("ustar\x0000", 257, 8, "latin1");
  h.write(f.uname, 265, 32, "latin1");
  h.write(f.gname, 297, 32, "latin1");
  octal(h, 329, 8, f.devmajor);
  octal(h, 337, 8, f.devminor);
  h.write(f.prefix, 345, 155, "latin1");
  // Checksum over the block with its own field as spaces; written as GNU tar does: 6 digits, NUL, space.
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return h;
}

/** Zero-padded octal digits filling the field but its last byte, which stays NUL. */
function octal(h: Buffer, at: number, len: number, v: number): void {
  h.write(v.toString(8).padStart(len - 1, "0"), at, len - 1, "latin1");
}

type CheckedEntry = Required<Omit<TarWriteEntry, "xattrs">> & { xattrs: Array<[string, Buffer]> };

function checkEntry(entry: TarWriteEntry): CheckedEntry {
  const name = entry.name;
  const bad = (why: string) => new TarError(why, { entry: typeof name === "string" ? name : String(name) });
  if (typeof name !== "string" || name.length === 0) throw bad("the name must be a non-empty byte string");
  const bytes = (what: string, s: unknown, allowEmpty = true): string => {
    if (s === undefined) s = "";
    if (typeof s !== "string") throw bad(`${what} must be a byte string`);
    if (NOT_BYTES.test(s)) throw bad(`${what} is not a byte string (it has a character above U+00FF; encode it to bytes first)`);
    if (s.includes("\0")) throw bad(`${what} has a NUL byte, which tar cannot carry`);
    if (!allowEmpty && s.length === 0) throw bad(`${what} is empty`);
    return s;
  };
  bytes("the name", name);
  if (!(entry.type in FLAG)) throw bad(`unknown entry type ${JSON.stringify(entry.type)}`);
  if (entry.type !== "dir" && name.endsWith("/")) throw bad(`a ${entry.type} name cannot end in '/' (readers take that for a directory)`);
  const int = (what: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) throw bad(`${what} must be an integer from 0 to ${max}, not ${String(v)}`);
    return v;
  };
  const mode = int("mode", entry.mode, 0o7777);
  const uid = int("uid", entry.uid);
  const gid = int("gid", entry.gid);
  const size = int("size", entry.size);
  if (entry.type !== "file" && size !== 0) throw bad(`a ${entry.type} has no body: size must be 0, not ${size}`);
  const mt = entry.mtime;
  if (!mt || !Number.isSafeInteger(mt.sec) || !Number.isInteger(mt.nsec) || mt.nsec < 0 || mt.nsec > 999_999_999) {
    throw bad(`mtime must be { sec: integer, nsec: 0..999999999 }, not ${JSON.stringify(mt)}`);
  }
  const isLink = entry.type === "symlink" || entry.type === "hardlink";
  const linkname = bytes("the link target", entry.linkname, !isLink);
  if (!isLink && linkname !== "") throw bad(`a ${entry.type} has no link target`);
  const isDev = entry.type === "char" || entry.type === "block";
  const devmajor = int("devmajor", entry.devmajor ?? 0, MAX_OCTAL_7);
  const devminor = int("devminor", entry.devminor ?? 0, MAX_OCTAL_7);
  if (!isDev && (devmajor || devminor)) throw bad(`a ${entry.type} has no device numbers`);
  const xattrs = entry.xattrs ?? [];
  const seen = new Set<string>();
  for (const x of xattrs) {
    const [k, v] = Array.isArray(x) ? x : [];
    bytes("an xattr name", k, false);
    // The PAX key ends at the first '=': a name with one cannot be read back.
    if (k!.includes("=")) throw bad(`xattr name '${printableName(k!)}' has a '=', which a PAX record key cannot hold`);
    if (!Buffer.isBuffer(v)) throw bad(`xattr '${printableName(k!)}': the value must be a Buffer`);
    if (seen.has(k!)) throw bad(`xattr '${printableName(k!)}' is given twice`);
    seen.add(k!);
  }
  return {
    name,
    type: entry.type,
    mode,
    uid,
    gid,
    uname: bytes("uname", entry.uname),
    gname: bytes("gname", entry.gname),
    size,
    mtime: { sec: mt.sec, nsec: mt.nsec },
    linkname,
    devmajor,
    devminor,
    xattrs,
  };
}
