/**
 * The snapshot store under SIGKILL and under two processes at once. A driver process
 * (test/fixtures/store/driver.mjs) runs random operations on a store and logs `begin`/`end` around each;
 * the tests kill it at random instants, reopen the store, and check that it is consistent and that the
 * interrupted operation left exactly the state before it or the state after it. Each case also proves it
 * did what it claims: every kind of operation was interrupted (crash), the two processes' operations
 * overlapped in time (concurrency).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { mount } from "../src/index.js";
import { openStore, type SnapshotInfo, type Store } from "../src/store/index.js";
import { killChild, mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const driver = fileURLToPath(new URL("./fixtures/store/driver.mjs", import.meta.url));
const builtStore = fileURLToPath(new URL("../dist/store/index.js", import.meta.url));

let s: Scratch;
const children: ChildProcess[] = [];

beforeAll(() => {
  requirePrivateMountNamespace();
  if (!existsSync(builtStore)) throw new Error(`${builtStore} is missing: the driver runs the built store; use \`npm test\` (it builds dist/ first)`);
});
beforeEach(() => {
  s = scratch("store-");
});
afterEach(async () => {
  for (const c of children.splice(0)) await killChild(c);
  s.cleanup();
});

interface LogLine {
  ms: number;
  what: "ready" | "begin" | "end" | "fail" | "done";
  op: string;
  args: string[];
}

function readLog(file: string): LogLine[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      const [ms, what, op = "", ...rest] = l.split(" ");
      // `fail OP CODE ARGS...`: the code is not an argument.
      const args = what === "fail" ? rest.slice(1) : rest;
      return { ms: Number(ms), what: what as LogLine["what"], op, args };
    });
}

/** The operation a log ends inside (a `begin` with no `end`/`fail` after it), if any. */
function interrupted(log: LogLine[]): LogLine | undefined {
  let open: LogLine | undefined;
  for (const l of log) {
    if (l.what === "begin") open = l;
    else if (l.what === "end" || l.what === "fail") open = undefined;
  }
  return open;
}

function startDriver(root: string, log: string, prefix: string, seed: number, ops?: number): ChildProcess {
  const args = [driver, root, log, prefix, String(seed), ...(ops !== undefined ? [String(ops)] : [])];
  const c = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
  children.push(c);
  return c;
}

function exited(c: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = "";
  c.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => c.once("exit", (code, signal) => resolve({ code, signal, stderr })));
}

/**
 * Everything that must hold of a store at rest: every row has its directory, every parent is committed,
 * SQLite finds its file intact, cleanup() removes exactly what check() calls orphans, and afterwards the
 * entries of snapshots/ are the rows' ids and nothing else. Returns what cleanup() removed.
 */
async function checkConsistent(store: Store, root: string): Promise<string[]> {
  const db = new Database(join(root, "metadata.db"), { readonly: true });
  try {
    expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
    expect(db.pragma("foreign_key_check")).toEqual([]);
  } finally {
    db.close();
  }
  const all = await store.list();
  const byKey = new Map(all.map((i) => [i.key, i]));
  for (const info of all) {
    if (info.parent !== undefined) expect(byKey.get(info.parent)?.kind, `parent of ${info.key}`).toBe("committed");
  }
  const before = await store.check();
  expect(before.missing).toEqual([]);
  expect(before.empty).toBeUndefined();
  const { removed } = await store.cleanup();
  expect(removed.sort()).toEqual(before.orphans.sort());
  const after = await store.check();
  expect(after).toEqual({ missing: [], orphans: [] });
  const ids = new Set<string>();
  for (const info of all) ids.add(String(Number((await store.dir(info.key)).split("/").at(-2))));
  expect(readdirSync(join(root, "snapshots")).sort()).toEqual([...ids].sort());
  expect(readdirSync(join(root, "empty"))).toEqual([]);
  return removed;
}

/** Whether the interrupted operation left the state before it ("before") or after it ("after"); throws otherwise. */
function outcome(op: LogLine, byKey: Map<string, SnapshotInfo>): "before" | "after" {
  const [key, second] = op.args;
  const k = byKey.get(key!);
  switch (op.op) {
    case "prepare": {
      if (!k) return "before";
      expect(k.kind).toBe("active");
      expect(k.parent).toBe(second);
      return "after";
    }
    case "commit": {
      const named = byKey.get(second!);
      if (k) {
        expect(k.kind, `commit ${key} -> ${second}: still there`).toBe("active");
        expect(named, `commit ${key} -> ${second}: both there`).toBeUndefined();
        return "before";
      }
      expect(named?.kind, `commit ${key} -> ${second}: neither there`).toBe("committed");
      expect(named!.labels).toEqual({ committed: "yes" });
      return "after";
    }
    case "remove":
      return k ? "before" : "after";
    default:
      return "after"; // write, cleanup: no before/after in the rows
  }
}

describe("crashes", () => {
  it("SIGKILL at random instants: the store reopens consistent, the operation done or not, orphans reclaimed", async () => {
    const root = s.path("store");
    (await openStore(root)).close();
    const kinds = ["prepare", "commit", "remove"] as const;
    const interruptedBy: Record<string, { before: number; after: number }> = {};
    const reclaimed = { "new-*": 0, "<id>": 0, "rm-*": 0 };
    const windows: Record<string, number> = {};
    let kills = 0;
    let idle = 0;
    let ops = 0;
    const minIterations = 40;
    let seed = Number(process.env.OVL_STORE_CRASH_SEED ?? Date.now() % 1_000_000);
    const firstSeed = seed;
    for (let i = 0; i < 300; i++) {
      // Until each kind was interrupted twice, and the two narrow windows of the design were each hit: a
      // prepare between its rename and its COMMIT, a remove between its COMMIT and its rename.
      const enough =
        kinds.every((k) => (interruptedBy[k]?.before ?? 0) + (interruptedBy[k]?.after ?? 0) >= 2) &&
        (windows["prepare/before/<id>"] ?? 0) >= 1 &&
        (windows["remove/after/<id>"] ?? 0) >= 1;
      if (i >= minIterations && enough) break;
      const log = s.path(`log-${i}`);
      const child = startDriver(root, log, `i${i}-`, ++seed);
      const done = exited(child);
      // Kill only once it runs operations (not while Node starts), at a random instant after that.
      for (let t = 0; !readLog(log).some((l) => l.what === "ready"); t++) {
        if (t > 1000) throw new Error(`driver ${i} did not start: ${(await Promise.race([done, sleep(1).then(() => undefined)]))?.stderr}`);
        await sleep(5);
      }
      await sleep(10 + Math.random() * 250);
      const r = await Promise.race([done, sleep(0).then(() => undefined)]);
      if (r) throw new Error(`driver ${i} ended by itself (code ${r.code}): ${r.stderr}`);
      child.kill("SIGKILL");
      const end = await done;
      expect(end.signal).toBe("SIGKILL");
      kills++;
      const lines = readLog(log);
      ops += lines.filter((l) => l.what === "end").length;
      const op = interrupted(lines);

      const store = await openStore(root);
      try {
        const all = await store.list();
        const byKey = new Map(all.map((x) => [x.key, x]));
        const o = op && outcome(op, byKey);
        if (op && o) (interruptedBy[op.op] ??= { before: 0, after: 0 })[o]++;
        else idle++;
        const removed = await checkConsistent(store, root);
        const kindsLeft = new Set<string>();
        for (const name of removed) {
          const kind = name.startsWith("new-") ? "new-*" : name.startsWith("rm-") ? "rm-*" : "<id>";
          reclaimed[kind]++;
          kindsLeft.add(kind);
        }
        // Which instant the kill hit, as far as what it left tells: e.g. "prepare/before/<id>" is a kill
        // between a prepare's rename and its COMMIT, "remove/after/<id>" one between COMMIT and the rename.
        if (op && kindsLeft.size > 0) {
          const w = `${op.op}/${o}/${[...kindsLeft].sort().join("+")}`;
          windows[w] = (windows[w] ?? 0) + 1;
        }
        // What is left mounts: one active snapshot's spec, as the kernel takes it.
        const active = all.filter((x) => x.kind === "active");
        if (active.length > 0) {
          const target = s.dirs(`mnt-${i}`)[0]!;
          const m = await mount({ ...(await store.mounts(active[i % active.length]!.key)), target });
          await m.unmount();
        }
      } finally {
        store.close();
      }
    }
    const figures = { firstSeed, kills, opsCompleted: ops, idleKills: idle, interruptedBy, reclaimed, windows };
    console.log(`store crash test: ${JSON.stringify(figures)}`);
    // It raced: every kind of operation was caught in the middle, some more than once.
    for (const k of kinds) {
      const n = interruptedBy[k];
      expect((n?.before ?? 0) + (n?.after ?? 0), `${k} interrupted (${JSON.stringify(figures)})`).toBeGreaterThanOrEqual(1);
    }
    expect(windows["prepare/before/<id>"], JSON.stringify(figures)).toBeGreaterThanOrEqual(1);
    expect(windows["remove/after/<id>"], JSON.stringify(figures)).toBeGreaterThanOrEqual(1);
    expect(kills).toBeGreaterThanOrEqual(minIterations);
    expect(mountsUnder(s.dir)).toEqual([]);
  }, 600_000);
});

describe("two processes at once", () => {
  it("run many operations on one store concurrently: no SQLITE_BUSY, no error but the store's refusals, consistent after", async () => {
    // Both make the store too: neither is started after the other has created it.
    const root = s.path("store");
    const n = 250;
    const logs = [s.path("log-a"), s.path("log-b")];
    const runs = [startDriver(root, logs[0]!, "A", 11, n), startDriver(root, logs[1]!, "B", 22, n)].map(exited);
    const results = await Promise.all(runs);
    for (const r of results) {
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
    }
    const [a, b] = logs.map(readLog) as [LogLine[], LogLine[]];
    for (const l of [a, b]) {
      expect(l.at(-1)!.what).toBe("done");
      expect(l.filter((x) => x.what === "end" || x.what === "fail")).toHaveLength(n);
    }
    // It raced: intervals of A's operations that overlap one of B's.
    const intervals = (l: LogLine[]) => {
      const out: [number, number][] = [];
      let start: number | undefined;
      for (const x of l) {
        if (x.what === "begin") start = x.ms;
        else if ((x.what === "end" || x.what === "fail") && start !== undefined) out.push([start, x.ms]);
      }
      return out;
    };
    const ia = intervals(a);
    const ib = intervals(b);
    let j = 0;
    let overlapping = 0;
    for (const [s0, e0] of ia) {
      while (j < ib.length && ib[j]![1] < s0) j++;
      if (j < ib.length && ib[j]![0] <= e0) overlapping++;
    }
    // Refusals caused by the other process (it removed or committed what this one was about to use).
    const refused = [...a, ...b].filter((x) => x.what === "fail").length;
    const crossParents = [...a, ...b].filter((x) => x.what === "end" && x.op === "prepare" && x.args[1] && x.args[1][0] !== x.args[0]![0]).length;
    console.log(`store concurrency test: ${JSON.stringify({ opsEach: n, overlapping, refused, crossParents, counts: [a.at(-1)!.op, b.at(-1)!.op].map((c) => JSON.parse(c) as unknown) })}`);
    expect(overlapping).toBeGreaterThan(n / 5);
    expect(crossParents).toBeGreaterThan(0);

    const store = await openStore(root);
    try {
      await checkConsistent(store, root);
      expect((await store.list()).length).toBeGreaterThan(0);
    } finally {
      store.close();
    }
  }, 600_000);
});
