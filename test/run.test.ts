/**
 * `ovl run` as a user drives it: the command in a throwaway overlay, its exit status, the mount options of
 * `ovl mount`, and nothing left behind in this namespace (the one `npm test` made) however the run ends:
 * SIGKILL of ovl, of the ovl inside the namespaces, or of the command, and signals while it is mounting.
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { setImmediate as tick, setTimeout as sleep } from "node:timers/promises";
import type { ResultPromise } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { asNobody, cleanEnv, ovl, ovlAsNobody, requireBuiltCli, requireNobodyCanRunCli } from "./cli-helpers.js";
import { alive, childrenOf, mountsUnder, realRoot, requirePrivateMountNamespace, scratch, setXattr, type Scratch } from "./helpers.js";

/** An argument of `sleep` that no other process has: finds the command (and what it started) by /proc. */
const MARK = "4321.25";

let s: Scratch;
/** The runs' TMPDIR: where the one scratch mount point of each user goes; nothing else may appear. */
let tmp: string;
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-run-test-");
  chmodSync(s.dir, 0o755);
  tmp = s.path("tmp");
  mkdirSync(tmp);
  chmodSync(tmp, 0o1777); // nobody makes its scratch mount point here too
});
afterEach(async () => {
  try {
    await expectNothingLeft();
  } finally {
    // A failed test's runs must not outlive it (they would fail the next one).
    for (const pid of markProcesses()) process.kill(pid, "SIGKILL");
    s.cleanup();
  }
});

const env = () => ({ TMPDIR: tmp });
const run = (args: string[], extra: Record<string, string> = {}) => ovl(["run", ...args], { env: { ...env(), ...extra } });

/** Processes whose command line has MARK (zombies have none: they are gone). */
function markProcesses(): number[] {
  const out: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").includes(MARK)) out.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}


/** The ovl inside the namespaces: ovl -> setpriv/unshare -> this one (pid 1 of its pid namespace). */
function innerOvl(outer: number): number | undefined {
  return childrenOf(outer).flatMap(childrenOf)[0];
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

/** This namespace as the run must leave it: no overlay or tmpfs, TMPDIR as it was, no process of it. */
async function expectNothingLeft() {
  // Whatever a kill left running dies with its namespaces, asynchronously: wait for that, then look.
  await until("the run's processes to end", () => markProcesses().length === 0).catch(() => undefined);
  expect(markProcesses()).toEqual([]);
  // Every mount a run makes would be below the scratch directory (TMPDIR is in it).
  expect(mountsUnder(s.dir)).toEqual([]);
  for (const entry of readdirSync(tmp)) {
    // Only each user's one mount point, empty on this side: every run mounts its own tmpfs there.
    expect(entry).toMatch(/^\.ovl-run-\d+$/);
    expect(readdirSync(join(tmp, entry))).toEqual([]);
  }
}

function layers() {
  const [l1, l2] = s.dirs("l1", "l2");
  writeFileSync(`${l1}/top`, "from l1");
  writeFileSync(`${l2}/base`, "from l2");
  writeFileSync(`${l2}/top`, "hidden");
  for (const p of [l1!, l2!, `${l1}/top`, `${l2}/base`, `${l2}/top`]) chmodSync(p, 0o755);
  return { l1: l1!, l2: l2! };
}

/** Collects a running ovl's stdout; resolves once it holds `text`. */
function output(p: ResultPromise) {
  let out = "";
  p.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  return {
    get text() {
      return out;
    },
    until: (text: string) => until(`'${text}' on stdout (got ${JSON.stringify(out)})`, () => out.includes(text)),
  };
}

describe("ovl run", () => {
  it("runs the command in the merged directory and passes its exit status through; --tmp writes vanish", async () => {
    const { l1, l2 } = layers();
    const r = await run(["--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", "pwd; cat top; echo; cat base; echo; echo x > new; rm base; ls; exit 7"]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(7);
    const [pwd, top, base, ...ls] = r.stdout.split("\n");
    // The merged directory is on the run's own tmpfs, on the one mount point of this user.
    expect(pwd).toBe(join(tmp, ".ovl-run-0", "merged"));
    expect([top, base]).toEqual(["from l1", "from l2"]);
    expect(ls.sort()).toEqual(["new", "top"]);
    expect(readdirSync(l1).sort()).toEqual(["top"]);
    expect(readdirSync(l2).sort()).toEqual(["base", "top"]);
  });

  it("runs the command in namespaces of its own: a pid namespace whose /proc it sees, none of ovl's variables", async () => {
    const { l1, l2 } = layers();
    const r = await run(["--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", "cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; env | grep -c -e '^OVL_RUN' -e '^OVL_PARENT'"]);
    const [init, processes, ovlVariables] = r.stdout.split("\n");
    expect(init).toBe("node"); // the inner ovl is pid 1
    expect(Number(processes)).toBeLessThan(5); // ovl, sh, grep, ls: not this machine's processes
    expect(ovlVariables).toBe("0");
    expect(r.exitCode).toBe(1); // grep -c found none
  });

  it("keeps writes in --upper, and passes a signal death through as 128+n", async () => {
    const { l1 } = layers();
    const [upper, work] = s.dirs("upper", "work");
    const r = await run(["--lower", l1, "--upper", upper!, "--work", work!, "--", "sh", "-c", "echo kept > written"]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(`${upper}/written`, "utf8")).toBe("kept\n");
    const killed = await run(["--lower", l1, "--upper", upper!, "--work", work!, "--", "sh", "-c", "kill -TERM $$"]);
    expect(killed.exitCode).toBe(128 + 15);
  });

  it("reports a bad layer as ovl's error, naming the path, with exit code 32", async () => {
    const { l1 } = layers();
    const r = await run(["--lower", l1, "--lower", s.path("missing"), "--tmp", "--", "true"]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toContain(`ovl: run ${s.path("missing")}: lower layer 2`);
    expect(r.stderr).toMatch(/does not exist \(ENOENT\)/);
  });

  it("exits 127 for a command that is not there and 126 for one that cannot be executed, as a shell does", async () => {
    const { l1 } = layers();
    const missing = await run(["--lower", l1, "--tmp", "--", "nosuchcmd"]);
    expect(missing.exitCode).toBe(127);
    expect(missing.stderr).toBe("ovl: run nosuchcmd: command not found");
    writeFileSync(`${l1}/not-executable`, "#!/bin/sh\n");
    chmodSync(`${l1}/not-executable`, 0o644);
    const notExecutable = await run(["--lower", l1, "--tmp", "--", "./not-executable"]);
    expect(notExecutable.exitCode).toBe(126);
    expect(notExecutable.stderr).toBe("ovl: run ./not-executable: permission denied (EACCES)");
    // Found in PATH but not executable: 126 too, as bash says it.
    const inPath = await run(["--lower", l1, "--tmp", "--", "not-executable"], { PATH: `${s.path("nothing-here")}:.:/usr/bin:/bin` });
    expect(inPath.exitCode).toBe(126);
    expect(inPath.stderr).toBe("ovl: run not-executable: permission denied (EACCES)");
  });

  it("says to put -- before a command whose options ovl run does not know", async () => {
    const { l1, l2 } = layers();
    const r = await run(["--lower", l1, "--lower", l2, "--tmp", "ls", "-l"]);
    expect(r.exitCode).toBe(1);
    const lines = r.stderr.split("\n");
    expect(lines[0]).toBe("ovl: run: unknown option '-l'");
    expect(lines).toContain("ovl: hint: put -- before the command, so that its options are not taken for ovl's: ovl run --lower DIR ... -- COMMAND [ARGS...]");
  });

  it("passes SIGHUP on to the command, and returns when it has ended", async () => {
    const { l1 } = layers();
    const p = run(["--lower", l1, "--tmp", "--", "sh", "-c", 'trap "echo got HUP; exit 5" HUP; echo ready; while :; do sleep 0.05; done']);
    const out = output(p);
    await out.until("ready");
    expect(out.text).toBe("ready\n");
    p.kill("SIGHUP");
    const r = await p;
    expect(r.stdout).toBe("ready\ngot HUP");
    expect(r.exitCode).toBe(5);
  });

  it.runIf(realRoot)("works for an ordinary user, in a user namespace", async () => {
    const { l1, l2 } = layers();
    const r = await ovlAsNobody(["run", "--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", "id -u; pwd; rm base; ls; exit 3"], { env: env() });
    // The layers are root's, so nobody's namespace cannot map their owner: said up front, with the fix.
    expect(r.stderr.split("\n")).toEqual([
      expect.stringMatching(new RegExp(`^ovl: run: lower layer 1 '${l1}' has an owner and group with no mapping in this user namespace .*chown -R`)),
      expect.stringMatching(new RegExp(`^ovl: run: lower layer 2 '${l2}' has an owner and group with no mapping`)),
    ]);
    expect(r.exitCode).toBe(3);
    expect(r.stdout.split("\n")).toEqual(["0", join(tmp, ".ovl-run-65534", "merged"), "top"]);
    expect(existsSync(`${l2}/base`)).toBe(true);
  });
});

describe("ovl run takes ovl mount's options", () => {
  it("-o: layers in lowerdir=, overlay features and flags, as on ovl mount", async () => {
    const { l1, l2 } = layers();
    const r = await run(["-o", `lowerdir=${l1}:${l2},redirect_dir=on`, "-o", "noexec", "--tmp", "--", "sh", "-c", "ls; grep ' - overlay ' /proc/self/mountinfo"]);
    expect(r.exitCode).toBe(0);
    const [ls1, ls2, line] = r.stdout.split("\n");
    expect([ls1, ls2]).toEqual(["base", "top"]);
    expect(line).toMatch(/ \/\S*\/merged rw,noexec,\S* - overlay overlay \S*redirect_dir=on/);
    // noexec is in force: a program copied in cannot be run (126, as a shell says).
    const noexec = await run(["--lower", l1, "--tmp", "-o", "noexec", "--", "sh", "-c", "cp /bin/true ./t && exec ./t"]);
    expect(noexec.exitCode).toBe(126);
    // Read the way ovl mount reads them: the same words refused the same way, with a usage error (1).
    const bad = await run(["--lower", l1, "--tmp", "-o", "redirect_dir=sideways", "--", "true"]);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain("mount option 'redirect_dir=sideways' needs one of the values redirect_dir=on, redirect_dir=follow");
    const both = await run(["--lower", l1, "-o", `lowerdir=${l2}`, "--tmp", "--", "true"]);
    expect(both.exitCode).toBe(1);
    expect(both.stderr).toContain("--lower and -o lowerdir= both give the lower layers");
    const none = await run(["--tmp", "--", "true"]);
    expect(none.exitCode).toBe(1);
    expect(none.stderr).toContain("ovl: run: no lower layer given");
    // One lower and no upper: the hint offers --tmp.
    const oneLower = await ovl(["run", "--lower", s.dirs("only")[0]!, "--", "true"]);
    expect(oneLower.exitCode).toBe(32);
    expect(oneLower.stderr).toContain("ovl: hint: add --tmp (a throwaway upper and work on a tmpfs), --upper U --work W, or a second --lower");
  });

  it("-o upperdir=/workdir= keep the changes there; --tmp with them is refused", async () => {
    const { l1 } = layers();
    const [upper, work] = s.dirs("upper", "work");
    const r = await run(["--lower", l1, "-o", `upperdir=${upper},workdir=${work}`, "--", "sh", "-c", "echo kept > written"]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(`${upper}/written`, "utf8")).toBe("kept\n");
    const both = await run(["--lower", l1, "-o", `upperdir=${upper},workdir=${work}`, "--tmp", "--", "true"]);
    expect(both.exitCode).toBe(1);
    expect(both.stderr).toContain("ovl: run: --tmp makes the upper and work directories itself, on a tmpfs");
  });

  it("-r and -o ro mount read-only, upper layer or not", async () => {
    const { l1, l2 } = layers();
    for (const flag of [["-r"], ["-o", "ro"]]) {
      const r = await run(["--lower", l1, "--lower", l2, "--tmp", ...flag, "--", "sh", "-c", "cat top; echo; echo x > new"]);
      expect(r.stdout).toBe("from l1");
      expect(r.stderr).toMatch(/Read-only file system/);
      expect(r.exitCode).not.toBe(0);
    }
  });

  it("--data adds data-only layers, reached only through metacopy redirects", async () => {
    const { l1 } = layers();
    const [data] = s.dirs("data");
    writeFileSync(`${data}/blob`, "content from the data layer\n");
    chmodSync(`${data}/blob`, 0o644);
    const r = await run(["--lower", l1, "--data", data!, "--tmp", "--", "sh", "-c", "ls; grep ' - overlay ' /proc/self/mountinfo"]);
    expect(r.exitCode).toBe(0);
    const [ls, line] = r.stdout.split("\n");
    expect(ls).toBe("top"); // the data layer's files are not in the merged view
    expect(line).toContain(`datadir+=${data}`);
    if (realRoot) {
      // A metacopy file whose data is in the data layer (trusted.* xattrs: real root only).
      writeFileSync(`${l1}/file`, "");
      spawnSync("truncate", ["-s", String("content from the data layer\n".length), `${l1}/file`]);
      setXattr(`${l1}/file`, "trusted.overlay.metacopy", "");
      setXattr(`${l1}/file`, "trusted.overlay.redirect", "/blob");
      const viaData = await run(["--lower", l1, "--data", data!, "--tmp", "-o", "metacopy=on,redirect_dir=on", "--", "cat", "file"]);
      expect(viaData.stdout).toBe("content from the data layer");
      expect(viaData.exitCode).toBe(0);
      const without = await run(["--lower", l1, "--tmp", "-o", "metacopy=on,redirect_dir=on", "--", "cat", "file"]);
      expect(without.stdout).not.toContain("content from the data layer");
    }
  });

  it("--tmpfs SIZE: --tmp on a tmpfs of that size; a size tmpfs does not take is refused", async () => {
    const { l1 } = layers();
    const r = await run(["--lower", l1, "--tmpfs", "1m", "--", "sh", "-c", "df -k --output=size . | tail -1; head -c 500000 /dev/zero > small; echo $?; head -c 2000000 /dev/zero > big; echo $?"]);
    const [size, small, big] = r.stdout.split("\n").map((l) => l.trim());
    expect(size).toBe("1024");
    expect(big).not.toBe("0"); // No space left on device
    expect(r.stderr).toMatch(/No space left on device/);
    expect(small).toBe("0");
    const bad = await run(["--lower", l1, "--tmpfs", "lots", "--", "true"]);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain("ovl: run: --tmpfs lots: not a size");
    const withUpper = await run(["--lower", l1, "--tmpfs", "1m", "--upper", s.path("u"), "--work", s.path("w"), "--", "true"]);
    expect(withUpper.exitCode).toBe(1);
  });
});

describe("ovl run finds the command as a shell does", () => {
  // As root every directory can be searched: the unreadable one is root's, and the run is the user nobody's
  // (CI runs as root, so this never skips there).
  it.runIf(realRoot)("exits 127 for a missing command even when PATH holds a directory it cannot search", async () => {
    const noread = s.dirs("noread")[0]!;
    chmodSync(noread, 0o700);
    const { l1 } = layers();
    await requireNobodyCanRunCli();
    const PATH = `${noread}:/usr/bin:/bin`;
    // The trap is real: execvp(3), as libuv and Node use it, gives up with EACCES here.
    const probe = spawnSync("setpriv", [...asNobody, "env", `PATH=${PATH}`, process.execPath, "-e", 'const r = require("child_process").spawnSync("nosuchcmd"); console.log(r.error.code)'], {
      encoding: "utf8",
      env: cleanEnv(),
    });
    expect(probe.stdout.trim()).toBe("EACCES");
    const r = await ovlAsNobody(["run", "--lower", l1, "--tmp", "--", "nosuchcmd"], { env: { ...env(), PATH } });
    // (First the warning that root's layer has no owner mapping in nobody's namespace.)
    expect(r.stderr.split("\n").at(-1)).toBe("ovl: run nosuchcmd: command not found");
    expect(r.stderr).toMatch(/^ovl: run: lower layer '.*' has an owner and group with no mapping/);
    expect(r.exitCode).toBe(127);
    // And a command that is there is found past it.
    const found = await ovlAsNobody(["run", "--lower", l1, "--tmp", "--", "cat", "top"], { env: { ...env(), PATH } });
    expect(found.stdout).toBe("from l1");
    expect(found.exitCode).toBe(0);
  });
});

describe("ovl run leaves nothing", () => {
  const victims = ["ovl", "the ovl inside the namespaces", "the command"] as const;

  it("SIGKILL of ovl, of the ovl inside, or of the command, 30 times: no scratch directory, mount or process is left", async () => {
    const { l1, l2 } = layers();
    const counts = { runs: 0, mountedWhenKilled: 0 };
    for (let i = 0; i < 30; i++) {
      const victim = victims[i % 3]!;
      // The command leaves a process of its own running in the background too: it must end with the run.
      const p = run(["--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", `sleep ${MARK} & echo ready; exec sleep ${MARK}`]);
      const out = output(p);
      await out.until("ready");
      const inner = await until("the inner ovl", () => innerOvl(p.pid!));
      await until("the command and its background process", () => markProcesses().length === 2);
      const command = childrenOf(inner)[0]!;
      // It is mounted, in the run's namespace (not in this one).
      const mounts = readFileSync(`/proc/${inner}/mountinfo`, "utf8");
      if (/ \/\S*\.ovl-run-0\/merged .* - overlay /.test(mounts)) counts.mountedWhenKilled++;
      const target = victim === "ovl" ? p.pid! : victim === "the command" ? command : inner;
      process.kill(target, "SIGKILL");
      const r = await p;
      if (victim === "ovl") expect(r.signal).toBe("SIGKILL");
      else if (victim === "the command" || r.exitCode === 128 + 9) expect(r.exitCode).toBe(128 + 9);
      else {
        // util-linux before 2.40 cannot pass a child's SIGKILL on (util-linux#2614): it says so and exits 1.
        expect(r.stderr).toBe("unshare: sigprocmask unblock failed: Invalid argument");
        expect(r.exitCode).toBe(1);
      }
      await until(`the inner ovl to end after SIGKILL of ${victim}`, () => !alive(inner));
      await expectNothingLeft();
      counts.runs++;
    }
    expect(counts).toEqual({ runs: 30, mountedWhenKilled: 30 });
  }, 180_000);

  it("a signal while it starts and mounts ends it with 128+n, and leaves nothing", async () => {
    // The inner ovl is stopped (SIGSTOP) at a point of its start, the signal sent to ovl, the inner ovl
    // let go (SIGCONT): each run lands the signal in a known phase.
    const { l1, l2 } = layers();
    const started = s.path("started");
    const stopAt = ["inner ovl exists", "tmpfs mounted", "overlay mounted"] as const;
    const phases = new Map<string, number>();
    for (let i = 0; i < 27; i++) {
      const sig = (["SIGINT", "SIGTERM", "SIGHUP"] as const)[i % 3]!;
      const point = stopAt[Math.floor(i / 3) % 3]!;
      const p = run(["--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", `echo run >> ${started}; exec sleep ${MARK}`]);
      let inner: number | undefined;
      for (let n = 0; n < 200_000 && p.exitCode === null; n++) {
        inner ??= innerOvl(p.pid!);
        if (inner !== undefined) {
          let mounts = "";
          try {
            mounts = readFileSync(`/proc/${inner}/mountinfo`, "utf8");
          } catch {
            break;
          }
          const tmpfs = / \/\S*\.ovl-run-0 .* - tmpfs /.test(mounts);
          const overlay = / \/\S*\.ovl-run-0\/merged .* - overlay /.test(mounts);
          if (point === "inner ovl exists" || (point === "tmpfs mounted" && tmpfs) || overlay) {
            process.kill(inner, "SIGSTOP");
            break;
          }
        }
        await tick();
      }
      expect(inner).toBeDefined();
      const mounts = readFileSync(`/proc/${inner}/mountinfo`, "utf8");
      const phase =
        childrenOf(inner!).length > 0
          ? "command started"
          : / \/\S*\.ovl-run-0\/merged .* - overlay /.test(mounts)
            ? "overlay mounted"
            : / \/\S*\.ovl-run-0 .* - tmpfs /.test(mounts)
              ? "tmpfs mounted"
              : "starting";
      phases.set(phase, (phases.get(phase) ?? 0) + 1);
      const before = existsSync(started) ? readFileSync(started, "utf8") : "";
      p.kill(sig);
      process.kill(inner!, "SIGCONT");
      const r = await p;
      const n = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 }[sig];
      expect({ phase, sig, status: r.exitCode }).toEqual({ phase, sig, status: 128 + n });
      if (phase === "starting" || phase === "tmpfs mounted") {
        // Stopped before the overlay was there: the signal ended the run before the command began. (Stopped
        // later, it may be past its last look at signals and start the command, which then gets it.)
        expect(existsSync(started) ? readFileSync(started, "utf8") : "").toBe(before);
      }
      await until("the inner ovl to end", () => !alive(inner!));
      await expectNothingLeft();
    }
    // The mount window was hit: stopped with the tmpfs or the overlay mounted and the command not started.
    expect((phases.get("tmpfs mounted") ?? 0) + (phases.get("overlay mounted") ?? 0)).toBeGreaterThan(0);
  }, 180_000);
});
