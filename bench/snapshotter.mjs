/**
 * Issue 14's benchmark: a container start through ovl's snapshotter (`ovl snapshotter`, containerd's proxy
 * plugin `ovl`) against containerd's built-in `overlayfs` snapshotter, in one containerd, taking turns: each
 * round one `ctr run --rm --snapshotter X IMAGE ID /bin/true` of each (ABBA order), a whole start as a user
 * sees it: ctr, containerd, the snapshotter's Prepare and Mounts, the runc shim, runc, the container, its
 * removal. The image: busybox and two small layers more, unpacked into both snapshotters first.
 *
 * The containerd is the bench's own, as test/containerd-helpers.ts sets it up (read there why): socket, root
 * and state below the workspace, its own mount namespace (slave of the workspace, made shared) with a
 * directory bound on /run, containers with `--cgroup ""`. Garbage collection as containerd does it by default
 * (its snapshot removals run between starts, for both snapshotters alike). containerd's and ovl's output go
 * to files, not pipes: the bench waits in spawnSync, so nothing would drain a pipe, and a daemon blocked on a
 * full one (containerd writes a few log lines per start) hangs the next start.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, cpSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fmtTime, makeRow } from "./lib/report.mjs";
import { alternate, median, quantile } from "./lib/stats.mjs";

const GOAL = 1.2;

function run(cmd, args, opts = {}) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 26, stdio: ["ignore", "pipe", "pipe"], ...opts });
  const ms = performance.now() - t0;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${(r.stderr ?? "").trim().slice(0, 400)}`);
  return { ms, stdout: r.stdout };
}

const missingTools = () => {
  const out = [];
  for (const [cmd, arg] of [["containerd", "--version"], ["ctr", "--version"], ["runc", "--version"], ["containerd-shim-runc-v2", "-v"], ["umoci", "--version"], ["skopeo", "--version"]]) {
    const r = spawnSync(cmd, [arg], { stdio: "ignore" });
    if (r.error || r.status !== 0) out.push(cmd);
  }
  if (!existsSync("/bin/busybox")) out.push("/bin/busybox");
  return out;
};

/** busybox, then two small layers (a config file, a few more files): an OCI archive. */
function buildImage(dir) {
  const layout = join(dir, "layout");
  const ref = `${layout}:bench`;
  const umoci = (...args) => run("umoci", args);
  umoci("init", "--layout", layout);
  umoci("new", "--image", ref);
  const b = join(dir, "bundle");
  const r = join(b, "rootfs");
  const step = (fn) => {
    run("rm", ["-rf", b]);
    umoci("unpack", "--image", ref, b);
    fn();
    umoci("repack", "--image", ref, b);
  };
  step(() => {
    for (const d of ["bin", "etc", "proc", "dev", "sys", "tmp"]) mkdirSync(join(r, d), { recursive: true });
    cpSync("/bin/busybox", join(r, "bin", "busybox"));
    for (const a of ["sh", "true"]) symlinkSync("busybox", join(r, "bin", a));
  });
  step(() => writeFileSync(join(r, "etc", "app.conf"), "app=1\n"));
  step(() => {
    mkdirSync(join(r, "srv"));
    for (let i = 0; i < 50; i++) writeFileSync(join(r, "srv", `f${i}`), `file ${i}\n`.repeat(40));
  });
  run("rm", ["-rf", b]);
  const archive = join(dir, "image.tar");
  run("skopeo", ["copy", "-q", `oci:${ref}`, `oci-archive:${archive}`]);
  return archive;
}

function writeConfig(base, ovlSock) {
  const p = { root: join(base, "root"), state: join(base, "state"), run: join(base, "run"), fifo: join(base, "fifo"), sock: join(base, "containerd.sock"), config: join(base, "config.toml") };
  for (const d of [p.root, p.state, join(p.run, "containerd"), p.fifo]) mkdirSync(d, { recursive: true });
  const q = JSON.stringify;
  writeFileSync(
    p.config,
    [
      "version = 2",
      `root = ${q(p.root)}`,
      `state = ${q(p.state)}`,
      `disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]`,
      "[grpc]",
      `  address = ${q(p.sock)}`,
      "[proxy_plugins.ovl]",
      '  type = "snapshot"',
      `  address = ${q(ovlSock)}`,
      "",
    ].join("\n"),
  );
  return p;
}

/** Waits for `proc` to exit; SIGKILL after `ms`. */
async function stop(proc, signal, ms = 30_000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return { code: proc.exitCode, signal: proc.signalCode };
  const exited = new Promise((resolve) => proc.once("exit", (code, sig) => resolve({ code, signal: sig })));
  proc.kill(signal);
  const t = setTimeout(() => proc.kill("SIGKILL"), ms);
  const r = await exited;
  clearTimeout(t);
  return r;
}

/** Processes whose command line names `text` (the shims name containerd's socket), but not this one. */
function mentioning(text) {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid)
    .filter((e) => {
      try {
        return readFileSync(`/proc/${e}/cmdline`, "utf8").includes(text);
      } catch {
        return false;
      }
    })
    .map(Number);
}

export async function snapshotterRows({ ws, rows, sections, root, quick }) {
  const missing = missingTools();
  if (missing.length > 0) {
    rows.push(makeRow({ name: "container start, ovl snapshotter vs overlayfs", kind: "check", goal: "tools installed", pass: false, note: `not installed: ${missing.join(", ")}` }));
    return;
  }
  const base = ws.mkdir("snapshotter");
  // Shared, so that containerd's namespace (a slave of this one) sees the overlays ovl mounts itself below it.
  run("mount", ["--bind", base, base]);
  run("mount", ["--make-shared", base]);
  const procs = [];
  try {
    await measure(base, { rows, sections, root, quick, procs });
  } finally {
    for (const p of procs) await stop(p, "SIGTERM").catch(() => {});
    for (const pid of mentioning(base)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    run("umount", ["-l", base]);
  }
}

async function measure(base, { rows, sections, root, quick, procs }) {
  const archive = buildImage(sub(base, "image"));
  const ovlRoot = sub(base, "ovl");
  const ovlSock = join(base, "ovl.sock");

  // ovl's snapshotter: ready when it says so.
  const ovlLog = join(base, "ovl.log");
  const ovlFd = openSync(ovlLog, "w");
  const ovl = spawn(process.execPath, [join(root, "dist", "cli.js"), "snapshotter", "--address", ovlSock, "--root", ovlRoot], { stdio: ["ignore", ovlFd, ovlFd] });
  closeSync(ovlFd);
  procs.push(ovl);
  const ovlErr = () => readFileSync(ovlLog, "utf8");
  for (let i = 0; !ovlErr().split("\n").includes(`ovl: snapshotter: serving on ${ovlSock}`); i++) {
    if (ovl.exitCode !== null || ovl.signalCode !== null) throw new Error(`ovl snapshotter exited (${ovl.exitCode ?? ovl.signalCode}) before serving: ${ovlErr().trim()}`);
    if (i > 600) throw new Error(`ovl snapshotter: not serving after 60 s: ${ovlErr().trim()}`);
    await sleep(100);
  }

  const p = writeConfig(sub(base, "containerd"), ovlSock);
  const cdLogFile = join(base, "containerd.log");
  const cdFd = openSync(cdLogFile, "w");
  const cd = spawn("unshare", ["-m", "--propagation", "slave", "--", "sh", "-c", 'mount --bind "$1" /run && exec containerd --config "$2"', "sh", p.run, p.config], {
    stdio: ["ignore", cdFd, cdFd],
  });
  closeSync(cdFd);
  procs.unshift(cd); // stopped first
  const cdLog = () => readFileSync(cdLogFile, "utf8").slice(-1500);
  const ctr = (...args) => {
    try {
      return run("ctr", ["-a", p.sock, "-n", "bench", ...args], { timeout: 120_000, killSignal: "SIGKILL" });
    } catch (e) {
      throw new Error(`${e.message}; containerd's log ends:\n${cdLog()}`);
    }
  };
  for (let i = 0; ; i++) {
    if (cd.exitCode !== null) throw new Error(`containerd exited ${cd.exitCode}: ${cdLog()}`);
    if (existsSync(p.sock) && spawnSync("ctr", ["-a", p.sock, "version"], { stdio: "ignore" }).status === 0) break;
    if (i > 600) throw new Error(`containerd did not serve within 60 s: ${cdLog()}`);
    await sleep(100);
  }

  const image = "example.com/ovl-bench:1";
  const imports = {};
  for (const snapshotter of ["overlayfs", "ovl"]) imports[snapshotter] = ctr("images", "import", "--snapshotter", snapshotter, "--index-name", image, archive).ms;
  let n = 0;
  const start = (snapshotter) => () => ctr("run", "--rm", "--cgroup", "", "--fifo-dir", p.fifo, "--snapshotter", snapshotter, image, `bench-${process.pid}-${++n}`, "/bin/true").ms;
  for (let i = 0; i < 2; i++) for (const s of ["ovl", "overlayfs"]) start(s)(); // warm up
  const rounds = quick ? 4 : 20;
  const t = await alternate(rounds, [
    { name: "ovl", run: start("ovl") },
    { name: "overlayfs", run: start("overlayfs") },
  ]);
  const ratio = median(t.ovl) / median(t.overlayfs);
  rows.push(
    makeRow({
      name: "container start (ctr run --rm /bin/true), ovl snapshotter",
      kind: "ratio",
      subject: median(t.ovl),
      baseline: median(t.overlayfs),
      goal: GOAL,
      note:
        `baseline: containerd's built-in overlayfs snapshotter, same containerd, same image (3 layers); ${t.ovl.length} starts each, ` +
        `taking turns; ovl p10–p90 ${fmtTime(quantile(t.ovl, 0.1))}–${fmtTime(quantile(t.ovl, 0.9))}, ` +
        `overlayfs ${fmtTime(quantile(t.overlayfs, 0.1))}–${fmtTime(quantile(t.overlayfs, 0.9))}`,
    }),
  );
  sections.push({
    title: "container start through ovl's snapshotter vs containerd's overlayfs: medians",
    lines: [
      `ctr run --rm /bin/true: ovl ${fmtTime(median(t.ovl))}, overlayfs ${fmtTime(median(t.overlayfs))}: ${ratio.toFixed(2)}× (goal ≤ ${GOAL}×: ${ratio <= GOAL ? "met" : "MISSED"})`,
      `image import (unpack) once each: ovl ${fmtTime(imports.ovl)}, overlayfs ${fmtTime(imports.overlayfs)} (the content once, for both)`,
    ],
  });

  // Stop both cleanly; a failure to is a failure of the bench.
  ctr("images", "rm", "--sync", image);
  const rc = await stop(cd, "SIGTERM");
  const ro = await stop(ovl, "SIGTERM");
  if (rc.code !== 0) throw new Error(`containerd exited ${rc.code ?? rc.signal}`);
  if (ro.code !== 0) throw new Error(`ovl snapshotter exited ${ro.code ?? ro.signal}: ${ovlErr().trim().slice(-400)}`);
}

function sub(base, name) {
  const p = join(base, name);
  mkdirSync(p, { recursive: true });
  return p;
}
