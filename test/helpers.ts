/** Test scaffolding: a private mount namespace check, scratch directories, and an independent mount-table read. */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** True when the tests run as real root (not root inside a user namespace). */
export const realRoot = process.env.OVL_TEST_NAMESPACE === "root";

/** Refuses to run mount tests outside the private namespace `npm test` makes. */
export function requirePrivateMountNamespace(): void {
  if (!process.env.OVL_TEST_NAMESPACE) {
    throw new Error("mount tests must run in a private mount namespace: use `npm test` (scripts/run-tests.js)");
  }
  let init: string | undefined;
  try {
    init = readlinkSync("/proc/1/ns/mnt");
  } catch {
    return; // not readable from a user namespace, which is private by construction
  }
  if (init === readlinkSync("/proc/self/ns/mnt")) {
    throw new Error("mount tests are running in the machine's own mount namespace; use `npm test`");
  }
}

/** Decodes mountinfo's octal escapes to bytes; written apart from src/ so tests do not check the parser with itself. */
function unoctal(raw: Buffer): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x5c && i + 3 < raw.length + 0 && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString())) {
      bytes.push(parseInt(raw.subarray(i + 1, i + 4).toString(), 8));
      i += 3;
    } else bytes.push(raw[i]!);
  }
  return Buffer.from(bytes);
}

export interface RawMount {
  id: number;
  /** The mount point as UTF-8 (lossy for bytes that are not UTF-8: see targetBytes). */
  target: string;
  targetBytes: Buffer;
  fstype: string;
  superOptions: string;
}

/** Every mount in this namespace, straight from /proc/self/mountinfo. */
export function rawMounts(): RawMount[] {
  const text = readFileSync("/proc/self/mountinfo");
  const out: RawMount[] = [];
  for (let p = 0; p < text.length; ) {
    let nl = text.indexOf(0x0a, p);
    if (nl < 0) nl = text.length;
    const line = text.subarray(p, nl);
    p = nl + 1;
    if (line.length === 0) continue;
    const f: Buffer[] = [];
    for (let q = 0; q <= line.length; ) {
      let sp = line.indexOf(0x20, q);
      if (sp < 0) sp = line.length;
      f.push(line.subarray(q, sp));
      q = sp + 1;
    }
    const sep = f.findIndex((x, i) => i >= 6 && x.length === 1 && x[0] === 0x2d);
    const targetBytes = unoctal(f[4]!);
    out.push({
      id: Number(f[0]!.toString()),
      target: targetBytes.toString("utf8"),
      targetBytes,
      fstype: f[sep + 1]!.toString(),
      superOptions: (f[sep + 3] ?? Buffer.alloc(0)).toString("utf8"), // as printed: escapes kept
    });
  }
  return out;
}

/** `umount -l` of a mount point given as bytes (through bash's $'\xNN' quoting: Node's argv is strings). */
export function umountLazy(target: Buffer): void {
  const quoted = `$'${[...target].map((b) => `\\x${b.toString(16).padStart(2, "0")}`).join("")}'`;
  execFileSync("bash", ["-c", `umount -l ${quoted}`]);
}

/** Mount points at or below `dir`. */
export function mountsUnder(dir: string): RawMount[] {
  return rawMounts().filter((m) => m.target === dir || m.target.startsWith(`${dir}/`));
}

export interface Scratch {
  dir: string;
  /** Makes directories (and parents) below the scratch dir; returns their absolute paths. */
  dirs(...names: string[]): string[];
  /** Writes a file below the scratch dir; returns its path. */
  file(name: string, content: string): string;
  path(name: string): string;
  /** Unmounts everything below the scratch dir (deepest first) and removes it. */
  cleanup(): void;
}

export function scratch(prefix = "ovl-test-"): Scratch {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), prefix)));
  const path = (name: string) => join(dir, name);
  return {
    dir,
    path,
    dirs: (...names) =>
      names.map((n) => {
        mkdirSync(path(n), { recursive: true });
        return path(n);
      }),
    file: (name, content) => {
      mkdirSync(dirname(path(name)), { recursive: true });
      writeFileSync(path(name), content);
      return path(name);
    },
    cleanup: () => {
      for (const m of mountsUnder(dir).sort((a, b) => b.targetBytes.length - a.targetBytes.length)) umountLazy(m.targetBytes);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The built package as the user nobody can read it: this checkout, or a world-readable copy that
 * scripts/run-tests.js staged for the run when nobody cannot read the checkout.
 */
export const packageRootForNobody = process.env.OVL_TEST_NOBODY_ROOT ?? fileURLToPath(new URL("..", import.meta.url));

/** Runs `node --input-type=module -e script` as user nobody (65534), optionally inside `unshare -Urm`. */
export function runAsNobody(script: string, opts: { userNamespace: boolean }): { status: number | null; stdout: string; stderr: string } {
  const cmd = [
    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
    ...(opts.userNamespace ? ["unshare", "-Urm", "--propagation", "private", "--"] : []),
    process.execPath, "--input-type=module", "-e", script,
  ];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Kills a child process (SIGKILL) unless it already ended, and waits until it is gone. */
export async function killChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((resolve) => c.once("exit", resolve));
  c.kill("SIGKILL");
  await exited;
}

/**
 * A `sleep` in its own private mount namespace (a copy of this one); resolves once it is in it. `track`
 * receives the child at once, so that a test's cleanup can kill it whatever happens.
 */
export async function namespaceChild(track: (c: ChildProcess) => void): Promise<ChildProcess & { pid: number }> {
  const c = spawn("unshare", ["-m", "--propagation", "private", "sleep", "1000"], { stdio: "ignore" });
  track(c);
  const ours = readlinkSync("/proc/self/ns/mnt");
  for (let i = 0; i < 500; i++) {
    try {
      if (readFileSync(`/proc/${c.pid}/comm`, "utf8").trim() === "sleep" && readlinkSync(`/proc/${c.pid}/ns/mnt`) !== ours) {
        return c as ChildProcess & { pid: number };
      }
    } catch {
      // not started yet
    }
    await sleep(10);
  }
  throw new Error("the unshare child did not start");
}

/** Sets an extended attribute without following symlinks (Node has no xattr API; python3 does). */
export function setXattr(path: string, name: string, value: string): void {
  execFileSync("python3", ["-c", "import os,sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode(), follow_symlinks=False)", path, name, value]);
}

/** The pids of a process's children (/proc/PID/task/PID/children), or none when it is gone. */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(" ").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Whether a process is there and not a zombie. */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}
