import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { MountInfoParseError, parseMountInfo } from "../src/table/mountinfo.js";
import type { MountInfoIssue } from "../src/table/mountinfo.js";
import type { OverlayMount } from "../src/types.js";
import { killChild, namespaceChild, rawMounts, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
const children: ChildProcess[] = [];

beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-list-");
});
afterEach(async () => {
  for (const c of children.splice(0)) await killChild(c);
  s.cleanup();
});

function layers(tag: string) {
  const [l1, l2, upper, work, merged] = s.dirs(`${tag}/l1`, `${tag}/l2`, `${tag}/upper`, `${tag}/work`, `${tag}/merged`);
  s.file(`${tag}/l2/deep/er/file`, "x");
  return { lower: [l1!, l2!], upper: upper!, work: work!, target: merged! };
}


const mine = <T extends { target: string }>(xs: T[]) => xs.filter((m) => m.target.startsWith(`${s.dir}/`));

describe("list()", () => {
  it("lists overlays only by default, and every mount with `all`", async () => {
    const a = layers("a");
    const m = await overlay.mount(a);
    const [t] = s.dirs("tmp");
    execFileSync("mount", ["-t", "tmpfs", "list-tmpfs", t!]);

    const overlays = await overlay.list();
    expect(overlays.every((x) => x.fstype === "overlay")).toBe(true);
    expect(mine(overlays)).toEqual([expect.objectContaining({ id: m.id, target: a.target, lower: a.lower, upper: a.upper, work: a.work })]);

    const all = await overlay.list({ all: true });
    expect(mine(all).map((x) => [x.target, x.fstype])).toEqual([
      [a.target, "overlay"],
      [t, "tmpfs"],
    ]);
    // Every line of the table, in the table's order (read again until no other test file changed it meanwhile).
    for (let attempt = 0; ; attempt++) {
      const before = rawMounts().map((r) => r.id);
      const ids = (await overlay.list({ all: true })).map((x) => x.id);
      if (attempt < 20 && JSON.stringify(before) !== JSON.stringify(rawMounts().map((r) => r.id))) continue;
      expect(ids).toEqual(before);
      break;
    }
    expect("lower" in mine(all)[1]!).toBe(false);
  });

  it("keeps skipped-line reports out of JSON (`issues` is not enumerable) and finds none on a real table", async () => {
    const a = layers("a");
    await overlay.mount(a);
    const reported: MountInfoIssue[] = [];
    const loose = await overlay.list({ all: true, onIssue: (i) => reported.push(i) });
    const strict = await overlay.list({ all: true, strict: true });
    expect(reported).toEqual([]);
    expect(loose.issues).toEqual([]);
    expect(strict.map((x) => x.id)).toEqual(loose.map((x) => x.id));
    expect(Array.isArray(JSON.parse(JSON.stringify(loose)))).toBe(true);
    expect(Object.keys(loose)).not.toContain("issues");
  });

  it("skips or throws on malformed lines at the parse level (the kernel's own table cannot be corrupted)", () => {
    const text = readFileSync(new URL("./fixtures/mountinfo/malformed.txt", import.meta.url), "utf8");
    const { mounts, issues } = parseMountInfo(text);
    expect(issues.length).toBeGreaterThan(5);
    expect(mounts.length).toBeGreaterThan(0);
    expect(() => parseMountInfo(text, { strict: true })).toThrow(MountInfoParseError);
    try {
      parseMountInfo(text, { strict: true });
    } catch (e) {
      expect(e).toMatchObject({ code: "ERR_OVL_MOUNTINFO_PARSE", line: issues[0]!.line, reason: issues[0]!.reason });
    }
  });
});

describe("list({ target })", () => {
  it("gives the overlay at a mount point, or containing a deeper path or a file", async () => {
    const a = layers("a");
    const m = await overlay.mount(a);
    for (const path of [a.target, `${a.target}/deep`, `${a.target}/deep/er`, `${a.target}/deep/er/file`, `${a.target}/deep/../deep/er/`]) {
      const found = await overlay.list({ target: path });
      expect(found.map((x) => x.id), path).toEqual([m.id]);
      expect(found[0]).toMatchObject({ target: a.target, lower: a.lower });
    }
  });

  it("gives the innermost mount: a tmpfs inside an overlay is not an overlay, unless `all`", async () => {
    const a = layers("a");
    await overlay.mount(a);
    execFileSync("mkdir", ["-p", `${a.target}/inner/dir`]);
    execFileSync("mount", ["-t", "tmpfs", "inner", `${a.target}/inner`]);
    execFileSync("mkdir", ["-p", `${a.target}/inner/dir`]);
    expect(await overlay.list({ target: `${a.target}/inner/dir` })).toEqual([]);
    const all = await overlay.list({ target: `${a.target}/inner/dir`, all: true });
    expect(all.map((x) => [x.target, x.fstype])).toEqual([[`${a.target}/inner`, "tmpfs"]]);
  });

  it("gives the top one of stacked mounts on the same target", async () => {
    const a = layers("a");
    execFileSync("mount", ["-t", "tmpfs", "under", a.target]);
    const m = await overlay.mount(a);
    expect((await overlay.list({ target: a.target, all: true })).map((x) => x.id)).toEqual([m.id]);
    await m.unmount();
    expect((await overlay.list({ target: a.target, all: true })).map((x) => [x.fstype, x.source])).toEqual([["tmpfs", "under"]]);
  });

  it("resolves a relative path against the working directory", async () => {
    const a = layers("a");
    const m = await overlay.mount(a);
    const cwd = process.cwd();
    process.chdir(a.target);
    try {
      expect((await overlay.list({ target: "deep/er" })).map((x) => x.id)).toEqual([m.id]);
    } finally {
      process.chdir(cwd);
    }
  });

  it("rejects a path that does not exist with ENOENT naming it", async () => {
    const missing = `${s.dir}/no/such/dir`;
    await expect(overlay.list({ target: missing })).rejects.toMatchObject({ code: "ENOENT", path: missing });
  });
});

describe("list({ pid }): another mount namespace", () => {
  it("reads the other process's table, with layers, and not ours", async () => {
    const child = await namespaceChild((c) => children.push(c));
    const [l1, l2, merged, t] = s.dirs("l1", "l2", "merged", "theirs");
    s.file("l1/deeper/x", "x");
    const ns = ["-t", String(child.pid), "-m"];
    execFileSync("nsenter", [...ns, "mount", "-t", "overlay", "their ov", "-o", `lowerdir=${l1}:${l2}`, merged!]);
    execFileSync("nsenter", [...ns, "mount", "-t", "tmpfs", "their tmpfs", t!]);

    const theirs = await overlay.list({ pid: child.pid });
    expect(mine(theirs)).toEqual([expect.objectContaining({ target: merged, source: "their ov", lower: [l1, l2], data: [] })]);
    expect((mine(theirs)[0] as OverlayMount).upper).toBeUndefined();
    expect(mine(await overlay.list())).toEqual([]);

    const theirsAll = await overlay.list({ pid: child.pid, all: true });
    expect(mine(theirsAll).map((x) => [x.target, x.fstype])).toEqual([
      [merged, "overlay"],
      [t, "tmpfs"],
    ]);
    // A target in their namespace is matched by path against their table.
    expect((await overlay.list({ pid: child.pid, target: `${merged}/deeper` })).map((x) => x.target)).toEqual([merged]);
    expect(await overlay.list({ pid: child.pid, target: `${t}/x` })).toEqual([]);
    expect((await overlay.list({ pid: child.pid, target: `${t}/x`, all: true })).map((x) => x.source)).toEqual(["their tmpfs"]);
  });

  it("of this process's own pid is the same as list()", async () => {
    const a = layers("a");
    await overlay.mount(a);
    expect(mine(await overlay.list({ pid: process.pid }))).toEqual(mine(await overlay.list()));
  });

  it("rejects with ESRCH for a process that does not exist", async () => {
    const pid = Number(readFileSync("/proc/sys/kernel/pid_max", "utf8")) + 1;
    await expect(overlay.list({ pid })).rejects.toMatchObject({ code: "ESRCH", syscall: "open", path: `/proc/${pid}/mountinfo` });
  });
});

describe("list(): arguments", () => {
  it("refuses bad options as Node does", async () => {
    const cases: Array<[unknown, string]> = [
      ["all", "ERR_INVALID_ARG_TYPE"],
      [null, "ERR_INVALID_ARG_TYPE"],
      [[], "ERR_INVALID_ARG_TYPE"],
      [{ pid: 0 }, "ERR_INVALID_ARG_VALUE"],
      [{ pid: -3 }, "ERR_INVALID_ARG_VALUE"],
      [{ pid: 2.5 }, "ERR_INVALID_ARG_VALUE"],
      [{ pid: "12" }, "ERR_INVALID_ARG_TYPE"],
      [{ target: "" }, "ERR_INVALID_ARG_VALUE"],
      [{ target: "a\0b" }, "ERR_INVALID_ARG_VALUE"],
      [{ target: 7 }, "ERR_INVALID_ARG_TYPE"],
      [{ all: "yes" }, "ERR_INVALID_ARG_TYPE"],
      [{ strict: 1 }, "ERR_INVALID_ARG_TYPE"],
      [{ onIssue: true }, "ERR_INVALID_ARG_TYPE"],
    ];
    for (const [opts, code] of cases) {
      await expect(overlay.list(opts as never), JSON.stringify(opts)).rejects.toMatchObject({ code });
    }
  });

  it("accepts no options and an empty object alike", async () => {
    const a = layers("a");
    const m = await overlay.mount(a);
    expect(mine(await overlay.list({})).map((x) => x.id)).toEqual([m.id]);
    expect(mine(await overlay.list(undefined)).map((x) => x.id)).toEqual([m.id]);
  });
});
