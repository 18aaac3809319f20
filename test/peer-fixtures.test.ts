/**
 * Issue 11 item 6: the mount-table parser against other projects' own mountinfo fixtures
 * (`../shared/peer-fixtures/mountinfo/`, provenance in its SOURCES.md).
 *
 * For every fixture file, every line:
 *  1. ovl's reading (`parseMountInfo(buffer, { encoding: "buffer" })`, so bytes are compared exactly) against
 *     util-linux's, `findmnt -F FILE -J -l --nofsroot -o ID,PARENT,MAJ:MIN,FSROOT,TARGET,VFS-OPTIONS,OPT-FIELDS,
 *     FSTYPE,SOURCE,FS-OPTIONS`, field by field, plus one verdict per line (a mount, a rejected line, a line
 *     skipped unread);
 *  2. ovl's reading against the values the peers' own tests assert (`expected/peers.json`, and util-linux's
 *     expected outputs `expected/*.tabfiles-parse`, `*.outputs-pairs`, `*.outputs-nofsroot`), field by field.
 * Where ovl and a peer differ on purpose, the difference is listed below (file, line, field, both values, the
 * reason). Any difference not listed fails, and so does a listed one that no longer happens.
 *
 * Mapping findmnt's output to ovl's fields (not differences):
 * - findmnt prints `null` for an empty value: an empty SOURCE (the kernel prints one), no optional fields,
 *   and a PARENT (ID, MAJ:MIN) of 0, which libmount takes for "not set".
 * - `--nofsroot`, or findmnt appends `[FSROOT]` to SOURCE for bind mounts (FSROOT is its own column here).
 * - findmnt's JSON carries path bytes raw (only `"`, `\` and control characters are escaped), so its stdout
 *   is read as latin1 and every string turned back into the exact bytes.
 * - findmnt has no line numbers: its rows are matched in order to the lines libmount reads, i.e. all lines
 *   minus the ones it reports ("parse error at line N -- ignored") and the ones it skips unread (libmount's
 *   rule: after dropping one CR before the newline and leading blanks, the line is empty or starts with `#`).
 *   The row count must come out equal, or the test fails.
 *
 * The figures (lines, fields compared, agreements, listed differences) are printed, one line per peer.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { parseMountInfo } from "../src/table/mountinfo.js";

const CI = Boolean(process.env.CI);
const dirUrl = new URL("../../shared/peer-fixtures/mountinfo/", import.meta.url);
const dir = fileURLToPath(dirUrl);
const haveFixtures = existsSync(`${dir}SOURCES.md`);

const COLUMNS = "ID,PARENT,MAJ:MIN,FSROOT,TARGET,VFS-OPTIONS,OPT-FIELDS,FSTYPE,SOURCE,FS-OPTIONS";
const findmntVersion = (() => {
  const r = spawnSync("findmnt", ["--version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
})();

// ---------------------------------------------------------------------------------------------------------
// Known, reasoned differences. `line` is 1-based; 0 means the file as a whole (a count, a verdict). Values
// are the bytes each side gives, written as latin1 strings (one character per byte).
// ---------------------------------------------------------------------------------------------------------

interface Listed {
  file: string;
  line: number;
  field: string;
  ovl: string;
  peer: string;
  reason: string;
  /** Where ovl reports the line: what its issue's reason must say (the reason given here, not another). */
  issue?: RegExp;
}

const R_CR =
  "a CR before the newline is part of the last field: the kernel prints bytes raw (it escapes only space, tab, " +
  "newline and backslash), so ovl keeps it; libmount and tailhook/libmount strip it as a DOS line end";
const R_CR_LINE =
  "a line holding only a CR: not blank to the kernel's format (ovl reports it as an issue); libmount strips the " +
  "CR and skips the then blank line, tailhook/libmount skips it too";
const R_COMMENT =
  "a '#' comment line: the kernel never writes comments into mountinfo, so ovl reports the line as an issue; " +
  "libmount skips comment lines (its reader is shared with fstab), as tailhook/libmount does";
const R_EMPTY_TARGET =
  "two spaces after the root: an empty mount point, which the kernel never prints (a space inside a path is " +
  "\\040), so ovl reports the line rather than read every later field one place off; libmount's reader skips " +
  "runs of blanks (and reads '/root' as the target), prometheus/procfs splits on single spaces and reads " +
  "target '' with '/root' as the mount options";
const R_EMPTY_OPTIONAL =
  "two spaces before the '-': an empty optional field, which the kernel never prints (each optional field is " +
  "printed as ' tag:N'), so ovl reports the line; libmount and prometheus/procfs skip the empty field";
const R_SHIFTED = (id: number) =>
  `entry id ${id} is one place earlier in ovl's list, as line 1 is not a mount to ovl: ${R_EMPTY_TARGET}`;
const R_BAD_ESCAPE =
  "'\\400' is no escape the kernel can print (a byte is \\000-\\377), so ovl keeps the four characters as " +
  "they are; libmount and tailhook/libmount compute (4*64) mod 256 = NUL, which also ends libmount's C string";

const LISTED: Listed[] = [
  // --- against findmnt (util-linux 2.38 libmount) ---
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 1, field: "line", ovl: "issue", peer: "mount", reason: R_EMPTY_TARGET, issue: /empty/i },
  { file: "procfs-case-tmpfs-mounted-at-run-but-no-optional-values.txt", line: 1, field: "line", ovl: "issue", peer: "mount", reason: R_EMPTY_OPTIONAL, issue: /empty/i },
  { file: "rust-libmount-comment.txt", line: 1, field: "line", ovl: "issue", peer: "skipped", reason: R_COMMENT },
  { file: "rust-libmount-comment.txt", line: 2, field: "line", ovl: "issue", peer: "skipped", reason: R_COMMENT },
  { file: "rust-libmount-crlf.txt", line: 1, field: "superOptions", ovl: "rw\r", peer: "rw", reason: R_CR },
  { file: "rust-libmount-crlf.txt", line: 3, field: "line", ovl: "issue", peer: "skipped", reason: R_CR_LINE },
  { file: "rust-libmount-crlf.txt", line: 4, field: "superOptions", ovl: "rw\r", peer: "rw", reason: `${R_CR} (here the last line, without a newline)` },
  { file: "rust-libmount-overflowed_escape.txt", line: 1, field: "target", ovl: "/proc\\400", peer: "/proc", reason: R_BAD_ESCAPE },
];

/** Differences from the values the peers' tests assert (peers.json; util-linux's expected outputs). */
const LISTED_ASSERTED: Listed[] = [
  // prometheus/procfs TestFSMountInfo: its first entry is the line ovl reports (empty mount point).
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 0, field: "count", ovl: "7", peer: "8", reason: R_EMPTY_TARGET },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 1, field: "entry", ovl: "issue", peer: "mount", reason: R_EMPTY_TARGET },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 2, field: "index", ovl: "0", peer: "1", reason: R_SHIFTED(16) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 3, field: "index", ovl: "1", peer: "2", reason: R_SHIFTED(17) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 4, field: "index", ovl: "2", peer: "3", reason: R_SHIFTED(21) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 5, field: "index", ovl: "3", peer: "4", reason: R_SHIFTED(194) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 6, field: "index", ovl: "4", peer: "5", reason: R_SHIFTED(177) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 7, field: "index", ovl: "5", peer: "6", reason: R_SHIFTED(1398) },
  { file: "procfs-fixtures-proc-26231-mountinfo", line: 8, field: "index", ovl: "6", peer: "7", reason: R_SHIFTED(1128) },
  { file: "procfs-case-tmpfs-mounted-at-run-but-no-optional-values.txt", line: 0, field: "valid", ovl: "invalid", peer: "valid", reason: R_EMPTY_OPTIONAL },
  { file: "procfs-case-tmpfs-mounted-at-run-but-no-optional-values.txt", line: 1, field: "entry", ovl: "issue", peer: "mount", reason: R_EMPTY_OPTIONAL },
  // tailhook/libmount
  { file: "rust-libmount-comment.txt", line: 0, field: "issues", ovl: "2", peer: "0", reason: R_COMMENT },
  { file: "rust-libmount-crlf.txt", line: 0, field: "issues", ovl: "1", peer: "0", reason: R_CR_LINE },
  { file: "rust-libmount-crlf.txt", line: 1, field: "superOptions", ovl: "rw\r", peer: "rw", reason: R_CR },
  { file: "rust-libmount-crlf.txt", line: 4, field: "superOptions", ovl: "rw\r", peer: "rw", reason: `${R_CR} (here the last line, without a newline)` },
  { file: "rust-libmount-overflowed_escape.txt", line: 1, field: "target", ovl: "/proc\\400", peer: "/proc\0", reason: R_BAD_ESCAPE },
];

// ---------------------------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------------------------

const lat = (b: Buffer): string => b.toString("latin1");
const fromLat = (s: string): Buffer => Buffer.from(s, "latin1");
const utf8 = (s: string): Buffer => Buffer.from(s, "utf8");

/** Bytes shown readably: printable ASCII as is, the rest escaped. */
function show(b: Buffer): string {
  let s = "";
  for (const c of b) {
    if (c === 0x5c) s += "\\\\";
    else if (c === 0x22) s += '\\"';
    else if (c === 0x0a) s += "\\n";
    else if (c === 0x0d) s += "\\r";
    else if (c === 0x09) s += "\\t";
    else if (c >= 0x20 && c < 0x7f) s += String.fromCharCode(c);
    else s += `\\x${c.toString(16).padStart(2, "0")}`;
  }
  return `"${s}"`;
}

/** A path-like field in buffer mode: the contract says a Buffer. */
function pathField(v: unknown, what: string): Buffer {
  if (!Buffer.isBuffer(v)) {
    throw new Error(`${what}: with encoding "buffer" a path-like field must be a Buffer, got ${typeof v} ${JSON.stringify(v)}`);
  }
  return v;
}

const joinBytes = (list: Buffer[], sep: string): Buffer => {
  const parts: Buffer[] = [];
  list.forEach((b, i) => {
    if (i > 0) parts.push(fromLat(sep));
    parts.push(b);
  });
  return Buffer.concat(parts);
};

/**
 * The string view the contract promises for some bytes: UTF-8, each byte that is not part of a valid UTF-8
 * sequence as U+DC00+byte (Python's surrogateescape). Written apart from src/ with the platform's strict
 * decoder, trying the one length a sequence can have at each position.
 */
function surrogateEscape(b: Buffer): string {
  const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  try {
    return strict.decode(b);
  } catch {
    // not all UTF-8: sequence by sequence
  }
  let out = "";
  for (let i = 0; i < b.length; ) {
    let decoded: string | undefined;
    let n = 1;
    for (; n <= 4 && i + n <= b.length; n++) {
      try {
        decoded = strict.decode(b.subarray(i, i + n));
        break;
      } catch {
        // not a whole valid sequence of this length
      }
    }
    if (decoded === undefined) {
      out += String.fromCharCode(0xdc00 + b[i]!);
      i += 1;
    } else {
      out += decoded;
      i += n;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The fixture files
// ---------------------------------------------------------------------------------------------------------

interface Source {
  file: string;
  repo: string;
}

/** The file table of SOURCES.md: `| file | repo | path | commit | what |`. */
function readSources(): Source[] {
  const text = readFileSync(`${dir}SOURCES.md`, "utf8");
  const out: Source[] = [];
  for (const line of text.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    // ["", file, repo, path, commit, what, ""]
    if (cells.length !== 7 || cells[1] === "file" || cells[1]!.startsWith("---") || cells[1] === "repo") continue;
    if (!/^[\w.-]+(\/[\w.-]+)?$/.test(cells[1]!)) continue;
    out.push({ file: cells[1]!, repo: cells[2]! });
  }
  return out;
}

/** One line of a fixture as the bytes between newlines. */
interface Line {
  no: number;
  bytes: Buffer;
}

function splitLines(buf: Buffer): Line[] {
  const lines: Line[] = [];
  let pos = 0;
  let no = 0;
  while (pos < buf.length) {
    let nl = buf.indexOf(0x0a, pos);
    if (nl === -1) nl = buf.length;
    lines.push({ no: ++no, bytes: buf.subarray(pos, nl) });
    pos = nl + 1;
  }
  return lines;
}

/** What one side made of one line. */
type Verdict = "mount" | "issue" | "blank" | "skipped";

/** The ten compared fields, in ovl's names. */
const FIELDS = ["id", "parentId", "majorMinor", "root", "target", "mountOptions", "optionalFields", "fstype", "source", "superOptions"] as const;
type FieldName = (typeof FIELDS)[number];
type Row = Record<FieldName, Buffer>;

/** ovl's entry (buffer mode) as the ten compared byte strings. */
function ovlRow(m: Record<string, unknown>, what: string): Row {
  const list = (k: string) => {
    const v = m[k];
    if (!Array.isArray(v)) throw new Error(`${what}: ${k} is not an array`);
    return v.map((x, i) => pathField(x, `${what}: ${k}[${i}]`));
  };
  const optional = m.optionalFields;
  if (!Array.isArray(optional)) throw new Error(`${what}: optionalFields is not an array`);
  return {
    id: utf8(String(m.id)),
    parentId: utf8(String(m.parentId)),
    majorMinor: utf8(`${String(m.major)}:${String(m.minor)}`),
    root: pathField(m.root, `${what}: root`),
    target: pathField(m.target, `${what}: target`),
    mountOptions: joinBytes(list("mountOptions"), ","),
    optionalFields: joinBytes(
      optional.map((f: unknown) => (Buffer.isBuffer(f) ? f : utf8(String(f)))),
      " ",
    ),
    fstype: pathField(m.fstype, `${what}: fstype`),
    source: pathField(m.source, `${what}: source`),
    superOptions: joinBytes(list("superOptions"), ","),
  };
}

interface OvlReading {
  lines: Line[];
  /** Verdict per line number. */
  verdict: Map<number, Verdict>;
  /** Entry per line number (lines with verdict "mount"). */
  entry: Map<number, Record<string, unknown>>;
  /** Line number per entry index. */
  lineOf: number[];
  mounts: Record<string, unknown>[];
  issues: { line: number; reason: string }[];
}

function readOvl(file: string): OvlReading {
  const buf = readFileSync(dir + file);
  const lines = splitLines(buf);
  const r = parseMountInfo(buf, { encoding: "buffer" }) as unknown as {
    mounts: Record<string, unknown>[];
    issues: { line: number; reason: string }[];
  };
  const issueLines = new Set(r.issues.map((i) => i.line));
  const verdict = new Map<number, Verdict>();
  const entry = new Map<number, Record<string, unknown>>();
  const lineOf: number[] = [];
  let k = 0;
  for (const l of lines) {
    if (issueLines.has(l.no)) verdict.set(l.no, "issue");
    else if (l.bytes.length === 0) verdict.set(l.no, "blank");
    else {
      verdict.set(l.no, "mount");
      const m = r.mounts[k];
      if (m) entry.set(l.no, m);
      lineOf.push(l.no);
      k++;
    }
  }
  if (k !== r.mounts.length || [...issueLines].some((n) => n < 1 || n > lines.length)) {
    throw new Error(
      `${file}: cannot tie ovl's ${r.mounts.length} mounts and issues at lines ${[...issueLines].join(",")} to the ` +
        `${lines.length} lines (${k} lines are neither blank nor issues)`,
    );
  }
  return { lines, verdict, entry, lineOf, mounts: r.mounts, issues: r.issues };
}

interface FindmntJsonRow {
  id: number | null;
  parent: number | null;
  "maj:min": string | null;
  fsroot: string | null;
  target: string | null;
  "vfs-options": string | null;
  "opt-fields": string | null;
  fstype: string | null;
  source: string | null;
  "fs-options": string | null;
}

interface FindmntReading {
  verdict: Map<number, Verdict | "rejected">;
  row: Map<number, Row>;
  /** Line numbers of the rows, in order (the lines libmount read). */
  rowLines: number[];
}

/** libmount's rule for lines it skips unread (tab_parse.c): blank or '#' after one CR and leading blanks go. */
function libmountSkips(bytes: Buffer): boolean {
  let b = bytes;
  if (b.length > 0 && b[b.length - 1] === 0x0d) b = b.subarray(0, b.length - 1);
  let i = 0;
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x09)) i++;
  return i === b.length || b[i] === 0x23;
}

function readFindmnt(file: string, lines: Line[]): FindmntReading {
  const r = spawnSync("findmnt", ["-F", dir + file, "-J", "-l", "--nofsroot", "-o", COLUMNS], { maxBuffer: 1 << 26 });
  if (r.error) throw r.error;
  const stdout = lat(r.stdout);
  const stderr = r.stderr.toString("utf8");
  const rejected = new Set<number>();
  for (const msg of stderr.split("\n").filter((s) => s !== "")) {
    const m = /: parse error at line (\d+) -- ignored$/.exec(msg);
    if (!m) throw new Error(`${file}: unexpected findmnt message: ${msg}`);
    rejected.add(Number(m[1]));
  }
  let rows: FindmntJsonRow[] = [];
  if (stdout.trim() !== "") {
    // A \uXXXX escape of a character above 0x7f would not be a byte; findmnt writes those raw.
    for (const m of stdout.matchAll(/(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})/g)) {
      if (Number.parseInt(m[1]!, 16) > 0x7f) throw new Error(`${file}: findmnt escaped a non-ASCII character: ${m[0]}`);
    }
    rows = (JSON.parse(stdout) as { filesystems: FindmntJsonRow[] }).filesystems;
  } else if (r.status !== 1) {
    throw new Error(`${file}: findmnt printed nothing but exited ${r.status}`);
  }
  const verdict = new Map<number, Verdict | "rejected">();
  const read: number[] = [];
  for (const l of lines) {
    if (rejected.has(l.no)) verdict.set(l.no, "rejected");
    else if (libmountSkips(l.bytes)) verdict.set(l.no, "skipped");
    else {
      verdict.set(l.no, "mount");
      read.push(l.no);
    }
  }
  if (read.length !== rows.length || [...rejected].some((n) => n < 1 || n > lines.length)) {
    throw new Error(
      `${file}: findmnt gave ${rows.length} rows and rejected lines ${[...rejected].join(",") || "none"}, but ` +
        `${read.length} lines are neither rejected nor skipped by libmount's rule`,
    );
  }
  const bytes = (s: string | null) => (s === null ? Buffer.alloc(0) : fromLat(s));
  // libmount takes 0 for "not set": findmnt leaves ID, PARENT and MAJ:MIN out (null) when they are 0.
  const number = (x: number | null, zero: string) => utf8(x === null ? zero : String(x));
  const row = new Map<number, Row>();
  rows.forEach((x, i) => {
    row.set(read[i]!, {
      id: number(x.id, "0"),
      parentId: number(x.parent, "0"),
      majorMinor: x["maj:min"] === null ? utf8("0:0") : bytes(x["maj:min"]),
      root: bytes(x.fsroot),
      target: bytes(x.target),
      mountOptions: bytes(x["vfs-options"]),
      optionalFields: bytes(x["opt-fields"]),
      fstype: bytes(x.fstype),
      source: bytes(x.source),
      superOptions: bytes(x["fs-options"]),
    });
  });
  return { verdict, row, rowLines: read };
}

// ---------------------------------------------------------------------------------------------------------
// Comparison bookkeeping
// ---------------------------------------------------------------------------------------------------------

interface Difference {
  file: string;
  line: number;
  field: string;
  ovl: Buffer;
  peer: Buffer;
}

class Tally {
  fields = 0;
  agree = 0;
  listed: Listed[] = [];
  unlisted: string[] = [];
  constructor(
    readonly file: string,
    readonly table: Listed[],
  ) {}

  /** Compares one field; a difference must be in the table with the very values seen. */
  compare(line: number, field: string, ovl: Buffer, peer: Buffer): void {
    this.fields++;
    if (ovl.equals(peer)) {
      this.agree++;
      return;
    }
    const d: Difference = { file: this.file, line, field, ovl, peer };
    const entry = this.table.find((e) => e.file === d.file && e.line === d.line && e.field === d.field);
    if (entry && fromLat(entry.ovl).equals(ovl) && fromLat(entry.peer).equals(peer)) {
      this.listed.push(entry);
      return;
    }
    this.unlisted.push(
      `${d.file}:${d.line} ${d.field}: ovl ${show(ovl)}, peer ${show(peer)}` +
        (entry ? ` (listed with other values: ovl ${show(fromLat(entry.ovl))}, peer ${show(fromLat(entry.peer))})` : " (not listed)"),
    );
  }

  /** Listed differences of this file that did not happen. */
  stale(): string[] {
    return this.table
      .filter((e) => e.file === this.file && !this.listed.includes(e))
      .map((e) => `${e.file}:${e.line} ${e.field}: listed (ovl ${show(fromLat(e.ovl))}, peer ${show(fromLat(e.peer))}) but not seen`);
  }
}

interface Figures {
  files: number;
  lines: number;
  findmnt: { fields: number; agree: number; listed: number };
  asserted: { fields: number; agree: number; listed: number; files: number };
}

const figures = new Map<string, Figures>();
function figuresOf(repo: string): Figures {
  let f = figures.get(repo);
  if (!f) {
    f = { files: 0, lines: 0, findmnt: { fields: 0, agree: 0, listed: 0 }, asserted: { fields: 0, agree: 0, listed: 0, files: 0 } };
    figures.set(repo, f);
  }
  return f;
}

// ---------------------------------------------------------------------------------------------------------
// 1. findmnt
// ---------------------------------------------------------------------------------------------------------

function compareWithFindmnt(file: string, tally: Tally): { ovl: OvlReading; findmnt: FindmntReading } {
  const ovl = readOvl(file);
  const fm = readFindmnt(file, ovl.lines);
  for (const l of ovl.lines) {
    const ov = ovl.verdict.get(l.no)!;
    const fv = fm.verdict.get(l.no)!;
    // One verdict per line: both read a mount, both refuse it (ovl: an issue; findmnt: a parse error), or
    // both pass over it (ovl ignores an empty line; libmount skips blank and comment lines).
    const same = (ov === "mount" && fv === "mount") || (ov === "issue" && fv === "rejected") || (ov === "blank" && fv === "skipped");
    tally.compare(l.no, "line", utf8(ov), utf8(same ? ov : fv));
    if (ov !== "mount" || fv !== "mount") continue;
    const mine = ovlRow(ovl.entry.get(l.no)!, `${file}:${l.no}`);
    const theirs = fm.row.get(l.no)!;
    for (const f of FIELDS) tally.compare(l.no, f, mine[f], theirs[f]);
  }
  return { ovl, findmnt: fm };
}

// ---------------------------------------------------------------------------------------------------------
// 2. The peers' asserted values
// ---------------------------------------------------------------------------------------------------------

type PeerEntry = Record<string, unknown>;
interface PeerFile {
  peer: string;
  count?: number;
  valid?: boolean;
  issues?: number;
  entries?: PeerEntry[];
  filters?: { kind: "single" | "prefix" | "parents" | "fstype"; arg: string[]; count: number }[];
}

const ENTRY_KEYS = new Set([
  "index",
  "id",
  "parentId",
  "major",
  "minor",
  "root",
  "target",
  "targetHex",
  "mountOptions",
  "mountOptionsSet",
  "optionalFields",
  "optionalSubset",
  "fstype",
  "source",
  "superOptions",
  "superOptionsSet",
  "superOptionsList",
]);

/** The optional-field tags prometheus/procfs keeps (mountOptionsIsValidField); it drops the others. */
const PROCFS_TAGS = new Set(["shared", "master", "propagate_from", "unbindable"]);

const sortedSet = (list: Buffer[]): Buffer => utf8(JSON.stringify([...new Set(list.map(lat))].sort()));

function compareWithPeersJson(file: string, spec: PeerFile, ovl: OvlReading, tally: Tally): void {
  for (const k of Object.keys(spec)) {
    if (!["peer", "count", "valid", "issues", "entries", "filters"].includes(k)) throw new Error(`peers.json ${file}: unknown key ${k}`);
  }
  const n = (x: number) => utf8(String(x));
  if (spec.count !== undefined) tally.compare(0, "count", n(ovl.mounts.length), n(spec.count));
  if (spec.issues !== undefined) tally.compare(0, "issues", n(ovl.issues.length), n(spec.issues));
  if (spec.valid !== undefined) {
    const verdict = ovl.issues.length === 0 && ovl.mounts.length > 0 ? "valid" : ovl.mounts.length === 0 && ovl.issues.length > 0 ? "invalid" : "mixed";
    tally.compare(0, "valid", utf8(verdict), utf8(spec.valid ? "valid" : "invalid"));
  }
  for (const e of spec.entries ?? []) {
    for (const k of Object.keys(e)) if (!ENTRY_KEYS.has(k)) throw new Error(`peers.json ${file}: unknown entry key ${k}`);
    // The entry: by mount id where the peer names one, else by position.
    let idx: number;
    let line: number;
    if (typeof e.id === "number") {
      const hits = ovl.mounts.flatMap((m, i) => (m.id === e.id ? [i] : []));
      if (hits.length > 1) throw new Error(`peers.json ${file}: id ${e.id} is not unique in ovl's reading`);
      idx = hits[0] ?? -1;
      line = idx >= 0 ? ovl.lineOf[idx]! : (ovl.lines.find((l) => lat(l.bytes).split(" ")[0] === String(e.id))?.no ?? 0);
    } else {
      if (typeof e.index !== "number") throw new Error(`peers.json ${file}: entry with neither id nor index`);
      idx = e.index < ovl.mounts.length ? e.index : -1;
      line = idx >= 0 ? ovl.lineOf[idx]! : 0;
    }
    tally.compare(line, "entry", utf8(idx >= 0 ? "mount" : (ovl.verdict.get(line) ?? "none")), utf8("mount"));
    if (idx < 0) continue;
    const m = ovl.mounts[idx]!;
    const what = `${file}:${line}`;
    const list = (k: string) => (m[k] as unknown[]).map((x, i) => pathField(x, `${what}: ${k}[${i}]`));
    const optional = (m.optionalFields as unknown[]).map((f) => (Buffer.isBuffer(f) ? f : utf8(String(f))));
    for (const [k, v] of Object.entries(e)) {
      switch (k) {
        case "id":
          if (typeof e.index === "number") tally.compare(line, "index", n(idx), n(e.index));
          break; // the selector itself
        case "index":
          break;
        case "parentId":
        case "major":
        case "minor":
          tally.compare(line, k, n(m[k] as number), n(v as number));
          break;
        case "root":
        case "target":
        case "fstype":
        case "source":
          tally.compare(line, k, pathField(m[k], `${what}: ${k}`), utf8(v as string));
          break;
        case "targetHex":
          tally.compare(line, "target", pathField(m.target, `${what}: target`), Buffer.from(v as string, "hex"));
          break;
        case "mountOptions":
        case "superOptions":
          tally.compare(line, k, joinBytes(list(k), ","), utf8(v as string));
          break;
        case "superOptionsList":
          tally.compare(line, "superOptions", utf8(JSON.stringify(list("superOptions").map(lat))), utf8(JSON.stringify((v as string[]).map((s) => lat(utf8(s))))));
          break;
        case "mountOptionsSet":
        case "superOptionsSet": {
          const field = k === "mountOptionsSet" ? "mountOptions" : "superOptions";
          tally.compare(line, field, sortedSet(list(field)), sortedSet((v as string[]).map(utf8)));
          break;
        }
        case "optionalFields":
          tally.compare(line, k, joinBytes(optional, " "), utf8(v as string));
          break;
        case "optionalSubset": {
          const kept = optional.filter((f) => PROCFS_TAGS.has(lat(f).split(":")[0]!));
          tally.compare(line, "optionalFields", sortedSet(kept), sortedSet((v as string[]).map(utf8)));
          break;
        }
      }
    }
  }
  // moby/sys's filters (mountinfo_filters.go) over ovl's entries, counted as moby's test counts them.
  for (const f of spec.filters ?? []) {
    const targets = ovl.mounts.map((m) => lat(pathField(m.target, `${file}: target`)));
    const fstypes = ovl.mounts.map((m) => lat(pathField(m.fstype, `${file}: fstype`)));
    const args = f.arg.map((a) => lat(utf8(a)));
    let count: number;
    if (f.kind === "single") count = targets.includes(args[0]!) ? 1 : 0; // SingleEntryFilter stops at the first
    else if (f.kind === "prefix") count = targets.filter((t) => t.startsWith(args[0]!)).length;
    else if (f.kind === "parents") count = targets.filter((t) => args[0]!.startsWith(t)).length;
    else count = fstypes.filter((t) => args.includes(t)).length;
    tally.compare(0, `filter ${f.kind}(${f.arg.join(",")})`, n(count), n(f.count));
  }
}

/** libmount's merged OPTIONS (optstr) from VFS and FS options: merge_optstr() in libmount/src/fs.c. */
function libmountOptions(vfs: Buffer[], fs: Buffer[]): Buffer {
  const v = lat(joinBytes(vfs, ","));
  const f = lat(joinBytes(fs, ","));
  if (v === f) return fromLat(v);
  const list = [...vfs, ...fs].map(lat);
  const remove = (name: string) => {
    const i = list.indexOf(name);
    if (i === -1) return 0;
    list.splice(i, 1);
    return 1;
  };
  const rw = remove("rw") + remove("rw");
  let ro = 0;
  if (rw !== 2) {
    ro += remove("ro");
    if (ro + rw < 2) ro += remove("ro");
  }
  return fromLat([ro ? "ro" : "rw", ...list].join(","));
}

/** libmount's propagation flags from the optional fields (mnt_fs_get_propagation: substring tests). */
function libmountPropagation(optional: Buffer): string | undefined {
  const s = lat(optional);
  const shared = s.includes("shared:");
  const slave = s.includes("master:");
  const unbindable = s.includes("unbindable");
  if (!shared && !slave && !unbindable) return undefined;
  return `${shared ? "shared" : ""} ${slave ? "slave" : ""} ${unbindable ? "unbindable" : ""}`;
}

/** An ovl entry in the form util-linux's expected outputs print. */
function libmountView(m: Record<string, unknown>, what: string) {
  const row = ovlRow(m, what);
  const list = (k: string) => (m[k] as unknown[]).map((x, i) => pathField(x, `${what}: ${k}[${i}]`));
  return { row, options: libmountOptions(list("mountOptions"), list("superOptions")), propagation: libmountPropagation(row.optionalFields) };
}

/** `test_mount_tab --parse` output (mnt_fs_print_debug): "------ fs:" blocks of "key: value" lines. */
function compareTabfilesParse(file: string, expectedFile: string, ovl: OvlReading, fm: FindmntReading, tally: Tally): void {
  const text = lat(readFileSync(dir + expectedFile));
  const blocks = text.split("------ fs:\n").slice(1);
  if (!text.startsWith("------ fs:\n")) throw new Error(`${expectedFile}: not a tabfiles-parse output`);
  tally.compare(0, "count", utf8(String(ovl.mounts.length)), utf8(String(blocks.length)));
  const KEYS: Record<string, string> = {
    "source:": "source",
    "target:": "target",
    "fstype:": "fstype",
    "optstr:": "optstr",
    "VFS-optstr:": "VFS-optstr",
    "FS-opstr:": "FS-opstr",
    "optional-fields:": "optional-fields",
    "propagation:": "propagation",
    "root:": "root",
    "id:": "id",
    "parent:": "parent",
    "devno:": "devno",
  };
  blocks.forEach((block, k) => {
    const got = new Map<string, string>();
    for (const l of block.split("\n").filter((s) => s !== "")) {
      const key = Object.keys(KEYS).find((p) => l.startsWith(p));
      if (!key) throw new Error(`${expectedFile}: unknown line ${JSON.stringify(l)}`);
      got.set(KEYS[key]!, l.slice(key.length).replace(/^ +/, (sp) => (key === "source:" || key === "propagation:" ? sp.slice(1) : "")));
    }
    // The k-th block is the k-th line libmount read.
    const line = fm.rowLines[k] ?? 0;
    const m = ovl.entry.get(line);
    tally.compare(line, "entry", utf8(m ? "mount" : (ovl.verdict.get(line) ?? "none")), utf8("mount"));
    if (!m) return;
    const v = libmountView(m, `${file}:${line}`);
    const cmp = (field: string, ours: Buffer, key: string) => {
      if (got.has(key)) tally.compare(line, field, ours, fromLat(got.get(key)!));
    };
    cmp("source", v.row.source, "source");
    cmp("target", v.row.target, "target");
    cmp("fstype", v.row.fstype, "fstype");
    cmp("options (libmount's merged optstr)", v.options, "optstr");
    cmp("mountOptions", v.row.mountOptions, "VFS-optstr");
    cmp("superOptions", v.row.superOptions, "FS-opstr");
    // Printed only when there are some: absent means none.
    const opt = got.get("optional-fields");
    tally.compare(line, "optionalFields", v.row.optionalFields, opt === undefined ? Buffer.alloc(0) : fromLat(opt.replace(/^'(.*)'$/, "$1")));
    tally.compare(line, "propagation", utf8(v.propagation ?? "(none)"), fromLat(got.get("propagation") ?? "(none)"));
    cmp("root", v.row.root, "root");
    cmp("id", v.row.id, "id");
    cmp("parentId", v.row.parentId, "parent");
    cmp("majorMinor", v.row.majorMinor, "devno");
  });
}

/** findmnt -P (TARGET SOURCE FSTYPE OPTIONS), values with \xHH escapes, one line per mount in file order. */
function comparePairs(file: string, expectedFile: string, ovl: OvlReading, fm: FindmntReading, tally: Tally): void {
  const rows = lat(readFileSync(dir + expectedFile)).split("\n").filter((s) => s !== "");
  tally.compare(0, "count", utf8(String(ovl.mounts.length)), utf8(String(rows.length)));
  rows.forEach((text, k) => {
    const got = new Map<string, Buffer>();
    for (const m of text.matchAll(/(\w+)="((?:[^"\\]|\\x[0-9a-fA-F]{2})*)"/g)) {
      got.set(m[1]!, fromLat(m[2]!.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16)))));
    }
    if ([...got.keys()].join(" ") !== "TARGET SOURCE FSTYPE OPTIONS") throw new Error(`${expectedFile}: unexpected line ${text}`);
    const line = fm.rowLines[k] ?? 0;
    const m = ovl.entry.get(line);
    tally.compare(line, "entry", utf8(m ? "mount" : (ovl.verdict.get(line) ?? "none")), utf8("mount"));
    if (!m) return;
    const v = libmountView(m, `${file}:${line}`);
    tally.compare(line, "target", v.row.target, got.get("TARGET")!);
    tally.compare(line, "source", v.row.source, got.get("SOURCE")!);
    tally.compare(line, "fstype", v.row.fstype, got.get("FSTYPE")!);
    tally.compare(line, "options (libmount's merged optstr)", v.options, got.get("OPTIONS")!);
  });
}

/**
 * findmnt --nofsroot, tree output (TARGET SOURCE FSTYPE OPTIONS). A row's parent is the nearest row above it
 * one level up; each row is matched to ovl's entry with that parent id and that target.
 */
function compareTree(file: string, expectedFile: string, ovl: OvlReading, tally: Tally): void {
  const rows = lat(readFileSync(dir + expectedFile)).split("\n").filter((s) => s !== "");
  if (!/^TARGET\s+SOURCE\s+FSTYPE\s+OPTIONS$/.test(rows[0]!)) throw new Error(`${expectedFile}: unexpected header`);
  tally.compare(0, "count", utf8(String(ovl.mounts.length)), utf8(String(rows.length - 1)));
  const ids = new Set(ovl.mounts.map((m) => m.id));
  const stack: number[] = []; // matched mount id per depth
  for (const text of rows.slice(1)) {
    const pm = /^((?:\| | {2}|\|-|`-)*)(.*)$/.exec(text)!;
    const depth = pm[1]!.length / 2;
    const cells = pm[2]!.split(/ +/);
    if (cells.length !== 4) throw new Error(`${expectedFile}: cannot split ${JSON.stringify(text)}`);
    const [target, source, fstype, options] = cells.map((c) => fromLat(c)) as [Buffer, Buffer, Buffer, Buffer];
    const candidates = ovl.mounts
      .map((m, i) => ({ m, i }))
      .filter(({ m }) => (depth === 0 ? !ids.has(m.parentId as number) : m.parentId === stack[depth - 1]))
      .filter(({ m }) => pathField(m.target, `${file}: target`).equals(target));
    const hit = candidates.length === 1 ? candidates[0]! : undefined;
    const line = hit ? ovl.lineOf[hit.i]! : 0;
    // The target (under that parent) is what the row is matched by: a miss is its disagreement.
    tally.compare(line, `tree row ${show(target)}`, utf8(hit ? "mount" : `${candidates.length} candidates`), utf8("mount"));
    if (!hit) continue;
    stack[depth] = hit.m.id as number;
    stack.length = depth + 1;
    const v = libmountView(hit.m, `${file}:${line}`);
    tally.compare(line, "source", v.row.source, source);
    tally.compare(line, "fstype", v.row.fstype, fstype);
    tally.compare(line, "options (libmount's merged optstr)", v.options, options);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------------------

if (!haveFixtures) {
  if (CI) {
    it("has the peer fixtures beside the repository (../shared/peer-fixtures/mountinfo/)", () => {
      throw new Error(`missing ${dir}SOURCES.md: CI must provide ../shared/peer-fixtures beside the clone`);
    });
  } else {
    describe.skip(`peer mountinfo fixtures: ${dir} is not there`, () => {
      it("needs ../shared/peer-fixtures/mountinfo/", () => {});
    });
  }
} else {
  const sources = readSources();
  const fixtureFiles = readdirSync(dir)
    .filter((f) => f !== "SOURCES.md" && statSync(dir + f).isFile())
    .sort();
  const expectedFiles = readdirSync(`${dir}expected`).sort();
  const peersJson = JSON.parse(readFileSync(`${dir}expected/peers.json`, "utf8")) as Record<string, PeerFile | string>;
  const repoOf = (file: string) => sources.find((s) => s.file === file)?.repo ?? "(not in SOURCES.md)";

  const EXPECTED_KINDS = [".tabfiles-parse", ".outputs-pairs", ".outputs-nofsroot"] as const;
  const expectedOutputs = new Map<string, { file: string; kind: (typeof EXPECTED_KINDS)[number] }[]>();
  for (const e of expectedFiles.filter((f) => f !== "peers.json")) {
    const kind = EXPECTED_KINDS.find((k) => e.endsWith(k));
    const fixture = kind ? e.slice(0, -kind.length) : "";
    if (kind) expectedOutputs.set(fixture, [...(expectedOutputs.get(fixture) ?? []), { file: `expected/${e}`, kind }]);
  }

  describe("peer mountinfo fixtures: the set", () => {
    it("every fixture file and expected output is named in SOURCES.md, and every file named there exists", () => {
      expect(fixtureFiles.length).toBeGreaterThan(50);
      const named = new Set(sources.map((s) => s.file));
      expect(fixtureFiles.filter((f) => !named.has(f))).toEqual([]);
      expect(expectedFiles.filter((f) => !named.has(`expected/${f}`))).toEqual([]);
      expect(sources.filter((s) => !existsSync(dir + s.file)).map((s) => s.file)).toEqual([]);
    });

    it("every expected output is of a kind this test reads, for a fixture that exists", () => {
      const unread = expectedFiles.filter((f) => f !== "peers.json" && !EXPECTED_KINDS.some((k) => f.endsWith(k)));
      expect(unread).toEqual([]);
      expect([...expectedOutputs.keys()].filter((f) => !fixtureFiles.includes(f))).toEqual([]);
      const peerKeys = Object.keys(peersJson).filter((k) => k !== "about");
      expect(peerKeys.filter((f) => !fixtureFiles.includes(f))).toEqual([]);
    });

    it("every listed difference names a fixture file, a field and a reason", () => {
      for (const e of [...LISTED, ...LISTED_ASSERTED]) {
        expect(fixtureFiles, `${e.file} in the table of differences`).toContain(e.file);
        expect(e.reason.length).toBeGreaterThan(20);
        expect(e.ovl).not.toBe(e.peer);
      }
    });
  });

  const findmntOk = findmntVersion !== undefined;
  const readings = new Map<string, { ovl: OvlReading; findmnt: FindmntReading }>();

  describe.skipIf(!findmntOk && !CI)(`peer mountinfo fixtures against ${findmntVersion ?? "findmnt (missing)"}`, () => {
    it("findmnt is installed, and is util-linux's", () => {
      expect(findmntVersion).toMatch(/util-linux/);
    });

    for (const file of fixtureFiles) {
      it(`${file}: every field of every line agrees with findmnt, but for the listed differences`, () => {
        const tally = new Tally(file, LISTED);
        const reading = compareWithFindmnt(file, tally);
        readings.set(file, reading);
        const f = figuresOf(repoOf(file));
        f.files++;
        f.lines += reading.ovl.lines.length;
        f.findmnt.fields += tally.fields;
        f.findmnt.agree += tally.agree;
        f.findmnt.listed += tally.listed.length;
        expect(tally.fields).toBeGreaterThan(0);
        expect(tally.unlisted, "differences from findmnt that no entry of LISTED explains").toEqual([]);
        expect(tally.stale(), "entries of LISTED that did not happen").toEqual([]);
        for (const e of tally.listed.filter((x) => x.issue)) {
          const reasons = reading.ovl.issues.filter((i) => i.line === e.line).map((i) => i.reason);
          expect(reasons, `${file}:${e.line}: ovl's issue says why (${e.reason})`).toEqual([expect.stringMatching(e.issue!)]);
        }
      });
    }
  });

  describe.skipIf(!findmntOk && !CI)("peer mountinfo fixtures against the values the peers' own tests assert", () => {
    for (const file of fixtureFiles) {
      const spec = peersJson[file];
      const outputs = expectedOutputs.get(file) ?? [];
      if (spec === undefined && outputs.length === 0) continue;
      const what = [spec === undefined ? "" : "expected/peers.json", ...outputs.map((o) => o.file)].filter(Boolean).join(", ");
      it(`${file}: agrees with ${what}, but for the listed differences`, () => {
        const tally = new Tally(file, LISTED_ASSERTED);
        const reading = readings.get(file) ?? compareWithFindmnt(file, new Tally(file, LISTED));
        if (typeof spec === "object") compareWithPeersJson(file, spec, reading.ovl, tally);
        for (const o of outputs) {
          if (o.kind === ".tabfiles-parse") compareTabfilesParse(file, o.file, reading.ovl, reading.findmnt, tally);
          else if (o.kind === ".outputs-pairs") comparePairs(file, o.file, reading.ovl, reading.findmnt, tally);
          else compareTree(file, o.file, reading.ovl, tally);
        }
        const f = figuresOf(repoOf(file));
        f.asserted.files++;
        f.asserted.fields += tally.fields;
        f.asserted.agree += tally.agree;
        f.asserted.listed += tally.listed.length;
        expect(tally.fields).toBeGreaterThan(0);
        expect(tally.unlisted, "differences from the peer's asserted values that no entry of LISTED_ASSERTED explains").toEqual([]);
        expect(tally.stale(), "entries of LISTED_ASSERTED that did not happen").toEqual([]);
      });
    }
  });

  describe("peer mountinfo fixtures: the default string view", () => {
    it("is the buffer view decoded with surrogateescape, and nonUtf8 names exactly the fields that are not UTF-8", () => {
      let checked = 0;
      let nonUtf8Entries = 0;
      for (const file of fixtureFiles) {
        const buf = readFileSync(dir + file);
        const asBuffers = parseMountInfo(buf, { encoding: "buffer" }) as unknown as { mounts: Record<string, unknown>[] };
        const asStrings = parseMountInfo(buf) as unknown as { mounts: Record<string, unknown>[] };
        expect(asStrings.mounts.length, file).toBe(asBuffers.mounts.length);
        asBuffers.mounts.forEach((b, i) => {
          const s = asStrings.mounts[i]!;
          const bad: string[] = [];
          for (const k of ["root", "target", "fstype", "source"]) {
            const bytes = pathField(b[k], `${file} #${i} ${k}`);
            expect(s[k], `${file} #${i} ${k}`).toBe(surrogateEscape(bytes));
            if (!bytes.equals(utf8(bytes.toString("utf8")))) bad.push(k);
            checked++;
          }
          for (const k of ["mountOptions", "superOptions"]) {
            const list = (b[k] as unknown[]).map((x, j) => pathField(x, `${file} #${i} ${k}[${j}]`));
            expect(s[k], `${file} #${i} ${k}`).toEqual(list.map(surrogateEscape));
            if (list.some((x) => !x.equals(utf8(x.toString("utf8"))))) bad.push(k);
            checked++;
          }
          if (bad.length > 0) nonUtf8Entries++;
          expect([...((s.nonUtf8 as string[] | undefined) ?? [])].sort(), `${file} #${i} nonUtf8`).toEqual(bad.sort());
        });
      }
      expect(checked).toBeGreaterThan(1000);
      // tailhook/libmount's non_utf8 case (target "/\xff") is among them.
      expect(nonUtf8Entries).toBeGreaterThanOrEqual(1);
      const t = (parseMountInfo(readFileSync(`${dir}rust-libmount-non_utf8.txt`)) as unknown as { mounts: Record<string, unknown>[] }).mounts[0];
      expect(t?.target).toBe("/\udcff");
      expect(t?.nonUtf8).toEqual(["target"]);
    });
  });

  afterAll(() => {
    const fmt = (x: number) => x.toLocaleString("en-US");
    const lines: string[] = [
      `peer mountinfo fixtures (${fixtureFiles.length} files): ovl against ${findmntVersion ?? "no findmnt"} ` +
        "(fields = 10 per line both read + 1 verdict per line) and against each peer's asserted values (fields as the peer states them):",
    ];
    const total: Figures = { files: 0, lines: 0, findmnt: { fields: 0, agree: 0, listed: 0 }, asserted: { fields: 0, agree: 0, listed: 0, files: 0 } };
    for (const f of figures.values()) {
      total.files += f.files;
      total.lines += f.lines;
      for (const side of ["findmnt", "asserted"] as const) {
        total[side].fields += f[side].fields;
        total[side].agree += f[side].agree;
        total[side].listed += f[side].listed;
      }
      total.asserted.files += f.asserted.files;
    }
    for (const [repo, f] of [...[...figures.entries()].sort(), ["all peers", total] as const]) {
      const a = f.asserted;
      lines.push(
        `  ${repo}: ${f.files} files, ${fmt(f.lines)} lines; findmnt: ${fmt(f.findmnt.fields)} fields, ${fmt(f.findmnt.agree)} agree, ` +
          `${f.findmnt.listed} listed differences, ${fmt(f.findmnt.fields - f.findmnt.agree - f.findmnt.listed)} unlisted; ` +
          `asserted values (${a.files} files): ${fmt(a.fields)} fields, ${fmt(a.agree)} agree, ${a.listed} listed differences, ` +
          `${fmt(a.fields - a.agree - a.listed)} unlisted`,
      );
    }
    console.log(lines.join("\n"));
  });
}
