/** The `ovl` command, driven as a user would: the built dist/cli.js, real overlays, real processes. */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, symlinkSync } from "node:fs";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { cleanEnv, cliPath, ovl, ovlAsNobody, requireBuiltCli, requireNobodyCanRunCli } from "./cli-helpers.js";
import { killChild, mountsUnder, namespaceChild, rawMounts, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
const ESC = /\x1b\[/;

let s: Scratch;
let children: ChildProcess[] = [];
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-cli-");
  children = [];
});
afterEach(async () => {
  for (const c of children) await killChild(c);
  s.cleanup();
});

function layout() {
  const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
  s.file("l1/file", "from l1");
  s.file("l2/only-l2", "from l2");
  return { l1: l1!, l2: l2!, upper: upper!, work: work!, merged: merged! };
}

/** `--lower l1 --lower l2 --upper u --work w` for a layout. */
const layerFlags = (L: ReturnType<typeof layout>) => ["--lower", L.l1, "--lower", L.l2, "--upper", L.upper, "--work", L.work];

/** A `sleep` whose working directory is `cwd` (or with stdin open on a file), running once this resolves. */
async function holder(opts: { cwd?: string; stdinFile?: string }): Promise<number> {
  const fd = opts.stdinFile !== undefined ? openSync(opts.stdinFile, "r") : undefined;
  try {
    const child = spawn("sleep", ["1000"], { cwd: opts.cwd, stdio: [fd ?? "ignore", "ignore", "ignore"] });
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      child.once("error", reject);
      child.once("spawn", () => resolve());
    });
    for (let i = 0; i < 200 && readFileSync(`/proc/${child.pid}/comm`, "utf8").trim() !== "sleep"; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    return child.pid!;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

const overlaysAt = (target: string) => rawMounts().filter((m) => m.target === target && m.fstype === "overlay");

describe("help, version, usage errors", () => {
  it("prints help for the program and for each command, exit 0", async () => {
    const top = await ovl(["--help"]);
    expect(top.exitCode).toBe(0);
    for (const cmd of ["ls", "mount", "umount", "fuser", "demo"]) expect(top.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, "m"));
    const mount = await ovl(["mount", "--help"]);
    expect(mount.exitCode).toBe(0);
    expect(mount.stdout).toContain("Usage: ovl mount [options] [SOURCE] TARGET");
    expect(mount.stdout).toContain("--lower <dir>");
    expect(mount.stdout).toContain("-o, --options <list>");
    const umount = await ovl(["umount", "--help"]);
    expect(umount.stdout).toContain("-R, --recursive");
    expect(umount.stdout).toContain("-l, --lazy");
    expect((await ovl(["help", "fuser"])).stdout).toContain("Usage: ovl fuser");
  });

  it("prints the package version", async () => {
    const r = await ovl(["--version"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe(pkg.version);
  });

  it("refuses an unknown command or option with exit 1 and a one-line reason on stderr", async () => {
    const cmd = await ovl(["frobnicate"]);
    expect(cmd.exitCode).toBe(1);
    expect(cmd.stdout).toBe("");
    expect(cmd.stderr.split("\n")[0]).toBe("ovl: unknown command 'frobnicate'");
    const opt = await ovl(["mount", "--bogus", "/x"]);
    expect(opt.exitCode).toBe(1);
    expect(opt.stderr).toBe("ovl: mount: unknown option '--bogus'\novl: hint: run 'ovl mount --help' for usage");
    const missing = await ovl(["umount"]);
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toMatch(/^ovl: umount: missing required argument 'target'/);
  });

  it("names the command in usage errors and points to its own help, for every command", async () => {
    for (const cmd of ["ls", "mount", "umount", "fuser", "demo", "diff", "which", "run"]) {
      const r = await ovl([cmd, "--bogus"]);
      expect(r.exitCode).toBe(1);
      const lines = r.stderr.split("\n");
      expect([lines[0], lines.at(-1)]).toEqual([`ovl: ${cmd}: unknown option '--bogus'`, `ovl: hint: run 'ovl ${cmd} --help' for usage`]);
      expect(lines).toHaveLength(cmd === "run" ? 3 : 2); // run adds its hint about `--`
    }
    const both = await ovl(["diff", "/x", "--upper", "/u"]);
    expect(both.exitCode).toBe(1);
    expect(both.stderr.split("\n")[0]).toBe("ovl: diff: give either a TARGET or --upper with --lower, not both");
  });
});

describe("ovl mount", () => {
  it("mounts with --lower/--upper/--work, silently when not on a terminal", async () => {
    const L = layout();
    const r = await ovl(["mount", ...layerFlags(L), L.merged]);
    expect(r).toMatchObject({ exitCode: 0, stdout: "", stderr: "" });
    expect(overlaysAt(L.merged)).toHaveLength(1);
    expect(readFileSync(`${L.merged}/file`, "utf8")).toBe("from l1");
    expect(readFileSync(`${L.merged}/only-l2`, "utf8")).toBe("from l2");
  });

  it("prints what the kernel said of a mount that succeeded on stderr, and refuses an upper already in use (EBUSY, exit 32)", async () => {
    const L = layout();
    const t = s.dirs("tmp")[0]!;
    execFileSync("mount", ["-t", "tmpfs", "t", t]);
    mkdirSync(`${t}/lower`);
    const r = await ovl(["mount", "--lower", `${t}/lower`, "--upper", L.upper, "--work", L.work, "-o", "xino=on", L.merged]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`^ovl: mount ${L.merged}: kernel: .*xino`, "m"));
    const again = await ovl(["mount", "--lower", L.l1, "--upper", L.upper, "--work", s.dirs("work2")[0]!, s.dirs("m2")[0]!]);
    expect(again.exitCode).toBe(32);
    expect(again.stderr).toContain(`is already the upper layer of the overlay mounted at '${L.merged}'`);
  });

  it("mounts mount(8)'s way: -t overlay SOURCE -o lowerdir=...,upperdir=...,workdir=..., escapes and features", async () => {
    const L = layout();
    const odd = s.dirs("a:b,c\\d")[0]!;
    s.file("a:b,c\\d/odd", "odd layer");
    const esc = (p: string) => p.replace(/[\\:,]/g, "\\$&");
    const o = `lowerdir=${esc(L.l1)}:${esc(odd)},upperdir=${L.upper},workdir=${L.work},index=on,nosuid,nodev`;
    const r = await ovl(["mount", "-t", "overlay", "myoverlay", "-o", o, L.merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const ls = await ovl(["ls", "--json", L.merged]);
    const [m] = JSON.parse(ls.stdout) as overlay.OverlayMount[];
    expect(m!.lower).toEqual([L.l1, odd]);
    expect(m!.upper).toBe(L.upper);
    expect(m!.source).toBe("myoverlay");
    expect(m!.features.index).toBe(true);
    expect(m!.mountOptions).toEqual(expect.arrayContaining(["nosuid", "nodev"]));
    expect(readFileSync(`${L.merged}/odd`, "utf8")).toBe("odd layer");
  });

  it("mounts read-only with -r, and with -o ro", async () => {
    const L = layout();
    expect((await ovl(["mount", "-r", ...layerFlags(L), L.merged])).exitCode).toBe(0);
    const second = s.dirs("second")[0]!;
    expect((await ovl(["mount", "-o", `lowerdir=${L.l1}:${L.l2},ro`, second])).exitCode).toBe(0);
    for (const t of [L.merged, second]) {
      const [m] = JSON.parse((await ovl(["ls", "--json", t])).stdout) as overlay.OverlayMount[];
      expect(m!.mountOptions[0]).toBe("ro");
    }
  });

  it("refuses an unknown -o option, naming it, with exit 1 and nothing mounted", async () => {
    const L = layout();
    const r = await ovl(["mount", "-o", `lowerdir=${L.l1}:${L.l2},sparkle`, L.merged]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr.split("\n")[0]).toBe("ovl: mount: unknown mount option 'sparkle' (ERR_INVALID_ARG_VALUE)");
    expect(r.stderr).toMatch(/^ovl: hint: overlay options: .*redirect_dir=/m);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("refuses --lower with -o lowerdir=, another -t, extra arguments and no lower layer, as usage errors", async () => {
    const L = layout();
    const both = await ovl(["mount", "--lower", L.l1, "-o", `lowerdir=${L.l2}`, L.merged]);
    expect(both.exitCode).toBe(1);
    expect(both.stderr).toMatch(/^ovl: mount: --lower and -o lowerdir= both give the lower layers; give them one way$/m);
    const type = await ovl(["mount", "-t", "ext4", "--lower", L.l1, "--lower", L.l2, L.merged]);
    expect(type.exitCode).toBe(1);
    expect(type.stderr).toMatch(/^ovl: mount: -t ext4: ovl mounts only overlay filesystems$/m);
    const tooMany = await ovl(["mount", "--lower", L.l1, "--lower", L.l2, "a", "b", L.merged]);
    expect(tooMany.exitCode).toBe(1);
    expect(tooMany.stderr).toMatch(/^ovl: mount: too many arguments: 'a' 'b' /m);
    const none = await ovl(["mount", "--upper", L.upper, "--work", L.work, L.merged]);
    expect(none.exitCode).toBe(1);
    expect(none.stderr).toMatch(/^ovl: mount: no lower layer given\novl: hint: give --lower DIR/);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("names the act (mount TARGET), then the mistyped path and why; exit 32, no stack trace", async () => {
    const L = layout();
    const typo = s.path("l2-typo");
    const r = await ovl(["mount", "--lower", L.l1, "--lower", typo, "--upper", L.upper, "--work", L.work, L.merged]);
    expect(r.exitCode).toBe(32);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(`ovl: mount ${L.merged}: lower layer 2 '${typo}' does not exist (ENOENT)`);
    const target = await ovl(["mount", ...layerFlags(L), s.path("no-such-target")]);
    expect(target.exitCode).toBe(32);
    expect(target.stderr).toBe(`ovl: mount ${s.path("no-such-target")}: target '${s.path("no-such-target")}' does not exist (ENOENT)`);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("adds the stack trace with --debug or OVL_DEBUG=1", async () => {
    const L = layout();
    const args = ["mount", "--lower", L.l1, "--lower", s.path("nope"), L.merged];
    expect((await ovl(args)).stderr).not.toMatch(/^\s+at /m);
    const flag = await ovl(["--debug", ...args]);
    expect(flag.exitCode).toBe(32);
    expect(flag.stderr).toMatch(/^\s+at .*validate\.js/m);
    expect(flag.stderr).toMatch(/^ovl: mount .*merged: lower layer 2 '.*nope'/m);
    expect((await ovl(["mount", "--debug", ...args.slice(1)])).stderr).toMatch(/^\s+at /m);
    expect((await ovl(args, { env: { OVL_DEBUG: "1" } })).stderr).toMatch(/^\s+at /m);
  });

  it("as an ordinary user: permission denied, exit 1, with a hint", async () => {
    await requireNobodyCanRunCli();
    const L = layout();
    chmodSync(s.dir, 0o755); // nobody may look at the layers, so that the mount itself is what fails
    const r = await ovlAsNobody(["mount", "--lower", L.l1, "--lower", L.l2, L.merged]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/^ovl: mount .*\(EPERM\)$/m);
    expect(r.stderr).toMatch(/^ovl: hint: mounting needs root/m);
    // The library adds userxattr by itself in a user namespace: the hint does not ask for it.
    expect(r.stderr).not.toContain("-o userxattr");
    expect(overlaysAt(L.merged)).toEqual([]);
  });
});

describe("ovl umount", () => {
  it("unmounts several targets at once", async () => {
    const L = layout();
    const second = s.dirs("second")[0]!;
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    await overlay.mount({ lower: [L.l1, L.l2], target: second });
    const r = await ovl(["umount", L.merged, second]);
    expect(r).toMatchObject({ exitCode: 0, stdout: "", stderr: "" });
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("exits 64 when some targets failed and some succeeded, naming each failure", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const r = await ovl(["umount", s.path("missing"), L.merged, L.l1]);
    expect(r.exitCode).toBe(64);
    expect(r.stderr).toBe(
      `ovl: umount ${s.path("missing")}: no such file or directory (ENOENT)\n` + `ovl: umount ${L.l1}: not a mount point (EINVAL)`,
    );
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("exits 32 when every target failed", async () => {
    const L = layout();
    const r = await ovl(["unmount", L.l1, L.l2]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr.split("\n")).toEqual([`ovl: umount ${L.l1}: not a mount point (EINVAL)`, `ovl: umount ${L.l2}: not a mount point (EINVAL)`]);
  });

  it("says a busy target is busy and who holds it (pid, command, how), and suggests -l", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    mkdirSync(`${L.merged}/dir`);
    const inDir = await holder({ cwd: `${L.merged}/dir` });
    const reading = await holder({ stdinFile: `${L.merged}/file` });
    const r = await ovl(["umount", L.merged]);
    expect(r.exitCode).toBe(32);
    expect(r.stdout).toBe("");
    const lines = r.stderr.split("\n");
    expect(lines[0]).toBe(`ovl: umount ${L.merged}: target is busy (EBUSY)`);
    expect(lines[1]).toBe("ovl:   held by 2 processes:");
    expect(lines).toContain(`ovl:     pid ${inDir} (sleep, root): cwd ${L.merged}/dir`);
    expect(lines).toContain(`ovl:     pid ${reading} (sleep, root): open file ${L.merged}/file (fd 0)`);
    expect(lines.at(-1)).toBe(`ovl: hint: 'ovl umount -l ${L.merged}' detaches it now and frees it when the last user is gone`);
    expect(overlaysAt(L.merged)).toHaveLength(1);

    // Run from inside the mount, as from a shell whose cwd is there: ovl itself is not named as a holder.
    const fromInside = await execa(process.execPath, [cliPath, "umount", L.merged], { cwd: L.merged, reject: false, extendEnv: false, env: cleanEnv() });
    expect(fromInside.exitCode).toBe(32);
    const insideLines = fromInside.stderr.split("\n");
    expect(insideLines[1]).toBe("ovl:   held by 2 processes:");
    expect(insideLines.filter((l) => /^ovl: {5}pid /.test(l)).map((l) => Number(/pid (\d+)/.exec(l)![1])).sort()).toEqual([inDir, reading].sort());

    const lazy = await ovl(["umount", "-l", L.merged]);
    expect(lazy).toMatchObject({ exitCode: 0, stderr: "" });
    expect(overlaysAt(L.merged)).toEqual([]);
  });

  it("-f does not force a busy overlay (it has no forced unmount) and still says who holds it", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const pid = await holder({ cwd: L.merged });
    const r = await ovl(["umount", "-f", L.merged]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toContain(`ovl:     pid ${pid} (sleep, root): cwd ${L.merged}`);
    expect(overlaysAt(L.merged)).toHaveLength(1);
  });

  it("-R unmounts what is mounted below a target first, deepest first", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    const [a, b] = s.dirs("a1", "a2");
    mkdirSync(`${L.merged}/sub`);
    mkdirSync(`${L.merged}/other`);
    await overlay.mount({ lower: [a!, b!], target: `${L.merged}/sub` });
    await execa("mount", ["-t", "tmpfs", "t", `${L.merged}/other`]);
    mkdirSync(`${L.merged}/other/deep`);
    await execa("mount", ["-t", "tmpfs", "t2", `${L.merged}/other/deep`]);

    const plain = await ovl(["umount", L.merged]);
    expect(plain.exitCode).toBe(32);
    expect(plain.stderr).toContain(`ovl:   mounted below it: ${L.merged}/other/deep, ${L.merged}/other, ${L.merged}/sub`);
    // Never a footgun: no -R (it would take down mounts the user did not name) and no -l (it detaches them too).
    expect(plain.stderr).toContain(`ovl: hint: unmount what is mounted below it first, if those are yours to unmount: 'ovl umount ${L.merged}/other/deep ${L.merged}/other ${L.merged}/sub'`);
    expect(plain.stderr).not.toMatch(/umount -R|umount -l/);
    // Two mounts stacked on one place are one place in the list.
    await execa("mount", ["-t", "tmpfs", "t3", `${L.merged}/other/deep`]);
    const stacked = await ovl(["umount", L.merged]);
    expect(stacked.stderr).toContain(`ovl:   mounted below it: ${L.merged}/other/deep, ${L.merged}/other, ${L.merged}/sub`);
    await execa("umount", [`${L.merged}/other/deep`]);
    // A busy / : neither -R / nor -l /.
    const root = await ovl(["umount", "/"]);
    expect(root.exitCode).toBe(32);
    expect(root.stderr).not.toMatch(/umount -R|umount -l|-l \//);

    const r = await ovl(["umount", "-R", "-v", L.merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split("\n")).toEqual([
      `unmounted ${L.merged}/other/deep`,
      `unmounted ${L.merged}/other`,
      `unmounted ${L.merged}/sub`,
      `unmounted ${L.merged}`,
    ]);
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it("-R stops at a busy mount below, and names who holds it", async () => {
    const L = layout();
    s.dirs("l1/sub");
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const [a, b] = s.dirs("a1", "a2");
    await overlay.mount({ lower: [a!, b!], target: `${L.merged}/sub` });
    const pid = await holder({ cwd: `${L.merged}/sub` });
    const r = await ovl(["umount", "-R", L.merged]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr.split("\n")[0]).toBe(`ovl: umount ${L.merged}/sub: target is busy (EBUSY)`);
    expect(r.stderr).toContain(`pid ${pid} (sleep, root): cwd ${L.merged}/sub`);
    expect(overlaysAt(L.merged)).toHaveLength(1);
    expect(overlaysAt(`${L.merged}/sub`)).toHaveLength(1);
  });

  it("-R refuses a path that is not a mount point", async () => {
    const L = layout();
    const r = await ovl(["umount", "-R", L.l1]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toBe(`ovl: umount ${L.l1}: not a mount point (EINVAL)`);
  });

  it("prints a path with control characters escaped, so it cannot forge another line", async () => {
    const r = await ovl(["umount", s.path("evil\novl: all good")]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toBe(`ovl: umount ${s.path("evil\\novl: all good")}: no such file or directory (ENOENT)`);
  });
});

describe("ovl fuser", () => {
  it("lists the processes holding a mount, one row per file", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const pid = await holder({ cwd: L.merged });
    const r = await ovl(["fuser", L.merged]);
    expect(r.exitCode).toBe(0);
    // Some sandboxes refuse even root a look at a few processes: then, and only then, a note says which.
    expect(r.stderr).toMatch(new RegExp(`^(ovl: fuser ${L.merged}: not complete \\(pid [\\d, ]+ could not be inspected: permission denied\\))?$`));
    const [header, ...rows] = r.stdout.split("\n");
    expect(header).toMatch(/^PID\s+USER\s+COMMAND\s+USE\s+PATH$/);
    expect(rows).toEqual([expect.stringMatching(new RegExp(`^${pid}\\s+root\\s+sleep\\s+cwd\\s+${L.merged}$`))]);
    expect(r.stdout).not.toMatch(ESC);

    const json = await ovl(["fuser", "--json", L.merged]);
    expect(JSON.parse(json.stdout)).toEqual([
      { pid, command: "sleep", uid: 0, uses: ["cwd"], files: [{ use: "cwd", path: L.merged }] },
    ]);
  });

  it("exits 1 when nothing holds the mount, as fuser does", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const r = await ovl(["fuser", L.merged]);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    // Some sandboxes refuse even root a look at a few processes (their pid is then named).
    expect(r.stderr).toMatch(new RegExp(`^ovl: fuser ${L.merged}: no process holds this mount( \\(pid [\\d, ]+ could not be inspected: permission denied\\))?$`));
  });

  it("leaves itself out when run from inside the mount (it inherits the shell's working directory)", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const r = await execa(process.execPath, [cliPath, "fuser", "--json", "."], { cwd: L.merged, reject: false, extendEnv: false, env: cleanEnv() });
    expect(r.stdout).toBe("[]");
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^ovl: fuser ${L.merged}: no process holds this mount`));
  });

  it("names a missing path; a failed lookup exits 1, as every lookup command does", async () => {
    const r = await ovl(["fuser", s.path("nope")]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toBe(`ovl: fuser ${s.path("nope")}: no such file or directory (ENOENT)`);
  });
});

describe("ovl ls, and colour", () => {
  it("keeps listing overlays as a table and as JSON", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    const r = await ovl(["ls"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split("\n")[0]).toMatch(/^TARGET\s+SOURCE\s+LOWER \(top first\)\s+UPPER\s+WORK\s+OPTIONS$/);
    expect(r.stdout).toMatch(new RegExp(`${L.merged}\\s+overlay\\s+${L.l1} > ${L.l2}`));
    const json = JSON.parse((await ovl(["ls", "-J", L.merged])).stdout) as overlay.OverlayMount[];
    expect(json.map((m) => m.target)).toEqual([L.merged]);
    const notOverlay = await ovl(["ls", L.l1]);
    expect(notOverlay.exitCode).toBe(1);
    expect(notOverlay.stderr).toBe(`ovl: ls ${L.l1}: no overlay at or above this path`);
    // JSON says the same with its exit status: nothing there is a failed lookup, as findmnt has it.
    const notOverlayJson = await ovl(["ls", "--json", L.l1]);
    expect(notOverlayJson).toMatchObject({ exitCode: 1, stdout: "[]" });
  });

  it("exits 1, as findmnt does, for a path or a process that is not there", async () => {
    const missing = await ovl(["ls", s.path("nosuch")]);
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toMatch(new RegExp(`^ovl: ls ${s.path("nosuch")}: .*\\(ENOENT\\)$`));
    const noProcess = await ovl(["ls", "--pid", "999999"]);
    expect(noProcess.exitCode).toBe(1);
    expect(noProcess.stderr).toMatch(/^ovl: ls .*no process with pid 999999 \(ESRCH\)$/);
  });

  it("shows an overlay without an upper layer as ro: it cannot be written", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    await overlay.mount({ lower: [L.l1], upper: L.upper, work: L.work, target: s.dirs("writable")[0]! });
    const rows = (await ovl(["ls"])).stdout.split("\n");
    expect(rows.find((r) => r.startsWith(`${L.merged} `))).toMatch(/\s-\s+-\s+ro(,|$)/);
    expect(rows.find((r) => r.startsWith(`${s.path("writable")} `))).toMatch(new RegExp(`\\s${L.work}\\s+rw(,|$)`));
  });

  it("--all lists every mount with FSTYPE and SOURCE in their own columns, as a table and as JSON", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    const tmp = s.dirs("tmp")[0]!;
    await execa("mount", ["-t", "tmpfs", "-o", "ro", "ovl-test-tmpfs", tmp]);
    try {
      const r = await ovl(["ls", "--all"]);
      expect(r.exitCode).toBe(0);
      const [header, ...rows] = r.stdout.trimEnd().split("\n");
      const names = ["TARGET", "FSTYPE", "SOURCE", "LOWER (top first)", "UPPER", "WORK", "OPTIONS"];
      expect(header).toMatch(new RegExp(`^${names.map((n) => n.replace(/[()]/g, "\\$&")).join("\\s+")}$`));
      // Every value starts at its header's column.
      const starts = names.map((n) => header!.indexOf(n));
      const cellsAt = (row: string) => starts.map((start, i) => row.slice(start, starts[i + 1] ?? row.length).trim());
      const tmpRow = rows.find((row) => row.startsWith(`${tmp} `))!;
      expect(cellsAt(tmpRow)).toEqual([tmp, "tmpfs", "ovl-test-tmpfs", "-", "-", "-", "ro"]);
      const overlayRow = rows.find((row) => row.startsWith(`${L.merged} `))!;
      expect(cellsAt(overlayRow).slice(0, 6)).toEqual([L.merged, "overlay", "overlay", `${L.l1} > ${L.l2}`, L.upper, L.work]);
      expect(cellsAt(overlayRow)[6]).toMatch(/^rw(,|$)/);

      const json = JSON.parse((await ovl(["ls", "--all", "--json"])).stdout) as Array<overlay.MountInfo & { lower?: string[] }>;
      expect(json.find((m) => m.target === tmp)).toMatchObject({ fstype: "tmpfs", source: "ovl-test-tmpfs" });
      expect(json.find((m) => m.target === tmp)).not.toHaveProperty("lower");
      expect(json.find((m) => m.target === L.merged)).toMatchObject({ fstype: "overlay", lower: [L.l1, L.l2] });
    } finally {
      await execa("umount", [tmp]);
    }
  });

  it("--pid lists the overlays of another process's mount namespace, not this one's", async () => {
    const L = layout();
    const child = await namespaceChild((c) => children.push(c));
    await execa("nsenter", ["-t", String(child.pid), "-m", "mount", "-t", "overlay", "inside", "-o", `lowerdir=${L.l1}:${L.l2}`, L.merged]);
    expect(overlaysAt(L.merged)).toEqual([]); // not in this namespace
    const r = await ovl(["ls", "--pid", String(child.pid)]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^${L.merged}\\s+inside\\s+${L.l1} > ${L.l2}\\s+-\\s+-\\s+ro`, "m"));
    const json = JSON.parse((await ovl(["ls", "--pid", String(child.pid), "--json"])).stdout) as overlay.OverlayMount[];
    expect(json.filter((m) => m.target === L.merged)).toMatchObject([{ source: "inside", lower: [L.l1, L.l2] }]);
    expect(JSON.parse((await ovl(["ls", "--json"])).stdout).filter((m: overlay.OverlayMount) => m.target === L.merged)).toEqual([]);
  });

  it("--watch TARGET follows the mount on that path, given by any name (a symlink too)", async () => {
    const L = layout();
    const link = s.path("link");
    symlinkSync(L.merged, link);
    const run = ovl(["ls", "--watch", "--json", link]);
    let out = "";
    let err = "";
    run.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    run.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    const waitFor = async (what: () => boolean) => {
      for (let i = 0; i < 200 && !what(); i++) {
        if (run.exitCode !== null) throw new Error(`ls --watch ended early: ${err}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    await waitFor(() => err.includes("watching"));
    expect(err).toContain(`ovl: ls: watching overlays on ${L.merged} (Ctrl-C to stop)`);
    const elsewhere = await overlay.mount({ lower: [L.l2, L.l1], target: s.dirs("elsewhere")[0]! });
    const m = await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    await waitFor(() => out.includes("\n"));
    await m.unmount();
    await elsewhere.unmount();
    await waitFor(() => out.split("\n").length >= 3);
    run.kill("SIGINT");
    await run;
    const events = out.trimEnd().split("\n").map((l) => JSON.parse(l) as { type: string; mount: overlay.OverlayMount });
    expect(events.map((e) => [e.type, e.mount.target])).toEqual([
      ["mount", L.merged],
      ["umount", L.merged],
    ]);
    expect((await ovl(["ls", "--help"])).stdout.replace(/\s+/g, " ")).toContain("with --watch: only mounts and unmounts exactly on this path");
  });

  it("--watch prints mounts and unmounts as they happen, as lines for people or JSON lines", async () => {
    const L = layout();
    for (const json of [false, true]) {
      const run = ovl(["ls", "--watch", ...(json ? ["--json"] : [])]);
      let out = "";
      let err = "";
      run.stdout!.on("data", (c: Buffer) => (out += c.toString()));
      run.stderr!.on("data", (c: Buffer) => (err += c.toString()));
      const waitFor = async (what: () => boolean) => {
        for (let i = 0; i < 400 && !what(); i++) {
          if (run.exitCode !== null) throw new Error(`ls --watch ended early: ${err}`);
          await new Promise((r) => setTimeout(r, 25));
        }
      };
      await waitFor(() => err.includes("ovl: ls: watching overlays (Ctrl-C to stop)"));
      const m = await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
      await waitFor(() => out.split("\n").length >= 2);
      await m.unmount();
      await waitFor(() => out.split("\n").length >= 3);
      run.kill("SIGINT");
      await run;
      const lines = out.trimEnd().split("\n");
      if (json) {
        const events = lines.map((l) => JSON.parse(l) as { type: string; mount: overlay.OverlayMount });
        expect(events.map((e) => [e.type, e.mount.target, e.mount.lower])).toEqual([
          ["mount", L.merged, [L.l1, L.l2]],
          ["umount", L.merged, [L.l1, L.l2]],
        ]);
      } else {
        expect(lines).toEqual([
          expect.stringMatching(new RegExp(`^mount   ${L.merged}  ${L.l1} > ${L.l2}  `)),
          expect.stringMatching(new RegExp(`^umount  ${L.merged}  ${L.l1} > ${L.l2}  `)),
        ]);
        expect(out).not.toMatch(ESC);
      }
    }
  });

  it("uses colour on a terminal only, and never with NO_COLOR", async () => {
    const L = layout();
    await overlay.mount({ lower: [L.l1, L.l2], target: L.merged });
    const piped = await ovl(["ls"]);
    expect(piped.stdout).toContain(L.merged);
    expect(piped.stdout).not.toMatch(ESC);
    // script(1) gives the command a terminal, as a person's; without CI set (Node's colour detection, and so
    // ovl's, leaves colour off in CI logs).
    const onTty = (env: Record<string, string>) =>
      execa("script", ["-qec", `stty cols 300; ${JSON.stringify(process.execPath)} ${JSON.stringify(cliPath)} ls`, "/dev/null"], {
        env: cleanEnv({ TERM: "xterm", CI: undefined, ...env }),
        extendEnv: false,
        reject: false,
      });
    const tty = await onTty({});
    expect(tty.stdout).toContain(L.merged);
    expect(tty.stdout).toMatch(ESC);
    const noColor = await onTty({ NO_COLOR: "1" });
    expect(noColor.stdout).toContain(L.merged);
    expect(noColor.stdout).not.toMatch(ESC);
  });
});

describe("exit codes and messages, one rule for every command (util-linux's)", () => {
  it("1 for usage and lookups that find nothing or fail, 32 only for a failed mount; the act first, then the culprit", async () => {
    const L = layout();
    // Lookups: nothing found, or not an overlay.
    expect((await ovl(["which", `${s.dir}/missing`])).exitCode).toBe(1);
    expect((await ovl(["diff", s.dir])).exitCode).toBe(1);
    const none = await ovl(["ls", s.dir]);
    expect(none.exitCode).toBe(1);
    // A failed mount: 32, the line naming the mount point, then the layer at fault.
    const bad = await ovl(["mount", "--lower", L.l1, "--upper", L.upper, L.merged]);
    expect(bad.exitCode).toBe(32); // a mount the kernel's rules refuse
    expect((await ovl(["mount", L.merged])).exitCode).toBe(1); // no --lower at all: usage
    expect(bad.stderr).toBe(`ovl: mount ${L.merged}: upper layer '${L.upper}' given without a work directory; pass both or neither (EINVAL)`);
    // Commander's suggestion carries the prefix too.
    const typo = await ovl(["moutn"]);
    expect(typo.exitCode).toBe(1);
    expect(typo.stderr.split("\n")).toEqual(["ovl: unknown command 'moutn'", "ovl: Did you mean mount?", "ovl: hint: run 'ovl --help' for usage"]);
  });
});

describe("ovl ls, as findmnt users expect it", () => {
  it("-o, -n, -r agree with findmnt on the same table; --list-columns; an unknown column is a usage error", async () => {
    const L = layout();
    const [odd] = s.dirs("with space");
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged, source: "my overlay" });
    await overlay.mount({ lower: [L.l1, L.l2], target: odd! });
    const cols = "TARGET,SOURCE,FSTYPE,FSROOT,ID,PARENT,MAJ:MIN";
    const ours = await ovl(["ls", "-A", "-r", "-n", "-o", cols]);
    expect(ours.exitCode).toBe(0);
    const theirs = await execa("findmnt", ["-r", "-n", "--nofsroot", "-o", cols], { env: { LANG: "C.UTF-8" } });
    const lines = (text: string) => text.split("\n").filter((l) => l.startsWith(s.dir));
    expect(lines(ours.stdout)).toEqual(lines(theirs.stdout));
    expect(lines(ours.stdout)).toContainEqual(expect.stringMatching(new RegExp(`^${s.dir}/with\\\\x20space overlay overlay / ${overlaysAt(odd!)[0]!.id} \\d+ \\d+:\\d+$`)));
    const header = await ovl(["ls", "-o", "target,layers"]);
    expect(header.stdout.split("\n")[0]).toMatch(/^TARGET\s+LAYERS$/);
    expect(header.stdout).toMatch(new RegExp(`${L.merged}\\s+2\\n`));
    expect((await ovl(["ls", "--list-columns"])).stdout).toMatch(/^TARGET\s+mount point$/m);
    const bad = await ovl(["ls", "-o", "TARGET,NOPE"]);
    expect([bad.exitCode, bad.stderr.split("\n")[0]]).toEqual([1, "ovl: ls: -o: unknown column 'NOPE'"]);
  });

  it("--tree shows which overlay is stacked on which; on a terminal the table fits its width", async () => {
    const L = layout();
    const [u2, w2] = s.dirs("u2", "w2");
    await overlay.mount({ lower: [L.l1, L.l2], upper: L.upper, work: L.work, target: L.merged });
    await overlay.mount({ lower: [L.l1, L.l2], upper: u2!, work: w2!, target: L.merged });
    const tree = (await ovl(["ls", "--tree", "-o", "TARGET,UPPER"])).stdout.split("\n");
    const mine = tree.filter((l) => l.includes(L.merged));
    expect(mine).toEqual([expect.stringMatching(new RegExp(`^${L.merged}\\s+${L.upper}$`)), expect.stringMatching(new RegExp(`^└─${L.merged}\\s+${u2}$`))]);
    // A terminal 60 columns wide: every line fits, the path columns cut with an ellipsis.
    const tty = await execa("script", ["-qec", `stty cols 60; ${process.execPath} ${cliPath} ls`, "/dev/null"], { env: cleanEnv(), reject: false });
    const shown = tty.stdout.replace(/\x1b\[[0-9;]*m/g, "").split(/\r?\n/).filter((l) => l.trim() !== "");
    expect(shown.length).toBeGreaterThan(2);
    for (const line of shown) expect([...line].length).toBeLessThanOrEqual(60);
    expect(shown.some((l) => l.includes("…"))).toBe(true);
  });

  it("escapes bidi and zero-width characters, pads by display width, and names Docker overlay2 short links by layer id", async () => {
    const L = layout();
    const [tricky, wide] = s.dirs("evil\u202egnp.exe\u200b", "日本語");
    await overlay.mount({ lower: [L.l1, L.l2], target: tricky! });
    await overlay.mount({ lower: [L.l1, L.l2], target: wide! });
    const out = (await ovl(["ls", "-o", "TARGET,SOURCE"])).stdout.split("\n");
    expect(out).toContain(`${s.dir}/evil\\u{202e}gnp.exe\\u{200b}  overlay`);
    // 日本語 is 6 cells wide: the SOURCE column starts where it does on the other rows.
    const col = (l: string) => l.indexOf("overlay");
    const pad = (l: string) => [...l.slice(0, col(l))].reduce((w, ch) => w + (/[\u3000-\u9fff]/.test(ch) ? 2 : 1), 0);
    const rows = out.filter((l) => l.startsWith(s.dir));
    expect(new Set(rows.map(pad)).size).toBe(1);
    // Docker's overlay2: lowerdir=…/overlay2/l/SHORT, each a link to ../<layer id>/diff (mount(8) passes them as typed).
    const root = s.dirs("docker/overlay2")[0]!;
    const ids = ["a".repeat(64), "b".repeat(64)];
    for (const [i, id] of ids.entries()) {
      s.dirs(`docker/overlay2/${id}/diff`);
      s.dirs("docker/overlay2/l");
      symlinkSync(`../${id}/diff`, `${root}/l/SHORT${i}`);
    }
    const [dm] = s.dirs("docker-merged");
    await execa("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${root}/l/SHORT0:${root}/l/SHORT1`, dm!]);
    const docker = (await ovl(["ls", "-o", "TARGET,LOWER", dm!])).stdout;
    expect(docker).toMatch(new RegExp(`${dm}\\s+${"a".repeat(12)} > ${"b".repeat(12)}$`, "m"));
  });
});
