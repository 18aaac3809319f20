/**
 * The layer tar codec (src/layers/tar.ts) and layer blobs (src/layers/compression.ts). Archives come from GNU
 * tar at test time (every format, every entry type, names that are not UTF-8), or are built byte by byte
 * here with a header writer of the test's own, so the reader is never checked against itself; what the
 * writer makes is read back by the reader and by GNU tar, which extracts it as root for the file system to
 * say what it holds.
 *
 * Needs GNU tar, gzip and zstd; getfattr/setfattr (package attr) for the xattr checks, which are skipped
 * locally without them but not under CI; mknod (root) for devices.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chownSync,
  createReadStream,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  chmodSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { detectCompression, gzipChunks, openLayer } from "../src/layers/compression.js";
import { printableName, readTar, TarError, TarWriter, type TarEntry, type TarItem, type TarWriteEntry } from "../src/layers/tar.js";

const B = (s: string) => Buffer.from(s, "latin1");
/** A JS (UTF-16) string's UTF-8 bytes as a byte string. */
const utf8 = (s: string) => Buffer.from(s, "utf8").toString("latin1");
/** A byte-string path under an ASCII directory, as a Buffer for the fs calls. */
const at = (dir: string, name: string) => Buffer.concat([Buffer.from(`${dir}/`), B(name)]);

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const byName = <T extends [string, unknown]>(a: T, b: T) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
const has = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
const HAS_ATTR = has("getfattr") && has("setfattr");
if (!HAS_ATTR) {
  if (process.env.CI) throw new Error("tar.test.ts: getfattr/setfattr (package attr) are needed under CI");
  console.warn("tar.test.ts: getfattr/setfattr not installed (package attr): the xattr comparisons are skipped");
}
/** Real root (not root of a user namespace, where other owners and mknod are out of reach). CI is real root. */
const REAL_ROOT = process.getuid?.() === 0 && process.env.OVL_TEST_NAMESPACE !== "user";
if (!REAL_ROOT) console.warn("tar.test.ts: not real root: owners, devices and GNU tar's extraction of the writer's archive are not checked");

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "ovl-tar-"));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

let seq = 0;
const scratchDir = (label: string) => {
  const d = join(root, `${label}-${seq++}`);
  mkdirSync(d);
  return d;
};

function run(cmd: string, args: string[], cwd?: string): string {
  return execFileSync(cmd, args, { cwd, encoding: "latin1", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
}

async function* chunksOf(buf: Buffer, sizes: number[] = [buf.length || 1]): AsyncGenerator<Buffer> {
  let i = 0;
  for (let k = 0; i < buf.length; k++) {
    const n = Math.max(1, sizes[k % sizes.length]!);
    yield buf.subarray(i, i + n);
    i += n;
  }
}

interface Read {
  entry: TarEntry;
  /** The body, whole, for files. */
  bytes?: Buffer;
  /** How many chunks the body came in (0 when inline). */
  bodyChunks: number;
}

async function readAll(source: AsyncIterable<Uint8Array> | Buffer, options?: { inlineLimit?: number; sizes?: number[] }): Promise<Read[]> {
  const src = Buffer.isBuffer(source) ? chunksOf(source, options?.sizes) : source;
  const out: Read[] = [];
  for await (const item of readTar(src, options)) {
    const r: Read = { entry: item.entry, bodyChunks: 0 };
    if (item.data) r.bytes = Buffer.from(item.data);
    if (item.body) {
      const parts: Buffer[] = [];
      for await (const c of item.body) parts.push(Buffer.from(c));
      r.bytes = Buffer.concat(parts);
      r.bodyChunks = parts.length;
    }
    out.push(r);
  }
  return out;
}

async function tarError(p: Promise<unknown>): Promise<TarError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TarError);
  return err as TarError;
}

// ---------------------------------------------------------------------------------------------------------
// A header writer of the test's own, with every field open to damage.

interface RawFields {
  name?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: number;
  type?: string;
  linkname?: string;
  magic?: "ustar" | "gnu" | "v7";
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  prefix?: string;
}

function rawHeader(f: RawFields, patch?: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(512);
  const oct = (off: number, len: number, v: number) => b.write(`${v.toString(8).padStart(len - 1, "0")}\0`, off, len, "latin1");
  b.write(f.name ?? "file", 0, 100, "latin1");
  oct(100, 8, f.mode ?? 0o644);
  oct(108, 8, f.uid ?? 0);
  oct(116, 8, f.gid ?? 0);
  oct(124, 12, f.size ?? 0);
  oct(136, 12, f.mtime ?? 1_000_000_000);
  b.write(f.type ?? "0", 156, 1, "latin1");
  b.write(f.linkname ?? "", 157, 100, "latin1");
  const magic = f.magic ?? "ustar";
  if (magic === "ustar") b.write("ustar\x0000", 257, 8, "latin1");
  if (magic === "gnu") b.write("ustar  \0", 257, 8, "latin1");
  if (magic !== "v7") {
    b.write(f.uname ?? "", 265, 32, "latin1");
    b.write(f.gname ?? "", 297, 32, "latin1");
    oct(329, 8, f.devmajor ?? 0);
    oct(337, 8, f.devminor ?? 0);
  }
  if (magic === "ustar") b.write(f.prefix ?? "", 345, 155, "latin1");
  patch?.(b);
  return fixSum(b);
}

function fixSum(b: Buffer): Buffer {
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return b;
}

const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);
const END = Buffer.alloc(1024);

function paxRecords(records: Array<[string, string | Buffer]>): Buffer {
  return Buffer.concat(
    records.map(([k, v]) => {
      const value = typeof v === "string" ? B(v) : v;
      const rest = B(` ${k}=`).length + value.length + 1;
      let len = rest + 1;
      while (String(len).length + rest !== len) len = String(len).length + rest;
      return Buffer.concat([B(`${len} ${k}=`), value, B("\n")]);
    }),
  );
}

function extended(type: "x" | "g" | "L" | "K", data: Buffer, name = "././@Ext"): Buffer {
  return Buffer.concat([rawHeader({ name, type, size: data.length }), data, pad(data.length)]);
}

const pax = (records: Array<[string, string | Buffer]>, type: "x" | "g" = "x") => extended(type, paxRecords(records), "PaxHeaders/x");

function file(name: string, body: Buffer | string, f: RawFields = {}): Buffer {
  const data = typeof body === "string" ? B(body) : body;
  return Buffer.concat([rawHeader({ ...f, name, size: data.length }), data, pad(data.length)]);
}

// ---------------------------------------------------------------------------------------------------------
// GNU tar's archives

type Format = "gnu" | "posix" | "ustar" | "v7";

interface Spec {
  /** Byte-string name relative to the tree's parent, without the trailing slash. */
  name: string;
  kind: "file" | "dir" | "symlink" | "hardlink" | "fifo" | "char" | "block";
  body?: string;
  mode?: number;
  owner?: [number, number];
  target?: string;
  dev?: [number, number];
  /** For touch -d. */
  mtime?: string;
  xattrs?: Array<[string, Buffer]>;
}

function treeFor(format: Format): Spec[] {
  const long = format !== "v7";
  const veryLong = format === "gnu" || format === "posix";
  const specs: Spec[] = [
    { name: "t", kind: "dir", mode: 0o755 },
    { name: "t/plain", kind: "file", body: "hello\n", mode: 0o644 },
    { name: "t/suid", kind: "file", body: "x", mode: 0o4755 },
    { name: "t/sgid", kind: "file", body: "", mode: 0o2711 },
    { name: "t/sticky", kind: "dir", mode: 0o1777 },
    { name: "t/owned", kind: "file", body: "o", owner: REAL_ROOT ? [1234, 5678] : undefined },
    { name: "t/root", kind: "file", body: "r" },
    { name: "t/\xff\xfe", kind: "file", body: "not utf-8" },
    { name: `t/${utf8("café-日本")}`, kind: "file", body: "unicode" },
    { name: "t/seconds", kind: "file", body: "", mtime: "@1600000000.123456789" },
    { name: "t/link", kind: "symlink", target: "plain" },
    { name: "t/hard", kind: "hardlink", target: "t/plain" },
  ];
  if (long) {
    const dir = `t/${"d".repeat(90)}`;
    specs.push({ name: dir, kind: "dir" }, { name: `${dir}/${"e".repeat(60)}`, kind: "file", body: "long" });
    specs.push({ name: "t/fifo", kind: "fifo", mode: 0o640 });
    if (REAL_ROOT) specs.push({ name: "t/null", kind: "char", dev: [1, 3], mode: 0o666 }, { name: "t/loop", kind: "block", dev: [7, 0], mode: 0o660 });
  }
  if (veryLong) {
    let d = "t";
    for (const c of ["g", "h", "i"]) {
      d += `/${c.repeat(100)}`;
      specs.push({ name: d, kind: "dir" });
    }
    specs.push({ name: `${d}/file`, kind: "file", body: "very long" });
    specs.push({ name: `t/\xff${"\xfe".repeat(150)}`, kind: "file", body: "long, not utf-8" });
    specs.push({ name: "t/longlink", kind: "symlink", target: "z".repeat(150) });
    if (REAL_ROOT) specs.push({ name: "t/bigid", kind: "file", body: "b", owner: [3_000_000_000, 3_000_000_001] });
    specs.push({ name: "t/old", kind: "file", body: "", mtime: "@-100" });
  }
  if (format === "posix" && HAS_ATTR) {
    const plain = specs.find((s) => s.name === "t/plain")!;
    plain.xattrs = [
      ["user.greeting", B("hello")],
      ["user.empty", Buffer.alloc(0)],
    ];
    if (REAL_ROOT) plain.xattrs.push(["trusted.bin", Buffer.from([0, 0xff, 0x0a])]);
  }
  return specs;
}

function makeTree(dir: string, specs: Spec[]): void {
  for (const s of specs) {
    const p = at(dir, s.name);
    if (s.kind === "dir") mkdirSync(p);
    else if (s.kind === "file") writeFileSync(p, B(s.body ?? ""));
    else if (s.kind === "symlink") symlinkSync(B(s.target!), p);
    else if (s.kind === "hardlink") linkSync(at(dir, s.target!), p);
    else if (s.kind === "fifo") run("mkfifo", [p.toString("latin1")]);
    else run("mknod", [p.toString("latin1"), s.kind === "char" ? "c" : "b", String(s.dev![0]), String(s.dev![1])]);
    if (s.kind !== "symlink" && s.kind !== "hardlink" && s.mode !== undefined) chmodSync(p, s.mode);
    if (s.owner) chownSync(p, ...s.owner);
    for (const [k, v] of s.xattrs ?? []) run("setfattr", ["-n", k, "-v", `0x${v.toString("hex")}`, p.toString("latin1")]);
  }
  // Times last, deepest first, so making children does not move a directory's mtime again.
  for (const s of [...specs].reverse()) if (s.mtime) run("touch", ["-h", "-d", s.mtime, at(dir, s.name).toString("latin1")]);
}

function unameOf(uid: number): string {
  const r = spawnSync("getent", ["passwd", String(uid)], { encoding: "latin1" });
  return r.status === 0 ? r.stdout.split(":")[0]! : "";
}
function gnameOf(gid: number): string {
  const r = spawnSync("getent", ["group", String(gid)], { encoding: "latin1" });
  return r.status === 0 ? r.stdout.split(":")[0]! : "";
}

const major = (rdev: bigint) => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const minor = (rdev: bigint) => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

/** What an archive of `specs` must say, from the file system (lstat), not from the specs or the reader. */
function expected(dir: string, specs: Spec[], format: Format): Map<string, Omit<TarEntry, "offset" | "xattrs"> & { xattrs?: Array<[string, Buffer]> }> {
  const out = new Map();
  for (const s of specs) {
    const st = lstatSync(at(dir, s.name), { bigint: true });
    const mode = Number(st.mode);
    const fmt = mode & 0o170000;
    const type = fmt === 0o040000 ? "dir" : fmt === 0o120000 ? "symlink" : fmt === 0o010000 ? "fifo" : fmt === 0o020000 ? "char" : fmt === 0o060000 ? "block" : "file";
    const ns = st.mtimeNs;
    const sec = Number(ns / 1_000_000_000n - (ns < 0n && ns % 1_000_000_000n !== 0n ? 1n : 0n));
    const nsec = Number(ns - BigInt(sec) * 1_000_000_000n);
    out.set(type === "dir" ? `${s.name}/` : s.name, {
      name: type === "dir" ? `${s.name}/` : s.name,
      type,
      mode: mode & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      uname: format === "v7" ? "" : unameOf(Number(st.uid)),
      gname: format === "v7" ? "" : gnameOf(Number(st.gid)),
      size: type === "file" ? Number(st.size) : 0,
      mtime: format === "posix" ? { sec, nsec } : { sec, nsec: 0 },
      linkname: type === "symlink" ? readlinkSync(at(dir, s.name), { encoding: "buffer" }).toString("latin1") : "",
      devmajor: type === "char" || type === "block" ? major(st.rdev) : 0,
      devminor: type === "char" || type === "block" ? minor(st.rdev) : 0,
      xattrs: s.xattrs,
    });
  }
  return out;
}

async function gnuArchive(format: Format): Promise<{ archive: Buffer; dir: string; specs: Spec[] }> {
  const dir = scratchDir(`gnu-${format}`);
  const specs = treeFor(format);
  makeTree(dir, specs);
  const args = [`--format=${format}`, "-cf", "-", "-C", dir, "t"];
  if (format === "posix" && HAS_ATTR) args.unshift("--xattrs", "--xattrs-include=*");
  const archive = execFileSync("tar", args, { maxBuffer: 64 << 20 });
  return { archive, dir, specs };
}

describe("reading GNU tar's archives", () => {
  for (const format of ["gnu", "posix", "ustar", "v7"] as const) {
    it(`--format=${format}: every entry and every field, as the file system has it`, async () => {
      const { archive, dir, specs } = await gnuArchive(format);
      const want = expected(dir, specs, format);
      const got = await readAll(archive);
      expect(got.length).toBe(specs.length);
      const index = new Map(got.map((r) => [r.entry.name, r]));
      expect([...index.keys()].sort()).toEqual([...want.keys()].sort());

      // The hard-linked pair: whichever GNU tar met first is the file, the other links to it.
      const pair = ["t/plain", "t/hard"].map((n) => index.get(n)!);
      const first = pair.find((r) => r.entry.type === "file")!;
      const second = pair.find((r) => r.entry.type === "hardlink")!;
      expect(first && second).toBeTruthy();
      expect(second.entry.linkname).toBe(first.entry.name);
      expect(first.bytes!.toString()).toBe("hello\n");

      for (const [name, w] of want) {
        const r = index.get(name)!;
        const e = r.entry;
        if (e === second.entry) {
          expect({ ...e, xattrs: undefined, offset: undefined }).toEqual({ ...w, type: "hardlink", size: 0, linkname: first.entry.name, xattrs: undefined, offset: undefined });
          continue;
        }
        const { xattrs: _, ...rest } = w;
        expect({ ...e, xattrs: undefined, offset: undefined }, name).toEqual({ ...rest, xattrs: undefined, offset: undefined });
        if (e !== first.entry) expect(e.xattrs, name).toEqual([]);
        if (e.type === "file") {
          const spec = specs.find((s) => s.name === name)!;
          expect(r.bytes!.toString("latin1"), name).toBe(spec.body ?? "hello\n");
        } else expect(r.bytes).toBeUndefined();
      }
      // The pair's inode has the xattrs (set on t/plain): on the file entry, in whatever order GNU tar listed them.
      const xattrs = specs.find((s) => s.name === "t/plain")!.xattrs ?? [];
      expect([...first.entry.xattrs].sort(byName)).toEqual([...xattrs].sort(byName));
      // Offsets: increasing, block-aligned, the first at 0.
      const offsets = got.map((r) => r.entry.offset);
      expect(offsets[0]).toBe(0);
      for (let i = 1; i < offsets.length; i++) expect(offsets[i]! > offsets[i - 1]! && offsets[i]! % 512 === 0).toBe(true);
    });
  }

  it("the old GNU magic, 'L' long names and 'K' long links are what --format=gnu uses for names over 100 bytes", async () => {
    const { archive } = await gnuArchive("gnu");
    expect(archive.includes(B("././@LongLink"))).toBe(true);
    expect(archive.subarray(257, 265).toString("latin1")).toBe("ustar  \0");
    const got = await readAll(archive);
    expect(got.find((r) => r.entry.name === "t/longlink")!.entry.linkname).toBe("z".repeat(150));
  });

  // Owners over 2^21 can only be given as real root; under CI (root, always) it never skips.
  if (!REAL_ROOT && !process.env.CI) console.log("skipping the GNU base-256 owner test: it needs real root (CI runs it)");
  it.skipIf(!REAL_ROOT && !process.env.CI)("GNU base-256 numbers, as --format=gnu writes a uid over 2^21 and a time before 1970", async () => {
    const { archive } = await gnuArchive("gnu");
    const got = await readAll(archive);
    const big = got.find((r) => r.entry.name === "t/bigid")!.entry;
    expect([big.uid, big.gid]).toEqual([3_000_000_000, 3_000_000_001]);
    expect(got.find((r) => r.entry.name === "t/old")!.entry.mtime).toEqual({ sec: -100, nsec: 0 });
  });

  it("a sparse file is refused by name: GNU 'S' entries and PAX GNU.sparse records", async () => {
    const dir = scratchDir("sparse");
    execFileSync("truncate", ["-s", "4M", join(dir, "holes")]);
    writeFileSync(join(dir, "data"), "x".repeat(10));
    for (const format of ["gnu", "posix"]) {
      const archive = execFileSync("tar", [`--format=${format}`, "--sparse", "-cf", "-", "-C", dir, "data", "holes"]);
      const err = await tarError(readAll(archive));
      expect(err.code).toBe("ERR_OVL_TAR");
      expect(err.message).toMatch(/sparse/i);
      expect(err.message).toContain("holes");
      expect(err.entry).toContain("holes");
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

describe("reading hand-built archives", () => {
  it("ustar prefix + name; a name of exactly 100 bytes; full-width uname/gname", async () => {
    const name = "n".repeat(100);
    const archive = Buffer.concat([
      file("base", "a", { prefix: "p".repeat(155), uname: "u".repeat(32), gname: "g".repeat(32) }),
      file(name, "b"),
      END,
    ]);
    const [a, b] = await readAll(archive);
    expect(a!.entry.name).toBe(`${"p".repeat(155)}/base`);
    expect(a!.entry.uname).toBe("u".repeat(32));
    expect(a!.entry.gname).toBe("g".repeat(32));
    expect(b!.entry.name).toBe(name);
  });

  it("v7: no magic, uname/gname fields ignored, '\\0' and '0' with a trailing slash are directories", async () => {
    const archive = Buffer.concat([
      rawHeader({ name: "olddir/", type: "\0", magic: "v7", mode: 0o755 }),
      rawHeader({ name: "dir2/", type: "0", magic: "v7" }),
      // An old-style directory with a body: skipped, as GNU tar does.
      rawHeader({ name: "dir3/", type: "0", magic: "v7", size: 600 }),
      Buffer.alloc(1024, 0x41),
      file("plain", "p", { magic: "v7", type: "\0" }),
      file("contig", "c", { type: "7" }),
      END,
    ]);
    const got = await readAll(archive);
    expect(got.map((r) => [r.entry.name, r.entry.type, r.entry.size, r.entry.uname])).toEqual([
      ["olddir/", "dir", 0, ""],
      ["dir2/", "dir", 0, ""],
      ["dir3/", "dir", 0, ""],
      ["plain", "file", 1, ""],
      ["contig", "file", 1, ""],
    ]);
  });

  it("base-256 numeric fields: size past 8 GiB, a uid past 2^32, a negative mtime", async () => {
    const size = 9 * 2 ** 30 + 7;
    const h = rawHeader({ name: "huge" }, (b) => {
      b.fill(0, 124, 136);
      b[124] = 0x80;
      b.writeUIntBE(size, 136 - 6, 6);
      b.fill(0, 108, 116);
      b[108] = 0x80;
      b.writeUIntBE(5_000_000_000, 116 - 5, 5);
      b.fill(0xff, 136, 148); // -1 in two's complement...
      b.writeIntBE(-1_234_567, 148 - 4, 4); // ...then -1234567
    });
    const items: TarItem[] = [];
    const it = readTar(chunksOf(h));
    const first = await it.next();
    items.push(first.value as TarItem);
    const e = items[0]!.entry;
    expect([e.size, e.uid, e.mtime.sec]).toEqual([size, 5_000_000_000, -1_234_567]);
    expect(items[0]!.data).toBeUndefined();
    // No body follows: reading it is a truncation, not a 9 GiB allocation.
    const err = await tarError((async () => {
      for await (const _ of items[0]!.body!) void _;
    })());
    expect(err.message).toMatch(/truncated/);
    expect(err.entry).toBe("huge");
  });

  it("base-256 beyond 2^53 and negative sizes are refused", async () => {
    const beyond = rawHeader({ name: "x" }, (b) => {
      b.fill(0xff, 124, 136);
      b[124] = 0x80 | 0x3f;
    });
    expect((await tarError(readAll(Buffer.concat([beyond, END])))).message).toMatch(/size.*2\^53/);
    const negative = rawHeader({ name: "x" }, (b) => b.fill(0xff, 124, 136));
    expect((await tarError(readAll(Buffer.concat([negative, END])))).message).toMatch(/size field is negative/);
  });

  it("PAX: path, linkpath and uname as bytes (never UTF-8-decoded), uid/gid past ustar, fractional and negative mtimes", async () => {
    const longBytes = `\xff\xfe/${"\xe9".repeat(200)}`;
    const archive = Buffer.concat([
      pax([
        ["path", longBytes],
        ["uid", "3000000000"],
        ["gid", "4000000000"],
        ["uname", "\xff user"],
        ["mtime", "1600000000.1234567891"],
        ["hdrcharset", "BINARY"],
        ["comment", "ignored"],
      ]),
      file("short", "x"),
      pax([
        ["linkpath", `${"t".repeat(300)}\x01`],
        ["mtime", "-1.5"],
      ]),
      rawHeader({ name: "sym", type: "2", linkname: "ignored" }),
      pax([["mtime", "-7"]]),
      file("neg", ""),
      pax([["mtime", "12."]]),
      file("dot", ""),
      END,
    ]);
    const [a, b, c, d] = await readAll(archive);
    expect(a!.entry).toMatchObject({ name: longBytes, uid: 3_000_000_000, gid: 4_000_000_000, uname: "\xff user", mtime: { sec: 1_600_000_000, nsec: 123_456_789 } });
    expect(b!.entry).toMatchObject({ name: "sym", type: "symlink", linkname: `${"t".repeat(300)}\x01`, mtime: { sec: -2, nsec: 500_000_000 } });
    expect(c!.entry.mtime).toEqual({ sec: -7, nsec: 0 });
    expect(d!.entry.mtime).toEqual({ sec: 12, nsec: 0 });
    expect(a!.entry.offset).toBe(0);
    expect(b!.entry.offset).toBe(a!.entry.offset + 512 + 512 + 1024);
  });

  it("PAX size overrides the header's; an empty local value means the header's field", async () => {
    const archive = Buffer.concat([
      pax([["size", "5"]]),
      rawHeader({ name: "sized", size: 0 }),
      B("12345"),
      pad(5),
      pax([["path", ""]], "g"),
      pax([["path", "global-name"]], "g"),
      pax([["path", ""]]),
      file("own-name", "o"),
      END,
    ]);
    const [a, b] = await readAll(archive);
    expect([a!.entry.name, a!.entry.size, a!.bytes!.toString()]).toEqual(["sized", 5, "12345"]);
    expect(b!.entry.name).toBe("own-name");
  });

  it("global PAX records apply to every entry after them; local ones win; an empty global value removes one", async () => {
    const archive = Buffer.concat([
      file("before", ""),
      pax(
        [
          ["mtime", "77"],
          ["uname", "gu"],
          ["SCHILY.xattr.user.g", "global"],
          ["SCHILY.xattr.user.both", "global"],
        ],
        "g",
      ),
      file("one", ""),
      pax([
        ["SCHILY.xattr.user.both", "local"],
        ["SCHILY.xattr.user.l", ""],
        ["mtime", "88"],
      ]),
      file("two", ""),
      pax([["uname", ""]], "g"),
      file("three", "", { uname: "own" }),
      END,
    ]);
    const [before, one, two, three] = await readAll(archive);
    expect(before!.entry.mtime.sec).toBe(1_000_000_000);
    expect(one!.entry).toMatchObject({ mtime: { sec: 77, nsec: 0 }, uname: "gu" });
    expect(one!.entry.xattrs).toEqual([
      ["user.g", B("global")],
      ["user.both", B("global")],
    ]);
    expect(two!.entry.mtime.sec).toBe(88);
    expect(two!.entry.xattrs).toEqual([
      ["user.g", B("global")],
      ["user.both", B("local")],
      ["user.l", Buffer.alloc(0)],
    ]);
    expect(three!.entry).toMatchObject({ uname: "own", mtime: { sec: 77, nsec: 0 } });
    expect(three!.entry.offset).toBeGreaterThan(two!.entry.offset);
  });

  it("xattrs: SCHILY binary values and names that are not UTF-8; LIBARCHIVE %-encoded names with base64 values", async () => {
    const archive = Buffer.concat([
      pax([
        ["SCHILY.xattr.user.\xff", Buffer.from([0, 1, 2, 0x0a, 0xff])],
        ["LIBARCHIVE.xattr.user.a%3Db", Buffer.from("value=").toString("base64")],
        ["LIBARCHIVE.xattr.user.same", Buffer.from("v").toString("base64")],
        ["SCHILY.xattr.user.same", "v"],
      ]),
      file("f", ""),
      END,
    ]);
    const [f] = await readAll(archive);
    expect(f!.entry.xattrs).toEqual([
      ["user.\xff", Buffer.from([0, 1, 2, 0x0a, 0xff])],
      ["user.a=b", B("value=")],
      ["user.same", B("v")],
    ]);
  });

  it("a header whose checksum summed signed chars (old tars) is accepted", async () => {
    const h = rawHeader({ name: "signed\xe9" });
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += (h[i]! << 24) >> 24;
    h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
    const [e] = await readAll(Buffer.concat([h, END]));
    expect(e!.entry.name).toBe("signed\xe9");
  });

  it("the end: two zero blocks, one zero block then EOF, or EOF at a block boundary; what follows the marker is ignored", async () => {
    const one = file("one", "1");
    for (const tail of [END, Buffer.alloc(512), Buffer.alloc(0), Buffer.concat([END, Buffer.alloc(9000, 0x55)]), Buffer.concat([Buffer.alloc(512), Buffer.alloc(100)])]) {
      const got = await readAll(Buffer.concat([one, tail]));
      expect(got.map((r) => r.entry.name)).toEqual(["one"]);
    }
    expect(await readAll(Buffer.alloc(0))).toEqual([]);
  });

  it("reads the source to its end after the marker (so a digest over it is complete)", async () => {
    let pulled = 0;
    const parts = [file("a", "1"), END, Buffer.alloc(10240)];
    async function* src() {
      for (const p of parts) {
        pulled++;
        yield p;
      }
    }
    await readAll(src());
    expect(pulled).toBe(parts.length);
  });
});

// ---------------------------------------------------------------------------------------------------------

describe("streaming", () => {
  const big = Buffer.alloc(100_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  const archive = Buffer.concat([file("small", "s"), file("big", big), file("after", "a"), file("big2", big), file("last", "l"), END]);

  it("a body over inlineLimit comes in several chunks, views of the source's; smaller ones whole", async () => {
    const got = await readAll(archive, { inlineLimit: 1024, sizes: [4096] });
    const b = got.find((r) => r.entry.name === "big")!;
    expect(b.bodyChunks).toBeGreaterThan(10);
    expect(b.bytes!.equals(big)).toBe(true);
    expect(got.find((r) => r.entry.name === "small")!.bodyChunks).toBe(0);
    // The default limit (1 MiB): 100 kB comes whole.
    expect((await readAll(archive)).find((r) => r.entry.name === "big")!.bodyChunks).toBe(0);
  });

  it("inline data is a view of the chunk when the body lies in it (no copy)", async () => {
    const chunk = Buffer.concat([file("v", "view"), END]);
    for await (const item of readTar(chunksOf(chunk))) {
      expect(item.data!.buffer).toBe(chunk.buffer);
    }
  });

  it("a body left unread, or half read, is skipped when the next item is asked for; reading it after that throws", async () => {
    for (const sizes of [[archive.length], [1000], [1], [513, 7, 4096]]) {
      const names: string[] = [];
      let half: AsyncIterator<Buffer> | undefined;
      for await (const item of readTar(chunksOf(archive, sizes), { inlineLimit: 100 })) {
        names.push(item.entry.name);
        if (item.entry.name === "big2") {
          half = item.body![Symbol.asyncIterator]();
          await half.next();
        }
        if (item.entry.name === "after") expect(item.data!.toString()).toBe("a");
        if (item.entry.name === "last") expect(item.data!.toString()).toBe("l");
      }
      expect(names).toEqual(["small", "big", "after", "big2", "last"]);
      const err = await tarError(half!.next());
      expect(err.message).toMatch(/after the next entry/);
    }
  });

  it("breaking out of the loop closes the source", async () => {
    let closed = false;
    async function* src() {
      try {
        yield archive.subarray(0, 1024);
        yield archive.subarray(1024);
      } finally {
        closed = true;
      }
    }
    for await (const item of readTar(src())) {
      void item;
      break;
    }
    expect(closed).toBe(true);
  });

  it("source chunks of 1 byte and of random sizes give the same items as one chunk (property)", async () => {
    const { archive: gnu } = await gnuArchive("posix");
    const sources = [gnu, archive];
    // Bodies compared by digest: deep equality over 100 kB buffers is slow.
    const summary = (reads: Read[]) => reads.map((r) => ({ entry: r.entry, bytes: r.bytes && sha256(r.bytes) }));
    const reference = await Promise.all(sources.map(async (s) => summary(await readAll(s, { inlineLimit: 300 }))));
    for (const [i, s] of sources.entries()) expect(summary(await readAll(s, { inlineLimit: 300, sizes: [1] }))).toEqual(reference[i]);
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 1 }), fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 20 }), fc.constantFrom(0, 300, 1 << 20), async (which, sizes, inlineLimit) => {
        const got = summary(await readAll(sources[which]!, { inlineLimit, sizes }));
        expect(got).toEqual(reference[which]);
      }),
      { numRuns: 60 },
    );
  });
});

// ---------------------------------------------------------------------------------------------------------

describe("malformed archives: a TarError naming the entry and the rule", () => {
  const good = Buffer.concat([file("first", "1"), file("second\x1bname", "22"), file("third", "333"), END]);

  it("bad checksum", async () => {
    const bad = Buffer.from(good);
    bad[1027] = bad[1027]! ^ 1; // inside the second header's name: "seco" -> "secn"
    const err = await tarError(readAll(bad));
    expect(err.code).toBe("ERR_OVL_TAR");
    expect(err.message).toMatch(/bad header checksum/);
    expect(err.message).toContain("entry 'secnnd\\x1bname' header at byte 1024");
    expect(err.entry).toBe("secnnd\x1bname");
    expect(err.offset).toBe(1024);
  });

  it("names in messages are printable: control characters and bytes that are not UTF-8 escaped, UTF-8 kept", () => {
    expect(printableName("a\x1bb\xff\\")).toBe("a\\x1bb\\xff\\\\");
    expect(printableName(utf8("café \u202e"))).toBe("café \\u{202e}");
    expect(printableName("x".repeat(1000))).toMatch(/^x{300}\.\.\.\(1000 bytes\)$/);
  });

  it("truncated header, truncated body, truncated padding", async () => {
    // Layout: first at 0 (body 512), second at 1024 (body 1536), third at 2048.
    const header = await tarError(readAll(good.subarray(0, 1024 + 100)));
    expect(header.message).toMatch(/truncated archive: it ends 100 bytes into a header block/);
    expect(header.offset).toBe(1024);
    for (const cut of [1536 + 1, 1536 + 2 + 10]) {
      const err = await tarError(readAll(good.subarray(0, cut)));
      expect(err.message).toMatch(/truncated archive: it ends inside the body \(2 bytes\) or its padding/);
      expect(err.entry).toBe("second\x1bname");
      expect(err.message).toContain("second\\x1bname");
    }
    // A streamed body cut short: the error comes from the body.
    const big = Buffer.concat([file("big", Buffer.alloc(5000, 1))]).subarray(0, 512 + 3000);
    const err = await tarError(readAll(big, { inlineLimit: 100, sizes: [1000] }));
    expect(err.message).toMatch(/body \(5000 bytes\)/);
  });

  it("garbage in a numeric field", async () => {
    for (const [off, field] of [
      [100, "mode"],
      [108, "uid"],
      [124, "size"],
      [136, "mtime"],
    ] as const) {
      const h = rawHeader({ name: "garbled" }, (b) => b.write("12x4", off, "latin1"));
      const err = await tarError(readAll(Buffer.concat([h, END])));
      expect(err.message).toContain(`${field} field is not an octal number`);
      expect(err.entry).toBe("garbled");
    }
    const pxa = await tarError(readAll(Buffer.concat([pax([["uid", "-1"]]), file("p", ""), END])));
    expect(pxa.message).toMatch(/PAX uid "-1"/);
    expect(pxa.entry).toBe("p");
    const pxt = await tarError(readAll(Buffer.concat([pax([["mtime", "1e9"]]), file("t", ""), END])));
    expect(pxt.message).toMatch(/PAX mtime "1e9"/);
  });

  it("malformed PAX records", async () => {
    for (const data of ["abc", "11 path=x\n", "6 x=1 \n", "5 =1\n", "99999999999 a=b\n", "8 path\n"]) {
      const err = await tarError(readAll(Buffer.concat([extended("x", B(data), "PaxHeaders/bad"), file("f", ""), END])));
      expect(err.message).toMatch(/malformed PAX record/);
      expect(err.entry).toBe("PaxHeaders/bad");
    }
  });

  it("oversized extended headers are refused before their body is read (1 MiB each, and for one entry in all)", async () => {
    let pulled = 0;
    async function* endless() {
      yield rawHeader({ name: "PaxHeaders/huge", type: "x", size: 2 << 20 });
      for (;;) {
        pulled++;
        yield Buffer.alloc(65536, 0x31);
      }
    }
    const err = await tarError(readAll(endless()));
    expect(err.message).toMatch(/over the 1048576-byte limit/);
    expect(pulled).toBe(0);
    const half = B("x".repeat(600_000));
    const many = Buffer.concat([extended("L", half), extended("L", half), file("f", ""), END]);
    expect((await tarError(readAll(many))).message).toMatch(/limit/);
    const globals = Buffer.concat(Array.from({ length: 3 }, (_, i) => pax([[`SCHILY.xattr.user.${i}`, "v".repeat(500_000)]], "g")).concat([END]));
    expect((await tarError(readAll(globals))).message).toMatch(/global PAX records/);
  });

  it("unsupported entry types, named", async () => {
    for (const [type, what] of [
      ["S", "GNU sparse file"],
      ["V", "GNU volume label"],
      ["M", "GNU multi-volume"],
      ["X", "Solaris extended header"],
      ["Q", "0x51"],
      ["\x01", "0x1"],
    ]) {
      const err = await tarError(readAll(Buffer.concat([file("odd\xff", "", { type }), END])));
      expect(err.message).toContain(`unsupported entry type '${printableName(type!)}'`);
      expect(err.message).toContain(what);
      expect(err.message).toContain("odd\\xff");
      expect(err.entry).toBe("odd\xff");
    }
  });

  it("a lone zero block followed by a header; an extended header with no entry after it", async () => {
    const lone = Buffer.concat([file("a", ""), Buffer.alloc(512), file("hidden", ""), END]);
    expect((await tarError(readAll(lone))).message).toMatch(/lone zero block/);
    for (const tail of [END, Buffer.alloc(0)]) {
      const dangling = Buffer.concat([file("a", ""), pax([["path", "p"]]), tail]);
      expect((await tarError(readAll(dangling))).message).toMatch(/extended header/);
    }
  });

  it("a source that yields strings is refused", async () => {
    async function* strings() {
      yield "not bytes" as unknown as Uint8Array;
    }
    expect((await tarError(readAll(strings()))).message).toMatch(/string/);
  });

  it("fuzz: random damage to valid archives never hangs and throws nothing but TarError (property)", async () => {
    const { archive: posix } = await gnuArchive("posix");
    const { archive: gnu } = await gnuArchive("gnu");
    const bases = [posix, gnu, good];
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: bases.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { minLength: 1, maxLength: 12 }),
        fc.option(fc.nat(), { nil: undefined }),
        fc.array(fc.integer({ min: 1, max: 2000 }), { minLength: 1, maxLength: 5 }),
        fc.constantFrom(0, 64, 1 << 20),
        async (which, flips, cut, sizes, inlineLimit) => {
          const base = bases[which]!;
          let b = Buffer.from(base);
          for (const [pos, byte] of flips) {
            // Mostly the headers' bytes, where damage means the most.
            const p = pos % 3 === 0 ? pos % b.length : (Math.floor(pos / 512) % Math.ceil(b.length / 512)) * 512 + (pos % 512);
            if (p < b.length) b[p] = byte;
          }
          if (cut !== undefined) b = b.subarray(0, cut % (b.length + 1));
          try {
            await readAll(b, { sizes, inlineLimit });
          } catch (err) {
            if (!(err instanceof TarError)) throw err;
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// The writer

const T0 = { sec: 1_700_000_000, nsec: 0 };

function writerEntries(): Array<{ e: TarWriteEntry; body?: Buffer }> {
  const d = (name: string, mode = 0o755): { e: TarWriteEntry } => ({ e: { name, type: "dir", mode, uid: 0, gid: 0, size: 0, mtime: T0 } });
  const f = (name: string, body: string | Buffer, extra: Partial<TarWriteEntry> = {}) => {
    const b = typeof body === "string" ? B(body) : body;
    return { e: { name, type: "file" as const, mode: 0o644, uid: 0, gid: 0, size: b.length, mtime: T0, ...extra }, body: b };
  };
  const split = `w/${"a".repeat(80)}`;
  const deep = ["w", "g".repeat(100), "h".repeat(100), "i".repeat(100)];
  return [
    d("w"),
    d("w/sticky", 0o1777),
    f("w/plain", "hello\n", {
      xattrs: [
        ["user.b", B("2")],
        ["user.a", B("1")],
        ["trusted.bin", Buffer.from([0, 0xff, 0x0a, 0x3d])],
        ["user.empty", Buffer.alloc(0)],
      ],
    }),
    f("w/suid", "s", { mode: 0o4755 }),
    f("w/sgid", "g", { mode: 0o2750, uid: 1234, gid: 5678, uname: "someone", gname: "somegroup" }),
    f("w/bigid", "b", { uid: 3_000_000_000, gid: 3_000_000_001 }),
    f("w/nsec", "n", { mtime: { sec: 1_600_000_000, nsec: 123_456_789 } }),
    f("w/tenth", "t", { mtime: { sec: 1_600_000_000, nsec: 100_000_000 } }),
    f("w/before1970", "o", { mtime: { sec: -2, nsec: 500_000_000 } }),
    f("w/far-future", "f", { mtime: { sec: 10_000_000_000, nsec: 0 } }), // past the octal field: PAX
    f("w/\xff\xfe", "not utf-8"),
    f(`w/${utf8("café-日本")}`, "unicode"),
    f("w/longuser", "u", { uname: "u".repeat(40), gname: "g".repeat(33) }),
    d(split),
    f(`${split}/${"b".repeat(90)}`, "split into prefix and name"),
    f(`w/${"c".repeat(150)}`, "one long component: PAX path"),
    f(`w/\xff${"\xfe".repeat(120)}`, "long, not utf-8: PAX path as bytes"),
    d(deep.slice(0, 2).join("/")),
    d(deep.slice(0, 3).join("/")),
    d(deep.join("/")),
    f(`${deep.join("/")}/file`, "past 255 bytes"),
    f("w/empty", ""),
    f("w/blocks", Buffer.alloc(1024, 0x62)),
    { e: { name: "w/link", type: "symlink", mode: 0o777, uid: 0, gid: 0, size: 0, mtime: T0, linkname: "plain" } },
    { e: { name: "w/longlink", type: "symlink", mode: 0o777, uid: 0, gid: 0, size: 0, mtime: T0, linkname: `../${"z".repeat(200)}\xff` } },
    { e: { name: "w/hard", type: "hardlink", mode: 0o644, uid: 0, gid: 0, size: 0, mtime: T0, linkname: "w/plain" } },
    { e: { name: "w/fifo", type: "fifo", mode: 0o640, uid: 0, gid: 0, size: 0, mtime: T0 } },
    { e: { name: "w/null", type: "char", mode: 0o666, uid: 0, gid: 0, size: 0, mtime: T0, devmajor: 1, devminor: 3 } },
    { e: { name: "w/loop", type: "block", mode: 0o660, uid: 0, gid: 0, size: 0, mtime: T0, devmajor: 7, devminor: 1048575 } },
  ];
}

function writeArchive(entries: Array<{ e: TarWriteEntry; body?: Buffer }>): Buffer {
  const w = new TarWriter();
  const parts: Buffer[] = [];
  for (const { e, body } of entries) {
    parts.push(w.header(e));
    if (body) parts.push(body, w.padding(body.length));
  }
  parts.push(w.end());
  return Buffer.concat(parts);
}

describe("TarWriter", () => {
  it("is deterministic: the same entries give the same bytes", () => {
    const a = writeArchive(writerEntries());
    const b = writeArchive(writerEntries());
    expect(a.equals(b)).toBe(true);
    expect(a.length % 512).toBe(0);
    // The PAX header's own name and metadata are fixed.
    const one = new TarWriter().header(writerEntries().find((x) => x.e.name === "w/nsec")!.e);
    expect(one.length).toBe(512 * 3);
    expect(one.subarray(0, 100).toString("latin1").replace(/\0+$/, "")).toBe("PaxHeaders/nsec");
    expect(one.subarray(156, 157).toString()).toBe("x");
    expect(one.subarray(100, 108).toString("latin1")).toBe("0000644\0");
    expect(one.subarray(136, 148).toString("latin1")).toBe("00000000000\0");
    expect(one.subarray(512, 512 + 30).toString("latin1")).toBe("30 mtime=1600000000.123456789\n");
  });

  it("writes plain ustar when ustar can say it all: no PAX header, raw bytes that are not UTF-8 in the name field", () => {
    const h = new TarWriter().header({ name: "d/\xff\xfe", type: "file", mode: 0o4755, uid: 7, gid: 8, uname: "u", gname: "g", size: 3, mtime: T0 });
    expect(h.length).toBe(512);
    expect(h.subarray(0, 5).toString("latin1")).toBe("d/\xff\xfe\0");
    expect(h.subarray(257, 265).toString("latin1")).toBe("ustar\x0000");
    expect(h.subarray(100, 108).toString("latin1")).toBe("0004755\0");
    expect(h.subarray(124, 136).toString("latin1")).toBe("00000000003\0");
    expect(h.subarray(148, 156).toString("latin1")).toMatch(/^[0-7]{6}\0 $/);
    const dir = new TarWriter().header({ name: "adir", type: "dir", mode: 0o755, uid: 0, gid: 0, size: 0, mtime: T0 });
    expect(dir.subarray(0, 6).toString("latin1")).toBe("adir/\0");
    expect(dir.subarray(156, 157).toString()).toBe("5");
  });

  it("PAX records in a fixed order, xattrs sorted by name", () => {
    const h = new TarWriter().header({
      name: `n/${"x".repeat(120)}`,
      type: "file",
      mode: 0o644,
      uid: 3_000_000_000,
      gid: 1,
      size: 0,
      mtime: { sec: -1, nsec: 1 },
      xattrs: [
        ["user.z", B("1")],
        ["security.a", B("2")],
      ],
    });
    const records = h.subarray(512, h.indexOf(0, 512));
    expect(records.toString("latin1")).toBe(
      paxRecords([
        ["path", `n/${"x".repeat(120)}`],
        ["uid", "3000000000"],
        ["mtime", "-0.999999999"],
        ["SCHILY.xattr.security.a", "2"],
        ["SCHILY.xattr.user.z", "1"],
      ]).toString("latin1"),
    );
  });

  it("round trip through the reader: every field", async () => {
    const entries = writerEntries();
    const archive = writeArchive(entries);
    for (const sizes of [[archive.length], [1], [700, 3]]) {
      const got = await readAll(archive, { sizes, inlineLimit: 100 });
      expect(got.length).toBe(entries.length);
      for (const [i, { e, body }] of entries.entries()) {
        const r = got[i]!.entry;
        expect({ ...r, offset: 0 }).toEqual({
          name: e.type === "dir" ? `${e.name}/` : e.name,
          type: e.type,
          mode: e.mode,
          uid: e.uid,
          gid: e.gid,
          uname: e.uname ?? "",
          gname: e.gname ?? "",
          size: e.size,
          mtime: e.mtime,
          linkname: e.linkname ?? "",
          devmajor: e.devmajor ?? 0,
          devminor: e.devminor ?? 0,
          xattrs: [...(e.xattrs ?? [])].sort(byName),
          offset: 0,
        });
        if (body) expect(got[i]!.bytes!.equals(body), e.name).toBe(true);
      }
    }
  });

  it("big sizes go in a PAX record (the header's field then 0)", async () => {
    const h = new TarWriter().header({ name: "huge", type: "file", mode: 0o644, uid: 0, gid: 0, size: 9_000_000_000, mtime: T0 });
    expect(h.includes(B(" size=9000000000\n"))).toBe(true);
    expect(h.subarray(1024 + 124, 1024 + 136).toString("latin1")).toBe("00000000000\0");
    const it = readTar(chunksOf(h));
    const first = await it.next();
    expect((first.value as TarItem).entry.size).toBe(9_000_000_000);
    await it.return();
  });

  it("refuses what it cannot write faithfully, naming the entry", () => {
    const ok: TarWriteEntry = { name: "ok", type: "file", mode: 0o644, uid: 0, gid: 0, size: 0, mtime: T0 };
    const cases: Array<[Partial<TarWriteEntry>, RegExp]> = [
      [{ name: "" }, /non-empty/],
      [{ name: "a\0b" }, /NUL/],
      [{ name: "caf\u00e9\u65e5" }, /not a byte string/],
      [{ name: "f/" }, /cannot end in '\/'/],
      [{ mode: 0o10000 }, /mode/],
      [{ uid: -1 }, /uid/],
      [{ size: 1.5 }, /size/],
      [{ type: "dir", size: 1 }, /no body/],
      [{ type: "symlink" }, /link target is empty/],
      [{ linkname: "x" }, /no link target/],
      [{ devmajor: 1 }, /no device numbers/],
      [{ type: "char", devmajor: 1 << 22 }, /devmajor/],
      [{ mtime: { sec: 0, nsec: 1e9 } }, /mtime/],
      [{ xattrs: [["user.a=b", B("")]] }, /'='/],
      [{ xattrs: [["user.a", "x" as unknown as Buffer]] }, /Buffer/],
      [
        {
          xattrs: [
            ["user.a", B("")],
            ["user.a", B("")],
          ],
        },
        /twice/,
      ],
      [{ xattrs: [["user.big", Buffer.alloc(1 << 20)]] }, /limit/],
      [{ type: "nonsense" as "file" }, /unknown entry type/],
    ];
    for (const [patch, re] of cases) {
      let err: unknown;
      try {
        new TarWriter().header({ ...ok, ...patch });
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(patch).slice(0, 80)).toBeInstanceOf(TarError);
      expect((err as Error).message).toMatch(re);
    }
  });

  it.skipIf(!REAL_ROOT)("GNU tar lists it and extracts it as root exactly: types, modes with setuid, owners, mtimes, targets, hard links, devices, xattrs", async () => {
    const entries = writerEntries();
    const dir = scratchDir("gnu-extract");
    const archivePath = join(dir, "w.tar");
    writeFileSync(archivePath, writeArchive(entries));
    const listing = run("tar", ["-tvf", archivePath]);
    expect(listing.trim().split("\n").length).toBe(entries.length);
    expect(listing).toContain("w/link -> plain");
    expect(listing).toContain("w/hard link to w/plain");
    const out = join(dir, "out");
    mkdirSync(out);
    const x = spawnSync("tar", ["--xattrs", "--xattrs-include=*", "--numeric-owner", "--warning=no-timestamp", "-xpf", archivePath, "-C", out], { encoding: "latin1" });
    expect(x.stderr).toBe("");
    expect(x.status).toBe(0);

    const plainIno = lstatSync(join(out, "w/plain")).ino;
    for (const { e, body } of entries) {
      const p = at(out, e.name);
      const st = lstatSync(p, { bigint: true });
      const fmt = Number(st.mode) & 0o170000;
      const type = { 0o040000: "dir", 0o120000: "symlink", 0o010000: "fifo", 0o020000: "char", 0o060000: "block", 0o100000: "file" }[fmt];
      expect(type, e.name).toBe(e.type === "hardlink" ? "file" : e.type);
      if (e.type !== "symlink") expect(Number(st.mode) & 0o7777, e.name).toBe(e.mode);
      expect([Number(st.uid), Number(st.gid)], e.name).toEqual(e.type === "hardlink" ? [0, 0] : [e.uid, e.gid]);
      if (e.type !== "hardlink") expect(st.mtimeNs, e.name).toBe(BigInt(e.mtime.sec) * 1_000_000_000n + BigInt(e.mtime.nsec));
      if (e.type === "symlink") expect(readlinkSync(p, { encoding: "buffer" }).toString("latin1")).toBe(e.linkname);
      if (e.type === "hardlink") expect(st.ino).toBe(BigInt(plainIno));
      if (e.type === "char" || e.type === "block") expect([major(st.rdev), minor(st.rdev)]).toEqual([e.devmajor, e.devminor]);
      if (body) expect(readFileSync(p).equals(body), e.name).toBe(true);
    }
    if (HAS_ATTR) {
      const dump = run("getfattr", ["-d", "-m", "-", "-e", "hex", "--absolute-names", join(out, "w/plain")]);
      const attrs = dump
        .split("\n")
        .filter((l) => l && !l.startsWith("#"))
        .map((l) => l.split("="))
        .map(([k, v]) => [k!, Buffer.from(v!.slice(2), "hex")] as [string, Buffer]);
      expect(attrs.sort(byName)).toEqual([...entries.find((x) => x.e.name === "w/plain")!.e.xattrs!].sort(byName));
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// Layer blobs

const sha256sum = (path: string) => `sha256:${run("sha256sum", [path]).split(" ")[0]}`;

async function drain(layer: ReturnType<typeof openLayer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of layer.chunks) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe("layer blobs: compression and digests", () => {
  let tar: Buffer;
  let tarPath: string;
  let dir: string;
  beforeAll(async () => {
    dir = scratchDir("layers");
    tar = (await gnuArchive("posix")).archive;
    // Some bulk that does not compress, so blobs span many chunks and zstd blocks.
    const bulk = randomBytes(600_000);
    const w = new TarWriter();
    tar = Buffer.concat([w.header({ name: "bulk", type: "file", mode: 0o644, uid: 0, gid: 0, size: bulk.length, mtime: T0 }), bulk, w.padding(bulk.length), tar]);
    tarPath = join(dir, "layer.tar");
    writeFileSync(tarPath, tar);
  });

  const compressors: Array<[string, string, (path: string) => Buffer]> = [
    ["none", "none", (p) => readFileSync(p)],
    ["gzip", "gzip", (p) => execFileSync("gzip", ["-c", p], { maxBuffer: 64 << 20 })],
    ["zstd", "zstd", (p) => execFileSync("zstd", ["-q", "-c", p], { maxBuffer: 64 << 20 })],
    ["zstd -19 --no-check", "zstd", (p) => execFileSync("zstd", ["-q", "-19", "--no-check", "-c", p], { maxBuffer: 64 << 20 })],
  ];

  for (const [label, format, make] of compressors) {
    it(`${label}: detected, decompressed, read; digest = sha256sum of the blob, diffId = of the tar`, async () => {
      const blobPath = join(dir, `blob-${seq++}`);
      writeFileSync(blobPath, make(tarPath));
      const blob = readFileSync(blobPath);
      expect(detectCompression(blob.subarray(0, 10))).toBe(format);
      for (const source of [blobPath, createReadStream(blobPath), chunksOf(blob, [1, 7, 300, 5000])]) {
        const layer = openLayer(source);
        const names = (await readAll(layer.chunks)).map((r) => r.entry.name);
        expect(names).toEqual((await readAll(tar)).map((r) => r.entry.name));
        expect(layer.compression).toBe(format);
        expect(layer.result()).toEqual({ digest: sha256sum(blobPath), diffId: sha256sum(tarPath), size: blob.length, uncompressedSize: tar.length });
      }
    });
  }

  it("multi-member gzip and multi-frame zstd, with a skippable frame, decompress to the whole", async () => {
    const skippable = Buffer.concat([Buffer.from([0x50, 0x2a, 0x4d, 0x18]), Buffer.from([5, 0, 0, 0]), B("skip!")]);
    // Source chunks of 1 byte on the smaller archive only: a million chunks through zlib's stream take long.
    const small = (await gnuArchive("gnu")).archive;
    for (const [whole, chunkings] of [
      [tar, [[Number.MAX_SAFE_INTEGER], [4096, 3]]],
      [small, [[1]]],
    ] as const) {
      const halves = [whole.subarray(0, Math.floor(whole.length / 2) + 1), whole.subarray(Math.floor(whole.length / 2) + 1)];
      const gz = Buffer.concat(halves.map((h) => execFileSync("gzip", ["-c"], { input: h })));
      const zst = Buffer.concat([skippable, ...halves.map((h) => execFileSync("zstd", ["-q", "-c"], { input: h })), skippable]);
      for (const [blob, format] of [
        [gz, "gzip"],
        [zst, "zstd"],
      ] as const) {
        for (const sizes of chunkings) {
          const layer = openLayer(chunksOf(blob, [...sizes]));
          expect((await drain(layer)).equals(whole)).toBe(true);
          expect(layer.compression).toBe(format);
          expect(layer.result()).toMatchObject({ digest: sha256(blob), diffId: sha256(whole), size: blob.length, uncompressedSize: whole.length });
        }
      }
    }
  });

  it("bzip2 and xz are refused by name", async () => {
    const blobs: Array<[Buffer, string]> = [
      [Buffer.concat([B("BZh91AY&SY"), Buffer.alloc(40)]), "bzip2"],
      [Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0]), Buffer.alloc(40)]), "xz"],
    ];
    if (has("bzip2")) blobs.push([execFileSync("bzip2", ["-c", tarPath], { maxBuffer: 64 << 20 }), "bzip2"]);
    if (has("xz")) blobs.push([execFileSync("xz", ["-c", tarPath], { maxBuffer: 64 << 20 }), "xz"]);
    for (const [blob, name] of blobs) {
      expect(() => detectCompression(blob)).toThrow(new RegExp(`${name}-compressed`));
      const err = await tarError(drain(openLayer(chunksOf(blob))));
      expect(err.code).toBe("ERR_OVL_LAYER");
      expect(err.message).toContain(`${name}-compressed`);
    }
    // A tar whose first name starts "BZh" is still a tar.
    expect(detectCompression(file("BZh9 not bzip2", ""))).toBe("none");
  });

  it("damaged and truncated blobs: a TarError naming the format", async () => {
    const gz = execFileSync("gzip", ["-c", tarPath], { maxBuffer: 64 << 20 });
    const zst = execFileSync("zstd", ["-q", "-c", tarPath], { maxBuffer: 64 << 20 });
    const flipped = Buffer.from(gz);
    for (let i = 100; i < 200; i++) flipped[i] = flipped[i]! ^ 0x55;
    const cases: Array<[Buffer, RegExp]> = [
      [gz.subarray(0, gz.length - 100), /gzip data is damaged or truncated/],
      [flipped, /gzip data is damaged or truncated/],
      [zst.subarray(0, zst.length - 100), /zstd data .*(truncated|damaged)/],
      [Buffer.concat([zst, B("trailing garbage")]), /zstd data is damaged .*not a zstd frame/],
    ];
    for (const [blob, re] of cases) {
      const err = await tarError(drain(openLayer(chunksOf(blob, [4096]))));
      expect(err.code).toBe("ERR_OVL_LAYER");
      expect(err.message).toMatch(re);
    }
  });

  it("a zstd frame asking for a window past the limit is refused before anything is allocated", async () => {
    // Frame header: magic, descriptor 0 (no single segment, no checksum), window descriptor exponent 21: 2 GiB.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3, 0x01, 0x00, 0x00]);
    const err = await tarError(drain(openLayer(chunksOf(frame))));
    expect(err.message).toMatch(/window is 2147483648 bytes, over the 134217728-byte limit/);
    const ok = openLayer(chunksOf(execFileSync("zstd", ["-q", "-c"], { input: tar })), { zstdWindowLimit: 1 << 10 });
    expect((await tarError(drain(ok))).message).toMatch(/window/);
  });

  it("pulls the source only as the consumer reads: no read-ahead of the whole blob", async () => {
    const blobs = {
      none: tar,
      gzip: execFileSync("gzip", ["-c"], { input: tar }),
      zstd: execFileSync("zstd", ["-q", "-c"], { input: tar }),
    };
    for (const [format, blob] of Object.entries(blobs)) {
      let pulled = 0;
      const total = Math.ceil(blob.length / 1024);
      async function* src() {
        for (let i = 0; i < blob.length; i += 1024) {
          pulled++;
          yield blob.subarray(i, i + 1024);
        }
      }
      const layer = openLayer(src());
      const it = layer.chunks[Symbol.asyncIterator]();
      await it.next();
      expect(() => layer.result()).toThrow(/read to its end/);
      // At most what one output needs: for zstd a whole block (up to 128 KiB), for gzip zlib's buffers.
      expect(pulled, format).toBeLessThan(Math.min(total / 2, 160));
      await it.return?.();
    }
  });

  it("state: compression before the first read, result() before the end, chunks read twice", async () => {
    const layer = openLayer(chunksOf(tar));
    expect(() => layer.compression).toThrow(/known once chunks has been read/);
    await drain(layer);
    expect(() => layer.chunks[Symbol.asyncIterator]()).toThrow(/read once/);
    expect(layer.result().diffId).toBe(sha256(tar));
    expect(() => openLayer(42 as unknown as string)).toThrow(TypeError);
  });

  it("gzipChunks: deterministic, mtime 0 in the header, and gzip -d gives the input back", async () => {
    const once = async () => {
      const parts: Buffer[] = [];
      for await (const c of gzipChunks(chunksOf(tar, [1000]))) parts.push(c);
      return Buffer.concat(parts);
    };
    const a = await once();
    const b = await once();
    expect(a.equals(b)).toBe(true);
    expect(a.readUInt32LE(4)).toBe(0);
    expect(execFileSync("gzip", ["-dc"], { input: a, maxBuffer: 64 << 20 }).equals(tar)).toBe(true);
    const layer = openLayer(chunksOf(a));
    expect((await drain(layer)).equals(tar)).toBe(true);
    expect(layer.result().diffId).toBe(sha256(tar));
  });
});

