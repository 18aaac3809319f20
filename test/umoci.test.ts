/**
 * Issue 13: ovl's layer code against a real peer, umoci.
 *
 * 1. An image is built offline with umoci: three layers made by `umoci repack` from changes to an unpacked
 *    bundle (umoci works out whiteouts itself, from its mtree of the bundle), and a fourth, hand-written
 *    layer (opaque markers, which umoci never writes itself) added with `umoci raw add-layer`.
 * 2. The test reads the OCI layout itself (index.json -> manifest -> config and layers, every blob's digest
 *    and size checked), applies every layer with ovl's applyLayer() into its own directory, mounts the stack
 *    and compares it with `umoci unpack`'s rootfs entry by entry (describeEntries: find + getfattr).
 * 3. The other way: changes made in an overlay over those layers, exported by exportLayerTo() (plain, and
 *    gzip), added to the image (`umoci raw add-layer`, and for gzip by writing the blob, config, manifest
 *    and index by hand, since raw add-layer takes plain tars only), unpacked by umoci and compared with what
 *    the overlay showed; GNU tar plus whiteout handling applies the same layer as a second reference.
 *
 * What umoci (0.4.7) does, as measured here (the first test asserts it on umoci's own layers):
 * - deletions: `.wh.NAME` (an empty regular file, mode 0, mtime 0). A removed directory is one `.wh.DIR`,
 *   its contents not listed. A directory removed and made again is not opaque: umoci writes a whiteout for
 *   each old child that is gone, never `.wh..wh..opq`. On unpack it honours `.wh..wh..opq` (written here by
 *   hand, and by ovl's export) by emptying what the directory had from the layers below.
 * - a directory replaced by a non-directory: the new entry, then a whiteout for each old child *below it*
 *   (`d` a file or symlink, then `d/.wh.x`). umoci's unpack ignores those below a file, and *follows* a
 *   symlink: `d -> etc` then `d/.wh.x` deletes etc/x from its rootfs (a umoci bug; see the last tests).
 * - directories: written only when their own metadata changed (mtime compared to the second), so a file
 *   changed in place comes without its parents: those are implied, and unpack leaves them as they were.
 *   `./` is written when the root changed.
 * - xattrs: all of them, `user.*`, `trusted.*` and `security.*`, as `SCHILY.xattr.*` PAX records, on files,
 *   directories and symlinks; unpack (as root) sets them all again.
 * - hard links: a type-1 entry naming the first path of the inode in that layer. umoci's mtree keeps nlink,
 *   so adding or removing a name of a linked file re-writes every remaining name of it in the new layer
 *   (across layers a link is never made to a lower layer's entry).
 * - non-UTF-8 names (and targets): raw bytes in PAX `path`/`linkpath` records (no hdrcharset).
 * - devices: char and block entries with their major:minor (260:70000 too); fifos as type 6.
 * - mtimes: whole seconds, rounded to the nearest (Go's archive/tar: 1600000000.7 is written 1600000001),
 *   where ovl's exportLayer truncates (1600000000); no PAX mtime records.
 * - `umoci raw add-layer` takes a plain tar only and stores it gzipped itself (its diff_id is the digest of
 *   the tar given); a gzip layer is added here by writing the blobs and index by hand.
 *
 * Mismatches found (their tests fail until ovl is fixed; minimal cases in the last describe):
 * - applyLayer gives a directory a layer only implies 0755 0:0, no xattrs and the apply's mtime, and that
 *   directory then hides the lower layers' own in the overlay; umoci keeps what the layers below said.
 * - applyLayer refuses umoci's layer for a directory replaced by a file or a symlink (the whiteouts below it).
 * - exportLayer writes the lower files of a renamed directory as separate files, hard links lost.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  lchownSync,
  lstatSync,
  linkSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { applyLayer, type ApplyLayerResult } from "../src/layers/apply.js";
import { exportLayerTo, type ExportResult } from "../src/layers/export.js";
import { buildArchive, describeEntries, type DescribeOptions } from "./layer-helpers.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const CI = Boolean(process.env.CI);
const umociVersion = (() => {
  const r = spawnSync("umoci", ["--version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
})();
if (umociVersion === undefined && !CI) {
  console.warn("umoci.test.ts: SKIPPED: umoci is not installed (.ci/run installs it; with CI set this file fails instead)");
}

// ---------------------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------------------

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

function umoci(...args: string[]): string {
  const r = spawnSync("umoci", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`umoci ${args.join(" ")} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** Paths below a root, given as latin1 strings (one character per byte, so names that are not UTF-8 can be). */
const under = (root: string) => (rel: string) => Buffer.from(`${root}/${rel}`, "latin1");

function write(p: Buffer, data: string | Buffer, mode?: number): void {
  writeFileSync(p, data);
  if (mode !== undefined) chmodSync(p, mode);
}

/** xattrs through python (no Node API), the path's bytes as hex, never following a symlink. */
function setXattrs(p: Buffer, set: Record<string, string>, remove: string[] = []): void {
  execFileSync("python3", [
    "-c",
    "import os,sys,json; p=bytes.fromhex(sys.argv[1]); s=json.loads(sys.argv[2])\n" +
      "for k,v in s.items(): os.setxattr(p,k,v.encode(),follow_symlinks=False)\n" +
      "for k in json.loads(sys.argv[3]): os.removexattr(p,k,follow_symlinks=False)",
    p.toString("hex"),
    JSON.stringify(set),
    JSON.stringify(remove),
  ]);
}

function mknod(p: Buffer, type: "c" | "b" | "p", major = 0, minor = 0): void {
  execFileSync("python3", [
    "-c",
    "import os,sys,stat; t={'c':stat.S_IFCHR,'b':stat.S_IFBLK,'p':stat.S_IFIFO}[sys.argv[2]]\n" +
      "os.mknod(bytes.fromhex(sys.argv[1]), t|0o644, os.makedev(int(sys.argv[3]),int(sys.argv[4])))",
    p.toString("hex"),
    type,
    String(major),
    String(minor),
  ]);
}

interface TarMember {
  /** Bytes as latin1, without `./` in front or `/` behind. */
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  linkname: string;
  dev: [number, number];
  pax: string[];
}

/** A layer's entries as Python's tarfile reads them (gzip or plain): a reading independent of ovl and umoci. */
function listTar(file: string): TarMember[] {
  const script = String.raw`
import sys, json, tarfile
enc = lambda s: s.encode("utf-8", "surrogateescape").hex()
out = []
with tarfile.open(sys.argv[1], "r:*", encoding="utf-8", errors="surrogateescape") as t:
    for i in t:
        out.append({"name": enc(i.name), "type": i.type.decode(), "mode": i.mode, "uid": i.uid, "gid": i.gid,
                    "mtime": i.mtime, "size": i.size, "linkname": enc(i.linkname), "dev": [i.devmajor, i.devminor],
                    "pax": sorted(i.pax_headers.keys())})
json.dump(out, sys.stdout)
`;
  const raw = JSON.parse(execFileSync("python3", ["-c", script, file], { maxBuffer: 1 << 28 }).toString()) as Array<TarMember & { name: string }>;
  const latin = (h: string) => Buffer.from(h, "hex").toString("latin1");
  return raw.map((m) => ({ ...m, name: latin(m.name).replace(/^(\.\/)+/, "").replace(/\/$/, ""), linkname: latin(m.linkname) }));
}

// ---------------------------------------------------------------------------------------------------------
// The OCI layout, read here (not by umoci, not by ovl)
// ---------------------------------------------------------------------------------------------------------

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}
interface Manifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}
interface ImageConfig {
  rootfs: { type: string; diff_ids: string[] };
  history?: Array<Record<string, unknown>>;
  [k: string]: unknown;
}
interface Image {
  manifestDescriptor: Descriptor;
  manifest: Manifest;
  config: ImageConfig;
  layers: Array<Descriptor & { path: string; diffId: string }>;
}

const REF_NAME = "org.opencontainers.image.ref.name";

function blobPath(layout: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new Error(`not a sha256 digest: ${digest}`);
  return `${layout}/blobs/sha256/${m[1]}`;
}

/** A blob's bytes, after checking them against the descriptor's digest and size. */
function readBlob(layout: string, d: Descriptor): Buffer {
  const b = readFileSync(blobPath(layout, d.digest));
  expect(b.length, `size of ${d.digest}`).toBe(d.size);
  expect(sha(b), `digest of blob ${d.digest}`).toBe(d.digest);
  return b;
}

function readImage(layout: string, tag: string): Image {
  const index = JSON.parse(readFileSync(`${layout}/index.json`, "utf8")) as { manifests: Descriptor[] };
  const manifestDescriptor = index.manifests.find((m) => m.annotations?.[REF_NAME] === tag);
  if (!manifestDescriptor) throw new Error(`no manifest tagged ${tag} in ${layout}/index.json`);
  expect(manifestDescriptor.mediaType).toBe("application/vnd.oci.image.manifest.v1+json");
  const manifest = JSON.parse(readBlob(layout, manifestDescriptor).toString()) as Manifest;
  expect(manifest.config.mediaType).toBe("application/vnd.oci.image.config.v1+json");
  const config = JSON.parse(readBlob(layout, manifest.config).toString()) as ImageConfig;
  expect(config.rootfs.type).toBe("layers");
  expect(config.rootfs.diff_ids.length).toBe(manifest.layers.length);
  const layers = manifest.layers.map((l, i) => {
    readBlob(layout, l);
    return { ...l, path: blobPath(layout, l.digest), diffId: config.rootfs.diff_ids[i]! };
  });
  return { manifestDescriptor, manifest, config, layers };
}

function writeBlob(layout: string, bytes: Buffer, mediaType: string): Descriptor {
  const digest = sha(bytes);
  writeFileSync(blobPath(layout, digest), bytes);
  return { mediaType, digest, size: bytes.length };
}

/**
 * What `umoci raw add-layer` does, by hand, for a layer it cannot take (a compressed one): the blob, a config
 * with its diff_id and a history entry, a manifest with the layer, the index with the new tag.
 */
function addLayerByHand(layout: string, fromTag: string, newTag: string, blob: Buffer, mediaType: string, diffId: string): void {
  const img = readImage(layout, fromTag);
  const layer = writeBlob(layout, blob, mediaType);
  const config: ImageConfig = {
    ...img.config,
    rootfs: { type: "layers", diff_ids: [...img.config.rootfs.diff_ids, diffId] },
    history: [...(img.config.history ?? []), { created_by: "ovl exportLayer (gzip), added by umoci.test.ts" }],
  };
  const configDesc = writeBlob(layout, Buffer.from(JSON.stringify(config)), "application/vnd.oci.image.config.v1+json");
  const manifest: Manifest = { ...img.manifest, config: configDesc, layers: [...img.manifest.layers, layer] };
  const manifestDesc = writeBlob(layout, Buffer.from(JSON.stringify(manifest)), "application/vnd.oci.image.manifest.v1+json");
  const index = JSON.parse(readFileSync(`${layout}/index.json`, "utf8")) as { manifests: Descriptor[] };
  index.manifests.push({ ...manifestDesc, annotations: { [REF_NAME]: newTag } });
  writeFileSync(`${layout}/index.json`, JSON.stringify(index));
}

// ---------------------------------------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------------------------------------

const shown = (p: string) => JSON.stringify(p).slice(1, -1); // bytes above 0x7f as \u00XX
/** The path of a treeDiff() line. */
const pathOf = (line: string) => JSON.parse(`"${line.slice(1, line.indexOf("': "))}"`) as string;

/** The entries that differ, one line each: path, then both sides' rows (type mode owner size mtime link nlink hash links xattrs). */
function treeDiff(ours: Array<[string, string]>, theirs: Array<[string, string]>, names: [string, string]): string[] {
  const a = new Map(ours);
  const b = new Map(theirs);
  const out: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    if (a.get(k) !== b.get(k)) out.push(`'${shown(k)}': ${names[0]}: ${a.get(k) ?? "(missing)"} | ${names[1]}: ${b.get(k) ?? "(missing)"}`);
  }
  return out.sort();
}

// ---------------------------------------------------------------------------------------------------------
// The image: what each layer changes
// ---------------------------------------------------------------------------------------------------------

const BIG = randomBytes(5 * 1024 * 1024 + 321);
const BIG2 = randomBytes(5 * 1024 * 1024 - 17);
const LONG_A = `long/${"d".repeat(60)}/${"e".repeat(60)}/file`; // > 100 bytes: ustar's name field is not enough
const LONG_DIR = `long/${"x".repeat(200)}/${"y".repeat(250)}`;
const LONG_B = `${LONG_DIR}/${"z".repeat(255)}`; // > 255 bytes: not even ustar's prefix + name
const LONG_LINK = `${LONG_DIR}/${"w".repeat(255)}`; // a hard link with a long name to a long name

/** Layer 1: something of every kind. */
function layer1(root: string): void {
  const p = under(root);
  for (const d of ["etc", "old/sub", "var/lib/app/more", "replace-dir", "mvsrc/y", "hl", "bin", "links", "x/dir", "modes", "own/dir", "nodes", "names/\xff-dir", LONG_A.replace(/\/file$/, ""), LONG_DIR, "times/dir", "sub/empty-dir"]) {
    mkdirSync(p(d), { recursive: true });
  }
  write(p("etc/hosts"), "127.0.0.1 localhost\n");
  write(p("etc/gone"), "to be deleted");
  write(p("etc/mode"), "chmod me", 0o644);
  write(p("etc/owner"), "chown me");
  write(p("old/a"), "a");
  write(p("old/sub/b"), "b");
  write(p("var/lib/app/data"), "data");
  write(p("var/lib/app/more/deep"), "deep");
  write(p("replace-dir/inner"), "inner");
  write(p("etc/owner-link"), "a file, a symlink later");
  write(p("replace-file"), "a file, a directory later");
  write(p("mvsrc/x"), "x");
  write(p("mvsrc/y/z"), "z");
  write(p("hl/a"), "three names");
  linkSync(p("hl/a"), p("hl/b"));
  linkSync(p("hl/a"), p("hl/c"));
  write(p("bin/tool"), "#!/bin/sh\necho tool\n", 0o755);
  linkSync(p("bin/tool"), p("bin/tool-alias"));
  symlinkSync("/etc/hosts", p("links/abs"));
  symlinkSync("../etc/hosts", p("links/rel"));
  symlinkSync("../nowhere/at/all", p("links/dangling"));
  symlinkSync("../etc", p("links/dir"));
  symlinkSync(Buffer.from("caf\xff\xfe", "latin1"), p("links/raw-target"));
  symlinkSync("t".repeat(150), p("links/long-target"));
  write(p("x/file"), "with xattrs");
  setXattrs(p("x/file"), { "user.k": "v1", "trusted.t": "tv", "security.s": "sv" });
  setXattrs(p("x/dir"), { "user.d": "dv" });
  setXattrs(p("links/abs"), { "trusted.l": "on a symlink" }); // user.* cannot be on a symlink; trusted.* can
  write(p("modes/suid"), "s", 0o4755);
  write(p("modes/sgid"), "g", 0o2755);
  write(p("modes/both"), "b", 0o6711);
  write(p("modes/none"), "n", 0o000);
  write(p("modes/exec"), "e", 0o700);
  mkdirSync(p("modes/sticky-dir"));
  chmodSync(p("modes/sticky-dir"), 0o1777);
  mkdirSync(p("modes/sgid-dir"));
  chmodSync(p("modes/sgid-dir"), 0o2775);
  mkdirSync(p("keep/dir"), { recursive: true });
  write(p("keep/dir/inner"), "changed in place later: umoci's next layer then holds it, not its directories");
  chmodSync(p("keep/dir"), 0o750);
  lchownSync(p("keep/dir"), 1111, 2222);
  setXattrs(p("keep/dir"), { "user.keep": "on an implied directory" });
  utimesSync(p("keep/dir"), 1550000000, 1550000000);
  utimesSync(p("keep"), 1550000001, 1550000001);
  write(p("own/file"), "owned");
  lchownSync(p("own/file"), 1234, 5678);
  lchownSync(p("own/dir"), 4321, 8765);
  lchownSync(p("links/rel"), 111, 222);
  mknod(p("nodes/fifo"), "p");
  mknod(p("nodes/null"), "c", 1, 3);
  mknod(p("nodes/loop"), "b", 7, 0);
  mknod(p("nodes/big-minor"), "c", 260, 70000); // needs the wide encoding of major and minor
  write(p("names/caf\xff\xfe"), "not UTF-8");
  write(p("names/\xff-dir/inside"), "in a non-UTF-8 directory");
  write(p("names/caf\xc3\xa9"), "UTF-8");
  write(p("names/with space"), "space");
  write(p(LONG_A), "long");
  write(p(LONG_B), "longer");
  linkSync(p(LONG_B), p(LONG_LINK));
  write(p("empty"), "");
  write(p("sub/empty-file"), "");
  write(p("big"), BIG);
  write(p("times/frac-low"), "l");
  write(p("times/frac-high"), "h");
  symlinkSync("frac-low", p("times/link"));
  utimesSync(p("times/frac-low"), 1600000000.2, 1600000000.2);
  utimesSync(p("times/frac-high"), 1600000000.7, 1600000000.7);
  lutimesSync(p("times/link"), 1400000000, 1400000000);
  utimesSync(p("times/dir"), 1500000000, 1500000000);
  utimesSync(p("times"), 1500000001, 1500000001);
}

/** Layer 2: deletions, replacements, a rename, changed metadata, links added and removed. */
function layer2(root: string): void {
  const p = under(root);
  write(p("etc/hosts"), "10.0.0.1 changed\n");
  write(p("keep/dir/inner"), "changed in place: no entry of keep/ or keep/dir/ in this layer");
  unlinkSync(p("etc/gone"));
  chmodSync(p("etc/mode"), 0o600);
  lchownSync(p("etc/owner"), 42, 43);
  rmSync(p("old"), { recursive: true });
  rmSync(p("var/lib/app"), { recursive: true });
  mkdirSync(p("var/lib/app")); // removed and made again, other contents
  write(p("var/lib/app/fresh"), "fresh");
  unlinkSync(p("etc/owner-link"));
  symlinkSync("owner", p("etc/owner-link")); // a file replaced by a symlink
  unlinkSync(p("replace-file"));
  mkdirSync(p("replace-file"));
  write(p("replace-file/inside"), "was a file");
  renameSync(p("mvsrc"), p("mvdst"));
  unlinkSync(p("hl/b"));
  linkSync(p("bin/tool"), p("bin/tool-third")); // a link to a file of the layer below
  unlinkSync(p("links/rel"));
  symlinkSync("../etc/mode", p("links/rel"));
  unlinkSync(p("nodes/fifo"));
  setXattrs(p("x/file"), { "user.k": "v2" }, ["security.s"]);
  unlinkSync(p("names/caf\xff\xfe")); // a whiteout whose name is not UTF-8
  rmSync(p("names/\xff-dir"), { recursive: true });
  unlinkSync(p(LONG_B)); // a long whiteout; its other name stays
}

/** Layer 3: a whited-out directory made again, a removed big file, metadata-only changes, more links. */
function layer3(root: string): void {
  const p = under(root);
  mkdirSync(p("old"));
  write(p("old/again"), "again");
  unlinkSync(p("big"));
  utimesSync(p("times/frac-low"), 1650000000, 1650000000); // only the mtime changes
  chmodSync(p("modes/sgid-dir"), 0o755);
  linkSync(p("hl/a"), p("hl/d"));
  write(p("names/new-\xfe\xfd"), "another non-UTF-8 name");
  mknod(p("nodes/zero"), "c", 1, 5);
  unlinkSync(p("links/dir"));
  mkdirSync(p("links/dir")); // a symlink replaced by a directory
  write(p("links/dir/f"), "f");
}

/** Layer 4, by hand (umoci never writes opaque markers): an opaque directory, a whiteout then the same name. */
function layer4(): Buffer {
  return buildArchive([
    { name: "var/lib/app/", type: "dir", mode: 0o750, mtime: 1700000100 },
    { name: "var/lib/app/.wh..wh..opq", data: "" },
    { name: "var/lib/app/only", data: "only this", mtime: 1700000200 },
    { name: ".wh.old", data: "" },
    { name: "old/", type: "dir", mtime: 1700000300 },
    { name: "old/x", data: "x" },
    { name: "etc/", type: "dir", mtime: 1700000400 },
    { name: "etc/.wh.mode", data: "" },
  ]);
}

/**
 * Changes made through the mounted overlay over ovl's applied layers, as a user makes them. Left out on
 * purpose: removing or adding a name of a *lower* file that has other names. The overlay then shows the
 * lower inode's own nlink (measured: rm of d/c leaves d/a and d/b at nlink 3), which no layer can say, so
 * any unpacked tree differs there whatever the exporter does.
 */
function overlayChanges(m: string): void {
  const p = under(m);
  write(p("etc/hosts"), "192.168.0.1 from the overlay\n"); // copy-up, new content
  unlinkSync(p("etc/owner")); // a whiteout of a lower file
  rmSync(p("replace-file"), { recursive: true }); // a whiteout of a lower directory
  rmSync(p("own/dir"), { recursive: true });
  mkdirSync(p("own/dir")); // removed and made again: opaque
  write(p("own/dir/new"), "new");
  renameSync(p("bin"), p("sbin")); // a redirect (redirect_dir=on): the layer holds it whole; hard links inside
  write(p("sbin/added"), "added in the renamed directory");
  chmodSync(p("modes/exec"), 0o4755);
  lchownSync(p("own/file"), 4242, 4343);
  lchownSync(p("links/abs"), 7, 8); // a symlink copied up for its owner, its trusted.* xattr with it
  setXattrs(p("x/dir"), { "user.new": "on a copied-up directory" });
  setXattrs(p("x/file"), { "trusted.added": "t" }, ["user.k"]);
  write(p("h1"), "linked");
  linkSync(p("h1"), p("h2"));
  linkSync(p("empty"), p("empty-link")); // a link to a lower file with one name: copied up, then linked
  symlinkSync("/abs/target", p("new-abs"));
  symlinkSync("../etc/hosts", p("links/new-rel"));
  symlinkSync("gone/nowhere", p("links/new-dangling"));
  mknod(p("nodes/fifo2"), "p");
  mknod(p("nodes/console"), "c", 5, 1);
  mknod(p("nodes/sda1"), "b", 8, 1);
  write(p("names/caf\xff\x80"), "a new non-UTF-8 name");
  unlinkSync(p("names/new-\xfe\xfd")); // a whiteout of a non-UTF-8 name
  const deep = `long2/${"a".repeat(255)}/${"b".repeat(255)}`;
  mkdirSync(p(deep), { recursive: true });
  write(p(`${deep}/${"c".repeat(255)}`), "deep"); // a path of 777 bytes
  linkSync(p(`${deep}/${"c".repeat(255)}`), p(`${deep}/${"d".repeat(255)}`)); // a hard link with a long target
  write(p("empty-new"), "");
  write(p("big2"), BIG2);
  write(p("times/new"), "t");
  utimesSync(p("times/new"), 1234567890.9, 1234567890.9);
  utimesSync(p("times/frac-high"), 1610000000.6, 1610000000.6); // copy-up for the mtime only
  write(p("modes/new-suid"), "s", 0o4711);
  mkdirSync(p("modes/new-sticky"));
  chmodSync(p("modes/new-sticky"), 0o1777);
  mkdirSync(p("modes/new-sgid-dir"));
  chmodSync(p("modes/new-sgid-dir"), 0o2770);
  write(p("own/new"), "o");
  lchownSync(p("own/new"), 2000, 3000);
  rmSync(p("modes/sticky-dir"), { recursive: true });
  write(p("modes/sticky-dir"), "a lower directory replaced by a file");
  rmSync(p("links/dir"), { recursive: true });
  symlinkSync("../etc", p("links/dir")); // a lower directory replaced by a symlink
  unlinkSync(p("etc/owner-link"));
  write(p("etc/owner-link"), "a lower symlink replaced by a file");
  unlinkSync(p("names/with space"));
  mkdirSync(p("names/with space")); // a lower file replaced by a directory
  write(p("names/with space/in"), "in");
  utimesSync(p("modes"), 1700000500.5, 1700000500.5);
}

const TAG = "base";
const run = umociVersion !== undefined || CI;

describe.runIf(run)("umoci: images umoci builds, applied by ovl; layers ovl exports, unpacked by umoci", () => {
  let s: Scratch;
  let layout: string;
  let image: Image;
  /** ovl's applied layers, bottom first, and what applyLayer said of each. */
  const applied: Array<{ dir: string; result: ApplyLayerResult }> = [];
  /** describeEntries of ovl's mounted stack and of umoci's rootfs (`umoci unpack`), full mtimes. */
  let ovlView: Array<[string, string]>;
  let umociView: Array<[string, string]>;

  beforeAll(async () => {
    requirePrivateMountNamespace();
    if (umociVersion === undefined) throw new Error("umoci is not installed, and CI is set: these tests must run (.ci/run installs umoci)");
    s = scratch("ovl-umoci-");
    layout = s.path("image");
    const bundle = s.path("build");
    umoci("init", "--layout", layout);
    umoci("new", "--image", `${layout}:${TAG}`);
    umoci("unpack", "--image", `${layout}:${TAG}`, bundle);
    for (const change of [layer1, layer2, layer3]) {
      change(`${bundle}/rootfs`);
      umoci("repack", "--refresh-bundle", "--image", `${layout}:${TAG}`, bundle);
    }
    writeFileSync(s.path("layer4.tar"), layer4());
    umoci("raw", "add-layer", "--image", `${layout}:${TAG}`, s.path("layer4.tar"));
    umoci("unpack", "--image", `${layout}:${TAG}`, s.path("umoci-unpacked"));

    image = readImage(layout, TAG);
    for (const [i, layer] of image.layers.entries()) {
      const dir = s.path(`ovl-layer-${i + 1}`);
      const parents = applied.map((a) => a.dir).reverse(); // the layers below, top-most first
      applied.push({ dir, result: await applyLayer(layer.path, dir, { digest: layer.digest, diffId: layer.diffId, parents }) });
    }
    const target = s.dirs("stack")[0]!;
    const mounted = await overlay.mount({ lower: applied.map((a) => a.dir).reverse(), target });
    try {
      ovlView = describeEntries(target, { root: true });
    } finally {
      await mounted.unmount();
    }
    umociView = describeEntries(s.path("umoci-unpacked/rootfs"), { root: true });
  });
  afterAll(() => s?.cleanup());

  it("umoci's layers say what changed in umoci's way: whiteouts but never opaque markers, every xattr, links, raw names", () => {
    expect(image.layers.map((l) => l.mediaType)).toEqual(Array(4).fill("application/vnd.oci.image.layer.v1.tar+gzip"));
    const [l1, l2, l3, l4] = image.layers.map((l) => listTar(l.path)) as [TarMember[], TarMember[], TarMember[], TarMember[]];
    const at = (layer: TarMember[], name: string) => {
      const m = layer.find((e) => e.name === name);
      if (!m) throw new Error(`no entry '${shown(name)}' in the layer`);
      return m;
    };
    const names = (layer: TarMember[]) => layer.map((e) => e.name);
    // Whiteouts: empty regular files, mode 0; a removed directory is one whiteout, its contents unnamed.
    expect(at(l2, "etc/.wh.gone")).toMatchObject({ type: "0", size: 0, mode: 0 });
    expect(names(l2)).toContain(".wh.old");
    expect(names(l2).filter((n) => n.startsWith("old/"))).toEqual([]);
    expect(names(l2)).toContain("names/.wh.caf\xff\xfe");
    expect(names(l2)).toContain(`${LONG_DIR}/.wh.${"z".repeat(255)}`);
    // A directory removed and made again: a whiteout per old child, no opaque marker (in no umoci layer).
    expect(names(l2).filter((n) => n.startsWith("var/lib/app/")).sort()).toEqual(["var/lib/app/.wh.data", "var/lib/app/.wh.more", "var/lib/app/fresh"]);
    expect([...l1, ...l2, ...l3].filter((e) => e.name.endsWith(".wh..wh..opq"))).toEqual([]);
    expect(names(l4)).toContain("var/lib/app/.wh..wh..opq"); // the hand-written layer, taken verbatim
    // xattrs: user.*, trusted.* and security.*, as SCHILY.xattr records, symlinks' too.
    expect(at(l1, "x/file").pax).toEqual(["SCHILY.xattr.security.s", "SCHILY.xattr.trusted.t", "SCHILY.xattr.user.k"]);
    expect(at(l1, "links/abs").pax).toEqual(["SCHILY.xattr.trusted.l"]);
    expect(at(l2, "x/file").pax).toEqual(["SCHILY.xattr.trusted.t", "SCHILY.xattr.user.k"]); // security.s removed
    // Hard links: type 1 to the first name; a name removed (hl/b) or added (hl/d, bin/tool-third) re-writes
    // every name of the inode in the new layer, so no link ever points into a lower layer.
    expect(at(l1, "hl/b")).toMatchObject({ type: "1", linkname: "hl/a" });
    expect(names(l2).filter((n) => n.startsWith("hl/"))).toEqual(["hl/a", "hl/.wh.b", "hl/c"]);
    expect(names(l3).filter((n) => n.startsWith("hl/"))).toEqual(["hl/a", "hl/c", "hl/d"]);
    expect(at(l2, "bin/tool-third")).toMatchObject({ type: "1", linkname: "bin/tool" });
    expect(at(l1, LONG_B)).toMatchObject({ type: "1", linkname: LONG_LINK }); // a long name linked to a long name
    // Names and targets that are not UTF-8, and long ones: raw bytes in PAX path / linkpath records.
    expect(at(l1, "names/caf\xff\xfe").pax).toEqual(["path"]);
    expect(at(l1, "links/raw-target")).toMatchObject({ linkname: "caf\xff\xfe", pax: ["linkpath"] });
    expect(at(l1, "links/long-target").pax).toEqual(["linkpath"]);
    // Devices and fifos, with their numbers (260:70000 needs more than ustar's old 8-bit fields).
    expect(at(l1, "nodes/null")).toMatchObject({ type: "3", dev: [1, 3] });
    expect(at(l1, "nodes/loop")).toMatchObject({ type: "4", dev: [7, 0] });
    expect(at(l1, "nodes/big-minor")).toMatchObject({ type: "3", dev: [260, 70000] });
    expect(at(l1, "nodes/fifo").type).toBe("6");
    // Modes and owners as made; mtimes whole seconds, rounded to the nearest (Go's archive/tar).
    expect(at(l1, "modes/both").mode).toBe(0o6711);
    expect(at(l1, "modes/sticky-dir").mode).toBe(0o1777);
    expect(at(l1, "own/dir")).toMatchObject({ uid: 4321, gid: 8765 });
    expect(at(l1, "times/frac-low").mtime).toBe(1600000000);
    expect(at(l1, "times/frac-high").mtime).toBe(1600000001);
    expect(at(l1, "times/link").mtime).toBe(1400000000);
    // A file changed in place: the layer holds it and not its directories (they did not change).
    expect(names(l2)).toContain("keep/dir/inner");
    expect(names(l2).filter((n) => n === "keep" || n === "keep/dir")).toEqual([]);
  });

  /**
   * Directories of the stack that their top-most layer only implies: it has entries below them and none for
   * them (umoci writes a directory only when its own metadata changed, so a file changed in place comes
   * alone; whether a directory whose mtime moved is written also depends on the second it moved in).
   */
  let implied: Set<string> | undefined;
  function impliedDirs(): Set<string> {
    if (implied) return implied;
    const layers = image.layers.map((l) => new Set(listTar(l.path).map((e) => (e.name === "." ? "" : e.name)))).reverse();
    const out = new Set<string>();
    for (const [path, rest] of ovlView) {
      if (!rest.startsWith("d ")) continue;
      for (const names of layers) {
        if (names.has(path)) break;
        if (path === "" ? names.size > 0 : [...names].some((n) => n.startsWith(`${path}/`))) {
          out.add(path);
          break;
        }
      }
    }
    return (implied = out);
  }

  it("every layer applies with ovl (digests checked), and the mounted stack is umoci's rootfs entry by entry (but for directories a layer only implies: next test)", () => {
    expect(applied.map((a) => a.result.compression)).toEqual(["gzip", "gzip", "gzip", "gzip"]);
    expect(applied.map((a) => a.result.diffId)).toEqual(image.layers.map((l) => l.diffId));
    expect(applied.map((a) => a.result.digest)).toEqual(image.layers.map((l) => l.digest));
    expect(applied.map((a) => [a.result.whiteouts, a.result.opaqueDirs])).toEqual([
      [0, 0],
      [10, 0],
      [1, 0],
      [2, 1],
    ]);
    expect(umociView.length).toBeGreaterThan(70);
    // Everything is compared, mtimes to the nanosecond (both sides set what the same headers say, whole
    // seconds), except the directories a layer only implies: the next test's.
    const implied = impliedDirs();
    expect(implied).toContain("keep/dir");
    console.log(`${implied.size} directories a layer only implies, compared in the next test`);
    expect(treeDiff(ovlView, umociView, ["ovl", "umoci"]).filter((d) => !implied.has(pathOf(d)))).toEqual([]);
  });

  it("directories a layer only implies show what the layers below gave them, as in umoci's rootfs", () => {
    // ovl's applyLayer makes an implied directory 0755 0:0, no xattrs, mtime of the apply, and overlay shows
    // the top-most layer's directory; umoci leaves the directory it already has alone (minimal case below).
    const implied = impliedDirs();
    expect(treeDiff(ovlView, umociView, ["ovl", "umoci"]).filter((d) => implied.has(pathOf(d)))).toEqual([]);
  });

  describe("the other way: a layer exported by ovl, added to the image and unpacked by umoci", () => {
    let upper: string;
    let lowers: string[];
    /** What the overlay showed after the changes, mtimes to the second (what layers hold). */
    let want: Array<[string, string]>;
    let plain: { file: string; result: ExportResult; members: TarMember[] };
    let gzip: { file: string; result: ExportResult };
    /**
     * Entries of the image below where ovl's view of it already differs from umoci's (what the test above
     * reports); those the exported layer does not hold come from that image on both sides, so their
     * difference is not the export's and is not counted here.
     */
    let notTheExports: (path: string) => boolean;
    /** The hard-linked files of the lower layers in the renamed directory (sbin, was bin): their own test. */
    let renamedLinks: Set<string>;

    beforeAll(async () => {
      const [u, work, m] = s.dirs("upper", "work", "m") as [string, string, string];
      upper = u;
      lowers = applied.map((a) => a.dir).reverse();
      const mounted = await overlay.mount({ lower: lowers, upper, work, target: m, options: { redirectDir: "on" } });
      try {
        overlayChanges(m);
        want = describeEntries(m, { root: true, mtimes: "seconds" });
      } finally {
        await mounted.unmount();
      }
      const file = s.path("ovl-layer.tar");
      plain = { file, result: await exportLayerTo(upper, file, { lower: lowers }), members: listTar(file) };
      const gzFile = s.path("ovl-layer.tar.gz");
      gzip = { file: gzFile, result: await exportLayerTo(upper, gzFile, { lower: lowers, gzip: true }) };
      const baseDiff = new Set(treeDiff(ovlView, umociView, ["", ""]).map(pathOf));
      const inLayer = new Set(plain.members.map((e) => e.name));
      notTheExports = (path) => baseDiff.has(path) && !inLayer.has(path);
      renamedLinks = new Set(want.filter(([path, rest]) => path.startsWith("sbin/") && / [2-9] [0-9a-f]{16}( |$)/.test(rest)).map(([path]) => path));
      umoci("raw", "add-layer", "--image", `${layout}:${TAG}`, "--tag", "ovl-plain", plain.file);
      umoci("unpack", "--image", `${layout}:ovl-plain`, s.path("umoci-ovl-plain"));
    });

    /**
     * The overlay's view against another tree. Left out, and counted: entries of the image below that the
     * test above finds different already (see notTheExports), the renamed directory's hard links (their own
     * test), and the root directory's mtime: exportLayer writes no `./` entry, so the layer cannot carry it,
     * while the overlay's root is its upper directory, whose mtime every change at the top level moves
     * (measured: the time of the test run in the overlay, the image's `./` mtime in umoci's tree). Mtimes are
     * compared to the second: a layer holds no more (ovl truncates, and writes no PAX mtime).
     */
    function compareWithOverlay(tree: string, name: string, which: "all" | "renamed links" = "all"): string[] {
      const noRootMtime = (rows: Array<[string, string]>) =>
        rows.map(([path, rest]): [string, string] => (path === "" ? [path, rest.split(" ").map((f, i) => (i === 4 ? "(mtime)" : f)).join(" ")] : [path, rest]));
      const got = describeEntries(tree, { root: true, mtimes: "seconds" });
      const diffs = treeDiff(noRootMtime(want), noRootMtime(got), ["overlay", name]);
      if (which === "renamed links") return diffs.filter((d) => renamedLinks.has(pathOf(d)));
      const left = diffs.filter((d) => !notTheExports(pathOf(d)) && !renamedLinks.has(pathOf(d)));
      if (left.length !== diffs.length) console.log(`${name}: ${diffs.length - left.length} entries compared elsewhere`);
      return left;
    }

    it("the layer says it in OCI's words: whiteouts, opaque markers, the renamed directory whole", () => {
      const names = plain.members.map((e) => e.name);
      expect(plain.result).toMatchObject({ digest: sha(readFileSync(plain.file)), mediaType: "application/vnd.oci.image.layer.v1.tar" });
      expect(plain.result.diffId).toBe(plain.result.digest);
      expect(names).toContain("etc/.wh.owner");
      expect(names).toContain(".wh.replace-file");
      expect(names).toContain("own/dir/.wh..wh..opq");
      expect(names).toContain(".wh.bin");
      expect(names).toContain("sbin/.wh..wh..opq");
      expect(names).toContain("sbin/tool-alias"); // from the lower layer: the renamed directory is written whole
      expect(names).toContain("names/.wh.new-\xfe\xfd");
      expect(plain.members.find((e) => e.name === "h2")).toMatchObject({ type: "1", linkname: "h1" });
      expect(plain.members.find((e) => e.name === "nodes/sda1")).toMatchObject({ type: "4", dev: [8, 1] });
      // ovl puts a short non-UTF-8 name's bytes in the ustar name field (PAX only where ustar cannot hold a
      // value, as a 777-byte path), where umoci put a PAX path record: both read back the same bytes.
      expect(plain.members.find((e) => e.name === "names/caf\xff\x80")?.pax).toEqual([]);
      expect(plain.members.find((e) => e.name.startsWith("long2/") && e.type === "1")?.pax).toEqual(["linkpath", "path"]);
      expect(plain.members.find((e) => e.name === "x/file")?.pax).toEqual(["SCHILY.xattr.trusted.added", "SCHILY.xattr.trusted.t"]);
    });

    it("added with umoci raw add-layer and unpacked by umoci, it gives the tree the overlay showed", () => {
      const img = readImage(layout, "ovl-plain");
      expect(img.layers.length).toBe(5);
      // umoci stores the layer gzipped (its own compression): the diff id is ovl's digest of the tar.
      expect(img.layers[4]!.diffId).toBe(plain.result.diffId);
      expect(gunzipSync(readFileSync(img.layers[4]!.path)).equals(readFileSync(plain.file))).toBe(true);
      expect(compareWithOverlay(s.path("umoci-ovl-plain/rootfs"), "umoci")).toEqual([]);
    });

    it("exported with gzip and added as a tar+gzip blob (by hand: raw add-layer takes plain tars), umoci unpacks the same tree", () => {
      const bytes = readFileSync(gzip.file);
      expect(gzip.result).toMatchObject({ digest: sha(bytes), diffId: plain.result.diffId, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" });
      addLayerByHand(layout, TAG, "ovl-gzip", bytes, gzip.result.mediaType, gzip.result.diffId);
      const img = readImage(layout, "ovl-gzip");
      expect(img.layers[4]).toMatchObject({ digest: gzip.result.digest, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" });
      umoci("unpack", "--image", `${layout}:ovl-gzip`, s.path("umoci-ovl-gzip"));
      expect(compareWithOverlay(s.path("umoci-ovl-gzip/rootfs"), "umoci (gzip)")).toEqual([]);
    });

    it("GNU tar over umoci's rootfs of the image, whiteouts and replacements done first, gives the same tree", () => {
      umoci("unpack", "--image", `${layout}:${TAG}`, s.path("gnu"));
      const root = s.path("gnu/rootfs");
      const p = under(root);
      // A layer's meaning, done by hand on the tree below: an opaque marker empties its directory, a whiteout
      // removes its name, an entry replaces what is there unless both are directories. Then tar -x.
      for (const e of plain.members) {
        const slash = e.name.lastIndexOf("/");
        const dir = slash < 0 ? "" : e.name.slice(0, slash);
        const base = e.name.slice(slash + 1);
        if (base === ".wh..wh..opq") {
          // (overlay marks a directory it makes in a merged one opaque, a new one too, to spare lookups
          // below: such a marker may name a directory the tree below does not have)
          if (lstatSync(p(dir), { throwIfNoEntry: false })?.isDirectory())
            for (const n of readdirSync(p(dir), { encoding: "buffer" })) rmSync(p(`${dir}/${n.toString("latin1")}`), { recursive: true });
        } else if (base.startsWith(".wh.")) {
          rmSync(p(dir === "" ? base.slice(4) : `${dir}/${base.slice(4)}`), { recursive: true, force: true });
        } else {
          const there = lstatSync(p(e.name), { throwIfNoEntry: false });
          if (there && !(there.isDirectory() && e.type === "5")) rmSync(p(e.name), { recursive: true });
        }
      }
      execFileSync("tar", ["-x", "-f", plain.file, "-C", root, "-p", "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--exclude=.wh.*"]);
      expect(compareWithOverlay(root, "GNU tar")).toEqual([]);
    });

    it("hard links of a lower layer inside a renamed directory are hard links in umoci's tree too", () => {
      // The renamed directory is written whole; its lower files tool, tool-alias and tool-third are one inode
      // (nlink 3) in the overlay, but ovl writes three regular files (minimal case below).
      expect([...renamedLinks].sort()).toEqual(["sbin/tool", "sbin/tool-alias", "sbin/tool-third"]);
      expect(compareWithOverlay(s.path("umoci-ovl-plain/rootfs"), "umoci", "renamed links")).toEqual([]);
    });
  });
});

/**
 * An image made by umoci from these changes, one `umoci repack` each: the layout, the image as read here,
 * umoci's own rootfs of it, and the bundle the changes were made in (what the layers are meant to give).
 */
function umociImage(dir: string, steps: Array<(root: string) => void>): { layout: string; image: Image; umociRoot: string; madeRoot: string } {
  const layout = `${dir}/image`;
  umoci("init", "--layout", layout);
  umoci("new", "--image", `${layout}:t`);
  umoci("unpack", "--image", `${layout}:t`, `${dir}/build`);
  for (const step of steps) {
    step(`${dir}/build/rootfs`);
    umoci("repack", "--refresh-bundle", "--image", `${layout}:t`, `${dir}/build`);
  }
  umoci("unpack", "--image", `${layout}:t`, `${dir}/unpacked`);
  return { layout, image: readImage(layout, "t"), umociRoot: `${dir}/unpacked/rootfs`, madeRoot: `${dir}/build/rootfs` };
}

/** Each layer applied by ovl into its own directory below `dir`; the directories top-most first. */
async function applyAll(dir: string, image: Image): Promise<string[]> {
  const dirs: string[] = [];
  for (const [i, l] of image.layers.entries()) {
    const parents = [...dirs]; // the layers below, top-most first
    dirs.unshift(`${dir}/layer-${i + 1}`);
    await applyLayer(l.path, dirs[0]!, { digest: l.digest, diffId: l.diffId, parents });
  }
  return dirs;
}

async function mountedView(lower: string[], target: string, opts: DescribeOptions = { root: true }): Promise<Array<[string, string]>> {
  mkdirSync(target);
  const m = await overlay.mount({ lower, target });
  try {
    return describeEntries(target, opts);
  } finally {
    await m.unmount();
  }
}

/**
 * Mismatches found by the comparisons above, each as small as it gets. These fail until ovl is fixed (see
 * the report of issue 13); each says what umoci does and what ovl does.
 */
describe.runIf(run)("umoci: the mismatches, minimal", () => {
  let s: Scratch;
  beforeAll(() => {
    requirePrivateMountNamespace();
    if (umociVersion === undefined) throw new Error("umoci is not installed, and CI is set: these tests must run (.ci/run installs umoci)");
    s = scratch("ovl-umoci-min-");
  });
  afterAll(() => s?.cleanup());

  it("a directory a layer only implies (a file in it changed in place) keeps the metadata the layers below gave it", async () => {
    const dir = s.dirs("implied")[0]!;
    const { image, umociRoot } = umociImage(dir, [
      (root) => {
        mkdirSync(`${root}/d`);
        writeFileSync(`${root}/d/f`, "one");
        chmodSync(`${root}/d`, 0o700);
        lchownSync(`${root}/d`, 1234, 5678);
        setXattrs(Buffer.from(`${root}/d`), { "user.x": "1" });
        utimesSync(`${root}/d`, 1500000000, 1500000000);
      },
      (root) => writeFileSync(`${root}/d/f`, "two"),
    ]);
    // umoci's second layer: the file alone, no entry for d/ (nor ./): its metadata did not change.
    expect(listTar(image.layers[1]!.path).map((e) => e.name)).toEqual(["d/f"]);
    const view = await mountedView(await applyAll(dir, image), `${dir}/m`);
    // umoci (like tar -x over the tree, and containerd, which copies an implied parent's attributes from
    // the layers below) keeps d 0700 1234:5678 user.x mtime 1500000000; ovl's second layer makes d/ (and
    // its own root) 0755 0:0 with no xattrs and the time of the apply, and overlay shows the top-most.
    expect(treeDiff(view, describeEntries(umociRoot, { root: true }), ["ovl", "umoci"])).toEqual([]);
  });

  it("a directory replaced by a file: umoci writes whiteouts below the file, which ovl must take", async () => {
    const dir = s.dirs("dir-to-file")[0]!;
    const { image, umociRoot } = umociImage(dir, [
      (root) => {
        mkdirSync(`${root}/d`);
        writeFileSync(`${root}/d/x`, "x");
      },
      (root) => {
        rmSync(`${root}/d`, { recursive: true });
        writeFileSync(`${root}/d`, "now a file");
      },
    ]);
    // umoci 0.4.7: `d` (a file), then `d/.wh.x`; umoci's unpack lets the whiteout go (nothing is below a file).
    expect(listTar(image.layers[1]!.path).filter((e) => e.name !== ".").map((e) => [e.name, e.type])).toEqual([
      ["d", "0"],
      ["d/.wh.x", "0"],
    ]);
    // ovl refuses the layer: "entry 'd/.wh.x': its parent 'd' is not a directory in this layer".
    const view = await mountedView(await applyAll(dir, image), `${dir}/m`, { root: true, mtimes: false });
    expect(treeDiff(view, describeEntries(umociRoot, { root: true, mtimes: false }), ["ovl", "umoci"])).toEqual([]);
  });

  it("a directory replaced by a symlink: umoci writes whiteouts below the symlink, which ovl must take (and not follow)", async () => {
    const dir = s.dirs("dir-to-symlink")[0]!;
    const { image, umociRoot, madeRoot } = umociImage(dir, [
      (root) => {
        mkdirSync(`${root}/etc`);
        writeFileSync(`${root}/etc/x`, "must stay");
        mkdirSync(`${root}/d`);
        writeFileSync(`${root}/d/x`, "x");
      },
      (root) => {
        rmSync(`${root}/d`, { recursive: true });
        symlinkSync("etc", `${root}/d`); // as /var/run -> /run in many images
      },
    ]);
    expect(listTar(image.layers[1]!.path).filter((e) => e.name !== ".").map((e) => [e.name, e.type])).toEqual([
      ["d", "2"],
      ["d/.wh.x", "0"],
    ]);
    // ovl refuses the layer: "entry 'd/.wh.x': its path goes through 'd', a symlink this layer made".
    // umoci 0.4.7's own unpack follows the symlink and deletes etc/x (printed, not asserted: umoci's bug):
    // the reference here is the tree the layers were made from.
    console.log(`umoci's own unpack ${existsSync(`${umociRoot}/etc/x`) ? "keeps" : "loses (follows the new symlink d -> etc)"} etc/x`);
    const view = await mountedView(await applyAll(dir, image), `${dir}/m`, { mtimes: false });
    expect(treeDiff(view, describeEntries(madeRoot, { mtimes: false }), ["ovl", "the tree umoci packed"])).toEqual([]);
  });

  it("hard links in a renamed lower directory stay hard links in the exported layer", async () => {
    const dir = s.dirs("renamed-links")[0]!;
    const { layout, image } = umociImage(dir, [
      (root) => {
        mkdirSync(`${root}/d`);
        writeFileSync(`${root}/d/a`, "linked");
        linkSync(`${root}/d/a`, `${root}/d/b`);
      },
    ]);
    const lower = await applyAll(dir, image);
    const [upper, work, m] = s.dirs("renamed-links/upper", "renamed-links/work", "renamed-links/m") as [string, string, string];
    const mounted = await overlay.mount({ lower, upper, work, target: m, options: { redirectDir: "on" } });
    let want: Array<[string, string]>;
    try {
      renameSync(`${m}/d`, `${m}/e`);
      want = describeEntries(m, { mtimes: "seconds" });
    } finally {
      await mounted.unmount();
    }
    expect(want.find(([p]) => p === "e/b")?.[1]).toMatch(/ 2 [0-9a-f]{16} link=e\/a$/); // one inode, two names
    const file = `${dir}/ovl.tar`;
    await exportLayerTo(upper, file, { lower });
    // ovl writes e/a and e/b as two regular files (hard links are tracked for upper files only).
    expect(listTar(file).map((e) => [e.name, e.type, e.linkname])).toEqual([
      [".wh.d", "0", ""],
      ["e", "5", ""],
      ["e/.wh..wh..opq", "0", ""],
      ["e/a", "0", ""],
      ["e/b", "1", "e/a"],
    ]);
    umoci("raw", "add-layer", "--image", `${layout}:t`, "--tag", "ovl", file);
    umoci("unpack", "--image", `${layout}:ovl`, `${dir}/ovl-unpacked`);
    expect(treeDiff(want, describeEntries(`${dir}/ovl-unpacked/rootfs`, { mtimes: "seconds" }), ["overlay", "umoci"])).toEqual([]);
  });
});
