/**
 * Names are bytes (issue 11): real mounts at targets that are not UTF-8, with layer and file names that are
 * not UTF-8, through the library: mount, list (both encodings), diff and which inside, holders, and each
 * unmounted through its own entry. Exact bytes all the way, and the right mount every time.
 */
import { mkdirSync, openSync, closeSync, readdirSync, writeFileSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-bytes-");
});
afterEach(() => s.cleanup());

const B = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p))));
/** `dir/name` as bytes. */
const under = (dir: string | Buffer, name: Buffer | string) => B(typeof dir === "string" ? dir : [...dir], "/", typeof name === "string" ? name : [...name]);

const FF = [0xff];
const FFFE = [0xff, 0xfe];
const REPLACEMENT = [0xef, 0xbf, 0xbd]; // the UTF-8 bytes of U+FFFD: a valid name, not to be confused with \xff

function layout() {
  const lower = under(s.dir, B("lower-", FFFE));
  const upper = under(s.dir, B("upper-", FF));
  const work = under(s.dir, "work");
  const upper2 = under(s.dir, B("upper2-", REPLACEMENT));
  const work2 = under(s.dir, "work2");
  const t1 = under(s.dir, B("t", FF)); // t\xff
  const t2 = under(s.dir, B("t", REPLACEMENT)); // t\xef\xbf\xbd, which a lossy decoding turns t\xff into
  for (const d of [lower, upper, work, upper2, work2, t1, t2]) mkdirSync(d);
  // Two names in one directory that a lossy decoding makes one.
  writeFileSync(under(lower, B(FFFE)), "bytes ff fe");
  writeFileSync(under(lower, B(REPLACEMENT, REPLACEMENT)), "two U+FFFD");
  return { lower, upper, work, upper2, work2, t1, t2 };
}

describe("non-UTF-8 names, end to end", () => {
  it("mount, list in both encodings, and unmount each through its own entry: never the other", async () => {
    const L = layout();
    const a = await overlay.mount({ lower: L.lower, upper: L.upper, work: L.work, target: L.t1 });
    const b = await overlay.mount({ lower: [L.lower], upper: L.upper2, work: L.work2, target: L.t2 });
    expect(readdirSync(L.t1, { encoding: "buffer" }).map((n) => [...n]).sort()).toEqual([[...REPLACEMENT, ...REPLACEMENT], FFFE].sort());
    // The string view: distinct, exact (U+DC80-U+DCFF for bytes that are not UTF-8), and says so.
    expect(a.target).toBe(`${s.dir}/t\udcff`);
    expect(b.target).toBe(`${s.dir}/t\ufffd`);
    expect(overlay.pathToBuffer(a.target)).toEqual(L.t1);
    expect(a.lower).toEqual([`${s.dir}/lower-\udcff\udcfe`]);
    expect(a.nonUtf8).toEqual(expect.arrayContaining(["target", "lower", "upper"]));
    const listed = await overlay.list();
    const mine = listed.filter((m) => m.target.startsWith(s.dir));
    expect(mine.map((m) => m.target).sort()).toEqual([a.target, b.target].sort());
    const asBuffers = (await overlay.list({ encoding: "buffer" })).filter((m) => m.target.subarray(0, s.dir.length).equals(Buffer.from(s.dir)));
    expect(asBuffers.map((m) => m.target).sort(Buffer.compare)).toEqual([L.t1, L.t2].sort(Buffer.compare));
    expect(asBuffers.find((m) => m.target.equals(L.t1))!.upper).toEqual(L.upper);
    expect(asBuffers.find((m) => m.target.equals(L.t1))!.lower).toEqual([L.lower]);
    // list({ target }) with a Buffer and with the string view find the same one mount.
    expect((await overlay.list({ target: L.t1 })).map((m) => m.id)).toEqual([a.id]);
    expect((await overlay.list({ target: b.target })).map((m) => m.id)).toEqual([b.id]);

    // Unmount A through its list() entry's string: A goes, B stays (the lossy reading unmounted B).
    const entryA = mine.find((m) => m.id === a.id)!;
    await overlay.umount(entryA.target);
    expect(mountsUnder(s.dir).map((m) => m.id)).toEqual([b.id]);
    // And B through its Buffer, then nothing is left.
    await overlay.umount(asBuffers.find((m) => m.target.equals(L.t2))!.target);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("diff() and which() inside: names exact in both encodings, two names a lossy decoding merges stay two", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.lower], upper: L.upper, work: L.work, target: L.t1 });
    writeFileSync(under(L.t1, B(FFFE)), "changed"); // copied up
    writeFileSync(under(L.t1, B(REPLACEMENT, REPLACEMENT)), "changed too");
    writeFileSync(under(L.t1, B("new-", [0x80])), "added");
    const asText = await overlay.diff(m.target);
    expect(asText).toEqual([
      { path: "/new-\udc80", change: "A" },
      { path: "/\ufffd\ufffd", change: "C" },
      { path: "/\udcff\udcfe", change: "C" },
    ]);
    const asBytes = await overlay.diff(L.t1, { encoding: "buffer" });
    expect(asBytes.map((c) => [[...c.path], c.change])).toEqual([
      [[...B("/new-", [0x80])], "A"],
      [[...B("/", REPLACEMENT, REPLACEMENT)], "C"],
      [[...B("/", FFFE)], "C"],
    ]);
    const unmounted = await overlay.diff({ upper: L.upper, lower: L.lower }, { encoding: "buffer" });
    expect(unmounted.map((c) => c.path)).toEqual(asBytes.map((c) => c.path));

    const w = await overlay.which(under(L.t1, B(FFFE)), { encoding: "buffer" });
    expect(w).toMatchObject({ kind: "upper", layer: L.upper, realPath: under(L.upper, B(FFFE)), target: L.t1, overlayPath: B("/", FFFE) });
    // The root, asked for by a relative-free string view with a trailing slash: the upper directory, merged.
    expect(await overlay.which(`${m.target}/`)).toMatchObject({ kind: "upper", type: "directory", overlayPath: "/" });
    // A file only the lower has, asked for by its string view.
    writeFileSync(under(L.lower, B("only-", FF)), "lower");
    const viaString = await overlay.which(`${m.target}/only-\udcff`);
    expect(viaString).toMatchObject({ kind: "lower", layer: m.lower[0], realPath: `${m.lower[0]}/only-\udcff` });
    await m.unmount();
  });

  it("findHolders() of a non-UTF-8 target names the held file by its exact bytes", async () => {
    const L = layout();
    const m = await overlay.mount({ lower: [L.lower], upper: L.upper, work: L.work, target: L.t1 });
    const file = under(L.t1, B(FFFE));
    const fd = openSync(file, "r");
    try {
      const holders = await overlay.findHolders(L.t1, { encoding: "buffer" });
      const me = holders.find((h) => h.pid === process.pid)!;
      expect(me.files.map((f) => f.path)).toContainEqual(file);
      expect(holders.mount.target).toEqual(L.t1);
      const asText = await overlay.findHolders(m.target);
      expect(asText.find((h) => h.pid === process.pid)!.files.map((f) => f.path)).toContain(`${m.target}/\udcff\udcfe`);
    } finally {
      closeSync(fd);
    }
    await m.unmount();
  });

  it("errors name non-UTF-8 paths in the string view, and Buffers are checked as Node checks them", async () => {
    const L = layout();
    const missing = under(s.dir, B("missing-", FF));
    await expect(overlay.mount({ lower: [missing], upper: L.upper, work: L.work, target: L.t1 })).rejects.toMatchObject({
      code: "ENOENT",
      path: `${s.dir}/missing-\udcff`,
      message: expect.stringContaining(`lower layer '${s.dir}/missing-\udcff' does not exist`),
    });
    await expect(overlay.mount({ lower: [Buffer.from("a\0b")], target: L.t1 })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.mount({ lower: [Buffer.alloc(0)], target: L.t1 })).rejects.toMatchObject({ code: "ERR_INVALID_ARG_VALUE" });
    await expect(overlay.umount(Buffer.from("/nonexistent-\xff", "latin1"))).rejects.toMatchObject({ code: "ENOENT", path: "/nonexistent-\udcff" });
    expect(mountsUnder(s.dir)).toEqual([]);
  });
});
