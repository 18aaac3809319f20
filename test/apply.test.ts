import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { applyLayer } from "../src/layers/apply.js";
import * as overlay from "../src/index.js";
import { buildArchive, describeTree, type ArchiveEntry } from "./layer-helpers.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-apply-");
});
afterEach(() => s.cleanup());

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

describe("applyLayer: what an archive holds comes out as a lower layer", () => {
  it("files, directories, links, devices, modes, owners, mtimes and xattrs, as tar -x makes them", async () => {
    const entries: ArchiveEntry[] = [
      { name: "./", type: "dir", mode: 0o755, mtime: 1600000000 },
      { name: "bin/", type: "dir", mode: 0o755, uid: 0, gid: 0, mtime: 1600000001 },
      { name: "bin/su", data: "setuid!", mode: 0o4755, uid: 0, gid: 0, mtime: 1600000002 },
      { name: "bin/sg", data: "setgid", mode: 0o2711, uid: 1000, gid: 50, mtime: 1600000003 },
      { name: "tmp/", type: "dir", mode: 0o1777, mtime: 1600000004 },
      { name: "etc/passwd", data: "root:x:0:0\n", mode: 0o644, uid: 0, gid: 0, mtime: 1600000005, pax: { "SCHILY.xattr.user.note": "hello" } },
      { name: "etc/alias", type: "hardlink", linkname: "etc/passwd" },
      { name: "etc/link", type: "symlink", linkname: "../bin/su", uid: 7, gid: 8, mtime: 1600000006 },
      { name: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
      { name: "dev/loop0", type: "block", devmajor: 7, devminor: 0, mode: 0o660 },
      { name: "run/fifo", type: "fifo", mode: 0o600 },
      { name: `${"d".repeat(120)}/${"f".repeat(200)}`, data: "long name" },
      { name: "caf\xe9-latin1", data: "not UTF-8" },
      { name: "emoji-\u{1f600}".replace(/[^\x00-\x7f]/gu, (c) => Buffer.from(c, "utf8").toString("latin1")), data: "utf-8 name" },
      { name: "empty", data: "" },
    ];
    const tar = buildArchive(entries);
    const layer = s.path("layer");
    const r = await applyLayer(tar, layer);
    expect(r).toMatchObject({ compression: "none", diffId: sha(tar), digest: sha(tar), size: tar.length, entries: entries.length });

    // The same archive unpacked by GNU tar, as root keeping owners, modes and xattrs.
    const ref = s.path("ref");
    mkdirSync(ref);
    execFileSync("tar", ["--xattrs", "--xattrs-include=*", "--same-owner", "-xpf", "-", "-C", ref], { input: tar });
    // Directories the archive only implies (dev/, etc/, ...) get the time they are made, in both.
    expect(describeTree(layer, { mtimes: false })).toEqual(describeTree(ref, { mtimes: false }));
    const explicit = (rows: string[]) => rows.filter((r) => !/^(dev|etc|run|d{120}) d /.test(r));
    expect(explicit(describeTree(layer))).toEqual(explicit(describeTree(ref)));
    expect(describeTree(layer, { root: true })[0]).toEqual(describeTree(ref, { root: true })[0]);
    // A few facts spelled out, so the comparison is not the only check.
    expect(lstatSync(`${layer}/bin/su`).mode & 0o7777).toBe(0o4755);
    expect(lstatSync(`${layer}/tmp`).mode & 0o7777).toBe(0o1777);
    expect(lstatSync(`${layer}/etc/alias`).ino).toBe(lstatSync(`${layer}/etc/passwd`).ino);
    expect(readlinkSync(`${layer}/etc/link`)).toBe("../bin/su");
    expect(lstatSync(`${layer}/etc/link`).uid).toBe(7);
    expect(lstatSync(`${layer}/bin`).mtimeMs).toBe(1600000001000);
    expect(readdirSync(layer, { encoding: "buffer" }).map((b) => b.toString("latin1"))).toContain("caf\xe9-latin1");
  });

  it("whiteouts become 0/0 devices and opaque markers trusted.overlay.opaque, and overlay honours them", async () => {
    const base = buildArchive([
      { name: "keep", data: "kept" },
      { name: "gone", data: "deleted above" },
      { name: "dir/old", data: "hidden by opaque" },
      { name: "sub/x", data: "x" },
    ]);
    const top = buildArchive([
      { name: ".wh.gone", data: "" },
      { name: "dir/.wh..wh..opq", data: "" },
      { name: "dir/new", data: "new" },
      { name: "sub/.wh.x", data: "" },
      { name: ".wh..wh.plnk", type: "dir" }, // aufs bookkeeping: ignored
    ]);
    const [l0, l1, target] = [s.path("l0"), s.path("l1"), s.path("m")];
    await applyLayer(base, l0);
    const r = await applyLayer(top, l1);
    expect(r).toMatchObject({ whiteouts: 2, opaqueDirs: 1 });
    expect(lstatSync(`${l1}/gone`).isCharacterDevice()).toBe(true);
    expect(lstatSync(`${l1}/gone`).rdev).toBe(0);
    expect(existsSync(`${l1}/.wh.gone`)).toBe(false);
    expect(existsSync(`${l1}/.wh..wh.plnk`)).toBe(false);
    expect(execFileSync("getfattr", ["-n", "trusted.overlay.opaque", "--only-values", `${l1}/dir`]).toString()).toBe("y");
    mkdirSync(target);
    const m = await overlay.mount({ lower: [l1, l0], target });
    try {
      expect(readdirSync(target).sort()).toEqual(["dir", "keep", "sub"]);
      expect(readdirSync(`${target}/dir`)).toEqual(["new"]);
      expect(readdirSync(`${target}/sub`)).toEqual([]);
    } finally {
      await m.unmount();
    }
  });

  it("a whiteout then the same name in one layer: the layer's entry wins; a whited-out directory refilled is opaque", async () => {
    const tar = buildArchive([
      { name: ".wh.a", data: "" },
      { name: "a", data: "the layer's own a" },
      { name: "b", data: "b first" },
      { name: ".wh.b", data: "" },
      { name: ".wh.d", data: "" },
      { name: "d/inner", data: "inner" },
    ]);
    const layer = s.path("layer");
    await applyLayer(tar, layer);
    expect(readFileSync(`${layer}/a`, "utf8")).toBe("the layer's own a");
    expect(readFileSync(`${layer}/b`, "utf8")).toBe("b first");
    expect(readFileSync(`${layer}/d/inner`, "utf8")).toBe("inner");
    expect(execFileSync("getfattr", ["-n", "trusted.overlay.opaque", "--only-values", `${layer}/d`]).toString()).toBe("y");
  });

  it("later entries replace earlier ones, a directory over a directory keeps its contents", async () => {
    const tar = buildArchive([
      { name: "x", data: "first" },
      { name: "x", data: "second" },
      { name: "d/", type: "dir", mode: 0o700 },
      { name: "d/f", data: "f" },
      { name: "d/", type: "dir", mode: 0o750 },
      { name: "e/sub/deep", data: "deep" },
      { name: "e", type: "symlink", linkname: "d" },
    ]);
    const layer = s.path("layer");
    await applyLayer(tar, layer);
    expect(readFileSync(`${layer}/x`, "utf8")).toBe("second");
    expect(lstatSync(`${layer}/d`).mode & 0o777).toBe(0o750);
    expect(readFileSync(`${layer}/d/f`, "utf8")).toBe("f");
    expect(readlinkSync(`${layer}/e`)).toBe("d");
  });

  it("directories a layer only implies take what the layers below give them (with `parents`)", async () => {
    const below = s.path("below");
    await applyLayer(buildArchive([{ name: "./", type: "dir", mode: 0o750, uid: 3, gid: 4, mtime: 1400000000 }, { name: "d/", type: "dir", mode: 0o700, uid: 1234, gid: 5678, mtime: 1500000000, pax: { "SCHILY.xattr.user.x": "1" } }, { name: "d/f", data: "one" }]), below);
    const top = s.path("top");
    await applyLayer(buildArchive([{ name: "d/f", data: "two" }, { name: "e/g", data: "new" }]), top, { parents: [below] });
    const st = lstatSync(`${top}/d`);
    expect([st.mode & 0o7777, st.uid, st.gid, st.mtimeMs]).toEqual([0o700, 1234, 5678, 1500000000000]);
    expect(execFileSync("getfattr", ["-n", "user.x", "--only-values", `${top}/d`]).toString()).toBe("1");
    const root = lstatSync(top);
    expect([root.mode & 0o7777, root.uid, root.gid, root.mtimeMs]).toEqual([0o750, 3, 4, 1400000000000]);
    expect(lstatSync(`${top}/e`).mode & 0o7777).toBe(0o755); // in no layer below: tar's default
  });

  it("gzip and zstd layers, found from their bytes, with both digests", async () => {
    const tar = buildArchive([{ name: "a", data: "a".repeat(10000) }, { name: "b/c", data: "c" }]);
    const gz = gzipSync(tar);
    const zst = execFileSync("zstd", ["-q", "-c"], { input: tar });
    for (const [name, bytes, compression] of [["gz", gz, "gzip"], ["zst", zst, "zstd"]] as const) {
      const layer = s.path(name);
      const r = await applyLayer(bytes, layer, { digest: sha(bytes), diffId: sha(tar) });
      expect(r).toMatchObject({ compression, digest: sha(bytes), diffId: sha(tar), size: bytes.length, uncompressedSize: tar.length });
      expect(readFileSync(`${layer}/a`, "utf8")).toBe("a".repeat(10000));
    }
    // From a file path too, streamed.
    writeFileSync(s.path("layer.tar.gz"), gz);
    const r = await applyLayer(s.path("layer.tar.gz"), s.path("fromfile"));
    expect(r.digest).toBe(sha(gz));
  });

  it("a body larger than the in-batch limit streams through its own fd, byte for byte", async () => {
    const big = Buffer.alloc(5 * 1024 * 1024 + 123);
    for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff;
    const tar = buildArchive([{ name: "big.bin", data: big, mode: 0o4750, uid: 12, gid: 34, mtime: 1234567890 }, { name: "after", data: "after" }]);
    const layer = s.path("layer");
    await applyLayer(tar, layer);
    expect(sha(readFileSync(`${layer}/big.bin`))).toBe(sha(big));
    const st = lstatSync(`${layer}/big.bin`);
    expect([st.mode & 0o7777, st.uid, st.gid, st.mtimeMs]).toEqual([0o4750, 12, 34, 1234567890000]);
    expect(readFileSync(`${layer}/after`, "utf8")).toBe("after");
  });

  it("a digest that does not match keeps nothing: the directory made is gone, a given one left empty", async () => {
    const tar = buildArchive([{ name: "a/b", data: "b" }]);
    const wrong = `sha256:${"0".repeat(64)}`;
    await expect(applyLayer(tar, s.path("new"), { digest: wrong })).rejects.toMatchObject({ code: "ERR_OVL_DIGEST" });
    expect(existsSync(s.path("new"))).toBe(false);
    mkdirSync(s.path("given"));
    await expect(applyLayer(tar, s.path("given"), { diffId: wrong })).rejects.toThrow(/diff id is sha256:[0-9a-f]{64}, not the sha256:0+ expected/);
    expect(readdirSync(s.path("given"))).toEqual([]);
  });

  it("refuses a directory that is not empty, and a path that is not a directory", async () => {
    const tar = buildArchive([{ name: "a", data: "a" }]);
    s.file("full/x", "x");
    await expect(applyLayer(tar, s.path("full"))).rejects.toMatchObject({ code: "ENOTEMPTY" });
    expect(readdirSync(s.path("full"))).toEqual(["x"]);
    s.file("file", "f");
    await expect(applyLayer(tar, s.path("file"))).rejects.toMatchObject({ code: "ENOTDIR" });
  });
});

describe("applyLayer: hostile archives write nothing outside the directory", () => {
  // Each case: the archive, and what the error must say. The box holds the layer dir beside files an
  // escape would hit; after the refusal, the box is exactly as before and the layer dir is gone.
  const cases: Array<[string, ArchiveEntry[], RegExp]> = [
    ["a '..' name", [{ name: "../escaped", data: "x" }], /entry '\.\.\/escaped': '\.\.' in a name is refused/],
    ["'..' inside a name", [{ name: "a/../../escaped", data: "x" }], /entry 'a\/\.\.\/\.\.\/escaped': '\.\.' in a name/],
    ["an absolute name", [{ name: "/tmp/escaped", data: "x" }], /entry '\/tmp\/escaped': absolute names are refused/],
    ["tar-slip through a symlink the archive made", [{ name: "l", type: "symlink", linkname: ".." }, { name: "l/escaped", data: "x" }], /entry 'l\/escaped': its path goes through 'l', a symlink this layer made/],
    ["tar-slip through an absolute symlink", [{ name: "l", type: "symlink", linkname: "/" }, { name: "l/tmp/escaped", data: "x" }], /goes through 'l', a symlink/],
    ["a hard link to a file outside", [{ name: "h", type: "hardlink", linkname: "../outside" }], /entry 'h': its hard link target: '\.\.' in a name is refused/],
    ["a hard link to an absolute path", [{ name: "h", type: "hardlink", linkname: "/etc/passwd" }], /entry 'h': its hard link target: absolute names/],
    ["a hard link to a name the layer never made", [{ name: "h", type: "hardlink", linkname: "etc/shadow" }], /a hard link to 'etc\/shadow', which this layer has not made/],
    ["a hard link through a symlink", [{ name: "l", type: "symlink", linkname: "/etc" }, { name: "h", type: "hardlink", linkname: "l/passwd" }], /which this layer has not made/],
    ["a whiteout of '..'", [{ name: ".wh...", data: "" }], /entry '\.wh\.\.\.': a whiteout of '\.\.' is refused/],
    ["a whiteout of nothing", [{ name: "d/.wh.", data: "" }], /a whiteout of '' is refused/],
    ["a NUL in a PAX name", [{ name: "ok", data: "x", pax: { path: "a\0/../../escaped" } }], /NUL/],
    ["an empty component", [{ name: "a//b", data: "x" }], /empty or '\.' component/],
    ["a '.' component", [{ name: "a/./b", data: "x" }], /empty or '\.' component/],
    ["a file's name used as a directory", [{ name: "f", data: "f" }, { name: "f/x", data: "x" }], /its parent 'f' is not a directory/],
    ["overlay's own xattrs (a forged redirect)", [{ name: "d/", type: "dir", pax: { "SCHILY.xattr.trusted.overlay.redirect": "/etc" } }], /carries overlay's own xattr 'trusted\.overlay\.redirect'/],
    ["a control character in the name is shown escaped", [{ name: "../\x1b[2Jx", data: "x" }], /entry '\.\.\/\\x1b\[2Jx'/],
  ];

  it.each(cases)("%s", async (_what, entries, message) => {
    const box = s.path("box");
    mkdirSync(box);
    writeFileSync(`${box}/outside`, "outside\n");
    mkdirSync(`${box}/etc`);
    writeFileSync(`${box}/etc/passwd`, "not yours\n");
    const before = describeTree(box);
    const layer = `${box}/layer`;
    const err = await applyLayer(buildArchive(entries), layer).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(message);
    expect((err as { code?: string }).code).toBe("ERR_OVL_LAYER_ENTRY");
    expect(existsSync(layer)).toBe(false);
    expect(describeTree(box)).toEqual(before);
    expect(existsSync("/tmp/escaped")).toBe(false);
  });

  it("a whiteout below a symlink (or file) the layer made hides nothing: nothing written, the link not followed", async () => {
    const box = s.path("box");
    mkdirSync(box);
    writeFileSync(`${box}/outside`, "outside\n");
    const before = describeTree(box);
    const layer = `${box}/layer`;
    await applyLayer(buildArchive([{ name: "l", type: "symlink", linkname: ".." }, { name: "l/.wh.outside", data: "" }, { name: "f", data: "f" }, { name: "f/.wh.x", data: "" }]), layer);
    expect(readdirSync(layer).sort()).toEqual(["f", "l"]);
    expect(describeTree(box).filter((r) => !r.startsWith("layer"))).toEqual(before);
  });

  it("a symlink replaced by a file of the same name is a new file, never a write through the link", async () => {
    const box = s.path("box");
    mkdirSync(box);
    writeFileSync(`${box}/outside`, "outside\n");
    const layer = `${box}/layer`;
    await applyLayer(buildArchive([{ name: "l", type: "symlink", linkname: "../outside" }, { name: "l", data: "replaced" }, { name: "h", type: "hardlink", linkname: "l" }]), layer);
    expect(readFileSync(`${box}/outside`, "utf8")).toBe("outside\n");
    expect(lstatSync(`${layer}/l`).isFile()).toBe(true);
    expect(lstatSync(`${layer}/h`).ino).toBe(lstatSync(`${layer}/l`).ino);
  });
});
