/**
 * What is checked is what is acted on (issue 10), shown deterministically: a path is swapped for another
 * directory exactly between the trip that opens and checks it and the trip that mounts (the race suite in
 * race.test.ts does the same with a process swapping names as fast as it can). Also: handles unmount exactly
 * their own mount, upper/work in use by another overlay are refused, the kernel log is read by position, the
 * `*Sync` twins, and the bad arguments fuzzing found.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { native, type NativeAddon } from "../src/kernel/native.js";
import { mountsUnder, openFdCount, rawMounts, realRoot, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-once-");
});
afterEach(() => s.cleanup());

const strategies = ["fd", "string", "legacy"] as const;

/** Runs `swap` once, just before the addon's mounting call (after every path was opened and checked). */
async function withSwapBeforeMount<T>(swap: () => void, fn: () => Promise<T>): Promise<T> {
  const addon = native() as NativeAddon & Record<string, unknown>;
  const { fsMount, mount } = addon;
  let swapped = 0;
  const once = () => {
    if (swapped++ === 0) swap();
  };
  addon.fsMount = ((...args: Parameters<typeof fsMount>) => {
    if (args[3] !== null) once(); // not the strategy probe
    return fsMount.apply(addon, args);
  }) as typeof fsMount;
  addon.mount = ((...args: Parameters<typeof mount>) => (once(), mount.apply(addon, args))) as typeof mount;
  try {
    return await fn();
  } finally {
    Object.assign(addon, { fsMount, mount });
    expect(swapped).toBeGreaterThan(0); // the swap really happened between check and mount
  }
}

/** Replaces directory `path` by `other` under the same name (the old one kept at `path.old`). */
const replaceDir = (path: string, other: string) => () => {
  renameSync(path, `${path}.old`);
  renameSync(other, path);
};

function layout() {
  const [l1, upper, work, merged, victim] = s.dirs("l1", "upper", "work", "merged", "victim");
  writeFileSync(`${l1}/checked`, "the checked lower");
  writeFileSync(`${victim}/victim`, "not to be mounted");
  mkdirSync(`${victim}/work`);
  writeFileSync(`${victim}/work/keep`, "not to be wiped");
  return { l1: l1!, upper: upper!, work: work!, merged: merged!, victim: victim! };
}

describe("a path swapped between the check and the mount", () => {
  for (const strategy of strategies) {
    it(`lower: the checked directory is mounted, not what its name leads to now (${strategy})`, async () => {
      const L = layout();
      const run = () => overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, strategy });
      const m = await withSwapBeforeMount(replaceDir(L.l1, L.victim), run);
      expect(readdirSync(L.merged)).toEqual(["checked"]);
      // As fds the kernel names the layer where it is now; as magic links ovl names it as it was checked.
      expect(m.lower).toEqual([strategy === "fd" ? `${L.l1}.old` : L.l1]);
      await m.unmount();
      expect(mountsUnder(s.dir)).toEqual([]);
    });

    it(`work: a non-empty directory swapped in is never wiped (${strategy})`, async () => {
      const L = layout();
      const run = () => overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, strategy });
      const m = await withSwapBeforeMount(replaceDir(L.work, L.victim), run);
      expect(readFileSync(`${L.work}/work/keep`, "utf8")).toBe("not to be wiped");
      expect(readdirSync(`${L.work}.old`)).toContain("work"); // the checked (empty) one got overlay's work/
      await m.unmount();
      expect(mountsUnder(s.dir)).toEqual([]);
    });

    it(`target: the mount lands on the directory checked, wherever its name now leads (${strategy})`, async () => {
      const L = layout();
      const [p, q] = s.dirs("p/t", "q/t");
      writeFileSync(`${q}/elsewhere`, "");
      const pDir = s.path("p");
      const run = () => overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: p!, strategy });
      const swap = () => {
        renameSync(pDir, `${pDir}.old`);
        renameSync(s.path("q"), pDir);
      };
      const m = await withSwapBeforeMount(swap, run);
      expect(m.target).toBe(`${pDir}.old/t`);
      expect(readdirSync(`${pDir}.old/t`)).toEqual(["checked"]);
      expect(readdirSync(`${pDir}/t`)).toEqual(["elsewhere"]); // the swapped-in directory has nothing on it
      await m.unmount();
      expect(mountsUnder(s.dir)).toEqual([]);
    });
  }

  it("diff() and which() of an overlay whose table names layers as magic links refuse, never reading this process's fds", async () => {
    const L = layout();
    writeFileSync(`${L.merged}.txt`, "");
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, strategy: "legacy" });
    writeFileSync(`${L.merged}/new`, "x");
    for (const call of [() => overlay.diff(L.merged), () => overlay.which(`${L.merged}/checked`)]) {
      await expect(call()).rejects.toMatchObject({ code: "EINVAL", message: expect.stringMatching(/by a file descriptor of the process that mounted it/) });
    }
    expect(await overlay.diff({ upper: m.upper!, lower: m.lower })).toEqual([{ path: "/new", change: "A" }]);
    await m.unmount();
  });

  it("a symlinked target is followed the same way under every strategy", async () => {
    const L = layout();
    const link = s.path("link");
    symlinkSync(L.merged, link);
    for (const strategy of strategies) {
      const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: link, strategy });
      expect([strategy, m.target]).toEqual([strategy, L.merged]);
      expect(readdirSync(L.merged)).toEqual(["checked"]);
      await m.unmount();
    }
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("`lnk/..` is resolved as the kernel resolves it (the parent of the link's target), not as text", async () => {
    const L = layout();
    const [deep] = s.dirs("x/y/z");
    writeFileSync(s.path("x/y/in-y"), "");
    symlinkSync(deep!, s.path("lnk"));
    const m = await overlay.mount({ lower: [`${s.dir}/lnk/..`, L.l1], target: L.merged }); // (path.join would fold it)
    expect(m.lower[0]).toBe(s.path("x/y"));
    expect(readdirSync(L.merged).sort()).toEqual(["checked", "in-y", "z"]);
    await m.unmount();
  });
});

describe("a handle unmounts exactly its own mount", () => {
  it("refuses when another mount covers its target, and works once that is gone", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    execFileSync("mount", ["-t", "tmpfs", "cover", L.merged]);
    await expect(m.unmount()).rejects.toMatchObject({ code: "EBUSY", message: expect.stringMatching(/another mount now covers/) });
    expect(mountsUnder(L.merged).map((r) => r.fstype)).toEqual(["overlay", "tmpfs"]);
    await expect(m[Symbol.asyncDispose]()).rejects.toMatchObject({ code: "EBUSY" });
    execFileSync("umount", [L.merged]);
    await m.unmount();
    expect(mountsUnder(s.dir)).toEqual([]);
    await m[Symbol.asyncDispose](); // already gone: nothing to do
    await expect(m.unmount()).rejects.toMatchObject({ code: "EINVAL", message: expect.stringMatching(/no longer mounted/) });
  });

  it("follows its mount when the directory above it was renamed, and never unmounts what its old path now leads to", async () => {
    const L = layout();
    const [t] = s.dirs("p/t");
    const m = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: t! });
    renameSync(s.path("p"), s.path("p2"));
    s.dirs("p/t");
    execFileSync("mount", ["-t", "tmpfs", "other", t!]);
    m.unmountSync();
    expect(mountsUnder(s.dir).map((r) => [r.target, r.fstype])).toEqual([[t, "tmpfs"]]);
  });

  it("unmountSync() and umountSync() are the same calls on this thread", async () => {
    const L = layout();
    const m = overlay.mountSync({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    expect(m).toBeInstanceOf(overlay.MountedOverlay);
    expect(readdirSync(L.merged)).toEqual(["checked"]);
    expect(() => overlay.mountSync({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged, refuseInUse: true })).toThrow(
      expect.objectContaining({ code: "EBUSY" }),
    );
    overlay.umountSync(L.merged);
    expect(mountsUnder(s.dir)).toEqual([]);
    const p = overlay.mountSync([L.l1], L.upper, L.work, L.merged);
    p.unmountSync();
    expect(() => overlay.umountSync(L.merged)).toThrow(expect.objectContaining({ code: "EINVAL", syscall: "umount2" }));
  });
});

describe("an upper or work directory a mounted overlay already uses", () => {
  it("with refuseInUse, is refused with EBUSY naming the other mount, before the kernel would wipe that mount's work dir", async () => {
    const L = layout();
    const [m2, work2, upper2] = s.dirs("m2", "work2", "upper2");
    const first = await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: L.merged });
    writeFileSync(`${L.work}/work/in-flight`, "a copy-up in progress");
    for (const [upper, work, which] of [
      [L.upper, work2!, "upper layer"],
      [upper2!, L.work, "work directory"],
    ] as const) {
      const err = await overlay.mount({ lower: [L.l1], upper, work, target: m2!, refuseInUse: true }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "EBUSY", errno: -16, syscall: "mount" });
      expect((err as Error).message).toContain(`${which} '${which === "upper layer" ? L.upper : L.work}' is already the ${which} of the overlay mounted at '${L.merged}'`);
    }
    expect(readFileSync(`${L.work}/work/in-flight`, "utf8")).toBe("a copy-up in progress");
    expect(mountsUnder(m2!)).toEqual([]);
    await first.unmount();
  });
});

describe("the kernel log, by position", () => {
  // /dev/kmsg is readable by real root only; CI runs as real root, so this never skips there.
  const skip = !realRoot && !process.env.CI;
  if (skip) console.log("skipping the kernel-log test: /dev/kmsg needs real root (run `npm test` as root)");
  it.skipIf(skip)("reads only what was written after the call started; warnings of a mount that succeeded reach the caller", async () => {
    const marker = `overlayfs: ovl-test old line ${process.pid}-${Date.now()}`;
    writeFileSync("/dev/kmsg", `${marker}\n`);
    const [b1, b2, u1, w1, m1, u2, w2, m2, u3, w3, m3] = s.dirs("b1", "b2", "u1", "w1", "m1", "u2", "w2", "m2", "u3", "w3", "m3");
    await overlay.mount({ lower: [b1!, b2!], upper: u1!, work: w1!, target: m1! });
    await overlay.mount({ lower: [m1!], upper: u2!, work: w2!, target: m2! });
    const err = (await overlay.mount({ lower: [m2!], upper: u3!, work: w3!, target: m3! }).catch((e: unknown) => e)) as overlay.OverlayError;
    expect(err.kernelMessages).toEqual(["maximum fs stacking depth exceeded"]);
    // A successful mount whose layers are on different filesystems, with xino=on: overlay says so in the log.
    const [t] = s.dirs("t");
    execFileSync("mount", ["-t", "tmpfs", "t", t!]);
    mkdirSync(`${t}/lower`);
    const m = await overlay.mount({ lower: [`${t}/lower`], upper: u3!, work: w3!, target: m3!, options: { xino: "on" } });
    expect(m.warnings.join("\n")).toMatch(/xino/);
    expect(m.warnings.join("\n")).not.toContain("ovl-test old line");
    await m.unmount();
  });
});

describe("the watcher ends with its environment", () => {
  const dist = fileURLToPath(new URL("../dist/index.js", import.meta.url));
  it("a process that exits, or a worker thread that ends, with watch() still open does not crash", () => {
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { Worker, isMainThread } from "node:worker_threads";
      const w = overlay.watch();
      await w.ready;
      const worker = new Worker(\`
        const { watch } = await import(${JSON.stringify(dist)});
        const w = watch(); await w.ready; w.next(); // left waiting
        process.exit(0);\`, { eval: true, type: "module" });
      await new Promise((resolve, reject) => { worker.on("exit", resolve); worker.on("error", reject); });
      const again = new Worker(\`const { watch } = await import(${JSON.stringify(dist)}); const w = watch(); await w.ready;\`, { eval: true });
      await new Promise((resolve) => again.on("exit", resolve));
      w.next();
      setTimeout(() => process.exit(0), 50);`;
    for (let i = 0; i < 5; i++) {
      const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
      expect([r.status, r.signal, r.stderr]).toEqual([0, null, ""]);
    }
  });
});

describe("bad arguments found by fuzzing get a Node-style error before any system call", () => {
  it("sparse lowers, options with prototype keys, 100,000 lowers, '/' as a lower, parseMountInfo(42)", async () => {
    const L = layout();
    const base = { upper: L.upper, work: L.work, target: L.merged };
    const fds = openFdCount();
    // eslint-disable-next-line no-sparse-arrays
    await expect(overlay.mount({ ...base, lower: [, L.l1] as string[] })).rejects.toMatchObject({
      code: "ERR_INVALID_ARG_VALUE",
      message: expect.stringMatching(/spec\.lower\[0\].*sparse/),
    });
    for (const options of [JSON.parse('{"__proto__": {}}'), { constructor: true }, JSON.parse('{"toString": 1}')]) {
      await expect(overlay.mount({ ...base, lower: [L.l1], options })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    }
    await expect(overlay.mount({ ...base, lower: new Array(100_000).fill(L.l1) })).rejects.toMatchObject({
      code: "ERR_INVALID_ARG_VALUE",
      message: expect.stringMatching(/at most 500 layers/),
    });
    await expect(overlay.mount({ ...base, lower: new Array(400).fill(L.l1), data: new Array(101).fill(L.l1) })).rejects.toMatchObject({
      code: "EINVAL",
      message: expect.stringMatching(/more than the kernel's 500/),
    });
    const root = await overlay.mount({ ...base, lower: ["/"] }).catch((e: unknown) => e);
    expect((root as Error).message).not.toMatch(/'\/' is inside lower layer 1 '\/'/);
    expect(root).toMatchObject({ code: "ELOOP", message: expect.stringMatching(/upper layer '.*' is inside lower layer '\/'/) });
    expect(() => overlay.parseMountInfo(42 as unknown as string)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(openFdCount()).toBe(fds);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("which() of a file whose lower layer's own mount went away: the layers and the overlay disagree (EIO)", async () => {
    const [lmount, l2, merged] = s.dirs("lmount", "l2", "merged");
    execFileSync("mount", ["-t", "tmpfs", "lower", lmount!]);
    writeFileSync(`${lmount}/only-here`, "x");
    await overlay.mount({ lower: [lmount!, l2!], target: merged! });
    execFileSync("umount", ["-l", lmount!]);
    expect(existsSync(`${merged}/only-here`)).toBe(true);
    await expect(overlay.which(`${merged}/only-here`)).rejects.toMatchObject({
      code: "EIO",
      message: expect.stringMatching(/the layers and the overlay disagree/),
    });
    expect(realpathSync(merged!)).toBe(merged);
    expect(rawMounts().some((r) => r.target === merged)).toBe(true);
  });
});
