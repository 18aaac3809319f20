/**
 * Layer-test scaffolding: archives built by Python's tarfile (an independent writer that can make any entry,
 * hostile ones included), and trees described by find(1) and getfattr(1), not by ovl's own walkers.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, readFileSync } from "node:fs";

export interface ArchiveEntry {
  /** The name's bytes as a latin1 string (so non-UTF-8 names can be given), or plain text. */
  name: string;
  type?: "file" | "dir" | "symlink" | "hardlink" | "fifo" | "char" | "block";
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  devmajor?: number;
  devminor?: number;
  /** PAX records, e.g. `SCHILY.xattr.user.x`; values as latin1 strings. */
  pax?: Record<string, string>;
}

const BUILDER = String.raw`
import sys, json, tarfile, io
spec = json.load(sys.stdin)
types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE}
b = lambda s: bytes.fromhex(s).decode("utf-8", "surrogateescape")
out = io.BytesIO()
with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT if spec["format"] == "pax" else tarfile.GNU_FORMAT,
                  encoding="utf-8", errors="surrogateescape") as t:
    for e in spec["entries"]:
        i = tarfile.TarInfo(b(e["name"]))
        i.type = types[e.get("type", "file")]
        data = bytes.fromhex(e.get("data", ""))
        i.size = len(data) if i.type == tarfile.REGTYPE else 0
        i.mode = e.get("mode", 0o755 if i.type == tarfile.DIRTYPE else 0o644)
        i.uid = e.get("uid", 0); i.gid = e.get("gid", 0)
        i.mtime = e.get("mtime", 1700000000)
        i.linkname = b(e.get("linkname", ""))
        i.devmajor = e.get("devmajor", 0); i.devminor = e.get("devminor", 0)
        if "pax" in e:
            i.pax_headers = {k: b(v) for k, v in e["pax"].items()}
        t.addfile(i, io.BytesIO(data) if i.size else None)
sys.stdout.buffer.write(out.getvalue())
`;

const hex = (s: string | Buffer) => (typeof s === "string" ? Buffer.from(s, "latin1") : s).toString("hex");

/** A tar archive of these entries, as Python's tarfile writes it (PAX format unless `gnu`). */
export function buildArchive(entries: ArchiveEntry[], format: "pax" | "gnu" = "pax"): Buffer {
  const spec = {
    format,
    entries: entries.map((e) => ({
      ...e,
      name: hex(e.name),
      ...(e.data !== undefined ? { data: hex(e.data) } : {}),
      ...(e.linkname !== undefined ? { linkname: hex(e.linkname) } : {}),
      ...(e.pax ? { pax: Object.fromEntries(Object.entries(e.pax).map(([k, v]) => [k, hex(v)])) } : {}),
    })),
  };
  return execFileSync("python3", ["-c", BUILDER], { input: JSON.stringify(spec), maxBuffer: 1 << 30 });
}

/**
 * Every entry below `dir` as find(1) prints it (path, type, mode, owner, size, mtime, link target, device,
 * inode links), plus a content hash for files and all xattrs: a description independent of ovl's code.
 */
export function describeTree(dir: string, opts: DescribeOptions = {}): string[] {
  return describeEntries(dir, opts).map(([path, rest]) => `${path} ${rest}`);
}

export interface DescribeOptions {
  mtimes?: boolean | "seconds";
  xattrs?: boolean;
  root?: boolean;
}

/**
 * describeTree() as [path, the rest of its row] pairs (the path's bytes as latin1, "" for the root), so that
 * two trees can be compared entry by entry even when names hold spaces.
 */
export function describeEntries(dir: string, opts: DescribeOptions = {}): Array<[string, string]> {
  const fmt = `%P\\0%y\\0%m\\0%U:%G\\0%s\\0${opts.mtimes === false ? "" : opts.mtimes === "seconds" ? "%Ts" : "%T@"}\\0%l\\0%n\\0%i\\n`;
  const raw = execFileSync("find", [dir, ...(opts.root ? [] : ["-mindepth", "1"]), "-printf", fmt], { maxBuffer: 1 << 30 });
  const rows = raw.toString("latin1").split("\n").filter(Boolean).map((line) => line.split("\0"));
  // Inode numbers only group hard links: replace each by the first path that has it.
  const firstOfInode = new Map<string, string>();
  const xattrs = opts.xattrs === false ? new Map<string, string>() : xattrsBelow(dir);
  const out: Array<[string, string]> = [];
  for (const [path, type, mode, owner, size, mtime, link, nlink, ino] of rows.sort((a, b) => (a[0]! < b[0]! ? -1 : a[0]! > b[0]! ? 1 : 0))) {
    const full = Buffer.from(path ? `${dir}/${path}` : dir, "latin1");
    let extra = "";
    if (type === "f") {
      extra = createHash("sha256").update(readFileSync(full)).digest("hex").slice(0, 16);
      const first = firstOfInode.get(ino!);
      if (first !== undefined) extra += ` link=${first}`;
      else firstOfInode.set(ino!, path!);
    }
    if (type === "c" || type === "b") {
      const rdev = lstatSync(full).rdev;
      extra = `${Math.floor(rdev / 256) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;
    }
    const x = xattrs.get(path!);
    if (x) extra += ` xattrs=${x}`;
    out.push([path!, `${type} ${mode} ${owner} ${type === "d" ? "-" : size} ${mtime} ${link} ${type === "d" ? "" : nlink} ${extra}`.trimEnd()]);
  }
  return out;
}

/** getfattr -R of a tree: path below `dir` (bytes as latin1) -> its xattrs, sorted, as name=0xhex. */
function xattrsBelow(dir: string): Map<string, string> {
  const text = execFileSync("getfattr", ["-R", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", dir], {
    stdio: ["ignore", "pipe", "ignore"],
    maxBuffer: 1 << 30,
  }).toString("latin1");
  const out = new Map<string, string>();
  // getfattr writes unusual bytes of a name as \ooo.
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  for (const block of text.split("\n\n")) {
    const lines = block.split("\n").filter(Boolean);
    const head = lines.shift();
    if (!head?.startsWith("# file: ")) continue;
    const full = unescape(head.slice("# file: ".length));
    const rel = full === dir ? "" : full.slice(dir.length + 1);
    out.set(rel, lines.sort().join(","));
  }
  return out;
}
