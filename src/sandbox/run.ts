/**
 * `ovl run`: a command run inside an overlay that exists only for it, in namespaces of its own (mount and
 * pid; a user namespace too when not root). Nothing of it outlives it, however it ends.
 *
 * A Node process cannot move itself into new namespaces (it is multithreaded), so the outer process
 * re-executes itself as
 *
 *     setpriv --pdeathsig KILL -- unshare [-Ur] -m --propagation private --pid --fork --kill-child=SIGKILL -- node ovl run ...
 *
 * and the inner one, the first process (pid 1) of the new pid namespace, mounts and runs the command. What
 * that guarantees, on SIGKILL too:
 * - the scratch space (merged directory, and upper and work with `--tmp`) is on a tmpfs mounted inside the
 *   private mount namespace, on a directory that is created once and reused (`$TMPDIR/.ovl-run-UID`, as
 *   bubblewrap's `/tmp/.bubblewrap-UID`): when the namespace ends, the tmpfs and the overlay end with it, and
 *   nothing is ever written to the host's filesystems but the user's own `--upper`;
 * - the command and everything it started die with ovl: `unshare` has the parent-death signal SIGKILL
 *   (setpriv, as PR_SET_PDEATHSIG: Node has no API for it) and kills its child, the inner ovl, when it dies
 *   (--kill-child); when the inner ovl, pid 1 of the pid namespace, ends, the kernel kills every process
 *   left in it.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { accessSync, chmodSync, closeSync, constants as fsConstants, lstatSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describeErrno, invalidArgValue } from "../kernel/errors.js";
import { MOUNT_ATTR } from "../mounting/flags.js";
import { mountOverlay } from "../mounting/mount.js";
import { FsConfigKind, type FsConfigStep, native, type NativeFailure } from "../kernel/native.js";
import { checkPathArg, type MountSpec } from "../mounting/validate.js";

const ENOSYS = constants.errno.ENOSYS;

/** Set in the re-executed process ("root" or "user"): it is already in its own namespaces. */
export const RUN_NAMESPACE_ENV = "OVL_RUN_NAMESPACE";
/** The directory the inner process mounts its scratch tmpfs on (made by the outer one). */
const RUN_SCRATCH_ENV = "OVL_RUN_SCRATCH";
/** `PID:STARTTIME` of the outer process, for the inner one to check that it is still there. */
export const PARENT_ENV = "OVL_PARENT";
/** The environment variables ovl passes to itself, which the command does not see. */
const OWN_ENV = [RUN_NAMESPACE_ENV, RUN_SCRATCH_ENV, PARENT_ENV];

export interface RunSpec extends Omit<MountSpec, "target" | "refuseInUse" | "strategy"> {
  /** Upper and work on the scratch tmpfs, gone afterwards (like bubblewrap's --tmp-overlay). */
  tmp?: boolean;
  /** With `tmp`: the size of the scratch tmpfs, as tmpfs' `size=` takes it (`64m`, `2g`, `10%`). */
  tmpfsSize?: string;
  /**
   * Run the command with the merged tree as its root directory (an image's root filesystem): chrooted into
   * it with this environment and working directory, with /proc and /dev mounted there if it has them.
   */
  rootfs?: { env: string[]; workingDir: string };
}

/** tmpfs' `size=`: bytes with an optional k/m/g/t/p/e suffix, or a percentage of RAM. */
const TMPFS_SIZE = /^(\d+[kmgtpe]?|\d+%)$/i;

/** A mistake in the way ovl run was called: exit 1, as other usage errors. */
export class RunUsageError extends TypeError {
  readonly code = "ERR_INVALID_ARG_VALUE";
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = "RunUsageError";
  }
}

/** Checks what a RunSpec says beyond the mount spec itself. */
export function checkRunSpec(spec: RunSpec): void {
  if (spec.tmp && (spec.upper !== undefined || spec.work !== undefined)) {
    throw new RunUsageError(
      "--tmp makes the upper and work directories itself, on a tmpfs; it cannot be combined with an upper or work directory",
      "leave out --tmp to keep the changes in --upper, or leave out --upper/--work (-o upperdir=/workdir=)",
    );
  }
  if (spec.tmpfsSize !== undefined && !TMPFS_SIZE.test(spec.tmpfsSize)) {
    throw new RunUsageError(`--tmpfs ${spec.tmpfsSize}: not a size`, "a size as tmpfs takes it: bytes, or with k, m or g (64m, 2g), or a share of RAM (10%)");
  }
}

/**
 * The command itself could not be started: not found (exit status 127) or found but not executable (126),
 * as shells, unshare(1) and bwrap report it.
 */
export class CommandNotStartedError extends Error {
  readonly status: 126 | 127;
  constructor(
    readonly command: string,
    readonly code: "ENOENT" | "EACCES",
  ) {
    super(code === "ENOENT" ? "command not found" : "permission denied");
    this.name = "CommandNotStartedError";
    this.status = code === "ENOENT" ? 127 : 126;
  }
}

/** The signals ovl passes on to what it runs, as a shell does: it ends when that does. */
export const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

function signalNumber(sig: NodeJS.Signals): number {
  return (constants.signals as Record<string, number>)[sig] ?? 1;
}

/** Exit status of a child as a shell reports it: its code, or 128 + the signal number. */
function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? signalNumber(signal) : 1);
}

/** This process as `PID:STARTTIME` (/proc/PID/stat field 22), which no later process with its pid shares. */
function processToken(pid: number | "self"): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return `${pid === "self" ? process.pid : pid}:${fields[19]}`;
  } catch {
    return undefined;
  }
}

/** The parent of process `pid`, from /proc/PID/stat (field 4). */
function parentOf(pid: number | "self"): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/**
 * In the re-executed process: exits at once when the ovl that started it, or the unshare(1) between them,
 * is gone. Each sets the parent-death signal of what it starts (setpriv for unshare, unshare for its forked
 * child), always before the exec; one that died before that prctl() never sends it, and what it started lives
 * on, reparented. Checked after the exec, this closes that window: an ancestor that dies later sends the
 * signal. Call it before anything replaces /proc (the ancestors are seen through the /proc it started with).
 */
export function exitIfOrphaned(): void {
  const token = process.env[PARENT_ENV];
  if (!token) return;
  const outer = Number(token.split(":")[0]);
  if (processToken(outer) !== token) process.exit(1);
  // This process is unshare itself (exec'd, no pid namespace) or the child unshare forked.
  const parent = parentOf("self");
  if (parent !== outer && (parent === undefined || parentOf(parent) !== outer)) process.exit(1);
}

/**
 * `argv` under `setpriv --pdeathsig KILL -- unshare ...`: in private namespaces, killed when this process
 * dies (SIGKILL included). Without `pidNamespace`, `unshare` executes `argv` itself (the child's pid is the
 * command's); with it, `unshare` forks it as pid 1 of a new pid namespace and kills it when it dies.
 */
export function spawnInPrivateNamespaces(
  argv: string[],
  opts: { pidNamespace: boolean; env: NodeJS.ProcessEnv },
): ChildProcess {
  const isRoot = process.geteuid?.() === 0;
  const unshare = [
    "unshare",
    isRoot ? "-m" : "-Urm",
    "--propagation",
    "private",
    ...(opts.pidNamespace ? ["--pid", "--fork", "--kill-child=SIGKILL"] : []),
    "--",
    ...argv,
  ];
  const token = processToken("self");
  return spawn("setpriv", ["--pdeathsig", "KILL", "--", ...unshare], {
    stdio: "inherit",
    env: { ...opts.env, ...(token ? { [PARENT_ENV]: token } : {}) },
  });
}

/** The first child of `pid`: /proc's children list where the kernel has it, else a scan of /proc. */
function childOf(pid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(" ")[0];
    return first ? Number(first) : undefined;
  } catch {
    // CONFIG_PROC_CHILDREN off
  }
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/**
 * Whether process `pid` (the inner ovl) has its signal listeners in place. Node itself catches SIGINT and
 * SIGTERM from its start (to restore the terminal, then re-raise), and a pid-1 process drops a signal it
 * raises at itself: forwarded then, the signal would be lost and the run go on. SIGHUP, the last of
 * FORWARDED_SIGNALS, Node does not catch by itself: caught with the others, all of them are ovl's.
 */
function listens(pid: number): boolean {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8").match(/^SigCgt:\s*([0-9a-f]+)$/m);
    if (!line) return false;
    const caught = BigInt(`0x${line[1]}`);
    return FORWARDED_SIGNALS.every((sig) => ((caught >> BigInt(signalNumber(sig) - 1)) & 1n) === 1n);
  } catch {
    return false;
  }
}

/**
 * The directory the scratch tmpfs is mounted on, inside each run's own mount namespace: one per user
 * (`$TMPDIR/.ovl-run-UID`), made once, empty on the host, reused by every run (each sees its own tmpfs
 * there). Refuses one that is not a directory of this user's.
 */
export function scratchMountPoint(): string {
  const uid = process.geteuid?.() ?? 0;
  const dir = join(tmpdir(), `.ovl-run-${uid}`);
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== uid) {
    throw Object.assign(new Error(`${st.isSymbolicLink() ? "a symbolic link" : st.isDirectory() ? `a directory of uid ${st.uid}` : "not a directory"}, not a directory of this user's`), {
      code: "EEXIST",
      path: dir,
      hint: `ovl run mounts its scratch tmpfs on ${dir} (in its own mount namespace); remove what is there, or set TMPDIR`,
    });
  }
  if ((st.mode & 0o022) !== 0) chmodSync(dir, 0o700);
  return dir;
}

/**
 * Mounts a new `fstype` (tmpfs or proc) on `dir`, in this mount namespace only: fsopen()/fsmount() through
 * the addon, or mount(8) on a kernel without them. `options` are the filesystem's own (`size=64m`), `attrs`
 * MOUNT_ATTR_* bits. Throws an Error with `code` and `path`.
 */
export function mountPseudoFs(fstype: "tmpfs" | "proc", dir: string, options: Record<string, string>, attrs = 0): void {
  const n = native();
  const fail = (f: { errno: number; syscall: string }) => {
    const { code, description } = describeErrno(f.errno);
    return Object.assign(new Error(`mounting ${fstype} on it: ${description}`), { code, path: dir, syscall: f.syscall });
  };
  const opened = n.openPathsSync([dir]).paths[0]!;
  if (opened.fd === undefined) throw fail(opened);
  try {
    const steps = Object.entries(options).map(([k, v]) => [FsConfigKind.String, k, v] as FsConfigStep);
    n.fsMountSync(fstype, steps, attrs, opened.fd);
    return;
  } catch (e) {
    const f = e as NativeFailure;
    if (typeof f?.errno !== "number") throw e;
    if (f.errno !== ENOSYS) throw fail(f);
  } finally {
    closeSync(opened.fd);
  }
  const flags = [attrs & MOUNT_ATTR.NOSUID ? "nosuid" : "", attrs & MOUNT_ATTR.NODEV ? "nodev" : "", attrs & MOUNT_ATTR.NOEXEC ? "noexec" : ""];
  const o = [...flags.filter(Boolean), ...Object.entries(options).map(([k, v]) => `${k}=${v}`)];
  const r = spawnSync("mount", ["-t", fstype, ...(o.length > 0 ? ["-o", o.join(",")] : []), fstype, dir], { encoding: "utf8" });
  if (r.status !== 0) {
    throw Object.assign(new Error(`mounting ${fstype} on it: ${(r.stderr || r.error?.message || "mount(8) failed").trim()}`), { code: "EMOUNT", path: dir });
  }
}

/** Runs `argv` (this command line) in fresh namespaces, where the inner ovl does the work; its exit status. */
export function reexecInNamespace(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const scratch = scratchMountPoint();
  const isRoot = process.geteuid?.() === 0;
  return new Promise((resolvePromise, reject) => {
    let child: ChildProcess | undefined;
    let endedFor: NodeJS.Signals | undefined;
    // The signal goes to the inner ovl (unshare --fork blocks SIGINT and SIGTERM, and dies of SIGHUP), which
    // passes it on to the command. Before the inner ovl listens (pid 1 of a namespace ignores the signals it
    // has no handler for, see listens()), nothing has started that needs to hear it: everything ends now.
    const forward = (sig: NodeJS.Signals) => {
      // (Handlers run from the event loop, after the spawn below has returned: `child` is set.)
      const inner = child!.pid !== undefined ? childOf(child!.pid) : undefined;
      if (inner !== undefined && listens(inner)) {
        try {
          process.kill(inner, sig);
          return;
        } catch {
          // it has just ended
        }
      }
      endedFor ??= sig;
      child!.kill("SIGKILL");
    };
    // Listening first: a signal between the spawn and the listening would end this process and no other.
    for (const sig of FORWARDED_SIGNALS) process.on(sig, forward);
    const stop = () => {
      for (const sig of FORWARDED_SIGNALS) process.off(sig, forward);
    };
    child = spawnInPrivateNamespaces(argv, {
      pidNamespace: true,
      env: { ...env, [RUN_NAMESPACE_ENV]: isRoot ? "root" : "user", [RUN_SCRATCH_ENV]: scratch },
    });
    child.on("error", (err: NodeJS.ErrnoException) => {
      stop();
      reject(Object.assign(err, { hint: "ovl run needs setpriv(1) and unshare(1) from util-linux" }));
    });
    child.on("exit", (code, signal) => {
      stop();
      resolvePromise(endedFor ? 128 + signalNumber(endedFor) : exitStatus(code, signal));
    });
  });
}

/** A search path for a PATH that is not set (systemd's default). */
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * The program a shell would run for `name` from `cwd`: a name with a slash as it is; otherwise the first
 * executable regular file in PATH. Directories that cannot be searched are passed over, as bash does
 * (execvp(3) would give up with EACCES); a file found there but not executable is run anyway (failing
 * with EACCES, 126) when no other is found; nothing found is a CommandNotStartedError ENOENT (127).
 */
/** /proc and /dev inside an image's root, where it has the directories for them (this namespace's only). */
function mountInRootfs(root: string): void {
  const isDir = (p: string) => {
    try {
      return lstatSync(p).isDirectory();
    } catch {
      return false;
    }
  };
  if (isDir(join(root, "proc"))) {
    try {
      mountPseudoFs("proc", join(root, "proc"), {}, MOUNT_ATTR.NOSUID | MOUNT_ATTR.NODEV | MOUNT_ATTR.NOEXEC);
    } catch {
      // a rootless run where the kernel refuses a new proc: the image runs without one
    }
  }
  if (isDir(join(root, "dev"))) spawnSync("mount", ["--rbind", "/dev", join(root, "dev")], { stdio: "ignore" });
}

export function findProgram(name: string, cwd: string, path: string | undefined): string {
  if (name.includes("/")) return resolve(cwd, name);
  let notExecutable: string | undefined;
  for (const entry of (path ?? DEFAULT_PATH).split(":")) {
    const candidate = join(resolve(cwd, entry || "."), name);
    try {
      if (!statSync(candidate).isFile()) continue;
    } catch {
      continue; // ENOENT, ENOTDIR, or EACCES: a directory this user cannot search
    }
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      notExecutable ??= candidate;
    }
  }
  if (notExecutable !== undefined) return notExecutable;
  throw new CommandNotStartedError(name, "ENOENT");
}

/**
 * Inside the private namespaces, as pid 1 of its pid namespace: mounts the scratch tmpfs and the overlay,
 * runs the command in the merged directory, and returns its exit status. It unmounts and removes nothing:
 * all it made goes with the namespaces. (As pid 1 it is also the parent of the command's orphans; Node
 * does not reap those, so they stay zombies until the run ends and the kernel clears the namespace.)
 */
export async function runInOverlay(spec: RunSpec, command: string[]): Promise<number> {
  if (!process.env[RUN_NAMESPACE_ENV] || !process.env[RUN_SCRATCH_ENV]) {
    throw new Error("runInOverlay() must run in the private namespaces made by reexecInNamespace()");
  }
  // First of all, listen: a signal before the command runs ends the run (there is nothing to clean up),
  // with the status a shell gives; then it goes to the command.
  let child: ChildProcess | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (child) child.kill(sig);
    else process.exit(128 + signalNumber(sig));
  };
  for (const sig of FORWARDED_SIGNALS) process.on(sig, onSignal);
  exitIfOrphaned();

  if (command.length === 0) throw invalidArgValue("command", command, "must name a program to run");
  command.forEach((c, i) => checkPathArg(c, `command[${i}]`));
  checkRunSpec(spec);

  // A /proc of this pid namespace, as `unshare --mount-proc` makes (for `ps`, and /proc/1 being ovl). Where
  // the kernel refuses it (a rootless run in a container that hides parts of /proc), the old one stays.
  if (process.pid === 1) {
    try {
      mountPseudoFs("proc", "/proc", {}, MOUNT_ATTR.NOSUID | MOUNT_ATTR.NODEV | MOUNT_ATTR.NOEXEC);
    } catch {
      // keep the /proc there is
    }
  }
  const scratch = process.env[RUN_SCRATCH_ENV]!;
  // Without --tmp it holds only the empty merged directory; with it, upper and work, up to --tmpfs SIZE
  // (default: tmpfs' own, half the RAM).
  const size = spec.tmp ? spec.tmpfsSize : "64k";
  mountPseudoFs("tmpfs", scratch, { mode: "0755", ...(size !== undefined ? { size } : {}) });
  const target = join(scratch, "merged");
  mkdirSync(target);
  const { tmp, tmpfsSize: _size, ...mountSpec } = spec;
  if (tmp) {
    mountSpec.upper = join(scratch, "upper");
    mountSpec.work = join(scratch, "work");
    mkdirSync(mountSpec.upper);
    mkdirSync(mountSpec.work);
  }
  const m = await mountOverlay({ ...mountSpec, target, refuseInUse: true });
  // What the kernel said, and layers whose owner this user namespace cannot map (a write would fail later).
  for (const w of m.warnings) process.stderr.write(`ovl: run: ${w}\n`);
  // A signal that came while mounting ends the run before the command starts: let the event loop take it
  // (one turn, through its poll phase) before starting anything.
  await new Promise<void>((resolveTurn) => setImmediate(() => setImmediate(resolveTurn)));

  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of OWN_ENV) delete env[name];
  let program: string;
  let args: string[];
  let cwd = target;
  let spawnEnv = env;
  if (spec.rootfs) {
    // An image's own programs, in its own root: /proc of this pid namespace and the host's /dev in it,
    // inside this private mount namespace (gone with it), then unshare(1) --root/--wd as chroot + chdir.
    mountInRootfs(target);
    spawnEnv = Object.fromEntries(spec.rootfs.env.map((e) => (e.includes("=") ? [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)] : [e, ""])));
    spawnEnv.PATH ??= DEFAULT_PATH;
    program = "unshare";
    args = ["--root", target, "--wd", spec.rootfs.workingDir, "--", ...command];
    cwd = "/";
  } else {
    program = findProgram(command[0]!, target, env.PATH);
    args = command.slice(1);
  }
  return await new Promise<number>((resolvePromise, reject) => {
    child = spawn(program, args, { cwd, stdio: "inherit", env: spawnEnv, ...(spec.rootfs ? {} : { argv0: command[0]! }) });
    child.on("error", (err: NodeJS.ErrnoException) => {
      const code = err.code;
      reject(code === "ENOENT" || code === "EACCES" ? new CommandNotStartedError(command[0]!, code) : err);
    });
    child.on("exit", (code, signal) => resolvePromise(exitStatus(code, signal)));
  });
}
