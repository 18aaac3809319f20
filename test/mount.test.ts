import { readFileSync, readdirSync, rmSync, statSync, writeFileSync, unlinkSync, mkdirSync, chmodSync } from "node:fs";
import { open } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { mountsUnder, openFdCount, rawMounts, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch();
});
afterEach(() => s.cleanup());

/** Three lowers (l1 top-most), an empty upper and work, and a mount point. */
function layout() {
  const [l1, l2, l3, upper, work, merged] = s.dirs("l1", "l2", "l3", "upper", "work", "merged");
  s.file("l1/shared", "from l1");
  s.file("l2/shared", "from l2");
  s.file("l3/shared", "from l3");
  s.file("l2/only-l2", "l2 file");
  s.file("l3/sub/deep", "l3 deep");
  return { l1: l1!, l2: l2!, l3: l3!, upper: upper!, work: work!, merged: merged! };
}

describe("mounting a real overlay", () => {
  it("shows the top-most layer's file and the lower layers' other files", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1, L.l2, L.l3], upper: L.upper, work: L.work, target: L.merged });
    expect(readFileSync(`${L.merged}/shared`, "utf8")).toBe("from l1");
    expect(readFileSync(`${L.merged}/only-l2`, "utf8")).toBe("l2 file");
    expect(readFileSync(`${L.merged}/sub/deep`, "utf8")).toBe("l3 deep");
    expect(m.lower).toEqual([L.l1, L.l2, L.l3]);
    expect(m.upper).toBe(L.upper);
    expect(m.work).toBe(L.work);
    expect(m.target).toBe(L.merged);
    expect(m.fstype).toBe("overlay");
    expect(m.source).toBe("overlay");
    expect(m.strategy).toBe("fd");
    const raw = mountsUnder(L.merged);
    expect(raw).toHaveLength(1);
    expect(raw[0]!.fstype).toBe("overlay");
    expect(raw[0]!.id).toBe(m.id);
    await m.unmount();
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("copies a lower file up into upper when it changes, leaving the lower file alone", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    writeFileSync(`${L.merged}/only-l2`, "changed");
    writeFileSync(`${L.merged}/new`, "brand new");
    expect(readFileSync(`${L.upper}/only-l2`, "utf8")).toBe("changed");
    expect(readFileSync(`${L.upper}/new`, "utf8")).toBe("brand new");
    expect(readFileSync(`${L.l2}/only-l2`, "utf8")).toBe("l2 file");
    expect(readdirSync(L.l1).sort()).toEqual(["shared"]);
  });

  it("leaves a whiteout (character device 0/0) in upper when a lower file is deleted", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    unlinkSync(`${L.merged}/shared`);
    expect(readdirSync(L.merged)).not.toContain("shared");
    const st = statSync(`${L.upper}/shared`);
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(0);
    expect(readFileSync(`${L.l1}/shared`, "utf8")).toBe("from l1");
    expect(readFileSync(`${L.l2}/shared`, "utf8")).toBe("from l2");
  });

  it("mounts a read-only overlay (no upper) that refuses writes with EROFS", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    expect(m.upper).toBeUndefined();
    expect(m.work).toBeUndefined();
    expect(m.superOptions[0]).toBe("ro");
    expect(() => writeFileSync(`${L.merged}/x`, "no")).toThrow(expect.objectContaining({ code: "EROFS" }));
    expect(readFileSync(`${L.merged}/shared`, "utf8")).toBe("from l1");
  });

  it("takes the positional form mount(lower, upper, work, target)", async () => {
    const L = layout();
    const m = await overlay.mount([L.l1, L.l2], L.upper, L.work, L.merged);
    expect(m.lower).toEqual([L.l1, L.l2]);
    const single = s.dirs("m2")[0]!;
    const [u2, w2] = s.dirs("u2", "w2");
    const m2 = await overlay.mount(L.l3, u2, w2, single, { flags: { noexec: true } });
    expect(m2.lower).toEqual([L.l3]);
    expect(m2.mountOptions).toContain("noexec");
  });

  it("returns exactly the entry list() reads back from the mount table", async () => {
    const L = layout();
    const m = await overlay.mount({
      lower: [L.l1, L.l2],
      upper: L.upper,
      work: L.work,
      target: L.merged,
      flags: { nosuid: true, nodev: true, noatime: true },
      options: { redirectDir: "on", index: true, uuid: "null" },
      source: "my-overlay",
    });
    const listed = await overlay.list({ target: L.merged });
    expect(listed).toHaveLength(1);
    const { uniqueId, ...fields } = m;
    expect(uniqueId).toBeGreaterThan(0);
    expect(fields).toEqual({ ...listed[0] });
    expect(m.mountOptions).toEqual(["rw", "nosuid", "nodev", "noatime"]);
    expect(m.source).toBe("my-overlay");
    expect(m.features).toMatchObject({ redirectDir: "on", index: true, uuid: "null" });
    const raw = rawMounts().find((r) => r.id === m.id)!;
    expect(raw.superOptions).toContain("redirect_dir=on");
  });

  it("mounts data-only layers", async () => {
    const L = layout();
    const [d1] = s.dirs("data1");
    const m = await overlay.mount({ lower: [L.l1, L.l2], data: [d1!], target: L.merged });
    expect(m.lower).toEqual([L.l1, L.l2]);
    expect(m.data).toEqual([d1]);
    expect(readdirSync(L.merged).sort()).toEqual(["only-l2", "shared"]);
  });

  it("mounts read-only with flags.readonly even with an upper layer", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, flags: { readonly: true } });
    expect(m.mountOptions[0]).toBe("ro");
    expect(() => writeFileSync(`${L.merged}/x`, "no")).toThrow(expect.objectContaining({ code: "EROFS" }));
  });

  it("unmounts itself at the end of an `await using` scope", async () => {
    const L = layout();
    {
      await using m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
      expect(mountsUnder(L.merged).map((r) => r.id)).toEqual([m.id]);
    }
    expect(mountsUnder(L.merged)).toEqual([]);
  });

  it("does not throw from `await using` when the overlay was already unmounted", async () => {
    const L = layout();
    {
      await using m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
      await overlay.umount(L.merged);
      expect(m.target).toBe(L.merged);
    }
    expect(mountsUnder(L.merged)).toEqual([]);
  });

  it("refuses to unmount in its place a mount that now covers the target", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    execFileSync("mount", ["-t", "tmpfs", "cover", L.merged]);
    await expect(m[Symbol.asyncDispose]()).rejects.toMatchObject({ code: "EBUSY", path: L.merged });
    expect(mountsUnder(L.merged).map((r) => r.fstype)).toEqual(["overlay", "tmpfs"]);
    execFileSync("umount", [L.merged]); // the cover; then disposal takes the overlay down
    await m[Symbol.asyncDispose]();
    expect(mountsUnder(L.merged)).toEqual([]);
  });

  it("remounts the same upper and work after an unmount (overlay's leftovers are accepted)", async () => {
    const L = layout();
    const m1 = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    writeFileSync(`${L.merged}/kept`, "survives");
    await m1.unmount();
    expect(readdirSync(L.work)).toContain("work");
    await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    expect(readFileSync(`${L.merged}/kept`, "utf8")).toBe("survives");
  });

  it("finds that this kernel takes layers as file descriptors", async () => {
    expect(await overlay.kernelStrategy()).toBe("fd");
  });
});

describe("unmounting", () => {
  it("gives EBUSY for a busy overlay, and a lazy unmount detaches it while an open file stays readable", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    const fh = await open(`${L.merged}/only-l2`, "r");
    try {
      const err = await overlay.umount(L.merged).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(overlay.OverlayError);
      expect(err).toMatchObject({ code: "EBUSY", errno: -16, syscall: "umount2", path: L.merged });
      expect((err as Error).message).toContain(L.merged);
      expect((err as overlay.OverlayError).hint).toMatch(/lazy/);
      const forced = await overlay.umount(L.merged, { force: true }).catch((e: unknown) => e);
      expect(forced).toMatchObject({ code: "EBUSY" });
      expect(mountsUnder(L.merged)).toHaveLength(1);

      await overlay.umount(L.merged, { lazy: true });
      expect(mountsUnder(L.merged)).toEqual([]);
      const buf = Buffer.alloc(64);
      const { bytesRead } = await fh.read(buf, 0, 64, 0);
      expect(buf.subarray(0, bytesRead).toString()).toBe("l2 file");
    } finally {
      await fh.close();
    }
  });

  it("says EINVAL for a directory that is not a mount point and ENOENT for a missing one", async () => {
    const [d] = s.dirs("plain");
    await expect(overlay.umount(d!)).rejects.toMatchObject({ code: "EINVAL", path: d, syscall: "umount2", hint: expect.stringMatching(/not a mount point/) });
    await expect(overlay.umount(s.path("missing"))).rejects.toMatchObject({ code: "ENOENT", path: s.path("missing") });
  });

  it("expires an idle mount in two calls, and refuses expire with lazy", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    await expect(overlay.umount(L.merged, { expire: true, lazy: true })).rejects.toMatchObject({ code: "EINVAL" });
    await expect(overlay.umount(L.merged, { expire: true })).rejects.toMatchObject({ code: "EAGAIN" });
    expect(mountsUnder(L.merged)).toHaveLength(1);
    await overlay.umount(L.merged, { expire: true });
    expect(mountsUnder(L.merged)).toEqual([]);
  });

  it("rejects bad arguments the way Node does", async () => {
    await expect(overlay.umount(42 as unknown as string)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
    await expect(overlay.umount("")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.umount("/tmp/a\0b")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.umount("/tmp", { lazy: "yes" } as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
  });
});

describe("a kernel refusal keeps its errno and the kernel's words", () => {
  for (const strategy of ["fd", "legacy"] as const) {
    it(`reports the kernel log's reason for a refusal only the kernel can make: overlays nested too deep (${strategy})`, async () => {
      // Overlay stacks at most two deep on this kernel; the third level is refused at superblock time, a
      // reason overlay writes only to the kernel log.
      const [base1, base2, u1, w1, m1, u2, w2, m2, u3, w3, m3] = s.dirs("b1", "b2", "u1", "w1", "m1", "u2", "w2", "m2", "u3", "w3", "m3");
      await overlay.mount({ lower: [base1!, base2!], upper: u1!, work: w1!, target: m1! });
      await overlay.mount({ lower: [m1!], upper: u2!, work: w2!, target: m2! });
      const err = await overlay.mount({ lower: [m2!], upper: u3!, work: w3!, target: m3!, strategy }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(overlay.OverlayError);
      const e = err as overlay.OverlayError;
      expect(e.code).toBe("EINVAL");
      expect(e.errno).toBe(-22);
      expect(e.path).toBe(m3);
      expect(e.kernelMessages).toContain("maximum fs stacking depth exceeded");
      expect(e.message).toContain("(kernel: maximum fs stacking depth exceeded)");
      expect(e.hint).toBeUndefined(); // the kernel said why: no "look in dmesg"
      expect(mountsUnder(m3!)).toEqual([]);
    });
  }

  it("refuses a work directory left dirty by a volatile mount before the kernel does, and says how to recover", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, options: { volatile: true } });
    expect(m.features.volatile).toBe(true);
    await m.unmount();
    const marker = `${L.work}/work/incompat/volatile/dirty`;
    expect(statSync(marker).isFile() || statSync(marker).isDirectory()).toBe(true);
    const err = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "EINVAL", path: L.work, message: expect.stringContaining(marker) });
    expect((err as overlay.OverlayError).hint).toContain(`${L.work}/work/incompat/volatile`);
    expect(mountsUnder(s.dir)).toEqual([]);
    rmSync(`${L.work}/work/incompat/volatile`, { recursive: true });
    const again = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    expect(again.features.volatile).toBeUndefined();
  });
});

describe("overlay option conflicts: ovl's rules are the kernel's", () => {
  const conflicts: [overlay.OverlayOptions, string, RegExp][] = [
    [{ metacopy: true, redirectDir: "follow" }, "metacopy=on,redirect_dir=follow", /metacopy=on needs redirect_dir=on/],
    [{ metacopy: true, redirectDir: "nofollow" }, "metacopy=on,redirect_dir=nofollow", /metacopy=on needs redirect_dir=on/],
    [{ nfsExport: true, metacopy: true }, "nfs_export=on,metacopy=on", /nfs_export=on cannot be combined with metacopy/],
    [{ nfsExport: true, index: false }, "nfs_export=on,index=off", /nfs_export=on needs index=on/],
    [{ userxattr: true, redirectDir: "off" }, "userxattr,redirect_dir=off", /userxattr allows only redirect_dir=nofollow/],
    [{ userxattr: true, redirectDir: "follow" }, "userxattr,redirect_dir=follow", /userxattr allows only redirect_dir=nofollow/],
    [{ userxattr: true, metacopy: true }, "userxattr,metacopy=on", /userxattr cannot be combined with metacopy/],
  ];
  for (const [options, mountOpts, rule] of conflicts) {
    it(`refuses ${mountOpts}, as the kernel does`, async () => {
      const L = layout();
      const err = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, options }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "EINVAL", message: expect.stringMatching(rule) });
      // The kernel itself refuses the same combination (util-linux's mount(8), not ovl).
      expect(() =>
        execFileSync("mount", ["-t", "overlay", "x", "-o", `lowerdir=${L.l1},upperdir=${L.upper},workdir=${L.work},${mountOpts}`, L.merged], { stdio: "pipe" }),
      ).toThrow();
      expect(mountsUnder(s.dir)).toEqual([]);
    });
  }

  const allowed: overlay.OverlayOptions[] = [
    { metacopy: true },
    { metacopy: true, redirectDir: "on" },
    { nfsExport: true },
    { userxattr: true, redirectDir: "nofollow" },
    { userxattr: true, metacopy: false },
    { verity: "require" },
  ];
  for (const options of allowed) {
    it(`mounts ${JSON.stringify(options)}`, async () => {
      const L = layout();
      const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, options });
      for (const [key, value] of Object.entries(options)) {
        if (value !== false) expect(m.features[key as keyof overlay.OverlayOptions]).toBe(value);
      }
    });
  }
});

describe("paths the kernel would misread as options", () => {
  const odd = ["with space", "com,ma", "co:lon", "back\\slash", "equals=sign", "new\nline", "tab\there", "ünïcødé-日本", "x,upperdir=evil"];

  for (const strategy of ["fd", "string", "legacy"] as const) {
    it(`mounts layers and targets with ${JSON.stringify(odd.join(""))} in their names (${strategy})`, async () => {
      const lower = s.dirs(...odd.map((n) => `lower/${n}`));
      lower.forEach((d, i) => writeFileSync(`${d}/f${i}`, odd[i]!));
      const [upper, work, target] = s.dirs("up,per:\\ \n", "wo,rk:\\ \t", "mer:ged, \\=\n");
      const m = await overlay.mount({ lower, upper: upper!, work: work!, target: target!, strategy });
      expect(m.strategy).toBe(strategy);
      expect(m.lower).toEqual(lower);
      expect(m.upper).toBe(upper);
      expect(m.work).toBe(work);
      expect(m.target).toBe(target);
      expect(readdirSync(target!).sort()).toEqual(odd.map((_, i) => `f${i}`).sort());
      const listed = await overlay.list({ target: target! });
      // Handed over as fds, the table names the layers; as magic links (string, legacy) it shows those.
      const shown = (p: string) => (strategy === "fd" ? p : expect.stringMatching(/^\/proc\/self\/fd\/\d+$/));
      expect(listed.map((l) => ({ lower: l.lower, upper: l.upper, work: l.work, target: l.target }))).toEqual([
        { lower: lower.map(shown), upper: shown(upper!), work: shown(work!), target },
      ]);
      writeFileSync(`${target}/written`, "up");
      expect(readFileSync(`${upper}/written`, "utf8")).toBe("up");
    });
  }

  it("keeps a lower directory named `x,upperdir=DIR` one read-only layer", async () => {
    for (const strategy of ["fd", "string", "legacy"] as const) {
      const sub = `inject-${strategy}`;
      const [evilTarget, other, target] = s.dirs(`${sub}/some/dir`, `${sub}/other`, `${sub}/merged`);
      const [evil] = s.dirs(`${sub}/x,upperdir=${evilTarget}`);
      writeFileSync(`${evil}/inside`, "evil layer file");
      const m = await overlay.mount({ lower: [evil!, other!], target: target!, strategy });
      expect(m.lower).toEqual([evil, other]);
      expect(m.upper).toBeUndefined();
      expect(readFileSync(`${target}/inside`, "utf8")).toBe("evil layer file");
      expect(() => writeFileSync(`${target}/attempt`, "x")).toThrow(expect.objectContaining({ code: "EROFS" }));
      expect(readdirSync(evilTarget!)).toEqual([]);
    }
  });
});

describe("long layer lists and long paths", () => {
  it("mounts 250 layers whose paths pass 4 KiB together, and refuses (not truncates) what mount(2)'s page cannot hold", async () => {
    const names = Array.from({ length: 250 }, (_, i) => `layers/layer-${String(i).padStart(3, "0")}-${"p".repeat(20)}`);
    const lower = s.dirs(...names);
    lower.forEach((d, i) => writeFileSync(`${d}/file-${i}`, String(i)));
    writeFileSync(`${lower[249]}/shared`, "bottom");
    writeFileSync(`${lower[0]}/shared`, "top");
    expect(lower.join(":").length).toBeGreaterThan(4096);
    const [target, target2, target3] = s.dirs("merged", "merged2", "merged3");

    // mount(2) gets each layer as its magic link (/proc/self/fd/N, ~18 bytes): 250 of them pass one page.
    const err = await overlay.mount({ lower, target: target!, strategy: "legacy" }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "E2BIG", syscall: "mount", path: target });
    expect(mountsUnder(s.dir)).toEqual([]);
    const viaLegacy = await overlay.mount({ lower: lower.slice(0, 200), target: target3!, strategy: "legacy" });
    expect(viaLegacy.lower).toEqual(lower.slice(0, 200));
    await viaLegacy.unmount();

    const m = await overlay.mount({ lower, target: target! });
    expect(m.lower).toEqual(lower);
    expect(readdirSync(target!)).toHaveLength(251);
    expect(readFileSync(`${target}/shared`, "utf8")).toBe("top");
    expect(readFileSync(`${target}/file-249`, "utf8")).toBe("249");

    const viaStrings = await overlay.mount({ lower, target: target2!, strategy: "string" });
    expect(viaStrings.lower).toEqual(lower);
  });

  it("mounts layers whose paths are longer than 255 bytes", async () => {
    const deep = Array.from({ length: 6 }, (_, i) => `segment-${i}-${"q".repeat(40)}`).join("/");
    const [l1, l2, upper, work, target] = s.dirs(`${deep}/l1`, `${deep}/l2`, `${deep}/upper`, `${deep}/work`, "merged");
    expect(Buffer.byteLength(l1!)).toBeGreaterThan(255);
    writeFileSync(`${l2}/f`, "long");
    // fsconfig() takes at most 255 bytes per string; the `string` strategy hands over magic links, never the paths.
    for (const strategy of ["fd", "string", "legacy"] as const) {
      const m = await overlay.mount({ lower: [l1!, l2!], upper: upper!, work: work!, target: target!, strategy });
      expect([strategy, m.lower, m.upper]).toEqual([strategy, [l1, l2], upper]);
      expect(readFileSync(`${target}/f`, "utf8")).toBe("long");
      await m.unmount();
    }
  });
});

describe("validation before any syscall", () => {
  /** Asserts a mount attempt fails with `code` naming `path`, and leaves nothing mounted. */
  async function expectRefusal(spec: overlay.MountSpec, code: string, path: string, rule: RegExp) {
    const err = await overlay.mount(spec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(overlay.OverlayError);
    const e = err as overlay.OverlayError;
    expect(e.code).toBe(code);
    expect(e.errno).toBeLessThan(0);
    expect(e.syscall).toBe("mount");
    expect(e.path).toBe(path);
    expect(e.message).toContain(path);
    expect(e.message).toMatch(rule);
    expect(mountsUnder(s.dir)).toEqual([]);
  }

  it("ENOENT: a lower layer that does not exist", async () => {
    const L = layout();
    await expectRefusal({ lower: [L.l1, s.path("nope")], upper: L.upper, work: L.work, target: L.merged }, "ENOENT", s.path("nope"), /lower layer 2 .* does not exist/);
  });

  it("ENOENT with a hint when a colon list is passed as one layer", async () => {
    const L = layout();
    const err = await overlay.mount({ lower: `${L.l1}:${L.l2}`, target: L.merged, upper: L.upper, work: L.work }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "ENOENT", hint: expect.stringMatching(/array/) });
  });

  it("ENOTDIR: a lower layer that is a file", async () => {
    const L = layout();
    const f = s.file("afile", "x");
    await expectRefusal({ lower: [f], upper: L.upper, work: L.work, target: L.merged }, "ENOTDIR", f, /not a directory/);
  });

  it("ELOOP: a layer listed twice", async () => {
    const L = layout();
    await expectRefusal({ lower: [L.l1, L.l2, L.l1], upper: L.upper, work: L.work, target: L.merged }, "ELOOP", L.l1, /same directory/);
  });

  it("ELOOP: a layer nested in another layer, or in upper", async () => {
    const L = layout();
    const [nested] = s.dirs("l1/nested");
    await expectRefusal({ lower: [L.l1, nested!], upper: L.upper, work: L.work, target: L.merged }, "ELOOP", nested!, /inside lower layer 1/);
    const [inUpper] = s.dirs("upper/inside");
    await expectRefusal({ lower: [inUpper!], upper: L.upper, work: L.work, target: L.merged }, "ELOOP", inUpper!, /inside upper layer/);
  });

  it("ELOOP: the same directory through a symlink", async () => {
    const L = layout();
    execFileSync("ln", ["-s", L.l1, s.path("link-to-l1")]);
    await expectRefusal({ lower: [L.l1, s.path("link-to-l1")], upper: L.upper, work: L.work, target: L.merged }, "ELOOP", s.path("link-to-l1"), /same directory/);
  });

  it("EINVAL: a read-only overlay with one lower layer", async () => {
    const L = layout();
    await expectRefusal({ lower: [L.l1], target: L.merged }, "EINVAL", L.l1, /at least two lower layers/);
  });

  it("EINVAL: upper without work, and work without upper", async () => {
    const L = layout();
    await expectRefusal({ lower: [L.l1], upper: L.upper, target: L.merged }, "EINVAL", L.upper, /without a work directory/);
    await expectRefusal({ lower: [L.l1], work: L.work, target: L.merged }, "EINVAL", L.work, /without an upper layer/);
  });

  it("EINVAL: work inside upper, upper inside work, or the same directory", async () => {
    const L = layout();
    const [wIn] = s.dirs("upper/w");
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: wIn!, target: L.merged }, "EINVAL", wIn!, /inside upper layer/);
    const [uIn] = s.dirs("work2/u");
    await expectRefusal({ lower: [L.l1], upper: uIn!, work: s.path("work2"), target: L.merged }, "EINVAL", uIn!, /inside work directory/);
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: L.upper, target: L.merged }, "EINVAL", L.upper, /same directory/);
  });

  it("EXDEV: upper and work on different mounts of the same filesystem", async () => {
    const L = layout();
    const [other] = s.dirs("other-mount");
    execFileSync("mount", ["--bind", other!, other!]);
    const [w] = s.dirs("other-mount/work");
    expect(statSync(w!).dev).toBe(statSync(L.upper).dev); // same filesystem, other mount
    const err = await overlay.mount({ lower: [L.l1], upper: L.upper, work: w!, target: L.merged }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "EXDEV", path: w, message: expect.stringMatching(/different mounts/) });
    expect(mountsUnder(L.merged)).toEqual([]);
  });

  it("ENOTEMPTY: a work directory holding the user's files, including a user directory named `work`", async () => {
    const L = layout();
    s.file("work/precious", "do not wipe");
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged }, "ENOTEMPTY", L.work, /not empty .*'precious'/);
    const [w2] = s.dirs("work2");
    s.file("work2/work/my-data", "the kernel would wipe this");
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: w2!, target: L.merged }, "ENOTEMPTY", w2!, /'work'/);
    expect(readFileSync(`${w2}/work/my-data`, "utf8")).toBe("the kernel would wipe this");
  });

  it("accepts an empty `work` directory and an `index` directory as leftovers", async () => {
    const L = layout();
    s.dirs("work/work", "work/index");
    chmodSync(`${L.work}/work`, 0o755);
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    expect(m.work).toBe(L.work);
  });

  it("ENOENT / ENOTDIR: a target that is missing or not a directory", async () => {
    const L = layout();
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: L.work, target: s.path("no-target") }, "ENOENT", s.path("no-target"), /target .* does not exist/);
    const f = s.file("target-file", "x");
    await expectRefusal({ lower: [L.l1], upper: L.upper, work: L.work, target: f }, "ENOTDIR", f, /target .* not a directory/);
  });

  it("EINVAL: no lower layer at all", async () => {
    const L = layout();
    const err = await overlay.mount({ lower: [], upper: L.upper, work: L.work, target: L.merged }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "EINVAL", message: expect.stringMatching(/at least one lower layer/) });
  });

  it("refuses wrong argument types and values the way Node does", async () => {
    const L = layout();
    const base = { lower: [L.l1], upper: L.upper, work: L.work, target: L.merged };
    const cases: [unknown, string][] = [
      [undefined, "ERR_INVALID_ARG_TYPE"],
      ["/x", "ERR_INVALID_ARG_TYPE"],
      [{ ...base, lower: 5 }, "ERR_INVALID_ARG_TYPE"],
      [{ ...base, lower: [L.l1, 7] }, "ERR_INVALID_ARG_TYPE"],
      [{ ...base, lower: [""] }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, lower: ["/a\0b"] }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, target: undefined }, "ERR_INVALID_ARG_TYPE"],
      [{ ...base, upper: {} }, "ERR_INVALID_ARG_TYPE"],
      [{ ...base, flags: { readonly: "yes" } }, "ERR_INVALID_ARG_TYPE"],
      [{ ...base, flags: { bogus: true } }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, flags: { noatime: true, strictatime: true } }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, options: { xino: "maybe" } }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, options: { nosuchoption: true } }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, strategy: "magic" }, "ERR_INVALID_ARG_VALUE"],
      [{ ...base, source: "s".repeat(300) }, "ERR_INVALID_ARG_VALUE"],
    ];
    for (const [spec, code] of cases) {
      const err = await overlay.mount(spec as overlay.MountSpec).catch((e: unknown) => e);
      expect(err, JSON.stringify(spec)).toBeInstanceOf(TypeError);
      expect(err, JSON.stringify(spec)).toMatchObject({ code });
    }
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("a failure half-way, after every layer fd reached the kernel, leaves nothing mounted and no fd open", async () => {
    // The kernel refuses a third level of nested overlays at superblock time: after ovl has opened each
    // layer and handed its fd over, so this is a failure in the middle of the native call.
    const [b1, b2, u1, w1, m1, u2, w2, m2, u3, w3, m3] = s.dirs("b1", "b2", "u1", "w1", "m1", "u2", "w2", "m2", "u3", "w3", "m3");
    const good = s.dirs(...Array.from({ length: 20 }, (_, i) => `good${i}`));
    await overlay.mount({ lower: [b1!, b2!], upper: u1!, work: w1!, target: m1! });
    await overlay.mount({ lower: [m1!], upper: u2!, work: w2!, target: m2! });
    const fdsBefore = openFdCount();
    for (let i = 0; i < 20; i++) {
      const err = await overlay.mount({ lower: [...good, m2!], upper: u3!, work: w3!, target: m3! }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "EINVAL", syscall: "fsconfig" });
    }
    expect(openFdCount()).toBe(fdsBefore);
    expect(mountsUnder(m3!)).toEqual([]);
  });

  it("a bad layer among good ones is named before any syscall, and nothing is mounted", async () => {
    const L = layout();
    const err = await overlay.mount({ lower: [L.l1, L.l2, s.path("missing"), L.l3], upper: L.upper, work: L.work, target: L.merged }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "ENOENT", path: s.path("missing"), message: expect.stringMatching(/lower layer 3/) });
    expect(mountsUnder(s.dir)).toEqual([]);
  });
});
