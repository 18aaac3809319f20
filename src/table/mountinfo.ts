/**
 * A parser for the text of /proc/PID/mountinfo. Pure: no I/O here; the caller reads the file.
 *
 * One line per mount, fields separated by single spaces (fs/proc_namespace.c, show_mountinfo()):
 *
 *     ID PARENT MAJ:MIN ROOT TARGET MOUNT-OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTS
 *
 * - ROOT, TARGET, FSTYPE and SOURCE go through seq_escape(" \t\n\\"): space, tab, newline and backslash
 *   become `\040 \011 \012 \134`. Nothing else is escaped: colon, `=`, `#`, CR, non-ASCII bytes and
 *   commas in SOURCE are printed raw.
 * - Zero or more optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`) come before
 *   the lone `-`. A `-` inside a path cannot be a field of its own, since the spaces around it are escaped.
 * - SOURCE may be empty (the kernel then prints two spaces in a row).
 * - SUPER-OPTS is `rw`/`ro` and the filesystem's options, joined by commas. Filesystems print option
 *   values through seq_show_option()/seq_escape(", \t\n\\"), so a comma inside a value is `\054` and the
 *   options must be split on the raw commas before decoding. One exception: SELinux prints
 *   `context="...,..."` (and fscontext/defcontext/rootcontext) with raw commas inside double quotes.
 */
import { type PathEncoding, bytesOf, checkEncoding, decodeBytes, encodeOut, isAscii, isUtf8Bytes, pathBytes } from "../kernel/bytes.js";
import { invalidArgType } from "../kernel/errors.js";
import type { MountInfo } from "../types.js";

/** A line that could not be parsed. */
export interface MountInfoIssue {
  /** 1-based line number in the text. */
  line: number;
  /** The line as it was, without its newline. */
  text: string;
  /** Why it was rejected. */
  reason: string;
}

export interface ParseMountInfoResult<P extends string | Buffer = string> {
  mounts: MountInfo<P>[];
  issues: MountInfoIssue[];
}

/** Thrown by `parseMountInfo(text, { strict: true })` at the first line it cannot parse. */
export class MountInfoParseError extends Error {
  readonly code: "ERR_OVL_MOUNTINFO_PARSE" = "ERR_OVL_MOUNTINFO_PARSE";
  /** 1-based line number. */
  readonly line: number;
  /** The offending line, without its newline. */
  readonly text: string;
  /** Why it was rejected. */
  readonly reason: string;

  constructor(issue: MountInfoIssue) {
    const shown = issue.text.length > 200 ? `${issue.text.slice(0, 200)}…` : issue.text;
    super(`mountinfo line ${issue.line}: ${issue.reason}: ${JSON.stringify(shown)}`);
    this.name = "MountInfoParseError";
    this.line = issue.line;
    this.text = issue.text;
    this.reason = issue.reason;
  }
}

const BACKSLASH = 0x5c;
const COLON = 0x3a;
const DASH = 0x2d;
const QUOTE = 0x22;

/**
 * Decodes the kernel's `\ooo` octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash,
 * `\054` comma, ...) in a byte string (one character per byte), giving the bytes they stand for. A backslash
 * not followed by three octal digits (the first 0-3) is left as it is.
 */
export function decodeMountInfoField(raw: string): string {
  let i = raw.indexOf("\\");
  if (i === -1) return raw;
  let out = "";
  let last = 0;
  const n = raw.length;
  while (i !== -1) {
    // Collect the run of consecutive valid escapes starting at i.
    let j = i;
    let decoded: string | undefined;
    while (isOctalEscape(raw, j)) {
      const v = ((raw.charCodeAt(j + 1) - 48) << 6) | ((raw.charCodeAt(j + 2) - 48) << 3) | (raw.charCodeAt(j + 3) - 48);
      decoded = (decoded ?? "") + String.fromCharCode(v);
      j += 4;
      if (j >= n || raw.charCodeAt(j) !== BACKSLASH) break;
    }
    if (decoded === undefined) {
      i = raw.indexOf("\\", i + 1);
      continue;
    }
    out += raw.slice(last, i) + decoded;
    last = j;
    i = j < n ? raw.indexOf("\\", j) : -1;
  }
  return last === 0 ? raw : out + raw.slice(last);
}

function isOctalEscape(s: string, i: number): boolean {
  if (s.charCodeAt(i) !== BACKSLASH) return false;
  const a = s.charCodeAt(i + 1);
  const b = s.charCodeAt(i + 2);
  const c = s.charCodeAt(i + 3);
  return a >= 48 && a <= 51 && b >= 48 && b <= 55 && c >= 48 && c <= 55;
}

/**
 * Splits a mountinfo option field on its raw commas, then decodes each option. `""` gives `[]`.
 * SELinux's quoted `context="a,b"` (also fscontext, defcontext, rootcontext) stays one option.
 */
export function splitMountOptions(raw: string): string[] {
  const n = raw.length;
  if (n === 0) return [];
  // Sized up front: a big mount table keeps thousands of these arrays alive.
  let count = 1;
  for (let c = raw.indexOf(","); c !== -1; c = raw.indexOf(",", c + 1)) count++;
  if (count === 1) return [decodeMountInfoField(raw)];
  const out = new Array<string>(count);
  let k = 0;
  let p = 0;
  for (;;) {
    let c = raw.indexOf(",", p);
    if (c !== -1 && c > p && isQuotedContext(raw, p)) {
      // `key="...` : the option runs to the first raw comma after the closing quote.
      const open = raw.indexOf('"', p);
      const close = raw.indexOf('"', open + 1);
      if (close !== -1) c = raw.indexOf(",", close);
    }
    if (c === -1) {
      out[k++] = decodeMountInfoField(p === 0 ? raw : raw.slice(p));
      break;
    }
    out[k++] = decodeMountInfoField(raw.slice(p, c));
    p = c + 1;
  }
  if (k !== count) out.length = k;
  return out;
}

const QUOTED_KEYS = ["context=", "fscontext=", "defcontext=", "rootcontext="];

function isQuotedContext(s: string, p: number): boolean {
  const first = s.charCodeAt(p);
  if (first !== 0x63 && first !== 0x66 && first !== 0x64 && first !== 0x72) return false; // c f d r
  for (const key of QUOTED_KEYS) {
    if (s.startsWith(key, p)) return s.charCodeAt(p + key.length) === QUOTE;
  }
  return false;
}

/** Parses a run of decimal digits [a, b); -1 if empty, not all digits, or absurdly long. */
function parseUint(s: string, a: number, b: number): number {
  if (a >= b || b - a > 15) return -1;
  let v = 0;
  for (let k = a; k < b; k++) {
    const d = s.charCodeAt(k) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** The text as a byte string: a Buffer's bytes as they are, a string's UTF-8 bytes. */
function toBytes(text: unknown): string {
  if (typeof text === "string") return pathBytes(text);
  if (text instanceof Uint8Array) return bytesOf(text);
  throw invalidArgType("text", "of type string or an instance of Buffer or Uint8Array", text);
}

/** Options of parseMountInfo(). */
export interface ParseMountInfoOptions {
  /** Throw a MountInfoParseError for the first malformed line instead of reporting it in `issues`. */
  strict?: boolean;
  /**
   * How path-like fields (root, target, fstype, source, each mount and super option) come back: strings
   * (`"utf8"`, the default; bytes that are not UTF-8 as U+DC80-U+DCFF, and the entry's `nonUtf8` names those
   * fields) or `"buffer"`, byte for byte what the kernel holds.
   */
  encoding?: PathEncoding;
  /**
   * Only mounts of this filesystem type (e.g. `"overlay"`). Lines are picked by finding ` - TYPE ` in the
   * text, which in a well-formed line can only be the separator and the type (every space inside a field is
   * escaped), so the other lines are neither parsed nor checked: `issues` and `strict` cover only lines
   * that contain ` - TYPE `.
   */
  fstype?: string;
}

/**
 * Parses the text of /proc/PID/mountinfo: a Buffer (its bytes exactly) or a string (its UTF-8 bytes). Blank
 * lines are ignored; a final newline is optional; every other byte, a CR before the newline included, is
 * kept. A line that cannot be parsed (too few fields, an empty field the kernel always fills, a number
 * that is not one) is skipped and reported in `issues` (never thrown), unless `strict: true`, which throws
 * a MountInfoParseError for the first one.
 */
export function parseMountInfo(text: string | Uint8Array, options?: ParseMountInfoOptions & { encoding?: "utf8" }): ParseMountInfoResult;
export function parseMountInfo(text: string | Uint8Array, options: ParseMountInfoOptions & { encoding: "buffer" }): ParseMountInfoResult<Buffer>;
export function parseMountInfo(text: string | Uint8Array, options?: ParseMountInfoOptions): ParseMountInfoResult<string | Buffer>;
export function parseMountInfo(text: string | Uint8Array, options?: ParseMountInfoOptions): ParseMountInfoResult<string | Buffer> {
  const encoding = checkEncoding(options?.encoding);
  const bytes = toBytes(text);
  const r = parseMountInfoBytes(bytes, options);
  // All ASCII (the usual table): the byte strings are already the string view.
  if (encoding === "utf8" && isAscii(bytes)) return r;
  return { mounts: r.mounts.map((m) => mountInfoOut(m, encoding)), issues: r.issues.map((i) => ({ ...i, text: decodeBytes(i.text) })) };
}

/**
 * The parser itself, on a byte string (one character per byte): fields come back as byte strings. For ovl's
 * own callers, which convert at their edge.
 */
export function parseMountInfoBytes(bytes: string, options?: ParseMountInfoOptions): ParseMountInfoResult {
  const strict = options?.strict === true;
  const parser = new LineParser(bytes);
  if (typeof options?.fstype === "string") return parseLinesOfType(parser, options.fstype, strict);
  const s = parser.s;
  const len = s.length;
  const mounts: MountInfo[] = [];
  const issues: MountInfoIssue[] = [];
  let pos = 0;
  let lineNo = 0;
  while (pos < len) {
    lineNo++;
    let end = s.indexOf("\n", pos);
    if (end === -1) end = len;
    if (end > pos) {
      const mount = parser.parse(pos, end);
      if (typeof mount === "string") {
        const issue: MountInfoIssue = { line: lineNo, text: s.slice(pos, end), reason: mount };
        if (strict) throw new MountInfoParseError(issue);
        issues.push(issue);
      } else {
        mounts.push(mount);
      }
    }
    pos = end + 1;
  }
  return { mounts, issues };
}

/** parseMountInfo() of only the lines that contain ` - TYPE `: a few indexOf() calls instead of a parse per line. */
function parseLinesOfType(parser: LineParser, fstypeView: string, strict: boolean): ParseMountInfoResult {
  const s = parser.s;
  const fstype = pathBytes(fstypeView); // the text is bytes: so is what is looked for
  const needle = ` - ${fstype.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`)} `;
  const mounts: MountInfo[] = [];
  const issues: MountInfoIssue[] = [];
  // Line numbers are counted only for issues, forward from the last one counted.
  let countedTo = 0;
  let lineNo = 1;
  const lineOf = (pos: number) => {
    for (let nl = s.indexOf("\n", countedTo); nl !== -1 && nl < pos; nl = s.indexOf("\n", nl + 1)) lineNo++;
    countedTo = pos;
    return lineNo;
  };
  for (let hit = s.indexOf(needle); hit !== -1; ) {
    const start = s.lastIndexOf("\n", hit) + 1;
    let end = s.indexOf("\n", hit);
    if (end === -1) end = s.length;
    const mount = parser.parse(start, end);
    if (typeof mount === "string") {
      const issue: MountInfoIssue = { line: lineOf(start), text: s.slice(start, end), reason: mount };
      if (strict) throw new MountInfoParseError(issue);
      issues.push(issue);
    } else if (mount.fstype === fstype) {
      mounts.push(mount);
    }
    hit = s.indexOf(needle, end);
  }
  return { mounts, issues };
}

/**
 * Parses one mountinfo line (a byte string, without its newline): the mount (byte-string fields), or why the
 * line is malformed. For callers that re-parse only the lines that changed (watch()).
 */
export function parseMountInfoLine(line: string): MountInfo | string {
  return new LineParser(line).parse(0, line.length);
}

const NO_FIELDS: string[] = [];

/** Walks one text line by line. */
class LineParser {
  readonly s: string;
  /** First space at or after the last position asked for (s.length if none). */
  private nextSpace = -1;

  constructor(s: string) {
    this.s = s;
  }

  /**
   * Positions only move forward, so the cached index stays right until we pass it: every character is
   * scanned for a space once, even when lines have no spaces at all.
   */
  private spaceAt(from: number): number {
    if (this.nextSpace < from) {
      const i = this.s.indexOf(" ", from);
      this.nextSpace = i === -1 ? this.s.length : i;
    }
    return this.nextSpace;
  }

  /** Parses s[start, end); returns the mount, or why not. */
  parse(start: number, end: number): MountInfo | string {
    const s = this.s;
    let p = start;
    let sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    const id = parseUint(s, p, sp);
    if (id < 0) return "mount id is not a number";

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    const parentId = parseUint(s, p, sp);
    if (parentId < 0) return "parent id is not a number";

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    let colon = -1;
    for (let k = p; k < sp; k++) {
      if (s.charCodeAt(k) === COLON) {
        colon = k;
        break;
      }
    }
    const major = colon === -1 ? -1 : parseUint(s, p, colon);
    const minor = colon === -1 ? -1 : parseUint(s, colon + 1, sp);
    if (major < 0 || minor < 0) return "MAJ:MIN is not two numbers";

    // The kernel never prints these empty (a space inside one is escaped): an empty one means a malformed
    // line, whose later fields would otherwise be read one place off.
    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    if (sp === p) return "empty root field";
    const rootStart = p;
    const rootEnd = sp;

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    if (sp === p) return "empty mount point field";
    const targetStart = p;
    const targetEnd = sp;

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "too few fields";
    if (sp === p) return "empty mount options field";
    const mountOptsStart = p;
    const mountOptsEnd = sp;

    // Optional fields, up to the lone "-". Mostly none or one: keep the array small.
    let optionalFields: string[] = NO_FIELDS;
    for (;;) {
      p = sp + 1;
      sp = this.spaceAt(p);
      if (sp >= end) {
        return end - p === 1 && s.charCodeAt(p) === DASH ? 'nothing after the "-" separator' : 'no "-" separator';
      }
      if (sp - p === 1 && s.charCodeAt(p) === DASH) break;
      if (sp === p) return "empty optional field";
      const field = decodeMountInfoField(s.slice(p, sp));
      if (optionalFields === NO_FIELDS) optionalFields = [field];
      else optionalFields.push(field);
    }

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return 'missing source and super options after "-"';
    if (sp === p) return "empty filesystem type field";
    const fstypeStart = p;
    const fstypeEnd = sp;

    p = sp + 1;
    sp = this.spaceAt(p);
    if (sp >= end) return "missing super options";
    const sourceStart = p;
    const sourceEnd = sp;

    // Super options run to the next space (fields a future kernel might append are ignored) or line end.
    // (SOURCE may be empty: the kernel prints an empty one for some filesystems.)
    p = sp + 1;
    sp = this.spaceAt(p);
    const superStart = p;
    const superEnd = sp < end ? sp : end;
    if (superEnd === superStart) return "empty super options field";

    return {
      id,
      parentId,
      major,
      minor,
      root: decodeMountInfoField(s.slice(rootStart, rootEnd)),
      target: decodeMountInfoField(s.slice(targetStart, targetEnd)),
      mountOptions: splitMountOptions(s.slice(mountOptsStart, mountOptsEnd)),
      optionalFields: optionalFields === NO_FIELDS ? [] : optionalFields,
      fstype: decodeMountInfoField(s.slice(fstypeStart, fstypeEnd)),
      source: decodeMountInfoField(s.slice(sourceStart, sourceEnd)),
      superOptions: splitMountOptions(s.slice(superStart, superEnd)),
    };
  }
}

/** The path-like fields of a mount-table entry, by name. */
const PATH_FIELDS = ["root", "target", "fstype", "source"] as const;
const LIST_FIELDS = ["mountOptions", "superOptions"] as const;

/**
 * A parsed entry (byte-string fields) in the encoding asked for. In the string view, fields whose bytes are
 * not UTF-8 are named in `nonUtf8` (their undecodable bytes are U+DC80-U+DCFF, so nothing is conflated).
 * Extra path fields (an overlay's `lower`, `upper`...) are converted too when named in `more`.
 */
export function mountInfoOut<T extends MountInfo>(m: T, encoding: PathEncoding, more: readonly string[] = []): T {
  const out = { ...m } as Record<string, unknown>;
  const nonUtf8: string[] = [];
  const one = (key: string, v: string) => {
    if (encoding === "utf8" && isAscii(v)) return v;
    if (encoding === "utf8" && !isUtf8Bytes(v) && !nonUtf8.includes(key)) nonUtf8.push(key);
    return encodeOut(v, encoding);
  };
  for (const key of [...PATH_FIELDS, ...LIST_FIELDS, ...more]) {
    const v = out[key];
    if (typeof v === "string") out[key] = one(key, v);
    else if (Array.isArray(v)) out[key] = v.map((x: string) => one(key, x));
  }
  if (nonUtf8.length > 0) out.nonUtf8 = nonUtf8;
  return out as T;
}
