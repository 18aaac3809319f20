/**
 * `ovl demo`, run as root and as the ordinary user nobody, to the end, interrupted, killed (SIGKILL) and
 * with its output cut short (`| head`): it never leaves anything in this namespace (the one `npm test` made).
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { execa, type ResultPromise } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { cleanEnv, cliPath, ovl, ovlAsNobody, requireBuiltCli, requireNobodyCanRunCli } from "./cli-helpers.js";
import { alive, childrenOf, mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

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
afterEach(() => {
  try {
    expectNothingLeft();
  } finally {
    s.cleanup();
  }
});

/** Nothing of a demo in this namespace: no mount below the scratch dir (TMPDIR is in it), TMPDIR empty. */
function expectNothingLeft() {
  expect(mountsUnder(s.dir)).toEqual([]);
  expect(readdirSync(tmp)).toEqual([]);
}

/** The steps a newcomer sees, and what each must show. */
function expectWalkthrough(stdout: string, dir: string) {
  expect(stdout).toContain(`ovl demo: an overlay filesystem, live, in ${dir}`);
  expect(stdout).toContain("(All of it is in a mount namespace of the demo's own, on a tmpfs there: nothing is seen outside it, and\nnothing outlives it.)");
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

/** Polls (every 5 ms, for up to 10 s) until `f` gives a value; fails naming `what` otherwise. */
async function until<T>(what: string, f: () => T | undefined | false): Promise<T> {
  for (let i = 0; i < 2000; i++) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}


/** Mount points of process `pid`'s mount namespace below `dir`, with their types. */
function mountsOf(pid: number, dir: string): string[] {
  return readFileSync(`/proc/${pid}/mountinfo`, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const f = l.split(" ");
      return `${f[4]} ${f[f.indexOf("-") + 1]}`;
    })
    .filter((m) => m.startsWith(`${dir}/`) || m.startsWith(`${dir} `));
}

/** Collects a running demo's stdout; `until(text)` resolves once it holds `text`. */
function output(run: ResultPromise) {
  let out = "";
  run.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  return {
    get text() {
      return out;
    },
    until: (text: string) =>
      until(`'${text}' from the demo`, () => {
        if (out.includes(text)) return true;
        if (run.exitCode !== null || run.signalCode !== null) throw new Error(`the demo ended before '${text}':\n${out}`);
        return false;
      }),
  };
}

/** Waits until the paused demo says so; returns the output so far and the pid it names for nsenter. */
async function untilPaused(run: ResultPromise): Promise<{ out: string; pid: number }> {
  const o = output(run);
  await o.until("Paused.");
  const pid = Number(o.text.match(/nsenter -t (\d+) /)?.[1]);
  expect(pid).toBeGreaterThan(0);
  return { out: o.text, pid };
}

describe("ovl demo as root", () => {
  it("walks through mount, merged view, copy to upper, whiteout, unmount, and leaves nothing behind", async () => {
    const r = await ovl(["demo"], { env: { TMPDIR: tmp } });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const dir = demoDir(r.stdout);
    expectWalkthrough(r.stdout, dir);
    expect(r.stdout).not.toContain("userxattr");
  });

  it("mounts in a namespace of its own only; SIGINT while paused cleans up, and it dies of SIGINT", async () => {
    const run = ovl(["demo", "--pause"], { env: { TMPDIR: tmp } });
    const { out, pid } = await untilPaused(run);
    const dir = demoDir(out);
    expect(out).toContain(`inside this demo's namespace (enter it with: nsenter -t ${pid} -m)`);
    // There, a tmpfs on TMPDIR and the overlay on it; here, neither, and not even the directory.
    expect(mountsOf(pid, tmp)).toEqual([`${tmp} tmpfs`, `${dir}/merged overlay`]);
    expect(existsSync(`/proc/${pid}/root${dir}/upper/base.txt`)).toBe(true);
    expect(existsSync(dir)).toBe(false);
    expect(mountsUnder(s.dir)).toEqual([]);
    run.kill("SIGINT");
    const r = await run;
    expect(r.signal).toBe("SIGINT");
    expect(r.stderr).toContain("ovl: demo: SIGINT: stopping and cleaning up");
    expect(r.stdout).toContain(`removed ${dir}`);
  });

  it("goes on after the pause when Enter is pressed", async () => {
    const run = ovl(["demo", "--pause"], { env: { TMPDIR: tmp } });
    await untilPaused(run);
    run.stdin!.write("\n");
    const r = await run;
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^Step 6\. /m);
  });

  it("killed (SIGKILL) at ten moments, from before mounting to paused: nothing is left, and the demo inside dies too", async () => {
    const moments = ["started", "ovl demo:", "Step 1.", "Step 2.", "mounted:", "Step 3.", "Step 4.", "Step 5.", "the overlay is mounted", "Paused."];
    const mountedAtKill: Record<string, boolean> = {};
    for (const moment of moments) {
      const run = ovl(["demo", "--pause"], { env: { TMPDIR: tmp } });
      const o = output(run);
      // The demo inside its namespace: setpriv and unshare execute it in the child's own process.
      const inner = await until("the demo's child", () => childrenOf(run.pid!)[0]);
      if (moment === "the overlay is mounted") {
        await until("the overlay in the demo's namespace", () => {
          try {
            return mountsOf(inner, tmp).some((m) => m.endsWith(" overlay"));
          } catch {
            return false;
          }
        });
      } else if (moment !== "started") await o.until(moment);
      let mounts: string[] = [];
      try {
        mounts = mountsOf(inner, tmp);
      } catch {
        // not in its namespace yet
      }
      mountedAtKill[moment] = mounts.some((m) => m.endsWith(" overlay"));
      run.kill("SIGKILL");
      const r = await run;
      expect(r.signal).toBe("SIGKILL");
      await until(`the demo inside to end after SIGKILL at '${moment}'`, () => !alive(inner));
      expectNothingLeft();
    }
    // It was killed with the overlay mounted (at least where it must have been).
    expect(mountedAtKill).toMatchObject({ "the overlay is mounted": true, "Step 3.": true, "Paused.": true });
  }, 120_000);

  it("`ovl demo | head -20`, ten times: exits 0 with 20 lines, and leaves nothing", async () => {
    for (let i = 0; i < 10; i++) {
      const r = await execa("bash", ["-c", `"$0" "$1" demo | head -20; echo "ovl exited \${PIPESTATUS[0]}" >&2`, process.execPath, cliPath], {
        reject: false,
        extendEnv: false,
        env: cleanEnv({ TMPDIR: tmp }),
      });
      expect(r.stdout.split("\n")).toHaveLength(20);
      expect(r.stdout).toMatch(/^ovl demo: an overlay filesystem, live, in /);
      expect(r.stderr).toBe("ovl exited 0");
      expectNothingLeft();
    }
  }, 120_000);
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
  });

  it("cleans up when interrupted with SIGINT, passing the signal to the re-run", async () => {
    const run = ovlAsNobody(["demo", "--pause"], { env: { TMPDIR: tmp } });
    const { out, pid } = await untilPaused(run);
    const dir = demoDir(out);
    expect(out).toContain(`nsenter -t ${pid} -U -m --preserve-credentials`);
    expect(existsSync(`/proc/${pid}/root${dir}/upper/notes.txt`)).toBe(true);
    // Its mount lives in its own namespace, never in this one.
    expect(mountsOf(pid, tmp)).toEqual([`${tmp} tmpfs`, `${dir}/merged overlay`]);
    expect(mountsUnder(s.dir)).toEqual([]);
    run.kill("SIGINT");
    const r = await run;
    expect(r.signal).toBe("SIGINT");
    expect(r.stderr).toContain("ovl: demo: SIGINT: stopping and cleaning up");
  });

  it("killed (SIGKILL) while paused: nothing is left, and the demo inside dies too", async () => {
    const run = ovlAsNobody(["demo", "--pause"], { env: { TMPDIR: tmp } });
    const { pid } = await untilPaused(run);
    run.kill("SIGKILL");
    expect((await run).signal).toBe("SIGKILL");
    await until("the demo inside to end", () => !alive(pid));
  });
});
