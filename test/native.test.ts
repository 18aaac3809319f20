import fc from "fast-check";
import { closeSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { addonCandidates, native, type NativeAddon } from "../src/kernel/native.js";
import { requirePrivateMountNamespace } from "./helpers.js";

let addon: NativeAddon;
beforeAll(() => {
  requirePrivateMountNamespace();
  addon = native();
});

/** A call either throws a TypeError/RangeError at once or returns a promise; it never takes the process down. */
async function callSafely(fn: () => unknown): Promise<"threw" | "settled"> {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    expect(e).toSatisfy((err: unknown) => err instanceof TypeError || err instanceof RangeError);
    return "threw";
  }
  expect(result).toBeInstanceOf(Promise);
  await (result as Promise<unknown>).then(
    () => undefined,
    (failure: unknown) => expect(failure).toMatchObject({ errno: expect.any(Number), syscall: expect.any(String) }),
  );
  return "settled";
}

const notString = fc.anything().filter((v) => typeof v !== "string");
const notNumber = fc.anything().filter((v) => typeof v !== "number");

describe("the native addon refuses bad arguments without crashing", () => {
  it("mount() and umount() with a wrong type anywhere throw TypeError and call nothing", async () => {
    let calls = 0;
    await fc.assert(
      fc.asyncProperty(notString, fc.anything(), fc.anything(), notNumber, async (bad, a, b, flags) => {
        calls++;
        expect(await callSafely(() => (addon.mount as Function)(bad, 0, a, b, 0, null))).toBe("threw");
        expect(await callSafely(() => (addon.mount as Function)("none", 0, "/nonexistent-ovl", "overlay", flags, null))).toBe("threw");
        expect(await callSafely(() => (addon.mount as Function)("none", flags, "/nonexistent-ovl", "overlay", 0, null))).toBe("threw");
        expect(await callSafely(() => (addon.umount as Function)(bad, 0))).toBe("threw");
        expect(await callSafely(() => (addon.umount as Function)("/nonexistent-ovl", flags))).toBe("threw");
      }),
      { numRuns: 300 },
    );
    expect(calls).toBe(300);
  });

  it("fsMount() with any steps, flags or target never crashes (probes only: no target)", async () => {
    const step = fc.oneof(
      fc.anything(),
      fc.tuple(fc.oneof(fc.constantFrom(0, 1, 5, 2, -1, 1.5, NaN), fc.anything()), fc.oneof(fc.string(), fc.anything()), fc.oneof(fc.string(), fc.anything())),
    );
    const outcomes = { threw: 0, settled: 0 };
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.array(step, { maxLength: 6 }), fc.anything()), fc.anything(), async (steps, attr) => {
        outcomes[await callSafely(() => (addon.fsMount as Function)("overlay", steps, attr, null))]++;
        outcomes[await callSafely(() => (addon.fsMount as Function)("overlay", steps, 0, null))]++;
      }),
      { numRuns: 400 },
    );
    expect(outcomes.threw).toBeGreaterThan(0);
    expect(outcomes.settled).toBeGreaterThan(0);
  });

  it("openPaths(), umountAt(), statMount(), mountId(), readText() and MountWatcher take any input", async () => {
    const closeOpened = (r: unknown) => {
      for (const p of (r as { paths?: { fd?: number }[] } | undefined)?.paths ?? []) if (p.fd !== undefined) closeSync(p.fd);
    };
    await fc.assert(
      fc.asyncProperty(fc.anything(), fc.anything(), async (x, y) => {
        await callSafely(() => (addon.openPaths as Function)(x));
        await callSafely(() => (addon.openPaths as Function)([x, "/", y]));
        await callSafely(() => (addon.openPaths as Function)(["/", "/proc"], x, y));
        await callSafely(() => (addon.openPaths as Function)(["/"], [0], [[0, x]], y));
        try {
          closeOpened((addon.openPathsSync as Function)(["/", "/proc"], [0], [[0, "proc"], [1, y]], x));
        } catch (e) {
          expect(e).toSatisfy((err: unknown) => err instanceof TypeError || err instanceof RangeError);
        }
        await callSafely(() => (addon.umountAt as Function)(x, y, 1, 0));
        await callSafely(() => (addon.umountAt as Function)("/nonexistent-ovl", "x", x, y));
        await callSafely(() => (addon.statMount as Function)(x));
        await callSafely(() => (addon.mountId as Function)(x, y));
        await callSafely(() => (addon.readText as Function)(x));
        try {
          const w = new (addon.MountWatcher as unknown as new (p: unknown) => { next(t: unknown): Promise<unknown>; close(): void })(x);
          await callSafely(() => w.next(y)).catch(() => undefined);
          w.close();
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
        }
      }),
      { numRuns: 300 },
    );
    expect(await callSafely(() => addon.openPaths(new Array(1e7)))).toBe("threw");
    expect(await callSafely(() => addon.umountAt("/", "a/b", 1, 0))).toBe("threw");
    expect(await callSafely(() => addon.umountAt("/", "..", 1, 0))).toBe("threw");
    expect(await callSafely(() => addon.statMount(2 ** 60))).toBe("threw");
    expect(await callSafely(() => addon.mountId("/a\0b", true))).toBe("threw");
  });

  it("newUserns(), namespaceType(), openNamespace() and cloneIdmapped() take any input, and leave no fd or child", async () => {
    const { readdirSync, readFileSync } = await import("node:fs");
    const fds = readdirSync("/proc/self/fd").length;
    const children = () => readFileSync(`/proc/self/task/${process.pid}/children`, "utf8").trim();
    const before = children();
    // What a call that happened to succeed handed over (an fd, or clone fds), closed again.
    const closeResult = async (p: unknown) => {
      const r = await Promise.resolve(p).catch(() => undefined);
      for (const fd of Array.isArray(r) ? r : typeof r === "number" ? [r] : typeof (r as { fd?: number })?.fd === "number" ? [(r as { fd: number }).fd] : []) closeSync(fd as number);
    };
    const safely = async (fn: () => unknown) => {
      let result: unknown;
      const outcome = await callSafely(() => (result = fn()));
      if (outcome === "settled") await closeResult(result);
    };
    await fc.assert(
      fc.asyncProperty(fc.anything(), fc.anything(), fc.anything(), async (x, y, z) => {
        await safely(() => (addon.newUserns as Function)(x, y, z));
        await safely(() => (addon.newUserns as Function)("0 100000 1\n", x, false));
        await safely(() => (addon.namespaceType as Function)(x));
        await safely(() => (addon.openNamespace as Function)(x));
        await safely(() => (addon.cloneIdmapped as Function)(x, y));
        await safely(() => (addon.cloneIdmapped as Function)([x], 0));
      }),
      { numRuns: 200 },
    );
    expect(await callSafely(() => addon.cloneIdmapped(new Array(1e7), 0))).toBe("threw");
    expect(await callSafely(() => addon.openNamespace("/proc/self/ns/user\0x"))).toBe("threw");
    expect(readdirSync("/proc/self/fd").length).toBe(fds);
    expect(children()).toBe(before);
  });

  it("readText() reads a whole /proc file, as Node's own reader does, in one call", async () => {
    const { readFileSync } = await import("node:fs");
    expect(await addon.readText("/proc/self/mountinfo")).toBe(readFileSync("/proc/self/mountinfo", "utf8"));
    await expect(addon.readText("/nonexistent-ovl")).rejects.toMatchObject({ errno: 2, syscall: "open", path: "/nonexistent-ovl" });
  });

  it("the loader names every place it looked when ovl.node is missing", async () => {
    const tried = addonCandidates("/nowhere/dist/kernel");
    expect(tried).toContain("/nowhere/build/Release/ovl.node");
    const { execFileSync } = await import("node:child_process");
    const script = `
      import { native } from ${JSON.stringify(new URL("../dist/kernel/native.js", import.meta.url).pathname)};
      try { native(); console.log("loaded"); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, tried: e.tried })); }`;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
      encoding: "utf8",
      env: { ...process.env, OVL_NATIVE_PATH: "/nonexistent/ovl.node" },
    });
    // With OVL_NATIVE_PATH pointing nowhere the real build is still found after it.
    expect(out.trim()).toBe("loaded");
    const copy = `${process.env.TMPDIR ?? "/tmp"}/ovl-loader-${process.pid}`;
    execFileSync("mkdir", ["-p", `${copy}/dist/kernel`]);
    execFileSync("cp", [new URL("../dist/kernel/native.js", import.meta.url).pathname, `${copy}/dist/kernel/native.js`]);
    try {
      const { OVL_NATIVE_PATH: _, ...envWithout } = process.env;
      const missing = JSON.parse(
        execFileSync(process.execPath, ["--input-type=module", "-e", script.replace(new URL("../dist/kernel/native.js", import.meta.url).pathname, `${copy}/dist/kernel/native.js`)], {
          encoding: "utf8",
          env: envWithout,
        }),
      );
      expect(missing.code).toBe("ERR_OVL_NATIVE_MISSING");
      expect(missing.tried).toEqual([`${copy}/build/Release/ovl.node`, `${copy}/build/Debug/ovl.node`]);
      for (const p of missing.tried) expect(missing.message).toContain(p);
      expect(missing.message).toMatch(/npm rebuild/);
    } finally {
      execFileSync("rm", ["-rf", copy]);
    }
  });
});
