/**
 * Names are bytes. Inside ovl a path is a *byte string*: a JS string whose every character is one byte
 * (0-255), as latin1 decoding gives it, so slicing, comparing and joining work on the kernel's bytes. At the
 * edges it becomes what the caller asked for:
 *
 * - a Buffer (`encoding: "buffer"`), byte for byte;
 * - a string (the default): UTF-8, with every byte that is not part of valid UTF-8 as a lone surrogate
 *   U+DC80-U+DCFF ("surrogateescape", as Python's os.fsdecode does). Nothing is conflated (`t\xff` and
 *   `t\xef\xbf\xbd`, the bytes of U+FFFD, stay two names), and such a string given back to ovl means the
 *   same bytes again. JSON.stringify writes the surrogates as `\udcff`, so JSON stays valid and recoverable.
 */
import { isUtf8 } from "node:buffer";
import { invalidArgType, invalidArgValue } from "./errors.js";

/** How a caller wants paths back. */
export type PathEncoding = "utf8" | "buffer";

/** A path as callers give it. */
export type PathLike = string | Buffer;

const NON_ASCII = /[^\x00-\x7f]/;
/** A lone low surrogate U+DC80-U+DCFF (one standing for a byte; not the second half of a pair). */
const ESCAPED = /(?<![\ud800-\udbff])[\udc80-\udcff]/;

/** True when a byte string (or any string) is plain ASCII: then it is the same string in every view. */
export const isAscii = (s: string): boolean => !NON_ASCII.test(s);

/** The bytes of a Buffer as a byte string. */
export const bytesOf = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");

/** A byte string as a Buffer. */
export const toBuffer = (b: string): Buffer => Buffer.from(b, "latin1");

/** A path as a caller gave it, as a byte string (a string means its UTF-8 bytes, lone escapes as their byte). */
export function pathBytes(p: PathLike): string {
  if (typeof p !== "string") return bytesOf(p);
  if (isAscii(p)) return p;
  if (!ESCAPED.test(p)) return Buffer.from(p, "utf8").toString("latin1");
  let out = "";
  let run = 0;
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    const pairTail = i > 0 && p.charCodeAt(i - 1) >= 0xd800 && p.charCodeAt(i - 1) <= 0xdbff;
    if (c >= 0xdc80 && c <= 0xdcff && !pairTail) {
      out += Buffer.from(p.slice(run, i), "utf8").toString("latin1") + String.fromCharCode(c - 0xdc00);
      run = i + 1;
    }
  }
  return out + Buffer.from(p.slice(run), "utf8").toString("latin1");
}

/** A byte string as the string view: UTF-8, undecodable bytes as U+DC80-U+DCFF. */
export function decodeBytes(b: string): string {
  if (isAscii(b)) return b;
  const buf = toBuffer(b);
  if (isUtf8(buf)) return buf.toString("utf8");
  let out = "";
  for (let i = 0; i < buf.length; ) {
    const n = utf8SequenceLength(buf, i);
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + buf[i]!);
      i++;
    } else {
      out += buf.toString("utf8", i, i + n);
      i += n;
    }
  }
  return out;
}

/** The length of the valid UTF-8 sequence starting at `i`, or 0 if the byte there starts none. */
function utf8SequenceLength(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  const cont = (k: number) => i + k < b.length && (b[i + k]! & 0xc0) === 0x80;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    const c1 = b[i + 1]!;
    if (c === 0xe0 && c1 < 0xa0) return 0; // overlong
    if (c === 0xed && c1 >= 0xa0) return 0; // UTF-16 surrogates
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const c1 = b[i + 1]!;
    if (c === 0xf0 && c1 < 0x90) return 0;
    if (c === 0xf4 && c1 >= 0x90) return 0;
    return 4;
  }
  return 0;
}

/** Whether a byte string is valid UTF-8. */
export const isUtf8Bytes = (b: string): boolean => isAscii(b) || isUtf8(toBuffer(b));

/** A byte string in the encoding asked for. */
export function encodeOut(b: string, encoding: "buffer"): Buffer;
export function encodeOut(b: string, encoding?: PathEncoding): string;
export function encodeOut(b: string, encoding?: PathEncoding): string | Buffer;
export function encodeOut(b: string, encoding: PathEncoding = "utf8"): string | Buffer {
  return encoding === "buffer" ? toBuffer(b) : decodeBytes(b);
}

/** What the addon takes for a byte string: the string itself when ASCII (its bytes are its UTF-8), else a Buffer. */
export const nativePath = (b: string): string | Buffer => (isAscii(b) ? b : toBuffer(b));

/** `encoding` option: "utf8" (the default) or "buffer". */
export function checkEncoding(value: unknown, name = "options.encoding"): PathEncoding {
  if (value === undefined || value === "utf8" || value === "utf-8") return "utf8";
  if (value === "buffer") return "buffer";
  if (typeof value !== "string") throw invalidArgType(name, "of type string", value);
  throw invalidArgValue(name, value, 'must be "utf8" or "buffer"');
}

/** A path argument: a non-empty string or Buffer without NUL (Node's own rule), as a byte string. */
export function checkPathLike(value: unknown, name: string): string {
  if (typeof value === "string") {
    if (value === "") throw invalidArgValue(name, value, "must be a non-empty string or Buffer");
    if (value.includes("\0")) throw invalidArgValue(name, value, "must be a string without null bytes");
    return pathBytes(value);
  }
  if (value instanceof Uint8Array) {
    if (value.length === 0) throw invalidArgValue(name, value, "must be a non-empty string or Buffer");
    if (value.includes(0)) throw invalidArgValue(name, value, "must be a Buffer without null bytes");
    return bytesOf(value);
  }
  throw invalidArgType(name, "of type string or an instance of Buffer or Uint8Array", value);
}

/**
 * A path string as ovl gives it back to its exact bytes (U+DC80-U+DCFF stand for the bytes that were not
 * UTF-8), for `node:fs` and other tools: `fs.readdirSync(pathToBuffer(m.target))`.
 */
export const pathToBuffer = (p: string): Buffer => toBuffer(pathBytes(p));

/** Bytes as the string view ovl uses: UTF-8, with undecodable bytes as U+DC80-U+DCFF. */
export const bufferToPath = (b: Uint8Array): string => decodeBytes(bytesOf(b));
