/**
 * The snapshot store (src/store/): the whole API on a real store in a scratch directory, with real overlay
 * mounts of what it hands out. Crashes and two processes at once: test/store-crash.test.ts.
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { mount } from "../src/index.js";
import { openStore, StoreError, type SnapshotInfo, type Store } from "../src/store/index.js";
import { mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
let store: Store;
let root: string;

beforeAll(() => requirePrivateMountNamespace());
beforeEach(async () => {
  s = scratch("store-");
  root = s.path("store");
  store = await openStore(root);
});
afterEach(() => {
  store.close();
  s.cleanup();
});

/** The StoreError an async call rejects with (fails the test when it resolves or throws something else). */
async function storeError(p: Promise<unknown>): Promise<StoreError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StoreError);
  return e as StoreError;
}

/** A committed snapshot `name` on `parent` holding `files` (written straight into its dir(), as a layer apply does). */
async function layer(name: string, parent: string | undefined, files: Record<string, string> = {}): Promise<void> {
  await store.prepare(`${name}-active`, parent);
  const dir = await store.dir(`${name}-active`);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, path, ".."), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  await store.commit(name, `${name}-active`);
}

const keys = (infos: SnapshotInfo[]) => infos.map((i) => i.key).sort();

/** Entries of snapshots/ (what is on disk) against the rows (what the database says). */
function diskIds(): string[] {
  return readdirSync(join(root, "snapshots")).sort();
}

describe("open", () => {
  it("lays the store out like containerd's: metadata.db in WAL mode, snapshots/, and the empty filler layer", async () => {
    expect(existsSync(join(root, "metadata.db"))).toBe(true);
    expect(lstatSync(join(root, "snapshots")).isDirectory()).toBe(true);
    expect(readdirSync(join(root, "empty"))).toEqual([]);
    expect(lstatSync(root).mode & 0o777).toBe(0o700);
    const db = new Database(join(root, "metadata.db"), { readonly: true });
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    } finally {
      db.close();
    }
    expect(store.root).toBe(root);
  });

  it("keeps everything across close and reopen", async () => {
    await layer("base", undefined, { a: "1" });
    await store.prepare("work", "base", { labels: { x: "y" } });
    store.close();
    store = await openStore(root, { create: false });
    expect(await store.stat("work")).toMatchObject({ key: "work", parent: "base", kind: "active", labels: { x: "y" } });
    expect(readFileSync(join(await store.dir("base"), "a"), "utf8")).toBe("1");
  });

  it("create: false refuses a directory without a store (ERR_OVL_STORE_NOT_FOUND), and makes nothing", async () => {
    const e = await storeError(openStore(s.path("nothing-here"), { create: false }));
    expect(e.code).toBe("ERR_OVL_STORE_NOT_FOUND");
    expect(e.message).toContain("nothing-here");
    expect(existsSync(s.path("nothing-here"))).toBe(false);
  });

  it("refuses a database from a newer ovl (ERR_OVL_STORE_CORRUPT naming the version)", async () => {
    store.close();
    const db = new Database(join(root, "metadata.db"));
    db.prepare(`UPDATE meta SET value = '99' WHERE name = 'schema'`).run();
    db.close();
    const e = await storeError(openStore(root));
    expect(e.code).toBe("ERR_OVL_STORE_CORRUPT");
    expect(e.message).toContain("99");
    store = await openStore(s.path("other"));
  });

  it("operations after close() fail with ERR_OVL_STORE_CLOSED", async () => {
    store.close();
    expect((await storeError(store.stat("x"))).code).toBe("ERR_OVL_STORE_CLOSED");
    store.close(); // twice is fine
  });
});

describe("prepare, view, mounts, dir", () => {
  it("prepare without parent: an active snapshot with an empty upper and work, over the store's empty layer", async () => {
    const m = await store.prepare("k", undefined, { labels: { a: "b" } });
    expect(m).toEqual({ lower: [join(root, "empty")], upper: join(root, "snapshots/1/fs"), work: join(root, "snapshots/1/work") });
    expect(readdirSync(m.upper!)).toEqual([]);
    expect(readdirSync(m.work!)).toEqual([]);
    expect(await store.mounts("k")).toEqual(m);
    expect(await store.dir("k")).toBe(m.upper);
    const info = await store.stat("k");
    expect(info).toMatchObject({ key: "k", kind: "active", labels: { a: "b" } });
    expect(info.parent).toBeUndefined();
    expect(info.created).toBeInstanceOf(Date);
    expect(info.created.getTime()).toBe(info.updated.getTime());
    expect(diskIds()).toEqual(["1"]); // no new-* left behind
  });

  it("prepare on a chain: lower layers top-most first; view: no upper or work", async () => {
    await layer("l1", undefined);
    await layer("l2", "l1");
    await layer("l3", "l2");
    const fs = async (k: string) => store.dir(k);
    const m = await store.prepare("c", "l3");
    expect(m.lower).toEqual([await fs("l3"), await fs("l2"), await fs("l1")]);
    expect(m.upper).toBe(await store.dir("c"));
    const v = await store.view("v", "l3");
    expect(v).toEqual({ lower: [await fs("l3"), await fs("l2"), await fs("l1")] });
    expect(existsSync(join(await store.dir("v"), "..", "work"))).toBe(false);
    // A view of one layer, and of none, get the empty layer as a second lower (overlay needs two).
    expect(await store.view("v1", "l1")).toEqual({ lower: [await fs("l1"), join(root, "empty")] });
    expect(await store.view("v0")).toEqual({ lower: [await fs("v0"), join(root, "empty")] });
    expect((await store.stat("v")).kind).toBe("view");
  });

  it("mounts what it hands out: prepare, mount, write, unmount, commit, prepare a child, see the parent's files", async () => {
    const [target] = s.dirs("mnt");
    const m1 = await store.prepare("base-work");
    let mo = await mount({ ...m1, target: target! });
    mkdirSync(join(target!, "etc/deep"), { recursive: true });
    writeFileSync(join(target!, "etc/hostname"), "base\n");
    writeFileSync(join(target!, "etc/deep/file"), "deep\n");
    writeFileSync(join(target!, "gone"), "x");
    await mo.unmount();
    // What was written is in the upper, and nothing else: no opaque or other overlay xattr on what was made.
    const xattrs = execFileSync("getfattr", ["-R", "-d", "-m", "-", "--absolute-names", m1.upper!], { encoding: "utf8" });
    expect(xattrs).not.toMatch(/overlay\.(opaque|origin|redirect)/);
    await store.commit("base", "base-work");

    const m2 = await store.prepare("app-work", "base");
    mo = await mount({ ...m2, target: target! });
    expect(readFileSync(join(target!, "etc/hostname"), "utf8")).toBe("base\n");
    expect(readFileSync(join(target!, "etc/deep/file"), "utf8")).toBe("deep\n");
    writeFileSync(join(target!, "etc/hostname"), "app\n");
    rmSync(join(target!, "gone"));
    await mo.unmount();
    await store.commit("app", "app-work");
    // The parent layer is untouched; the child's upper holds the change and a whiteout.
    expect(readFileSync(join(await store.dir("base"), "etc/hostname"), "utf8")).toBe("base\n");
    const wh = lstatSync(join(await store.dir("app"), "gone"));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);

    // A view of two layers (a read-only overlay), of one layer (layer + empty), of none.
    for (const [key, parent, expected, gone] of [
      ["v2", "app", "app\n", true],
      ["v1", "base", "base\n", false],
    ] as const) {
      const v = await store.view(key, parent);
      mo = await mount({ ...v, target: target! });
      expect(readFileSync(join(target!, "etc/hostname"), "utf8")).toBe(expected);
      expect(existsSync(join(target!, "gone"))).toBe(!gone);
      expect(() => writeFileSync(join(target!, "new"), "x")).toThrow(/EROFS/);
      await mo.unmount();
    }
    const v0 = await store.view("v0");
    mo = await mount({ ...v0, target: target! });
    expect(readdirSync(target!)).toEqual([]);
    await mo.unmount();
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("mounts(key, { idmap }): the spec idmaps the layers, and mount() of it shows them with the mapped owners", async () => {
    const [target] = s.dirs("mnt");
    const w = await store.prepare("w");
    writeFileSync(join(w.upper!, "file"), "x"); // root's, in the layer
    await store.commit("base", "w");
    await store.prepare("c", "base");
    const idmap = { uidMap: [[0, 100000, 65536]] as [number, number, number][] };
    const spec = await store.mounts("c", { idmap });
    expect(spec.idmap).toEqual(idmap);
    const mo = await mount({ ...spec, target: target! });
    expect(lstatSync(join(target!, "file")).uid).toBe(100000);
    expect(lstatSync(join(await store.dir("base"), "file")).uid).toBe(0);
    await mo.unmount();
    await expect(store.mounts("c", { idmap: { uidMap: [[0, 1, 0]] } as never })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("commit of a mounted active snapshot is allowed (containerd leaves that to the caller)", async () => {
    const [target] = s.dirs("mnt");
    const m = await store.prepare("w");
    const mo = await mount({ ...m, target: target! });
    try {
      writeFileSync(join(target!, "f"), "x");
      await store.commit("c", "w");
      expect((await store.stat("c")).kind).toBe("committed");
    } finally {
      await mo.unmount();
    }
  });

  it("refuses: a key that exists, a missing parent, a parent that is not committed, mounts() of a committed snapshot", async () => {
    await store.prepare("a");
    await store.view("v");
    let e = await storeError(store.prepare("a"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_EXISTS", key: "a" });
    expect(e.message).toBe("snapshot 'a' already exists (active)");
    e = await storeError(store.view("v"));
    expect(e.code).toBe("ERR_OVL_STORE_EXISTS");
    e = await storeError(store.prepare("b", "nope"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_NOT_FOUND", key: "nope" });
    expect(e.message).toBe("parent snapshot 'nope' does not exist");
    e = await storeError(store.prepare("b", "a"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_KIND", key: "a" });
    expect(e.message).toContain("only a committed snapshot can be a parent; commit it first");
    e = await storeError(store.view("b", "v"));
    expect(e.code).toBe("ERR_OVL_STORE_KIND");
    expect(e.message).toContain("'v' is a view");
    await store.commit("c", "a");
    e = await storeError(store.mounts("c"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_KIND", key: "c" });
    expect(e.message).toContain("make a view() of it");
    expect((await storeError(store.mounts("zz"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
    expect((await storeError(store.dir("zz"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
    expect((await storeError(store.stat("zz"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
    // Nothing half-made by the refusals.
    expect(diskIds()).toEqual(["1", "2"]);
    expect(keys(await store.list())).toEqual(["c", "v"]);
  });

  it("the parent's owner owns a new upper (like containerd, for layers of another user)", async () => {
    await layer("base", undefined);
    execFileSync("chown", ["1234:5678", await store.dir("base")]);
    const m = await store.prepare("w", "base");
    const st = lstatSync(m.upper!);
    expect([st.uid, st.gid]).toEqual([1234, 5678]);
  });

  it("validates keys: non-empty strings without NUL or lone surrogates, at most 4096 bytes", async () => {
    const bad: [unknown, RegExp][] = [
      ["", /non-empty/],
      ["a\0b", /null bytes/],
      ["x".repeat(4097), /at most 4096 bytes/],
      ["é".repeat(2049), /at most 4096 bytes/],
      ["\uD800", /lone surrogate/],
      [42, /of type string/],
      [undefined, /of type string/],
    ];
    for (const [key, why] of bad) {
      const e = await store.prepare(key as string).then(
        () => undefined,
        (err: unknown) => err as Error & { code: string },
      );
      expect(e, String(key).slice(0, 20)).toBeInstanceOf(TypeError);
      expect(e!.code).toMatch(/^ERR_INVALID_ARG_(TYPE|VALUE)$/);
      expect(e!.message).toMatch(why);
    }
    await store.prepare("x".repeat(4096));
    await store.prepare("ü/ключ with spaces, commas and :colons");
    expect(await store.stat("ü/ключ with spaces, commas and :colons")).toMatchObject({ kind: "active" });
    await expect(store.prepare("ok", undefined, { labels: { k: 1 as unknown as string } })).rejects.toThrow(/of type string/);
    await expect(store.prepare("ok", undefined, { labels: { k: "v".repeat(4096) } })).rejects.toThrow(/4096 bytes/);
    expect(diskIds()).toHaveLength(2);
  });
});

describe("commit", () => {
  it("turns an active snapshot into a committed one under the new name, same directory, labels replaced", async () => {
    await store.prepare("w", undefined, { labels: { from: "prepare" } });
    const dir = await store.dir("w");
    writeFileSync(join(dir, "f"), "data");
    const before = await store.stat("w");
    await store.commit("c", "w", { labels: { from: "commit" } });
    expect((await storeError(store.stat("w"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
    const info = await store.stat("c");
    expect(info).toMatchObject({ key: "c", kind: "committed", labels: { from: "commit" } });
    expect(info.created.getTime()).toBeGreaterThan(before.created.getTime());
    expect(await store.dir("c")).toBe(dir);
    await store.prepare("w2");
    await store.commit("c2", "w2");
    expect((await store.stat("c2")).labels).toEqual({}); // not inherited
  });

  it("refuses: a view, a committed snapshot, a name that exists, a missing key", async () => {
    await store.view("v");
    await store.prepare("a");
    await store.prepare("b");
    let e = await storeError(store.commit("x", "v"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_KIND", key: "v" });
    expect(e.message).toBe("snapshot 'v' is a view: only an active snapshot can be committed");
    e = await storeError(store.commit("b", "a"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_EXISTS", key: "b" });
    e = await storeError(store.commit("a", "a"));
    expect(e.code).toBe("ERR_OVL_STORE_EXISTS");
    await store.commit("c", "a");
    e = await storeError(store.commit("d", "c"));
    expect(e.code).toBe("ERR_OVL_STORE_KIND");
    expect(e.message).toContain("already committed");
    expect((await storeError(store.commit("d", "nope"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
  });
});

describe("usage", () => {
  it("is du's disk usage: st_blocks × 512, each inode once (hard links), symlinks not followed; stored at commit", async () => {
    await store.prepare("w");
    const dir = await store.dir("w");
    mkdirSync(join(dir, "sub/deeper"), { recursive: true });
    writeFileSync(join(dir, "big"), Buffer.alloc(100_000, 1));
    writeFileSync(join(dir, "sub/small"), "x");
    linkSync(join(dir, "big"), join(dir, "sub/hardlink"));
    symlinkSync("/usr", join(dir, "link-to-usr"));
    writeFileSync(join(dir, Buffer.from([0x66, 0xff, 0xfe]).toString("latin1")), "latin1 name");
    // A file whose name is not UTF-8.
    writeFileSync(Buffer.concat([Buffer.from(`${dir}/sub/`), Buffer.from([0x80, 0x81])]), "bytes");
    const du = (flag: string[]) => Number(execFileSync("du", ["-s", ...flag, dir], { encoding: "utf8" }).split("\t")[0]);
    const expected = { size: du(["-B1"]), inodes: du(["--inodes"]) };
    expect(expected.inodes).toBe(8); // fs, sub, deeper, big (and its link), small, link-to-usr, 2 odd names
    expect(await store.usage("w")).toEqual(expected);
    await store.commit("c", "w");
    expect(await store.usage("c")).toEqual(expected);
    // Committed: the stored figure, not a new walk.
    writeFileSync(join(dir, "later"), Buffer.alloc(50_000));
    expect(await store.usage("c")).toEqual(expected);
    expect((await storeError(store.usage("nope"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
    // And a tree with names that are not UTF-8 is removed whole.
    await store.remove("c");
    expect(diskIds()).toEqual([]);
  });

  it("an empty active snapshot uses its directory's own block and inode", async () => {
    await store.prepare("w");
    const u = await store.usage("w");
    expect(u.inodes).toBe(1);
    expect(u.size).toBe(lstatSync(await store.dir("w")).blocks * 512);
  });
});

describe("remove", () => {
  it("removes a snapshot and its directory; refuses one with children, naming them", async () => {
    await layer("base", undefined, { f: "x" });
    await store.prepare("c1", "base");
    await store.view("c2", "base");
    const e = await storeError(store.remove("base"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_IN_USE", key: "base" });
    expect(e.message).toBe("snapshot 'base' has 2 children ('c1', 'c2'): remove them first");
    await store.remove("c1");
    expect((await storeError(store.remove("base"))).message).toBe("snapshot 'base' has 1 child ('c2'): remove them first");
    await store.remove("c2");
    await store.remove("base");
    expect(await store.list()).toEqual([]);
    expect(diskIds()).toEqual([]);
    expect((await storeError(store.remove("base"))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
  });

  it("never reuses an id: a new snapshot after a removal gets a new directory", async () => {
    await store.prepare("a");
    await store.prepare("b");
    await store.remove("b");
    const m = await store.prepare("c");
    expect(m.upper).toBe(join(root, "snapshots/3/fs"));
  });
});

describe("update", () => {
  it("replaces labels without fieldpaths or with 'labels', and sets or deletes one with 'labels.NAME'", async () => {
    await store.prepare("k", undefined, { labels: { a: "1", b: "2" } });
    const created = (await store.stat("k")).created;
    let info = await store.update({ key: "k", labels: { c: "3" } });
    expect(info.labels).toEqual({ c: "3" });
    expect(info.updated.getTime()).toBeGreaterThan(created.getTime());
    expect(info.created).toEqual(created);
    info = await store.update({ key: "k", labels: { d: "4", c: "ignored" } }, ["labels.d"]);
    expect(info.labels).toEqual({ c: "3", d: "4" });
    info = await store.update({ key: "k", labels: {} }, ["labels.c"]); // absent: deleted
    expect(info.labels).toEqual({ d: "4" });
    info = await store.update({ key: "k", labels: { d: "" } }, ["labels.d", "labels.e"]); // "": deleted too
    expect(info.labels).toEqual({});
    info = await store.update({ key: "k", labels: { "containerd.io/gc.root": "x", y: "z" } }, ["labels"]);
    expect(info.labels).toEqual({ "containerd.io/gc.root": "x", y: "z" });
    info = await store.update({ key: "k", labels: { "containerd.io/gc.root": "2" } }, ["labels.containerd.io/gc.root"]);
    expect(info.labels).toEqual({ "containerd.io/gc.root": "2", y: "z" });
    info = await store.update({ key: "k" });
    expect(info.labels).toEqual({});
    expect(await store.stat("k")).toEqual(info);
  });

  it("refuses fields other than labels, and missing snapshots", async () => {
    await store.prepare("k", undefined, { labels: { a: "1" } });
    for (const path of ["kind", "parent", "labels.", "name"]) {
      await expect(store.update({ key: "k", labels: {} }, [path])).rejects.toMatchObject({
        code: "ERR_INVALID_ARG_VALUE",
        message: expect.stringContaining("only \"labels\" and \"labels.NAME\" are mutable"),
      });
    }
    expect((await store.stat("k")).labels).toEqual({ a: "1" });
    expect((await storeError(store.update({ key: "nope", labels: {} }))).code).toBe("ERR_OVL_STORE_NOT_FOUND");
  });
});

describe("list and walk", () => {
  beforeEach(async () => {
    await layer("base", undefined);
    await store.update({ key: "base", labels: { tier: "os", "containerd.io/gc.root": "1" } });
    await layer("app", "base");
    await store.update({ key: "app", labels: { tier: "app" } });
    await store.prepare("run1", "app", { labels: { tier: "app", "a,b": "c,d" } });
    await store.view("look", "base");
    await store.prepare("scratch");
  });

  const cases: [string[], string[]][] = [
    [[], ["app", "base", "look", "run1", "scratch"]],
    [["kind==committed"], ["app", "base"]],
    [["kind==active"], ["run1", "scratch"]],
    [["kind==view"], ["look"]],
    [["kind!=committed"], ["look", "run1", "scratch"]],
    [["parent==base"], ["app", "look"]],
    [["parent"], ["app", "look", "run1"]],
    [["name==app"], ["app"]],
    [["key==run1"], ["run1"]],
    [["name~=^(a|b)"], ["app", "base"]],
    [["labels.tier==app"], ["app", "run1"]],
    [["labels.tier"], ["app", "base", "run1"]],
    [["labels.tier!=app"], ["base", "look", "scratch"]],
    [["labels.containerd.io/gc.root"], ["base"]],
    [['labels."containerd.io/gc.root"==1'], ["base"]],
    [['labels."a,b"=="c,d"'], ["run1"]],
    [["kind==committed,labels.tier==app"], ["app"]],
    [["kind==active , parent==app"], ["run1"]],
    [["kind==view", "name==scratch"], ["look", "scratch"]],
    [["kind==committed,parent==base", "kind==active,labels.tier"], ["app", "run1"]],
    [["labels.missing"], []],
  ];
  for (const [filters, expected] of cases) {
    it(`list(${JSON.stringify(filters)})`, async () => {
      expect(keys(await store.list(filters))).toEqual(expected);
    });
  }

  it("walk calls fn for each match, awaiting each; filters as list()", async () => {
    const seen: string[] = [];
    await store.walk(async (info) => {
      await new Promise((r) => setTimeout(r, 1));
      seen.push(`${info.key}:${info.kind}`);
    }, ["kind==committed", "kind==view"]);
    expect(seen.sort()).toEqual(["app:committed", "base:committed", "look:view"]);
    const all: SnapshotInfo[] = [];
    await store.walk((i) => void all.push(i));
    expect(all).toEqual(await store.list());
    await expect(store.walk(() => {
      throw new Error("stop");
    })).rejects.toThrow("stop");
  });

  it("refuses filters it cannot parse, saying where", async () => {
    for (const [f, why] of [
      ["kinds==x", /unknown field 'kinds'/],
      ["labels", /labels needs a label name|'labels' needs a label name/],
      ["kind==a,", /a field name was expected at offset 8/],
      ['name=="open', /unterminated quote/],
      ["name~=(", /bad regular expression/],
      ["kind=committed", /',' or the end was expected/],
    ] as const) {
      await expect(store.list([f])).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE", message: expect.stringMatching(why) });
    }
  });
});

describe("depth", () => {
  it("refuses a parent chain of more than the kernel's 500 layers (ERR_OVL_STORE_DEPTH); 500 mount", async () => {
    let parent: string | undefined;
    for (let i = 1; i <= 501; i++) {
      await store.prepare(`w${i}`, parent);
      await store.commit(`l${i}`, `w${i}`);
      parent = `l${i}`;
    }
    writeFileSync(join(await store.dir("l1"), "bottom"), "1");
    // On l500: 500 lower layers, the most an overlay takes; it mounts and sees the bottom layer.
    const m = await store.prepare("top500", "l500");
    expect(m.lower).toHaveLength(500);
    expect(m.lower[0]).toBe(await store.dir("l500"));
    expect(m.lower[499]).toBe(await store.dir("l1"));
    const [target] = s.dirs("mnt");
    const mo = await mount({ ...m, target: target! });
    expect(readFileSync(join(target!, "bottom"), "utf8")).toBe("1");
    await mo.unmount();
    const v = await store.view("view500", "l500");
    expect(v.lower).toHaveLength(500);
    // On l501: 501 would be needed.
    for (const p of [store.prepare("top501", "l501"), store.view("view501", "l501")]) {
      const e = await storeError(p);
      expect(e).toMatchObject({ code: "ERR_OVL_STORE_DEPTH", key: "l501" });
      expect(e.message).toBe("parent 'l501' is a chain of 501 layers: the kernel mounts at most 500 lower layers, so it cannot be a parent");
    }
    expect(existsSync(join(root, "snapshots", "504"))).toBe(false);
    // A deeper snapshot made behind the store's back is refused at mounts() too.
    store.close();
    const db = new Database(join(root, "metadata.db"));
    const id = db.prepare(`SELECT id FROM snapshots WHERE key = 'top500'`).pluck().get() as number;
    const l501 = db.prepare(`SELECT id FROM snapshots WHERE key = 'l501'`).pluck().get() as number;
    db.prepare(`UPDATE snapshots SET parent_id = ?, depth = 502 WHERE id = ?`).run(l501, id);
    db.close();
    store = await openStore(root);
    const e = await storeError(store.mounts("top500"));
    expect(e.code).toBe("ERR_OVL_STORE_DEPTH");
    expect(e.message).toContain("501 layers below it: the kernel mounts at most 500 lower layers");
  }, 120_000);
});

describe("damage and cleanup", () => {
  it("a row whose directory is gone: ERR_OVL_STORE_CORRUPT on use, listed by check(), fixed by remove()", async () => {
    await layer("base", undefined);
    const baseDir = await store.dir("base");
    await store.prepare("w", "base");
    const wdir = join(await store.dir("w"), "..");
    rmSync(join(wdir, "work"), { recursive: true });
    let e = await storeError(store.mounts("w"));
    expect(e).toMatchObject({ code: "ERR_OVL_STORE_CORRUPT", key: "w" });
    expect(e.message).toContain(`its directory '${wdir}/work' is missing`);
    rmSync(join(baseDir, ".."), { recursive: true });
    e = await storeError(store.dir("base"));
    expect(e.code).toBe("ERR_OVL_STORE_CORRUPT");
    e = await storeError(store.view("v", "base"));
    expect(e.code).toBe("ERR_OVL_STORE_CORRUPT");
    expect(e.message).toContain("layer 'base' of parent 'base'");
    expect((await storeError(store.usage("w"))).code).toBe("ERR_OVL_STORE_CORRUPT");
    expect((await storeError(store.commit("c", "w"))).code).toBe("ERR_OVL_STORE_CORRUPT");
    const c = await store.check();
    expect(c.missing.map((m) => m.key).sort()).toEqual(["base", "w"]);
    expect(c.orphans).toEqual([]);
    await store.remove("w");
    await store.remove("base");
    expect(await store.check()).toEqual({ missing: [], orphans: [] });
  });

  it("a filler layer that is not empty is refused where it would be used", async () => {
    writeFileSync(join(root, "empty", "intruder"), "x");
    const e = await storeError(store.prepare("w"));
    expect(e.code).toBe("ERR_OVL_STORE_CORRUPT");
    expect(e.message).toContain("is not empty");
    expect(diskIds()).toEqual([]);
    expect((await store.check()).empty).toContain("not empty");
  });

  it("cleanup() removes every entry without a row (new-*, rm-*, ids without rows) and keeps the rest", async () => {
    await layer("base", undefined, { keep: "me" });
    await store.prepare("w", "base");
    const snaps = join(root, "snapshots");
    mkdirSync(join(snaps, "new-abc123/fs"), { recursive: true });
    mkdirSync(join(snaps, "rm-7-deadbeef/fs/deep"), { recursive: true });
    writeFileSync(join(snaps, "rm-7-deadbeef/fs/deep/file"), "x");
    mkdirSync(join(snaps, "99/fs"), { recursive: true });
    writeFileSync(join(snaps, "stray-file"), "x");
    expect((await store.check()).orphans.sort()).toEqual(["99", "new-abc123", "rm-7-deadbeef", "stray-file"]);
    const r = await store.cleanup();
    expect(r.removed.sort()).toEqual(["99", "new-abc123", "rm-7-deadbeef", "stray-file"]);
    expect(diskIds()).toEqual(["1", "2"]);
    expect(await store.check()).toEqual({ missing: [], orphans: [] });
    expect(readFileSync(join(await store.dir("base"), "keep"), "utf8")).toBe("me");
    expect(await store.cleanup()).toEqual({ removed: [] });
  });

  it("a directory already at a new snapshot's id (a prepare killed before COMMIT) is moved aside, then cleaned", async () => {
    await store.prepare("a"); // id 1
    mkdirSync(join(root, "snapshots/2/fs"), { recursive: true });
    writeFileSync(join(root, "snapshots/2/fs/stale"), "from a rolled-back prepare");
    const m = await store.prepare("b");
    expect(m.upper).toBe(join(root, "snapshots/2/fs"));
    expect(readdirSync(m.upper!)).toEqual([]);
    expect((await store.check()).orphans).toEqual([expect.stringMatching(/^rm-2-/)]);
    expect((await store.cleanup()).removed).toEqual([expect.stringMatching(/^rm-2-/)]);
    expect(diskIds()).toEqual(["1", "2"]);
  });

  it("cleanup() does not delete into a mount inside an orphan", async () => {
    await layer("base", undefined, { f: "precious" });
    const v = await store.view("v", "base");
    const orphan = join(root, "snapshots", "new-mounted");
    mkdirSync(join(orphan, "mnt"), { recursive: true });
    const mo = await mount({ ...v, target: join(orphan, "mnt") });
    try {
      expect((await store.cleanup()).removed).toEqual([]);
      expect(readFileSync(join(await store.dir("base"), "f"), "utf8")).toBe("precious");
    } finally {
      await mo.unmount();
    }
    expect((await store.cleanup()).removed).toEqual([expect.stringMatching(/^rm-/)]);
  });

  it("remove() after a rename by hand (dir moved away): the row goes, nothing else is touched", async () => {
    await store.prepare("w");
    renameSync(join(root, "snapshots/1"), s.path("moved"));
    await store.remove("w");
    expect(existsSync(s.path("moved/fs"))).toBe(true);
    expect(await store.list()).toEqual([]);
  });
});

describe("images", () => {
  it("put, get, list, replace (created kept), remove", async () => {
    const img = {
      manifestDigest: "sha256:aaa",
      configDigest: "sha256:bbb",
      config: { architecture: "amd64", rootfs: { diff_ids: ["sha256:1"] }, nested: [1, null, "x"] },
      chainIds: ["sha256:c1", "sha256:c2"],
      labels: { "org.example": "y" },
    };
    await store.putImage("docker.io/library/alpine:3", img);
    const got = await store.getImage("docker.io/library/alpine:3");
    expect(got).toMatchObject({ name: "docker.io/library/alpine:3", ...img });
    expect(got!.created).toBeInstanceOf(Date);
    await store.putImage("b:1", { ...img, labels: undefined });
    expect((await store.getImage("b:1"))!.labels).toEqual({});
    await store.putImage("docker.io/library/alpine:3", { ...img, manifestDigest: "sha256:ccc" });
    const again = await store.getImage("docker.io/library/alpine:3");
    expect(again!.manifestDigest).toBe("sha256:ccc");
    expect(again!.created).toEqual(got!.created);
    expect(again!.updated.getTime()).toBeGreaterThan(got!.updated.getTime());
    expect((await store.listImages()).map((i) => i.name)).toEqual(["b:1", "docker.io/library/alpine:3"]);
    expect(await store.removeImage("b:1")).toBe(true);
    expect(await store.removeImage("b:1")).toBe(false);
    expect(await store.getImage("b:1")).toBeUndefined();
    expect((await store.listImages()).map((i) => i.name)).toEqual(["docker.io/library/alpine:3"]);
    await expect(store.putImage("x", { ...img, chainIds: "no" as unknown as string[] })).rejects.toThrow(/chainIds/);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(store.putImage("x", { ...img, config: cyclic })).rejects.toThrow(/JSON/);
  });
});
