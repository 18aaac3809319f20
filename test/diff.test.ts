import { execFileSync } from "node:child_process";
import {
  appendFileSync,
  closeSync,
  chmodSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import type { OverlayOptions } from "../src/index.js";
import { native } from "../src/kernel/native.js";
import { requirePrivateMountNamespace, scratch, type Scratch, setXattr } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-diff-");
});
afterEach(() => s.cleanup());

/** Sets an xattr (Node has none; python3 is there wherever node-gyp built the addon). */

/** Two lower layers (l1 top-most) with a little of everything, an empty upper and work, and a mount point. */
function layers() {
  const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
  s.file("l1/file", "file from l1");
  s.file("l1/app", "append to me\n");
  s.file("l1/mode", "mode changes");
  s.file("l1/dir/sub/deep", "deep");
  s.file("l1/dir/other", "other");
  s.file("l1/gone/a", "a");
  s.file("l1/gone/b/c", "c");
  s.file("l1/repl/old", "old");
  s.file("l1/repl/sub/x", "x");
  s.file("l1/ren/inner/f", "f");
  s.file("l2/ren/from-l2", "l2 part of ren");
  s.file("l2/only-l2", "only in l2");
  s.file("l2/file", "file from l2, hidden by l1");
  writeFileSync(s.path("l2/big"), Buffer.alloc(256 * 1024, 7));
  return { l1: l1!, l2: l2!, upper: upper!, work: work!, merged: merged! };
}

async function mounted(options: OverlayOptions = {}) {
  const L = layers();
  const m = await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged, options });
  return { ...L, m, at: (p: string) => `${L.merged}${p}` };
}

/** The same diff read from the mounted overlay and, after unmounting, from the bare layers. */
async function diffBothWays(o: Awaited<ReturnType<typeof mounted>>, userxattr = false) {
  const live = await overlay.diff(o.merged);
  await o.m.unmount();
  const bare = await overlay.diff({ upper: o.upper, lower: [o.l1, o.l2], userxattr });
  expect(bare).toEqual(live);
  return live;
}

describe("diff of changes made through a real overlay", () => {
  it("is empty for an overlay nothing was written to (reading copies nothing up)", async () => {
    const o = await mounted();
    readFileSync(o.at("/file"));
    statSync(o.at("/dir/sub/deep"));
    expect(await diffBothWays(o)).toEqual([]);
  });

  it("C for a written file; its unchanged parent directories are not reported", async () => {
    const o = await mounted();
    writeFileSync(o.at("/file"), "rewritten");
    expect(await diffBothWays(o)).toEqual([{ path: "/file", change: "C" }]);
  });

  it("C for an appended file, and C for each directory copied up only to hold a changed file", async () => {
    const o = await mounted();
    appendFileSync(o.at("/app"), "more\n");
    appendFileSync(o.at("/dir/sub/deep"), "er");
    expect(await diffBothWays(o)).toEqual([
      { path: "/app", change: "C" },
      { path: "/dir", change: "C" },
      { path: "/dir/sub", change: "C" },
      { path: "/dir/sub/deep", change: "C" },
    ]);
  });

  it("C for chmod without metacopy (a full copy-up: not metadata-only)", async () => {
    const o = await mounted();
    chmodSync(o.at("/mode"), 0o600);
    expect(await diffBothWays(o)).toEqual([{ path: "/mode", change: "C" }]);
  });

  it("C with metadataOnly for chmod with metacopy=on; the data stays in the lower layer", async () => {
    const o = await mounted({ redirectDir: "on", metacopy: true });
    chmodSync(o.at("/mode"), 0o600);
    chmodSync(o.at("/big"), 0o600);
    writeFileSync(o.at("/file"), "a real write is a full copy-up");
    expect(statSync(`${o.upper}/big`).blocks).toBeLessThan(256 * 2); // data not copied
    expect(await diffBothWays(o)).toEqual([
      { path: "/big", change: "C", metadataOnly: true },
      { path: "/file", change: "C" },
      { path: "/mode", change: "C", metadataOnly: true },
    ]);
  });

  it("D for a deleted lower file, including one only a lower layer below the top one had", async () => {
    const o = await mounted();
    unlinkSync(o.at("/file"));
    unlinkSync(o.at("/only-l2"));
    expect(await diffBothWays(o)).toEqual([
      { path: "/file", change: "D" },
      { path: "/only-l2", change: "D" },
    ]);
  });

  it("one D for a deleted lower directory, not one for each file that was in it", async () => {
    const o = await mounted();
    rmSync(o.at("/gone"), { recursive: true });
    expect(await diffBothWays(o)).toEqual([{ path: "/gone", change: "D" }]);
  });

  it("a replaced lower directory is C and opaque, with D for every lower entry it now hides", async () => {
    const o = await mounted();
    rmSync(o.at("/repl"), { recursive: true });
    mkdirSync(o.at("/repl"));
    writeFileSync(o.at("/repl/new"), "new");
    writeFileSync(o.at("/repl/old"), "same name, new file");
    expect(await diffBothWays(o)).toEqual([
      { path: "/repl", change: "C", opaque: true },
      { path: "/repl/new", change: "A" },
      { path: "/repl/old", change: "C" },
      { path: "/repl/sub", change: "D" },
    ]);
  });

  it("a directory recreated inside a replaced one hides its lower namesake too (redirect_dir=on marks it opaque)", async () => {
    for (const options of [{}, { redirectDir: "on" as const }]) {
      const o = await mounted(options);
      rmSync(o.at("/repl"), { recursive: true });
      mkdirSync(o.at("/repl/sub"), { recursive: true });
      expect(await diffBothWays(o)).toEqual([
        { path: "/repl", change: "C", opaque: true },
        { path: "/repl/old", change: "D" },
        { path: "/repl/sub", change: "C", opaque: true },
        { path: "/repl/sub/x", change: "D" },
      ]);
      rmSync(o.upper, { recursive: true });
      rmSync(o.work, { recursive: true });
      for (const d of ["l1", "l2", "merged"]) rmSync(s.path(d), { recursive: true });
    }
  });

  it("A for new files and directories; with redirect_dir=on new directories are opaque but hide nothing", async () => {
    for (const options of [{}, { redirectDir: "on" as const }]) {
      const o = await mounted(options);
      mkdirSync(o.at("/new/deeper"), { recursive: true });
      writeFileSync(o.at("/new/deeper/f"), "f");
      writeFileSync(o.at("/dir/added"), "added");
      symlinkSync("file", o.at("/link"));
      const upperXattrs = execFileSync("python3", ["-c", "import os,sys; print(os.listxattr(sys.argv[1]))", `${o.upper}/new`], {
        encoding: "utf8",
      });
      expect(upperXattrs.includes("trusted.overlay.opaque")).toBe(options.redirectDir === "on");
      expect(await diffBothWays(o)).toEqual([
        { path: "/dir", change: "C" },
        { path: "/dir/added", change: "A" },
        { path: "/link", change: "A" },
        { path: "/new", change: "A" },
        { path: "/new/deeper", change: "A" },
        { path: "/new/deeper/f", change: "A" },
      ]);
      rmSync(o.upper, { recursive: true });
      rmSync(o.work, { recursive: true });
      for (const d of ["l1", "l2", "merged"]) rmSync(s.path(d), { recursive: true });
    }
  });

  it("a renamed directory (redirect_dir=on): D for the old path, A with renamedFrom for the new; its contents compare with the old", async () => {
    const o = await mounted({ redirectDir: "on" });
    renameSync(o.at("/ren"), o.at("/renamed"));
    writeFileSync(o.at("/renamed/inner/f"), "changed after the rename");
    unlinkSync(o.at("/renamed/from-l2"));
    writeFileSync(o.at("/renamed/added"), "added");
    // The redirect xattr holds the old name, relative within the same directory.
    expect(readXattr(`${o.upper}/renamed`, "trusted.overlay.redirect")).toBe("ren");
    expect(await diffBothWays(o)).toEqual([
      { path: "/ren", change: "D" },
      { path: "/renamed", change: "A", renamedFrom: "/ren" },
      { path: "/renamed/added", change: "A" },
      { path: "/renamed/from-l2", change: "D" },
      { path: "/renamed/inner", change: "C" },
      { path: "/renamed/inner/f", change: "C" },
    ]);
  });

  it("a directory moved to another directory carries an absolute redirect; a renamed metacopy file has one too", async () => {
    const o = await mounted({ redirectDir: "on", metacopy: true });
    renameSync(o.at("/dir/sub"), o.at("/moved"));
    chmodSync(o.at("/mode"), 0o600);
    renameSync(o.at("/mode"), o.at("/mode2"));
    expect(readXattr(`${o.upper}/moved`, "trusted.overlay.redirect")).toBe("/dir/sub");
    expect(await diffBothWays(o)).toEqual([
      { path: "/dir", change: "C" },
      { path: "/dir/sub", change: "D" },
      { path: "/mode", change: "D" },
      { path: "/mode2", change: "A", renamedFrom: "/mode", metadataOnly: true },
      { path: "/moved", change: "A", renamedFrom: "/dir/sub" },
    ]);
  });

  it("a directory renamed inside a renamed directory: its redirect is relative to the parent's old path", async () => {
    const o = await mounted({ redirectDir: "on" });
    renameSync(o.at("/ren"), o.at("/renamed"));
    renameSync(o.at("/renamed/inner"), o.at("/renamed/inner2"));
    expect(readXattr(`${o.upper}/renamed/inner2`, "trusted.overlay.redirect")).toBe("inner");
    expect(await diffBothWays(o)).toEqual([
      { path: "/ren", change: "D" },
      { path: "/renamed", change: "A", renamedFrom: "/ren" },
      { path: "/renamed/inner", change: "D" },
      { path: "/renamed/inner2", change: "A", renamedFrom: "/ren/inner" },
    ]);
  });

  it("a file replacing a lower directory is C (its old contents are not listed), and the reverse too", async () => {
    const o = await mounted();
    rmSync(o.at("/gone"), { recursive: true });
    writeFileSync(o.at("/gone"), "now a file");
    unlinkSync(o.at("/file"));
    mkdirSync(o.at("/file"));
    writeFileSync(o.at("/file/inside"), "new");
    expect(await diffBothWays(o)).toEqual([
      { path: "/file", change: "C" },
      { path: "/file/inside", change: "A" },
      { path: "/gone", change: "C" },
    ]);
  });
});

function readXattr(path: string, name: string): string {
  return execFileSync("python3", ["-c", "import os,sys; sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2]).decode())", path, name], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

describe("diff of layers that are not mounted", () => {
  it("follows the lower stack: a name whited out in the top lower layer did not exist, so writing it is A", async () => {
    const [l1, l2, upper] = s.dirs("l1", "l2", "upper");
    s.file("l2/hidden", "l2");
    s.file("l2/kept", "l2");
    execFileSync("mknod", [`${l1}/hidden`, "c", "0", "0"]);
    s.file("upper/hidden", "new");
    s.file("upper/kept", "changed");
    expect(await overlay.diff({ upper: upper!, lower: [l1!, l2!] })).toEqual([
      { path: "/hidden", change: "A" },
      { path: "/kept", change: "C" },
    ]);
  });

  it("reports a whiteout only when it hides something, and reads xattr whiteouts as whiteouts", async () => {
    const [l1, upper] = s.dirs("l1", "upper");
    s.file("l1/a", "a");
    s.file("l1/b", "b");
    execFileSync("mknod", [`${upper}/a`, "c", "0", "0"]);
    execFileSync("mknod", [`${upper}/never-existed`, "c", "0", "0"]);
    s.file("upper/b", "");
    setXattr(`${upper}/b`, "trusted.overlay.whiteout", "");
    expect(await overlay.diff({ upper: upper!, lower: l1! })).toEqual([
      { path: "/a", change: "D" },
      { path: "/b", change: "D" },
    ]);
  });

  it("reads user.overlay.* with userxattr and ignores trusted.overlay.* then (and the reverse)", async () => {
    const [l1, upper] = s.dirs("l1", "upper");
    s.file("l1/d/x", "x");
    s.dirs("upper/d");
    setXattr(`${upper}/d`, "user.overlay.opaque", "y");
    expect(await overlay.diff({ upper: upper!, lower: [l1!], userxattr: true })).toEqual([
      { path: "/d", change: "C", opaque: true },
      { path: "/d/x", change: "D" },
    ]);
    expect(await overlay.diff({ upper: upper!, lower: [l1!], userxattr: false })).toEqual([{ path: "/d", change: "C" }]);
    // Unsaid: the user.overlay.* mark says these are a userxattr mount's layers...
    expect(await overlay.diff({ upper: upper!, lower: [l1!] })).toEqual([
      { path: "/d", change: "C", opaque: true },
      { path: "/d/x", change: "D" },
    ]);
    // ...unless trusted.overlay.* marks are there too: root's layers, read as such.
    s.dirs("upper/e");
    setXattr(`${upper}/e`, "trusted.overlay.opaque", "y");
    expect(await overlay.diff({ upper: upper!, lower: [l1!] })).toEqual([
      { path: "/d", change: "C" },
      { path: "/e", change: "A" },
    ]);
  });

  it("reads xattr values and lists longer than the first buffer (a redirect past 256 bytes)", async () => {
    const [l1, upper] = s.dirs("l1", "upper");
    const deep = `/${"a".repeat(200)}/${"b".repeat(200)}`;
    s.file(`l1${deep}/f`, "f");
    s.dirs(`upper/${"a".repeat(200)}`, "upper/moved");
    execFileSync("mknod", [`${upper}${deep}`, "c", "0", "0"]);
    setXattr(`${upper}/moved`, "trusted.overlay.redirect", deep);
    for (let i = 0; i < 30; i++) setXattr(`${upper}/moved`, `trusted.overlay.x-padding-${i}-${"p".repeat(20)}`, "");
    expect(await overlay.diff({ upper: upper!, lower: [l1!] })).toEqual([
      { path: `/${"a".repeat(200)}`, change: "C" },
      { path: deep, change: "D" },
      { path: "/moved", change: "A", renamedFrom: deep },
    ]);
  });

  it("sorts paths in byte order and keeps odd names intact", async () => {
    const [l1, upper] = s.dirs("l1", "upper");
    for (const name of ["a/b", "a-b", "é", "Z", "line\nbreak"]) s.file(`upper/${name}`, "x");
    const paths = (await overlay.diff({ upper: upper!, lower: [l1!] })).map((c) => c.path);
    expect(paths).toEqual(["/Z", "/a", "/a-b", "/a/b", "/line\nbreak", "/é"]);
  });

  it("walks a large upper layer in two native calls a directory level, not one call per file", async () => {
    const [l1, upper] = s.dirs("l1", "upper");
    for (let d = 0; d < 40; d++) {
      mkdirSync(`${upper}/d${d}`);
      mkdirSync(`${l1}/d${d}`);
      for (let f = 0; f < 50; f++) writeFileSync(`${upper}/d${d}/f${f}`, "");
      writeFileSync(`${l1}/d${d}/f0`, "lower");
    }
    // Count trips to the addon (the calls still reach the kernel; only counted here).
    const addon = native();
    const calls = { scanDirsPacked: 0, lstatXattrs: 0 };
    const { scanDirsPacked, lstatXattrs } = addon;
    addon.scanDirsPacked = (...args) => (calls.scanDirsPacked++, scanDirsPacked.apply(addon, args));
    addon.lstatXattrs = (...args) => (calls.lstatXattrs++, lstatXattrs.apply(addon, args));
    let changes;
    try {
      changes = await overlay.diff({ upper: upper!, lower: [l1!], userxattr: false }); // (unsaid: one more scan finds it out)
    } finally {
      Object.assign(addon, { scanDirsPacked, lstatXattrs });
    }
    // Two trips a level (the root, then all 40 directories at once): a scan of the upper directories and
    // one lookup of their names in the lower layer.
    expect(calls).toEqual({ scanDirsPacked: 2, lstatXattrs: 2 });
    expect(changes).toHaveLength(40 + 40 * 50);
    expect(changes.filter((c) => c.change === "C").map((c) => c.path)).toEqual(
      Array.from({ length: 40 }, (_, d) => [`/d${d}`, `/d${d}/f0`]).flat().sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))),
    );
  });
});

describe("diff refuses what it cannot read", () => {
  it("EINVAL for a path that is not an overlay, and for a path inside one (naming the mount point)", async () => {
    await expect(overlay.diff(s.dir)).rejects.toMatchObject({ code: "EINVAL", path: s.dir });
    const o = await mounted();
    await expect(overlay.diff(o.at("/dir"))).rejects.toMatchObject({ code: "EINVAL", hint: `pass the mount point, ${o.merged}` });
  });

  it("ENOENT / ENOTDIR naming a missing or non-directory layer", async () => {
    const [l1] = s.dirs("l1");
    const file = s.file("f", "x");
    await expect(overlay.diff({ upper: s.path("nope"), lower: [l1!] })).rejects.toMatchObject({
      code: "ENOENT",
      path: s.path("nope"),
    });
    await expect(overlay.diff({ upper: l1!, lower: [file] })).rejects.toMatchObject({ code: "ENOTDIR", path: file });
    await expect(overlay.diff(s.path("nope"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("is empty for a read-only overlay (no upper layer)", async () => {
    const L = layers();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    expect(await overlay.diff(L.merged)).toEqual([]);
  });

  it("rejects bad arguments the way Node does", async () => {
    await expect(overlay.diff(42 as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
    await expect(overlay.diff("")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.diff({ upper: "/x" } as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
    await expect(overlay.diff({ upper: "/x", lower: [] })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.diff({ upper: "/x", lower: ["/y"], userxattr: "yes" } as never)).rejects.toMatchObject({
      code: "ERR_INVALID_ARG_TYPE",
    });
  });
});

describe("the addon's xattr calls", () => {
  it("refuse arguments of the wrong type with a TypeError, never a crash", () => {
    const addon = native();
    for (const name of ["scanDirs", "lstatXattrs"] as const) {
      const call = addon[name] as (...args: unknown[]) => unknown;
      expect(() => call("not an array", "p")).toThrow(TypeError);
      expect(() => call([1], "p")).toThrow(TypeError);
      expect(() => call(["/"], "p")).toThrow(TypeError);
      expect(() => call([[3, "a\0b", "c"]], "p")).toThrow(/NUL/);
      expect(() => call([[-1, "", "c"]], "p")).toThrow(RangeError);
      expect(() => call([], 5)).toThrow(TypeError);
      expect(() => call([])).toThrow(TypeError);
      expect(() => call(new Array(1e6), "p")).toThrow(RangeError);
    }
    expect(() => addon.lstatXattrs([[3, "", "a/b"]], "p")).toThrow(/one path component/);
    expect(() => addon.lstatXattrs([[3, "", ".."]], "p")).toThrow(/one path component/);
  });

  it("report a missing path as data in the result, not as a failed batch; never leave the root they are given", async () => {
    const addon = native();
    s.file("f", "x");
    symlinkSync("/etc", s.path("out"));
    const root = openSync(s.dir, "r");
    try {
      const [missing, present, viaLink, dotdot] = await addon.lstatXattrs(
        [[root, "", "nope"], [root, "", "f"], [root, "out", "passwd"], [root, "..", "etc"]],
        "trusted.overlay.",
      );
      expect(missing).toEqual({ errno: 2, syscall: "lstat" });
      expect(present).toMatchObject({ size: 1, ino: expect.any(BigInt), xattrs: {} });
      expect(viaLink).toEqual({ errno: 20, syscall: "openat2" }); // ENOTDIR: no symlink is followed as a directory
      expect(dotdot).toEqual({ errno: 18, syscall: "openat2" }); // EXDEV: nothing above the root
      const [notDir, dir, link] = await addon.scanDirs([[root, "f"], [root, ""], [root, "out"]], "trusted.overlay.");
      expect(notDir).toEqual({ errno: 20, syscall: "openat2" });
      expect(dir!.entries!.map((e) => e.name).sort()).toEqual(["f", "out"]);
      expect(link).toEqual({ errno: 20, syscall: "openat2" }); // ENOTDIR: the symlink itself is no directory
    } finally {
      closeSync(root);
    }
  });
});

describe("a userxattr overlay mounted in a user namespace", () => {
  const dist = fileURLToPath(new URL("../dist/index.js", import.meta.url));

  it("keeps its marks in user.overlay.*, and diff reads them (in the namespace, and from outside)", async () => {
    const [l1, upper, work, merged] = s.dirs("l1", "upper", "work", "merged");
    s.file("l1/file", "file");
    s.file("l1/gone", "gone");
    s.file("l1/dir/f", "f");
    s.file("l1/repl/old", "old");
    s.file("l1/sub/f", "f");
    // A child in its own user and mount namespace mounts (as rootless users do), changes things, and
    // reports diff and which from inside; the mount vanishes with it.
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { writeFileSync, rmSync, mkdirSync, appendFileSync } from "node:fs";
      const [l1, upper, work, merged] = process.argv.slice(1);
      const m = await overlay.mount({ lower: [l1], upper, work, target: merged, options: { userxattr: true } });
      writeFileSync(merged + "/file", "changed");
      rmSync(merged + "/gone");
      rmSync(merged + "/dir", { recursive: true });
      rmSync(merged + "/repl", { recursive: true });
      mkdirSync(merged + "/repl");
      writeFileSync(merged + "/repl/new", "new");
      appendFileSync(merged + "/sub/added", "added");
      const out = {
        userxattr: m.features.userxattr,
        diff: await overlay.diff(merged),
        whichFile: await overlay.which(merged + "/sub/f"),
        whichNew: await overlay.which(merged + "/repl/new"),
        whichGone: await overlay.which(merged + "/gone").catch((e) => e.code),
      };
      await m.unmount();
      process.stdout.write(JSON.stringify(out));
    `;
    const r = await execa(
      "unshare",
      ["-Urm", "--propagation", "private", process.execPath, "--input-type=module", "-e", script, l1!, upper!, work!, merged!],
      { reject: false },
    );
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const out = JSON.parse(r.stdout);
    const expected = [
      { path: "/dir", change: "D" },
      { path: "/file", change: "C" },
      { path: "/gone", change: "D" },
      { path: "/repl", change: "C", opaque: true },
      { path: "/repl/new", change: "A" },
      { path: "/repl/old", change: "D" },
      { path: "/sub", change: "C" },
      { path: "/sub/added", change: "A" },
    ];
    expect(out.userxattr).toBe(true);
    expect(out.diff).toEqual(expected);
    expect(out.whichFile).toMatchObject({ kind: "lower", layer: l1, realPath: `${l1}/sub/f` });
    expect(out.whichNew).toMatchObject({ kind: "upper", layer: upper, realPath: `${upper}/repl/new` });
    expect(out.whichGone).toBe("ENOENT");
    // The opaque mark is a user.overlay xattr, not a trusted one.
    expect(readXattr(`${upper}/repl`, "user.overlay.opaque")).toBe("y");
    expect(() => readXattr(`${upper}/repl`, "trusted.overlay.opaque")).toThrow();
    expect(await overlay.diff({ upper: upper!, lower: [l1!], userxattr: true })).toEqual(expected);
    // Unsaid, the upper layer's own user.overlay.* marks tell: the same answer.
    expect(await overlay.diff({ upper: upper!, lower: [l1!] })).toEqual(expected);
  });
});
