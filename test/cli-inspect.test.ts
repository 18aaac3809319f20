import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { ovl as run, ovlAsNobody, requireBuiltCli, requireNobodyCanRunCli } from "./cli-helpers.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-cli-inspect-");
});
afterEach(() => s.cleanup());

/** Runs `ovl ARGS...`, its output as text. */
async function ovl(args: string[]) {
  const r = await run(args);
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** An overlay with one change of each kind made through it. */
async function changed() {
  const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
  s.file("l1/file", "file");
  s.file("l1/gone", "gone");
  s.file("l1/repl/old", "old");
  s.file("l1/ren/f", "f");
  s.file("l2/mode", "mode");
  const m = await overlay.mount({
    lower: [l1!, l2!],
    upper: upper!,
    work: work!,
    target: merged!,
    options: { redirectDir: "on", metacopy: true },
  });
  writeFileSync(`${merged}/file`, "changed");
  unlinkSync(`${merged}/gone`);
  rmSync(`${merged}/repl`, { recursive: true });
  mkdirSync(`${merged}/repl`);
  renameSync(`${merged}/ren`, `${merged}/renamed`);
  chmodSync(`${merged}/mode`, 0o600);
  writeFileSync(`${merged}/line\nbreak`, "a name that could forge a line");
  return { l1: l1!, l2: l2!, upper: upper!, work: work!, merged: merged!, m };
}

const expectedText = [
  "C /file",
  "D /gone",
  "A /line\\nbreak",
  "C /mode  (metadata only)",
  "D /ren",
  "A /renamed  (renamed from /ren)",
  "C /repl  (opaque)",
  "D /repl/old",
  "",
].join("\n");

describe("ovl diff", () => {
  it("prints one change a line like docker diff, sorted, names escaped, overlay's extras noted", async () => {
    const o = await changed();
    const r = await ovl(["diff", o.merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout + "\n").toBe(expectedText);
  });

  it("--json: the changes with their flags, as the library returns them", async () => {
    const o = await changed();
    const r = await ovl(["diff", "--json", o.merged]);
    expect(r.exitCode).toBe(0);
    const changes = JSON.parse(r.stdout);
    expect(changes).toEqual(await overlay.diff(o.merged));
    expect(changes).toContainEqual({ path: "/renamed", change: "A", renamedFrom: "/ren" });
    expect(changes).toContainEqual({ path: "/line\nbreak", change: "A" });
  });

  it("--upper/--lower reads layers that are not mounted", async () => {
    const o = await changed();
    await o.m.unmount();
    const r = await ovl(["diff", "--upper", o.upper, "--lower", o.l1, "--lower", o.l2]);
    expect(r.stderr).toBe("");
    expect(r.stdout + "\n").toBe(expectedText);
  });

  it("usage errors: both a target and layers, or neither, exit 1", async () => {
    const both = await ovl(["diff", s.dir, "--upper", s.dir, "--lower", s.dir]);
    expect(both.exitCode).toBe(1);
    expect(both.stderr).toContain("either a TARGET or --upper with --lower");
    const neither = await ovl(["diff", "--upper", s.dir]);
    expect(neither.exitCode).toBe(1);
    expect(neither.stderr).toContain("--upper and --lower");
    expect(both.stdout + neither.stdout).toBe("");
  });

  it("a path that is not an overlay: one error line naming it, with the code", async () => {
    const r = await ovl(["diff", s.dir]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr.split("\n")[0]).toMatch(new RegExp(`^ovl: diff ${s.dir}: not inside an overlay .*\\(EINVAL\\)$`));
  });
});

describe("ovl diff as an ordinary user", () => {
  beforeAll(() => requireNobodyCanRunCli());

  it("reads user.overlay.* layers, found from the layers themselves or with --userxattr; refuses trusted.overlay.* ones (the kernel hides those xattrs)", async () => {
    const [l1, upper, plainUpper] = s.dirs("l1", "upper", "plain-upper");
    chmodSync(s.dir, 0o755); // mkdtemp makes it 0700
    s.file("l1/d/x", "x");
    s.dirs("upper/d", "plain-upper/d");
    execFileSync("python3", ["-c", "import os,sys; os.setxattr(sys.argv[1], 'user.overlay.opaque', b'y')", `${upper}/d`]);
    for (const flags of [["--userxattr"], []]) {
      const read = await ovlAsNobody(["diff", ...flags, "--upper", upper!, "--lower", l1!]);
      expect([flags, read.stderr, read.stdout]).toEqual([flags, "", "C /d  (opaque)\nD /d/x"]);
    }
    // No user.overlay.* marks, and trusted.overlay.* cannot be read as nobody: refused, and the hint says how.
    const refused = await ovlAsNobody(["diff", "--upper", plainUpper!, "--lower", l1!]);
    expect(refused.exitCode).toBe(1);
    expect(refused.stdout).toBe("");
    expect(String(refused.stderr)).toContain("reading trusted.overlay.* xattrs needs root in the initial user namespace (EPERM)");
    expect(String(refused.stderr)).toContain("ovl diff --userxattr");
  });
});

describe("ovl which", () => {
  it("names the layer and the real path; for a directory every merged layer", async () => {
    const o = await changed();
    const file = await ovl(["which", `${o.merged}/file`]);
    expect(file.stderr).toBe("");
    expect(file.stdout).toBe(`upper  ${o.upper}/file`); // execa drops the final newline
    const lower = await ovl(["which", `${o.merged}/renamed/f`]);
    expect(lower.stdout).toBe(`lower 1  ${o.l1}/ren/f`);
    const dir = await ovl(["which", `${o.merged}/renamed`]);
    expect(dir.stdout).toBe(`upper    ${o.upper}/renamed\nlower 1  ${o.l1}/ren  (merged)`);
    const meta = await ovl(["which", `${o.merged}/mode`]);
    expect(meta.stdout).toBe(`upper    ${o.upper}/mode  (metadata)\nlower 2  ${o.l2}/mode  (data)`);
  });

  it("--json: { path, layer, kind, ... }", async () => {
    const o = await changed();
    const r = await ovl(["which", "--json", `${o.merged}/renamed/f`]);
    expect(JSON.parse(r.stdout)).toEqual({
      path: `${o.merged}/renamed/f`,
      target: o.merged,
      overlayPath: "/renamed/f",
      layer: o.l1,
      kind: "lower",
      index: 1,
      realPath: `${o.l1}/ren/f`,
      type: "file",
    });
  });

  it("ENOENT for a deleted path, on one line naming it", async () => {
    const o = await changed();
    const r = await ovl(["which", `${o.merged}/gone`]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr.split("\n")[0]).toBe(
      `ovl: which ${o.merged}/gone: no layer serves it: '/gone' was deleted (a whiteout in the upper layer ${o.upper}) (ENOENT)`,
    );
  });
});
