/** `ovl demo`, run as root and as the ordinary user nobody, to the end and interrupted. */
import { chmodSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import type { ResultPromise } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ovl, ovlAsNobody, requireBuiltCli, requireNobodyCanRunCli } from "./cli-helpers.js";
import { mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
/** The demo's TMPDIR: empty before, and it must be empty after. */
let tmp: string;
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-demo-test-");
  chmodSync(s.dir, 0o755);
  tmp = s.path("tmp");
  mkdirSync(tmp);
  chmodSync(tmp, 0o1777); // nobody writes its demo directory here too
});
afterEach(() => s.cleanup());

/** The steps a newcomer sees, and what each must show. */
function expectWalkthrough(stdout: string, dir: string) {
  expect(stdout).toContain(`ovl demo: an overlay filesystem, live, in ${dir}`);
  for (const n of [1, 2, 3, 4, 5, 6]) expect(stdout).toMatch(new RegExp(`^Step ${n}\\. `, "m"));
  // The merged view, with the layer each file comes from.
  expect(stdout).toMatch(/^ {2}merged\/motd +from lower1 +"hello from lower1, the top layer" +\(also in lower2, lower3: hidden below\)$/m);
  expect(stdout).toMatch(/^ {2}merged\/app\.conf +from lower2 /m);
  expect(stdout).toMatch(/^ {2}merged\/base\.txt +from lower3 /m);
  // A new file lands in upper.
  expect(stdout).toMatch(/^ {2}upper\/notes\.txt +"written through the overlay" +<- it landed in the upper layer$/m);
  expect(stdout).toMatch(/^ {2}merged\/notes\.txt +from upper /m);
  // A deleted lower file: a 0/0 character device in upper, the lower file intact.
  expect(stdout).toMatch(/^ {2}upper\/base\.txt +c[-rwx]{9} 0,0 +a whiteout: a character device 0\/0/m);
  expect(stdout).toMatch(/^ {2}lower3\/base\.txt +still there, untouched: "part of the base image"$/m);
  expect(stdout).toContain(`removed ${dir}`);
}

/** The demo directory named on the first line of the output. */
function demoDir(stdout: string): string {
  const dir = stdout.match(/live, in (\S+)$/m)?.[1];
  expect(dir).toBeDefined();
  expect(dir!.startsWith(`${tmp}/ovl-demo-`)).toBe(true);
  return dir!;
}

/** Waits until the paused demo says so; returns everything printed so far. */
async function untilPaused(run: ResultPromise): Promise<string> {
  let out = "";
  await new Promise<void>((resolve, reject) => {
    run.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes("Paused.")) resolve();
    });
    run.once("exit", () => reject(new Error(`the demo ended before pausing:\n${out}`)));
  });
  return out;
}

describe("ovl demo as root", () => {
  it("walks through mount, merged view, copy to upper, whiteout, unmount, and leaves nothing behind", async () => {
    const r = await ovl(["demo"], { env: { TMPDIR: tmp } });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const dir = demoDir(r.stdout);
    expectWalkthrough(r.stdout, dir);
    expect(r.stdout).not.toContain("userxattr");
    expect(readdirSync(tmp)).toEqual([]);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("cleans up when interrupted with SIGINT while mounted, and dies of SIGINT", async () => {
    const run = ovl(["demo", "--pause"], { env: { TMPDIR: tmp } });
    const out = await untilPaused(run);
    const dir = demoDir(out);
    // It really is mounted here (as root the demo mounts in this namespace) and the directory exists.
    expect(mountsUnder(dir).map((m) => m.fstype)).toEqual(["overlay"]);
    expect(existsSync(`${dir}/upper/base.txt`)).toBe(true);
    run.kill("SIGINT");
    const r = await run;
    expect(r.signal).toBe("SIGINT");
    expect(r.stderr).toContain("ovl: demo: SIGINT: stopping and cleaning up");
    expect(r.stdout).toContain(`removed ${dir}`);
    expect(mountsUnder(s.dir)).toEqual([]);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it("goes on after the pause when Enter is pressed", async () => {
    const run = ovl(["demo", "--pause"], { env: { TMPDIR: tmp } });
    await untilPaused(run);
    run.stdin!.write("\n");
    const r = await run;
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^Step 6\. /m);
    expect(readdirSync(tmp)).toEqual([]);
    expect(mountsUnder(s.dir)).toEqual([]);
  });
});

describe("ovl demo as an ordinary user", () => {
  beforeAll(() => requireNobodyCanRunCli());

  it("re-runs itself in a user namespace, says so, mounts with userxattr, and leaves nothing behind", async () => {
    const r = await ovlAsNobody(["demo"], { env: { TMPDIR: tmp } });
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(/^ovl: demo: not running as root: re-running inside a new user namespace \(unshare -Urm\)/);
    const dir = demoDir(r.stdout);
    expectWalkthrough(r.stdout, dir);
    expect(r.stdout).toContain(",userxattr merged");
    expect(readdirSync(tmp)).toEqual([]);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("cleans up when interrupted with SIGINT, passing the signal to the re-run", async () => {
    const run = ovlAsNobody(["demo", "--pause"], { env: { TMPDIR: tmp } });
    const out = await untilPaused(run);
    const dir = demoDir(out);
    expect(existsSync(`${dir}/upper/notes.txt`)).toBe(true);
    // Its mount lives in its own namespace, never in this one.
    expect(mountsUnder(s.dir)).toEqual([]);
    run.kill("SIGINT");
    const r = await run;
    expect(r.signal).toBe("SIGINT");
    expect(r.stderr).toContain("ovl: demo: SIGINT: stopping and cleaning up");
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
  });
});
