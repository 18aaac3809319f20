import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import type { OverlayOptions } from "../src/index.js";
import { requirePrivateMountNamespace, scratch, type Scratch, setXattr } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-which-");
});
afterEach(() => s.cleanup());


/** Three lower layers (l1 top-most), an upper and work, mounted. */
async function mounted(options: OverlayOptions = {}) {
  const [l1, l2, l3, upper, work, merged] = s.dirs("l1", "l2", "l3", "upper", "work", "merged");
  s.file("l1/top", "l1");
  s.file("l2/top", "l2, hidden by l1");
  s.file("l2/mid", "l2");
  s.file("l3/mid", "l3, hidden by l2");
  s.file("l3/bottom", "l3");
  s.file("l1/dir/from-l1", "l1");
  s.file("l3/dir/from-l3", "l3");
  s.file("l2/dir/sub/deep", "l2");
  s.file("l3/deleted", "l3");
  s.file("l2/ren/inner/f", "l2");
  s.file("l2/repl/old", "l2");
  s.file("l3/meta", "data of meta");
  symlinkSync("top", `${l1}/link`);
  const m = await overlay.mount({ lower: [l1!, l2!, l3!], upper: upper!, work: work!, target: merged!, options });
  return { l1: l1!, l2: l2!, l3: l3!, upper: upper!, work: work!, merged: merged!, m, at: (p: string) => `${merged}${p}` };
}

describe("which layer serves a path", () => {
  it("the top-most lower layer that has it, and where exactly", async () => {
    const o = await mounted();
    expect(await overlay.which(o.at("/top"))).toEqual({
      path: o.at("/top"),
      target: o.merged,
      overlayPath: "/top",
      layer: o.l1,
      kind: "lower",
      index: 1,
      realPath: `${o.l1}/top`,
      type: "file",
    });
    expect(await overlay.which(o.at("/mid"))).toMatchObject({ layer: o.l2, kind: "lower", index: 2, realPath: `${o.l2}/mid` });
    expect(await overlay.which(o.at("/bottom"))).toMatchObject({ layer: o.l3, kind: "lower", index: 3 });
    expect(await overlay.which(o.at("/dir/sub/deep"))).toMatchObject({ layer: o.l2, realPath: `${o.l2}/dir/sub/deep` });
  });

  it("the upper layer once a file is written (copied up) or created", async () => {
    const o = await mounted();
    writeFileSync(o.at("/mid"), "changed");
    writeFileSync(o.at("/dir/new"), "new");
    expect(await overlay.which(o.at("/mid"))).toMatchObject({ layer: o.upper, kind: "upper", realPath: `${o.upper}/mid` });
    expect(await overlay.which(o.at("/dir/new"))).toMatchObject({ kind: "upper", realPath: `${o.upper}/dir/new` });
    // Relative paths resolve from the working directory.
    const cwd = process.cwd();
    process.chdir(o.at("/dir"));
    try {
      expect(await overlay.which("new")).toMatchObject({ kind: "upper", path: o.at("/dir/new") });
    } finally {
      process.chdir(cwd);
    }
  });

  it("a directory: the top layer that has it, and every layer merged into it", async () => {
    const o = await mounted();
    const r = await overlay.which(o.at("/dir"));
    expect(r).toMatchObject({ layer: o.l1, kind: "lower", type: "directory" });
    expect(r.mergedFrom!.map((x) => x.realPath)).toEqual([`${o.l1}/dir`, `${o.l2}/dir`, `${o.l3}/dir`]);
    const root = await overlay.which(o.merged);
    expect(root).toMatchObject({ overlayPath: "/", layer: o.upper, kind: "upper", realPath: o.upper });
    expect(root.mergedFrom!.map((x) => x.layer)).toEqual([o.upper, o.l1, o.l2, o.l3]);
  });

  it("a symlink is served itself, not followed", async () => {
    const o = await mounted();
    expect(await overlay.which(o.at("/link"))).toMatchObject({ layer: o.l1, type: "symlink", realPath: `${o.l1}/link` });
  });

  it("ENOENT for a deleted file (naming the whiteout) and for a name no layer has", async () => {
    const o = await mounted();
    unlinkSync(o.at("/deleted"));
    await expect(overlay.which(o.at("/deleted"))).rejects.toMatchObject({
      code: "ENOENT",
      path: o.at("/deleted"),
      message: expect.stringContaining("whiteout in the upper layer"),
    });
    await expect(overlay.which(o.at("/nothing"))).rejects.toMatchObject({ code: "ENOENT", path: o.at("/nothing") });
    await expect(overlay.which(o.at("/nothing/below"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("stops at a whiteout in a lower layer, and at an opaque directory", async () => {
    const [l1, l2, merged] = s.dirs("l1", "l2", "merged");
    s.file("l2/hidden", "l2");
    execFileSync("mknod", [`${l1}/hidden`, "c", "0", "0"]);
    s.file("l1/opq/mine", "l1");
    s.file("l2/opq/theirs", "l2");
    setXattr(`${l1}/opq`, "trusted.overlay.opaque", "y");
    await overlay.mount({ lower: [l1!, l2!], target: merged! });
    await expect(overlay.which(`${merged}/hidden`)).rejects.toMatchObject({
      code: "ENOENT",
      message: expect.stringContaining("whiteout in lower layer 1"),
    });
    expect(await overlay.which(`${merged}/opq/mine`)).toMatchObject({ layer: l1 });
    await expect(overlay.which(`${merged}/opq/theirs`)).rejects.toMatchObject({ code: "ENOENT" });
    expect((await overlay.which(`${merged}/opq`)).mergedFrom!.map((x) => x.layer)).toEqual([l1]);
  });

  it("a replaced directory is the upper one alone", async () => {
    const o = await mounted();
    rmSync(o.at("/repl"), { recursive: true });
    mkdirSync(o.at("/repl"));
    const r = await overlay.which(o.at("/repl"));
    expect(r).toMatchObject({ kind: "upper", realPath: `${o.upper}/repl` });
    expect(r.mergedFrom!.map((x) => x.layer)).toEqual([o.upper]);
    await expect(overlay.which(o.at("/repl/old"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("follows a renamed directory (redirect_dir=on) to the lower directory it came from", async () => {
    const o = await mounted({ redirectDir: "on" });
    renameSync(o.at("/ren"), o.at("/renamed"));
    renameSync(o.at("/dir/sub"), o.at("/moved")); // another directory: an absolute redirect
    expect(await overlay.which(o.at("/renamed/inner/f"))).toMatchObject({ layer: o.l2, realPath: `${o.l2}/ren/inner/f` });
    expect(await overlay.which(o.at("/moved/deep"))).toMatchObject({ layer: o.l2, realPath: `${o.l2}/dir/sub/deep` });
    const renamed = await overlay.which(o.at("/renamed"));
    expect(renamed.mergedFrom!.map((x) => x.realPath)).toEqual([`${o.upper}/renamed`, `${o.l2}/ren`]);
    await expect(overlay.which(o.at("/ren"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("follows redirects in a lower layer too (an old upper layer stacked as a lower one)", async () => {
    const o = await mounted({ redirectDir: "on" });
    renameSync(o.at("/ren"), o.at("/renamed"));
    renameSync(o.at("/dir/sub"), o.at("/moved"));
    await o.m.unmount();
    const [merged2] = s.dirs("merged2");
    // The first overlay's upper layer, now read-only on top of its lower layers.
    await overlay.mount({ lower: [o.upper, o.l1, o.l2, o.l3], target: merged2!, options: { redirectDir: "on" } });
    expect(readFileSync(`${merged2}/renamed/inner/f`, "utf8")).toBe("l2");
    expect(await overlay.which(`${merged2}/renamed/inner/f`)).toMatchObject({ index: 3, realPath: `${o.l2}/ren/inner/f` });
    expect(await overlay.which(`${merged2}/moved/deep`)).toMatchObject({ index: 3, realPath: `${o.l2}/dir/sub/deep` });
    expect((await overlay.which(`${merged2}/moved`)).mergedFrom!.map((x) => x.realPath)).toEqual([
      `${o.upper}/moved`,
      `${o.l2}/dir/sub`,
    ]);
    await expect(overlay.which(`${merged2}/ren`)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("a metacopy file (metacopy=on): metadata from upper, data from the lower layer", async () => {
    const o = await mounted({ redirectDir: "on", metacopy: true });
    chmodSync(o.at("/meta"), 0o600);
    const r = await overlay.which(o.at("/meta"));
    expect(r).toMatchObject({ kind: "upper", realPath: `${o.upper}/meta`, metadataOnly: true });
    expect(r.data).toEqual({ layer: o.l3, kind: "lower", index: 3, realPath: `${o.l3}/meta` });
    expect(readFileSync(o.at("/meta"), "utf8")).toBe("data of meta");
  });

  it("a metacopy lower file whose data lies in a data-only layer (by absolute redirect)", async () => {
    const [l1, l2, data, merged] = s.dirs("l1", "l2", "data", "merged");
    s.file("data/blobs/ab", "the data");
    writeFileSync(`${l1}/f`, "");
    truncateSync(`${l1}/f`, "the data".length);
    setXattr(`${l1}/f`, "trusted.overlay.metacopy", "");
    setXattr(`${l1}/f`, "trusted.overlay.redirect", "/blobs/ab");
    // metacopy=on: without it the kernel refuses (EPERM) a metacopy above another lower layer.
    await overlay.mount({ lower: [l1!, l2!], data: [data!], target: merged!, options: { metacopy: true } });
    expect(readFileSync(`${merged}/f`, "utf8")).toBe("the data");
    const r = await overlay.which(`${merged}/f`);
    expect(r).toMatchObject({ layer: l1, kind: "lower", metadataOnly: true });
    expect(r.data).toEqual({ layer: data, kind: "data", index: 1, realPath: `${data}/blobs/ab` });
  });

  it("EINVAL for a path outside any overlay; ENOTDIR through a file", async () => {
    const o = await mounted();
    await expect(overlay.which(s.path("l1/top"))).rejects.toMatchObject({ code: "EINVAL", path: s.path("l1/top") });
    await expect(overlay.which(o.at("/top/x"))).rejects.toMatchObject({ code: "ENOTDIR" });
    await expect(overlay.which(42 as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
  });
});
