/**
 * Agreement with util-linux: a mount table full of odd names, read by list({ all: true }) and by
 * `findmnt -J`, must agree on every field of every mount; overlays must give back the layers they were
 * mounted with, in both option forms (new API `lowerdir+=`, legacy `lowerdir=a:b::data`).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import type { MountInfo, OverlayMount } from "../src/types.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const COLUMNS = "ID,PARENT,MAJ:MIN,FSROOT,TARGET,VFS-OPTIONS,OPT-FIELDS,FSTYPE,SOURCE,FS-OPTIONS,PROPAGATION";

/** One row of `findmnt -J -l --nofsroot -o COLUMNS` (util-linux 2.38: an empty value is null). */
interface FindmntRow {
  id: number;
  parent: number;
  "maj:min": string;
  fsroot: string;
  target: string;
  "vfs-options": string;
  "opt-fields": string | null;
  fstype: string;
  source: string | null;
  "fs-options": string;
  propagation: string;
}

/** findmnt's reading of this namespace's table, or of a mountinfo file (`-F`). */
function findmnt(file?: string): FindmntRow[] {
  const args = [...(file ? ["-F", file] : []), "-J", "-l", "--nofsroot", "-o", COLUMNS];
  const out = execFileSync("findmnt", args, { encoding: "utf8", maxBuffer: 1 << 28, stdio: "pipe" });
  return (JSON.parse(out) as { filesystems: FindmntRow[] }).filesystems;
}

/**
 * findmnt's PROPAGATION, from the optional fields: "shared" or "private", then ",slave" for master:N and
 * ",unbindable" (util-linux misc-utils/findmnt.c). ovl keeps the optional fields themselves.
 */
function propagation(optionalFields: string[]): string {
  let p = optionalFields.some((f) => f.startsWith("shared:")) ? "shared" : "private";
  if (optionalFields.some((f) => f.startsWith("master:"))) p += ",slave";
  if (optionalFields.includes("unbindable")) p += ",unbindable";
  return p;
}

/** A mount as findmnt would print it, if findmnt printed exactly what ovl read. */
function asFindmnt(m: MountInfo): FindmntRow {
  return {
    id: m.id,
    parent: m.parentId,
    "maj:min": `${m.major}:${m.minor}`,
    fsroot: m.root,
    target: m.target,
    "vfs-options": m.mountOptions.join(","),
    "opt-fields": m.optionalFields.length > 0 ? m.optionalFields.join(" ") : null,
    fstype: m.fstype,
    source: m.source === "" ? null : m.source,
    "fs-options": m.superOptions.join(","),
    propagation: propagation(m.optionalFields),
  };
}

/** Overlay's escapes for one legacy `lowerdir=` path (written apart from src/ so the test is independent). */
const escapeLower = (p: string) => p.replace(/[\\:,]/g, "\\$&");
const escapeUpperWork = (p: string) => p.replace(/[\\,]/g, "\\$&");

interface Expected {
  target: string;
  lower: string[];
  data: string[];
  upper?: string;
  work?: string;
  /** The option form the table shows. */
  form: "new" | "legacy";
}

let s: Scratch;
const overlays: Expected[] = [];
/** Targets of the mounts this file made, so the checks can make sure each one was compared. */
const madeTargets: string[] = [];

/** Odd names: every character mountinfo escapes, plus look-alikes of its syntax. */
const ODD = [
  "sp ace",
  "tab\there",
  "new\nline",
  "back\\slash",
  "ünïcødé ✓ 日本",
  "x - y",
  "\\040not-an-escape",
  "trailing ",
  "com,ma",
  "co:lon",
  "#hash=eq",
  "- ",
];

function mountCmd(...args: string[]): void {
  execFileSync("mount", args);
}

beforeAll(async () => {
  requirePrivateMountNamespace();
  s = scratch("ovl-findmnt-");
  const dir = (name: string) => {
    const p = join(s.dir, name);
    mkdirSync(p, { recursive: true });
    return p;
  };

  // tmpfs on each odd name, with odd sources (an empty one, spaces, a backslash, a newline, a comma).
  const sources = ["src with space", "", "a\\b", "new\nsrc", "com,ma src", "none", "tmpfs"];
  ODD.forEach((name, i) => {
    const target = dir(`t/${name}`);
    mountCmd("-t", "tmpfs", "-o", i % 2 ? "size=1m,mode=0700" : "nr_inodes=1k", sources[i % sources.length]!, target);
    madeTargets.push(target);
  });
  const empty = dir("t/empty source");
  mountCmd("-t", "tmpfs", "", empty);
  madeTargets.push(empty);

  // Bind mounts whose root is not "/", one of them read-only per mount.
  const bindSrc = dir("t/sp ace/sub dir/deeper\tstill");
  const bind1 = dir("binds/one");
  const bind2 = dir("binds/two - ro");
  mountCmd("--bind", bindSrc, bind1);
  mountCmd("--bind", join(s.dir, "t/sp ace/sub dir"), bind2);
  mountCmd("-o", "remount,bind,ro", bind2);
  madeTargets.push(bind1, bind2);

  // Propagation: shared, a slave that is also shared, and unbindable.
  const shared = dir("prop/shared");
  mountCmd("-t", "tmpfs", "prop", shared);
  mountCmd("--make-shared", shared);
  const slave = dir("prop/slave");
  mountCmd("--bind", shared, slave);
  mountCmd("--make-slave", slave);
  mountCmd("--make-shared", slave);
  const slaveOnly = dir("prop/slave only");
  mountCmd("--bind", shared, slaveOnly);
  mountCmd("--make-slave", slaveOnly);
  const unbindable = dir("prop/unbindable");
  mountCmd("-t", "tmpfs", "prop", unbindable);
  mountCmd("--make-unbindable", unbindable);
  madeTargets.push(shared, slave, slaveOnly, unbindable);

  // Overlays, new API (ovl's mount(): one lowerdir+= / datadir+= per layer, by fd).
  const L = (name: string) => dir(`layers/${name}`);
  const newApi: Expected = {
    target: dir("ov/new api, target"),
    lower: [L("l,1 with comma"), L("l\\2 back\\slash"), L("l:3 colon"), L("l\n4 newline"), L("ünï 5")],
    data: [L("d,1 data"), L("d:2 data")],
    upper: L("up\\per dir"),
    work: L("wo,rk dir"),
    form: "new",
  };
  await overlay.mount(newApi);
  const newApiRo: Expected = { target: dir("ov/new ro\t"), lower: [L("ro a"), L("ro\\b")], data: [], form: "new" };
  await overlay.mount({ ...newApiRo, options: { redirectDir: "follow", xino: "off" } });

  // Overlays, legacy (util-linux 2.38 `mount -t overlay -o lowerdir=...`: mount(2) with one string, so
  // `\:`, `\,` and `\\` escapes in lowerdir; `::` before data-only layers).
  const legacy: Expected = {
    target: dir("ov/legacy - target"),
    lower: [L("g:1 colon"), L("g,2 comma"), L("g\\3 backslash"), L("g 4 space")],
    data: [L("gd:1"), L("gd,2")],
    upper: L("g up,per"),
    work: L("g work"),
    form: "legacy",
  };
  const lowerdir = legacy.lower.map(escapeLower).join(":") + legacy.data.map((d) => `::${escapeLower(d)}`).join("");
  mountCmd(
    "-t", "overlay", "legacy src",
    "-o", `lowerdir=${lowerdir},upperdir=${escapeUpperWork(legacy.upper!)},workdir=${escapeUpperWork(legacy.work!)},index=off`,
    legacy.target,
  );
  const legacyRo: Expected = { target: dir("ov/legacy ro"), lower: [L("r:a"), L("r\\b"), L("r,c")], data: [L("r data")], form: "legacy" };
  mountCmd("-t", "overlay", "", "-o", `lowerdir=${legacyRo.lower.map(escapeLower).join(":")}::${escapeLower(legacyRo.data[0]!)}`, legacyRo.target);
  overlays.push(newApi, newApiRo, legacy, legacyRo);

  // A bind mount of a directory inside an overlay: an overlay entry whose root is not "/".
  mkdirSync(join(legacy.target, "inside dir"));
  const ovBind = dir("ov/bind of inside");
  mountCmd("--bind", join(legacy.target, "inside dir"), ovBind);
  overlays.push({ ...legacy, target: ovBind });

  // 500 layers with long names: one mountinfo line of more than 64 KiB.
  const many: Expected = {
    target: dir("ov/many"),
    lower: Array.from({ length: 500 }, (_, i) => L(`many/${String(i).padStart(3, "0")}-${"x".repeat(120)} ,:\\`)),
    data: [],
    form: "new",
  };
  await overlay.mount(many);
  overlays.push(many);
  madeTargets.push(...overlays.map((o) => o.target));
});

afterAll(() => s?.cleanup());

/**
 * list() and findmnt read the table at different moments, and other test files mount in this namespace at
 * the same time: take findmnt, list(), findmnt, until both findmnt runs saw the same table.
 */
async function stableSnapshot(): Promise<{ ours: Array<MountInfo | OverlayMount>; theirs: FindmntRow[] }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const before = findmnt();
    const ours = await overlay.list({ all: true });
    const after = findmnt();
    if (JSON.stringify(before) === JSON.stringify(after)) return { ours, theirs: after };
  }
  throw new Error("the mount table kept changing under the test");
}

describe("list({ all: true }) agrees with findmnt -J on every field of every mount", () => {
  it("matches findmnt row for row, with fs-options compared joined", async () => {
    const { ours, theirs } = await stableSnapshot();
    expect(ours.map((m) => m.id)).toEqual(theirs.map((r) => r.id));
    for (const [i, m] of ours.entries()) expect(asFindmnt(m), `mount ${m.id} on ${JSON.stringify(m.target)}`).toEqual(theirs[i]);
    // Every mount made above is in the table, the line of 500 layers included.
    const targets = new Set(ours.map((m) => m.target));
    for (const t of madeTargets) expect(targets.has(t), t).toBe(true);
    const longest = Math.max(...ours.map((m) => m.superOptions.join(",").length));
    expect(longest).toBeGreaterThan(64 * 1024);
  });

  it("covers the odd cases: escapes in every field, an empty source, non-/ roots, every propagation", async () => {
    const { ours } = await stableSnapshot();
    const mine = ours.filter((m) => m.target.startsWith(`${s.dir}/`));
    for (const name of ODD) expect(mine.some((m) => m.target === join(s.dir, "t", name)), name).toBe(true);
    expect(mine.filter((m) => m.source === "").length).toBeGreaterThanOrEqual(2);
    expect(mine.some((m) => m.source === "new\nsrc")).toBe(true);
    expect(mine.find((m) => m.target === join(s.dir, "binds/one"))?.root).toBe("/sub dir/deeper\tstill");
    expect(mine.find((m) => m.target === join(s.dir, "binds/two - ro"))?.mountOptions[0]).toBe("ro");
    expect(mine.find((m) => m.target === join(s.dir, "ov/bind of inside"))).toMatchObject({ fstype: "overlay", root: "/inside dir" });
    const props = new Set(mine.map((m) => propagation(m.optionalFields)));
    expect([...props].sort()).toEqual(["private", "private,slave", "private,unbindable", "shared", "shared,slave"]);
  });

  it("findmnt decodes before it splits: its fs-options string cannot be split back, ovl's list can", async () => {
    const { ours, theirs } = await stableSnapshot();
    const expected = overlays[0]!;
    const m = ours.find((x) => x.target === expected.target) as OverlayMount;
    const row = theirs.find((r) => r.id === m.id)!;
    // The same text joined...
    expect(row["fs-options"]).toBe(m.superOptions.join(","));
    // ...but split on its commas it has one option per comma-free piece: `lowerdir+=/…/l,1 with comma` is
    // two "options" to anyone reading findmnt's output, one to ovl.
    const commaLayers = [...expected.lower, ...expected.data, expected.work!].filter((p) => p.includes(","));
    expect(commaLayers.length).toBeGreaterThan(0);
    expect(row["fs-options"].split(",")).toEqual(m.superOptions.flatMap((o) => o.split(",")));
    expect(row["fs-options"].split(",").length).toBe(m.superOptions.length + commaLayers.length);
    for (const p of expected.lower) expect(m.superOptions).toContain(`lowerdir+=${p}`);
    for (const p of expected.data) expect(m.superOptions).toContain(`datadir+=${p}`);
  });
});

describe("parseMountInfo agrees with findmnt -F on the recorded fixtures", () => {
  for (const name of ["kernel-6.18-general.txt", "kernel-6.18-overlay.txt", "no-final-newline.txt"]) {
    it(name, () => {
      const file = fileURLToPath(new URL(`./fixtures/mountinfo/${name}`, import.meta.url));
      const { mounts, issues } = overlay.parseMountInfo(readFileSync(file, "utf8"));
      expect(issues).toEqual([]);
      expect(mounts.length).toBeGreaterThan(0);
      expect(mounts.map(asFindmnt)).toEqual(findmnt(file));
    });
  }
});

describe("malformed lines (the kernel never writes them): ovl is stricter than findmnt, on purpose", () => {
  it("findmnt accepts a negative parent id and a doubled space, ovl reports both; the rest agree", () => {
    const file = fileURLToPath(new URL("./fixtures/mountinfo/malformed.txt", import.meta.url));
    const text = readFileSync(file, "utf8");
    const { mounts, issues } = overlay.parseMountInfo(text);
    const theirs = findmnt(file); // findmnt skips the rest with "parse error at line N -- ignored"
    const lines = text.split("\n");
    // What findmnt accepts beyond ovl: `36 -1 98:0 ...` (a parent of -1) and `... rw  - ext3 ...` (an empty
    // field, which libmount's scanf skips over).
    const extra = theirs.filter((r) => !mounts.some((m) => m.id === r.id && m.parentId === r.parent));
    expect(extra.map((r) => [r.id, r.parent, r.target])).toEqual([
      [36, -1, "/mnt"],
      [36, 35, "/mnt"],
    ]);
    expect(issues.filter((i) => i.reason === "parent id is not a number").map((i) => lines[i.line - 1])).toEqual([
      "36 -1 98:0 / /mnt rw - ext3 /dev/root rw",
    ]);
    expect(issues.filter((i) => i.reason === "empty optional field").map((i) => lines[i.line - 1])).toEqual([
      "36 35 98:0 / /mnt rw  - ext3 /dev/root rw",
    ]);
    // Every line ovl accepts, findmnt reads the same way.
    const same = theirs.filter((r) => !extra.includes(r));
    expect(mounts.map(asFindmnt)).toEqual(same);
  });
});

describe("overlay layers read back from the table equal what was mounted", () => {
  it("in both option forms, with data-only layers, escapes and 500 layers", async () => {
    const all = await overlay.list({ all: true });
    for (const e of overlays) {
      const m = all.find((x) => x.target === e.target);
      expect(m, e.target).toBeDefined();
      expect(m).toMatchObject({ fstype: "overlay", lower: e.lower, data: e.data });
      const o = m as OverlayMount;
      expect(o.upper).toBe(e.upper);
      expect(o.work).toBe(e.work);
      const form = o.superOptions.some((x) => x.startsWith("lowerdir+=")) ? "new" : "legacy";
      expect(form, e.target).toBe(e.form);
    }
  });

  it("list() (overlays only) gives the same entries as list({ all: true }) for overlays", async () => {
    const { ours } = await stableSnapshot();
    const only = await overlay.list();
    const mine = (xs: Array<MountInfo | OverlayMount>) => xs.filter((m) => m.target.startsWith(`${s.dir}/`));
    expect(mine(only)).toEqual(mine(ours).filter((m) => m.fstype === "overlay"));
    expect(mine(only)).toHaveLength(overlays.length);
  });
});
