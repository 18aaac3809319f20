import { chmodSync, existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { join } from "node:path";
import { mountsUnder, packageRootForNobody, realRoot, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const cli = new URL("../dist/cli.js", import.meta.url).pathname;
const ovlRunDirs = () => readdirSync(tmpdir()).filter((n) => n.startsWith("ovl-run-"));

let s: Scratch;
let before: string[];
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch();
  chmodSync(s.dir, 0o755);
  before = ovlRunDirs();
});
afterEach(() => {
  expect(ovlRunDirs()).toEqual(before); // nothing left behind in the temp dir
  s.cleanup();
});

function layers() {
  const [l1, l2] = s.dirs("l1", "l2");
  writeFileSync(`${l1}/top`, "from l1");
  writeFileSync(`${l2}/base`, "from l2");
  writeFileSync(`${l2}/top`, "hidden");
  for (const p of [l1!, l2!, `${l1}/top`, `${l2}/base`, `${l2}/top`]) chmodSync(p, 0o755);
  return { l1: l1!, l2: l2! };
}

describe("ovl run", () => {
  it("runs the command in the merged directory and passes its exit status through; --tmp writes vanish", async () => {
    const { l1, l2 } = layers();
    const r = await execa("node", [cli, "run", "--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", 'pwd; cat top; echo; cat base; echo; echo x > new; rm base; ls; exit 7'], { reject: false });
    expect(r.exitCode).toBe(7);
    const [pwd, top, base, ...ls] = r.stdout.split("\n");
    expect(pwd).toMatch(/\/ovl-run-[^/]+\/merged$/);
    expect([top, base]).toEqual(["from l1", "from l2"]);
    expect(ls.sort()).toEqual(["new", "top"]);
    expect(readdirSync(l1).sort()).toEqual(["top"]);
    expect(readdirSync(l2).sort()).toEqual(["base", "top"]);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("keeps writes in --upper, and passes a signal death through as 128+n", async () => {
    const { l1 } = layers();
    const [upper, work] = s.dirs("upper", "work");
    const r = await execa("node", [cli, "run", "--lower", l1, "--upper", upper!, "--work", work!, "--", "sh", "-c", "echo kept > written"], { reject: false });
    expect(r.exitCode).toBe(0);
    expect(readFileSync(`${upper}/written`, "utf8")).toBe("kept\n");
    const killed = await execa("node", [cli, "run", "--lower", l1, "--upper", upper!, "--work", work!, "--", "sh", "-c", "kill -TERM $$"], { reject: false });
    expect(killed.exitCode).toBe(128 + 15);
  });

  it("reports a bad layer as ovl's error, naming the path, with exit code 32", async () => {
    const { l1 } = layers();
    const r = await execa("node", [cli, "run", "--lower", l1, "--lower", s.path("missing"), "--tmp", "--", "true"], { reject: false });
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toContain(`ovl: run ${s.path("missing")}: lower layer 2`);
    expect(r.stderr).toMatch(/does not exist \(ENOENT\)/);
  });

  it("exits 127 for a command that is not there and 126 for one that cannot be executed, as a shell does", async () => {
    const { l1 } = layers();
    const missing = await execa("node", [cli, "run", "--lower", l1, "--tmp", "--", "nosuchcmd"], { reject: false });
    expect(missing.exitCode).toBe(127);
    expect(missing.stderr).toBe("ovl: run nosuchcmd: command not found");
    writeFileSync(`${l1}/not-executable`, "#!/bin/sh\n");
    chmodSync(`${l1}/not-executable`, 0o644);
    const notExecutable = await execa("node", [cli, "run", "--lower", l1, "--tmp", "--", "./not-executable"], { reject: false });
    expect(notExecutable.exitCode).toBe(126);
    expect(notExecutable.stderr).toBe("ovl: run ./not-executable: permission denied (EACCES)");
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("says to put -- before a command whose options ovl run does not know", async () => {
    const { l1, l2 } = layers();
    const r = await execa("node", [cli, "run", "--lower", l1, "--lower", l2, "--tmp", "ls", "-l"], { reject: false });
    expect(r.exitCode).toBe(1);
    const lines = r.stderr.split("\n");
    expect(lines[0]).toBe("ovl: run: unknown option '-l'");
    expect(lines).toContain("ovl: hint: put -- before the command, so that its options are not taken for ovl's: ovl run --lower DIR ... -- COMMAND [ARGS...]");
  });

  it("passes SIGHUP on to the command, and returns when it has ended", async () => {
    const { l1 } = layers();
    const run = execa("node", [cli, "run", "--lower", l1, "--tmp", "--", "sh", "-c", 'trap "echo got HUP; exit 5" HUP; echo ready; while :; do sleep 0.05; done'], {
      reject: false,
    });
    let out = "";
    run.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    for (let i = 0; i < 400 && !out.includes("ready"); i++) await new Promise((r) => setTimeout(r, 25));
    expect(out).toBe("ready\n");
    run.kill("SIGHUP");
    const r = await run;
    expect(r.stdout).toBe("ready\ngot HUP");
    expect(r.exitCode).toBe(5);
  });

  it.runIf(realRoot)("works for an ordinary user, in a user namespace", async () => {
    const { l1, l2 } = layers();
    const r = await execa(
      "setpriv",
      ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "node", join(packageRootForNobody, "dist", "cli.js"), "run", "--lower", l1, "--lower", l2, "--tmp", "--", "sh", "-c", "id -u; rm base; ls; exit 3"],
      { reject: false },
    );
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(3);
    expect(r.stdout.split("\n")).toEqual(["0", "top"]);
    expect(existsSync(`${l2}/base`)).toBe(true);
  });
});
