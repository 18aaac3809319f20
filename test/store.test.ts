import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { openStore, type Store } from "../src/store/index.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
let store: Store;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(async () => {
  s = scratch("ovl-store-");
  store = await openStore(s.path("store"), { create: true });
});
afterEach(() => {
  store.close();
  s.cleanup();
});

describe("the snapshot store: containerd's model", () => {
  it("prepare, mount, write, commit, a child on it sees the parent's files; views are read-only stacks", async () => {
    const m0 = await store.prepare("base-active", undefined, { labels: { a: "1" } });
    expect(m0.lower).toHaveLength(1); // the store's empty directory under an active snapshot with no parent
    const t = s.dirs("m")[0]!;
    let m = await overlay.mount({ ...(m0 as { lower: string[]; upper: string; work: string }), target: t });
    writeFileSync(join(t, "from-base"), "base");
    await m.unmount();
    await store.commit("base", "base-active");
    expect((await store.stat("base")).kind).toBe("committed");
    await expect(store.stat("base-active")).rejects.toMatchObject({ code: "ERR_OVL_STORE_NOT_FOUND" });

    const m1 = await store.prepare("child", "base");
    expect(m1.lower).toEqual([await store.dir("base")]);
    m = await overlay.mount({ ...(m1 as { lower: string[]; upper: string; work: string }), target: t });
    expect(readFileSync(join(t, "from-base"), "utf8")).toBe("base");
    writeFileSync(join(t, "from-child"), "child");
    await m.unmount();
    await store.commit("child-c", "child");

    const v = await store.view("v", "child-c");
    expect(v.upper).toBeUndefined();
    expect(v.lower).toEqual([await store.dir("child-c"), await store.dir("base")]);
    m = await overlay.mount({ lower: v.lower, target: t });
    expect(readdirSync(t).sort()).toEqual(["from-base", "from-child"]);
    await m.unmount();
    expect((await store.stat("v")).parent).toBe("child-c");
  });

  it("says what is wrong, naming the key and the rule", async () => {
    await store.prepare("a");
    await expect(store.prepare("a")).rejects.toMatchObject({ code: "ERR_OVL_STORE_EXISTS", key: "a" });
    await expect(store.prepare("b", "a")).rejects.toThrow(/parent 'a' is active: only a committed snapshot can be a parent/);
    await expect(store.prepare("b", "nope")).rejects.toMatchObject({ code: "ERR_OVL_STORE_NOT_FOUND" });
    await store.commit("a-c", "a");
    await expect(store.commit("x", "a-c")).rejects.toMatchObject({ code: "ERR_OVL_STORE_KIND" });
    await expect(store.mounts("a-c")).rejects.toMatchObject({ code: "ERR_OVL_STORE_KIND" });
    await store.prepare("c1", "a-c");
    await store.view("c2", "a-c");
    await expect(store.remove("a-c")).rejects.toThrow(/snapshot 'a-c' has 2 children: remove them first/);
    await expect(store.prepare("")).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(store.prepare("x\0y")).rejects.toThrow(/NUL/);
    await store.remove("c1");
    await store.remove("c2");
    await store.remove("a-c");
    expect(await store.list()).toEqual([]);
    expect(readdirSync(join(store.root, "snapshots"))).toEqual([]);
  });

  it("labels with containerd's field paths; list and walk with filters; usage", async () => {
    await store.prepare("p", undefined, { labels: { team: "x", keep: "1" } });
    writeFileSync(join(await store.dir("p"), "f"), Buffer.alloc(10000));
    expect((await store.usage("p")).inodes).toBe(2);
    await store.commit("p-c", "p");
    await store.prepare("q", "p-c", { labels: { team: "y" } });
    expect((await store.update({ key: "q", labels: { team: "z", extra: "e" } }, ["labels.team"])).labels).toEqual({ team: "z" });
    expect((await store.update({ key: "q", labels: { only: "this" } })).labels).toEqual({ only: "this" });
    expect((await store.update({ key: "q", labels: {} }, ["labels.only"])).labels).toEqual({});
    await expect(store.update({ key: "q" }, ["parent"])).rejects.toThrow(/only labels/);
    expect((await store.list(["kind==committed"])).map((i) => i.key)).toEqual(["p-c"]);
    expect((await store.list(["parent==p-c"])).map((i) => i.key)).toEqual(["q"]);
    expect((await store.list(["labels.team==x,kind==committed"])).map((i) => i.key)).toEqual(["p-c"]);
    expect((await store.list(["labels.keep", "name==q"])).map((i) => i.key).sort()).toEqual(["p-c", "q"]);
    expect((await store.list(['labels."team"~=^x$'])).map((i) => i.key)).toEqual(["p-c"]);
    const seen: string[] = [];
    await store.walk((i) => void seen.push(i.key), ["kind!=committed"]);
    expect(seen).toEqual(["q"]);
    const u = await store.usage("p-c");
    expect(u.inodes).toBe(2);
    expect(u.size).toBeGreaterThanOrEqual(10000);
  });

  it("refuses a chain deeper than the kernel's 500 layers", async () => {
    let parent: string | undefined;
    for (let i = 0; i < 500; i++) {
      await store.prepare(`a${i}`, parent);
      await store.commit(`c${i}`, `a${i}`);
      parent = `c${i}`;
    }
    expect((await store.prepare("ok", "c498")).lower).toHaveLength(499);
    expect((await store.prepare("ok2", "c499")).lower).toHaveLength(500);
    await store.commit("c500", "ok2"); // 501 layers: a snapshot, but nothing can be mounted on it
    await expect(store.prepare("too-deep", "c500")).rejects.toMatchObject({ code: "ERR_OVL_STORE_DEPTH", key: "c500" });
    await expect(store.view("too-deep", "c500")).rejects.toThrow(/at most 500 lower layers/);
  }, 60_000);

  it("cleanup() removes what no row names, and nothing else", async () => {
    await store.prepare("kept");
    const snaps = join(store.root, "snapshots");
    mkdirSync(join(snaps, "999"));
    mkdirSync(join(snaps, "rm-5-1-2"));
    mkdirSync(join(snaps, "new-999999999-abc")); // a prepare of a process that is gone
    const { removed } = await store.cleanup();
    expect(removed.length).toBe(3);
    expect(readdirSync(snaps)).toEqual(["1"]);
    expect(existsSync(await store.dir("kept"))).toBe(true);
    expect(await store.check()).toEqual([]);
  });

  it("images: records naming committed chains", async () => {
    await store.prepare("a");
    await store.commit("sha256:aa", "a");
    await expect(store.putImage("img", { manifestDigest: "m", configDigest: "c", config: {}, chainIds: ["sha256:zz"] })).rejects.toMatchObject({ code: "ERR_OVL_STORE_NOT_FOUND" });
    await store.putImage("img", { manifestDigest: "m", configDigest: "c", config: { x: 1 }, chainIds: ["sha256:aa"] });
    expect(await store.getImage("img")).toMatchObject({ name: "img", config: { x: 1 }, chainIds: ["sha256:aa"] });
    expect((await store.listImages()).map((i) => i.name)).toEqual(["img"]);
    expect(await store.removeImage("img")).toBe(true);
    expect(await store.removeImage("img")).toBe(false);
  });
});

/** The driver runs the built store (dist/, which `npm test` builds first). */
const driver = fileURLToPath(new URL("./fixtures/store/driver.mjs", import.meta.url));
const tsx: string[] = [];

/** Runs the driver (a loop of store operations, each logged before and after) for `ms`, then SIGKILLs it. */
function runAndKill(root: string, log: string, ms: number, seed: number): Promise<void> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [...tsx, driver, root, log, String(seed)], { stdio: "ignore" });
    setTimeout(() => c.kill("SIGKILL"), ms);
    c.on("exit", () => resolve());
  });
}

/** Every row has its directory, every parent is committed, and after cleanup no directory lacks a row. */
async function checkConsistent(st: Store): Promise<void> {
  expect(await st.check()).toEqual([]);
  for (const i of await st.list()) if (i.parent !== undefined) expect((await st.stat(i.parent)).kind).toBe("committed");
  await st.cleanup();
  const rows = (await st.list()).length;
  expect(readdirSync(join(st.root, "snapshots")).filter((n) => /^\d+$/.test(n)).length).toBe(rows);
  expect(readdirSync(join(st.root, "snapshots")).filter((n) => !/^\d+$/.test(n))).toEqual([]);
}

describe("crashes and concurrency", () => {
  it("kill -9 at random points of prepare, commit and remove: the store reopens consistent, orphans are reclaimed", async () => {
    const root = s.path("crash-store");
    const log = s.path("ops.log");
    const interrupted: Record<string, number> = {};
    for (let round = 0; round < 40; round++) {
      writeFileSync(log, "");
      await runAndKill(root, log, 150 + ((round * 37) % 250), round);
      const lines = readFileSync(log, "utf8").trim().split("\n").filter(Boolean);
      const last = lines[lines.length - 1];
      // The kill landed inside an operation when its last line is a "begin".
      if (last?.startsWith("begin ")) interrupted[last.split(" ")[1]!] = (interrupted[last.split(" ")[1]!] ?? 0) + 1;
      const st = await openStore(root);
      try {
        await checkConsistent(st);
      } finally {
        st.close();
      }
    }
    console.log(`store crash test: kills inside an operation: ${JSON.stringify(interrupted)}`);
    // Proof that the kills raced the operations, not only the gaps between them.
    for (const op of ["prepare", "commit", "remove"]) expect(interrupted[op] ?? 0).toBeGreaterThan(0);
  }, 120_000);

  it("two processes at once on one store corrupt nothing", async () => {
    const root = s.path("shared-store");
    const runFor = (seed: number) =>
      new Promise<number>((resolve) => {
        const c = spawn(process.execPath, [...tsx, driver, root, s.path(`log${seed}`), String(seed), "300"], { stdio: ["ignore", "ignore", "pipe"] });
        let err = "";
        c.stderr.on("data", (d) => (err += d));
        c.on("exit", (code) => {
          if (code !== 0) console.error(err);
          resolve(code ?? -1);
        });
      });
    expect(await Promise.all([runFor(1), runFor(2)])).toEqual([0, 0]);
    const ops = ["log1", "log2"].map((l) => readFileSync(s.path(l), "utf8").split("\n").filter((x) => x.startsWith("end ")).length);
    expect(ops[0]).toBe(300);
    expect(ops[1]).toBe(300);
    const st = await openStore(root);
    try {
      await checkConsistent(st);
    } finally {
      st.close();
    }
  }, 120_000);
});
