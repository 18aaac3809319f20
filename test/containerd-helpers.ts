/**
 * A private containerd for tests and the bench: the real containerd, runc shim and ctr, on a socket, root and
 * state below a scratch directory, with ovl's snapshotter as a proxy plugin named `ovl`. Nothing of the
 * machine's own containerd (/var/lib/containerd, /run/containerd, /opt/containerd) is read or written.
 *
 * What it takes on this kind of machine (containerd 1.6, runc 1.1, cgroup v1 or v2):
 *
 * - containerd 1.6 puts its shims' sockets in /run/containerd/s/ and the runc shim keeps runc's state in
 *   /run/containerd/runc/, whatever `state` says. So containerd runs in a mount namespace of its own
 *   (`unshare -m --propagation slave`), where a scratch directory is bound on /run. Its shims and runc inherit
 *   that namespace; ctr does not need it (it talks to the socket, and its FIFOs go to `--fifo-dir`).
 * - Slave, not private: ovl mounts some overlays itself (by fd, below its root) and hands containerd a bind of
 *   them, so ovl's mounts below the scratch dir must reach containerd's namespace. The scratch dir is made a
 *   shared mount (a bind on itself, in the test's own private namespace) before containerd starts, so its
 *   namespace receives them; what containerd mounts (the containers' root filesystems) stays in its own.
 * - `io.containerd.internal.v1.opt` would make /opt/containerd: disabled, with the snapshotters that cannot
 *   work here (aufs, btrfs, zfs, devmapper) and CRI.
 * - Garbage collection: containerd's scheduler collects at its next tick (1 s, or more) after any deletion,
 *   and then also removes what no lease, container, image or `containerd.io/gc.root` label holds, such as a
 *   view that `ctr snapshots view` just made. With the mutation threshold out of reach it collects only after
 *   a deletion, at start-up, and when asked (`gcSync()`: a lease removed with --sync, which returns once the
 *   snapshotters' removals are done); so a test calls gcSync() before it makes a view, then labels the view a
 *   GC root at once, and calls it again after a removal to see the snapshotter's side.
 * - Containers run with `ctr run --cgroup ""`: runc makes each container's cgroup below its own (the test's)
 *   and removes it with the container, where the default (`/NAMESPACE/ID`) leaves `/NAMESPACE` in every
 *   hierarchy.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { closeSync, cpSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { execa, type Result } from "execa";
import { childrenOf } from "./helpers.js";

/** The programs these tests drive, and what is missing of them here. */
export function missingContainerdTools(): string[] {
  const missing: string[] = [];
  for (const [cmd, arg] of [
    ["containerd", "--version"],
    ["ctr", "--version"],
    ["runc", "--version"],
    ["containerd-shim-runc-v2", "-v"],
    ["umoci", "--version"],
    ["skopeo", "--version"],
  ] as const) {
    const r = spawnSync(cmd, [arg], { stdio: "ignore" });
    if (r.error || r.status !== 0) missing.push(cmd);
  }
  if (!existsSync("/bin/busybox")) missing.push("/bin/busybox (busybox-static)");
  return missing;
}

/** Makes `dir` a shared mount point (a bind on itself), so that a namespace made with slave propagation sees what is mounted below it later. */
export function makeShared(dir: string): void {
  execFileSync("mount", ["--bind", dir, dir]);
  execFileSync("mount", ["--make-shared", dir]);
}

export interface CtrResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

/** Runs ctr against a socket in a namespace; never throws on a non-zero exit. */
export async function ctrAt(sock: string, ns: string, args: string[], timeout = 180_000): Promise<CtrResult> {
  const r: Result = await execa("ctr", ["-a", sock, "-n", ns, ...args], { reject: false, stdin: "ignore", timeout });
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

export interface ContainerdOptions {
  /** Proxy snapshotters: plugin name → socket. */
  proxies?: Record<string, string>;
}

/** A containerd of our own, running. */
export interface Containerd {
  base: string;
  sock: string;
  root: string;
  state: string;
  /** Where ctr run's FIFOs go. */
  fifo: string;
  pid: number;
  proc: ChildProcess;
  /** containerd's log (stdout and stderr) so far. */
  log(): string;
  /** ctr in namespace `ns`. */
  ctr(ns: string, ...args: string[]): Promise<CtrResult>;
  /** ctr, failing with its stderr unless it exits 0; its stdout. */
  ctrOk(ns: string, ...args: string[]): Promise<string>;
  /** A synchronous garbage collection: what containerd has removed is removed from the snapshotters too when this returns. */
  gcSync(ns: string): Promise<void>;
  /** SIGTERM, and its exit (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const q = (s: string) => JSON.stringify(s); // a TOML basic string for a path without control characters

/** Writes the config of a containerd below `base` (config.toml, root/, state/, run/, fifo/); returns the paths. */
export function containerdConfig(base: string, opts: ContainerdOptions = {}) {
  const p = {
    base,
    config: join(base, "config.toml"),
    root: join(base, "root"),
    state: join(base, "state"),
    run: join(base, "run"),
    fifo: join(base, "fifo"),
    sock: join(base, "containerd.sock"),
  };
  for (const d of [p.root, p.state, p.run, p.fifo]) mkdirSync(d, { recursive: true });
  mkdirSync(join(p.run, "containerd"), { recursive: true }); // /run/containerd in its namespace
  const proxies = Object.entries(opts.proxies ?? {}).flatMap(([name, address]) => [
    `[proxy_plugins.${name}]`,
    `  type = "snapshot"`,
    `  address = ${q(address)}`,
  ]);
  writeFileSync(
    p.config,
    [
      "version = 2",
      `root = ${q(p.root)}`,
      `state = ${q(p.state)}`,
      "disabled_plugins = [",
      '  "io.containerd.grpc.v1.cri",',
      '  "io.containerd.internal.v1.opt",',
      '  "io.containerd.snapshotter.v1.aufs",',
      '  "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.zfs",',
      '  "io.containerd.snapshotter.v1.devmapper",',
      "]",
      "",
      "[grpc]",
      `  address = ${q(p.sock)}`,
      "",
      "[debug]",
      '  level = "info"',
      "",
      '[plugins."io.containerd.gc.v1.scheduler"]',
      "  mutation_threshold = 1000000000",
      "",
      ...proxies,
      "",
    ].join("\n"),
  );
  return p;
}

/** Starts containerd below `base` (see the top of this file) and waits until it answers. */
export async function startContainerd(base: string, opts: ContainerdOptions = {}, track?: (c: ChildProcess) => void): Promise<Containerd> {
  const p = containerdConfig(base, opts);
  // unshare execs sh, which execs containerd: the child's pid is containerd's. Its log goes to a file (appended
  // to across restarts): a pipe that no one drains while a test waits in a synchronous call blocks containerd.
  const logFile = join(base, "containerd.log");
  const fd = openSync(logFile, "a");
  const script = 'mount --bind "$1" /run && exec containerd --config "$2"';
  const proc = spawn("unshare", ["-m", "--propagation", "slave", "--", "sh", "-c", script, "sh", p.run, p.config], {
    stdio: ["ignore", fd, fd],
  });
  closeSync(fd);
  track?.(proc);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const log = () => readFileSync(logFile, "utf8");
  const ctr = (ns: string, ...args: string[]) => ctrAt(p.sock, ns, args);
  const ctrOk = async (ns: string, ...args: string[]) => {
    const r = await ctr(ns, ...args);
    if (r.exitCode !== 0) throw new Error(`ctr ${args.join(" ")}: exit ${r.exitCode}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  let gcs = 0;
  const c: Containerd = {
    base,
    sock: p.sock,
    root: p.root,
    state: p.state,
    fifo: p.fifo,
    pid: proc.pid!,
    proc,
    log,
    ctr,
    ctrOk,
    gcSync: async (ns) => {
      const id = `ovl-test-gc-${process.pid}-${++gcs}`;
      await ctrOk(ns, "leases", "create", "--id", id);
      await ctrOk(ns, "leases", "rm", "--sync", id);
    },
    stop: async (graceMs = 30_000) => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`containerd exited (${proc.exitCode ?? proc.signalCode}) before it served; its log:\n${log().slice(-4000)}`);
    }
    if (existsSync(p.sock) && (await ctrAt(p.sock, "default", ["version"], 10_000)).exitCode === 0) return c;
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`containerd did not serve on ${p.sock} within 60 s; its log:\n${log().slice(-4000)}`);
    }
    await sleep(100);
  }
}

/** ovl's snapshotter, running. */
export interface OvlSnapshotter {
  sock: string;
  root: string;
  pid: number;
  proc: ChildProcess;
  stderr(): string;
  /** SIGTERM (or `signal`), and its exit. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `ovl snapshotter --address SOCK --root ROOT` and waits for its `serving on SOCK` line. With
 * `expectServe: false`, resolves once it exits instead (a refused start).
 */
export async function startOvlSnapshotter(
  cli: string,
  sock: string,
  root: string,
  track?: (c: ChildProcess) => void,
  env: NodeJS.ProcessEnv = process.env,
): Promise<OvlSnapshotter> {
  const proc = spawn(process.execPath, [cli, "snapshotter", "--address", sock, "--root", root], {
    stdio: ["ignore", "pipe", "pipe"],
    env,
  });
  track?.(proc);
  const out: string[] = [];
  proc.stdout!.on("data", (d: Buffer) => out.push(d.toString()));
  const err: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const stderr = () => err.join("");
  const ready = `ovl: snapshotter: serving on ${sock}`;
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`ovl snapshotter: no '${ready}' within 60 s; stderr:\n${stderr()}`)), 60_000);
    proc.stderr!.on("data", (d: Buffer) => {
      err.push(d.toString());
      if (stderr().split("\n").includes(ready)) {
        clearTimeout(t);
        resolve();
      }
    });
    void exited.then((r) => {
      clearTimeout(t);
      reject(Object.assign(new Error(`ovl snapshotter exited (${r.code ?? r.signal}) before serving; stderr:\n${stderr()}`), { exit: r, stderr: stderr() }));
    });
  });
  return {
    sock,
    root,
    pid: proc.pid!,
    proc,
    stderr,
    exited,
    stop: async (signal = "SIGTERM", graceMs = 30_000) => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill(signal);
        const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
  };
}

/** Processes (other than this one) whose command line mentions `text`: the shims name containerd's socket. */
export function processesMentioning(text: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${e}/cmdline`, "utf8");
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z") continue;
      if (cmdline.includes(text)) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

/** SIGKILLs a process and everything below it (its descendants first seen, then it). */
export function killTree(pid: number): void {
  for (const child of childrenOf(pid)) killTree(child);
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** Mount points below `dir` in the mount namespace of process `pid` (empty when it is gone). */
export function mountsUnderIn(pid: number, dir: string): string[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/mountinfo`, "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((t) => t === dir || t.startsWith(`${dir}/`));
}

/** cgroup directories named `prefix*` in any hierarchy (containers whose cgroup runc did not remove). */
export function cgroupsNamed(prefix: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, depth: number) => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = join(dir, e.name);
      if (e.name.startsWith(prefix)) out.push(p);
      else if (depth > 0) walk(p, depth - 1);
    }
  };
  walk("/sys/fs/cgroup", 4);
  return out;
}

/** Removes (empty) cgroup directories; returns those that would not go. */
export function removeCgroups(dirs: string[]): string[] {
  return dirs.filter((d) => {
    try {
      rmdirSync(d);
      return false;
    } catch {
      return true;
    }
  });
}

// --- the test image ---------------------------------------------------------------------------------------

const umoci = (...args: string[]) => execFileSync("umoci", args, { stdio: ["ignore", "pipe", "pipe"] });

/**
 * An OCI image built offline, in `dir`/layout, tag `test`, and as an OCI archive `dir`/image.tar:
 *
 * 1. base (umoci): busybox as /bin/busybox with sh, true, cat; /etc/greeting, /etc/version (1), /etc/doomed,
 *    a tree /gone/{a,sub/b}, a directory /swap/{old}, a directory /tofile/{x}, /opq/{stale,keep}, /data/target.
 * 2. mid (umoci): /etc/doomed deleted, /gone removed whole, /swap removed and made again with /swap/new,
 *    /etc/app.conf added, /data/link a symlink to target, /data/hard1 and /data/hard2 one file (a hard link),
 *    /data/doomed2 added.
 * 3. top (umoci): /etc/version 3, /etc/layer3 and /etc/gone-in-4 added, /data/doomed2 deleted.
 * 4. by hand (a tar made here with GNU tar, added with `umoci raw add-layer`): /opq made opaque
 *    (`.wh..wh..opq`) with /opq/fresh in it, a whiteout of /etc/gone-in-4, and /tofile, a directory until
 *    now, replaced by a file. (umoci's own layer for that last change is not valid: it writes the file and
 *    then a whiteout below it, `tofile/.wh.x`, which containerd's applier refuses with "mkparent ...
 *    not a directory".)
 */
export function buildTestImage(dir: string): { layout: string; archive: string; tag: string } {
  const layout = join(dir, "layout");
  const tag = "test";
  const ref = `${layout}:${tag}`;
  umoci("init", "--layout", layout);
  umoci("new", "--image", ref);
  const b = join(dir, "bundle");
  const r = join(b, "rootfs");
  const unpack = () => {
    execFileSync("rm", ["-rf", b]);
    umoci("unpack", "--image", ref, b);
  };
  const repack = () => umoci("repack", "--image", ref, b);
  const put = (rel: string, content: string) => {
    mkdirSync(join(r, rel, ".."), { recursive: true });
    writeFileSync(join(r, rel), content);
  };

  unpack();
  for (const d of ["bin", "etc", "proc", "dev", "sys", "tmp", "data"]) mkdirSync(join(r, d), { recursive: true });
  cpSync("/bin/busybox", join(r, "bin", "busybox"));
  for (const applet of ["sh", "true", "cat"]) symlinkSync("busybox", join(r, "bin", applet));
  put("etc/greeting", "hello from the base\n");
  put("etc/version", "1\n");
  put("etc/doomed", "deleted in layer 2\n");
  put("gone/a", "a\n");
  put("gone/sub/b", "b\n");
  put("swap/old", "old swap\n");
  put("tofile/x", "x\n");
  put("opq/stale", "hidden by the opaque dir\n");
  put("opq/keep", "also hidden\n");
  put("data/target", "the link's target\n");
  repack();

  unpack();
  execFileSync("rm", ["-rf", join(r, "etc", "doomed"), join(r, "gone"), join(r, "swap")]);
  put("swap/new", "new swap\n");
  put("etc/app.conf", "app=1\n");
  symlinkSync("target", join(r, "data", "link"));
  put("data/hard1", "one file, two names\n");
  execFileSync("ln", [join(r, "data", "hard1"), join(r, "data", "hard2")]);
  put("data/doomed2", "deleted in layer 3\n");
  repack();

  unpack();
  execFileSync("rm", ["-rf", join(r, "data", "doomed2")]);
  put("etc/version", "3\n");
  put("etc/layer3", "from layer 3\n");
  put("etc/gone-in-4", "deleted in layer 4\n");
  repack();
  execFileSync("rm", ["-rf", b]);

  // Layer 4, by hand: an opaque directory and a whiteout, as a tar (GNU tar writes what is in the tree).
  const l4 = join(dir, "layer4");
  mkdirSync(join(l4, "opq"), { recursive: true });
  mkdirSync(join(l4, "etc"), { recursive: true });
  writeFileSync(join(l4, "opq", ".wh..wh..opq"), "");
  writeFileSync(join(l4, "opq", "fresh"), "the opaque dir's own file\n");
  writeFileSync(join(l4, "etc", ".wh.gone-in-4"), "");
  writeFileSync(join(l4, "tofile"), "a directory before, a file now\n");
  const l4tar = join(dir, "layer4.tar");
  execFileSync("tar", ["--numeric-owner", "--owner=0", "--group=0", "-cf", l4tar, "-C", l4, "opq", "etc", "tofile"]);
  umoci("raw", "add-layer", "--image", ref, l4tar);
  umoci("config", "--image", ref, "--config.cmd=/bin/sh", "--config.workingdir=/");

  const archive = join(dir, "image.tar");
  execFileSync("skopeo", ["copy", "-q", `oci:${ref}`, `oci-archive:${archive}`]);
  return { layout, archive, tag };
}

/** What the probe prints in a container of the test image: files from every layer, what was deleted, links. */
export const PROBE = [
  "cd /",
  "for f in /etc/greeting /etc/version /etc/app.conf /etc/layer3 /swap/new /tofile /opq/fresh /data/link; do printf '%s: ' $f; cat $f; done",
  "for p in /etc/doomed /gone /gone/a /swap/old /data/doomed2 /opq/stale /opq/keep /etc/gone-in-4; do test ! -e $p && echo \"absent: $p\"; done",
  "echo \"link: $(readlink /data/link)\"",
  "test -f /tofile && echo 'tofile: a file'",
  "echo \"hard: $(stat -c %h /data/hard1) links, $( [ $(stat -c %i /data/hard1) = $(stat -c %i /data/hard2) ] && echo one inode)\"",
  "echo \"ls /etc: $(ls /etc | tr '\\n' ' ')\"",
  "echo \"ls /opq: $(ls -A /opq | tr '\\n' ' ')\"",
  "echo \"ls /swap: $(ls -A /swap | tr '\\n' ' ')\"",
  "echo \"ls /data: $(ls -A /data | tr '\\n' ' ')\"",
].join("\n");

/** The probe's output in a correct root filesystem of the test image. */
export const PROBE_EXPECTED = [
  "/etc/greeting: hello from the base",
  "/etc/version: 3",
  "/etc/app.conf: app=1",
  "/etc/layer3: from layer 3",
  "/swap/new: new swap",
  "/tofile: a directory before, a file now",
  "/opq/fresh: the opaque dir's own file",
  "/data/link: the link's target",
  "absent: /etc/doomed",
  "absent: /gone",
  "absent: /gone/a",
  "absent: /swap/old",
  "absent: /data/doomed2",
  "absent: /opq/stale",
  "absent: /opq/keep",
  "absent: /etc/gone-in-4",
  "link: target",
  "tofile: a file",
  "hard: 2 links, one inode",
  "ls /etc: app.conf greeting layer3 version ",
  "ls /opq: fresh ",
  "ls /swap: new ",
  "ls /data: hard1 hard2 link target ",
].join("\n");
