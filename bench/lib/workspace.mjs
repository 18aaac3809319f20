/**
 * The bench's scratch space inside its private mount namespace: a tmpfs on the workspace directory (so
 * every layer is in memory and every figure is about mounting, not the disk), directories for the overlays,
 * the C baselines, and the 10,000-mount table.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

export class Workspace {
  constructor(dir, buildDir) {
    this.dir = dir;
    this.buildDir = buildDir;
    this.mounted = false;
    this.table = undefined;
  }

  /** Mounts the tmpfs every other directory lives on. */
  setup() {
    sh("mount", ["-t", "tmpfs", "-o", "size=256m,mode=700", "ovl-bench", this.dir]);
    this.mounted = true;
  }

  path(...parts) {
    return join(this.dir, ...parts);
  }

  mkdir(...parts) {
    const p = this.path(...parts);
    mkdirSync(p, { recursive: true });
    return p;
  }

  /** lower, upper, work and target directories for one overlay, under `name`. */
  overlayDirs(name) {
    return {
      lower: this.mkdir(name, "lower"),
      upper: this.mkdir(name, "upper"),
      work: this.mkdir(name, "work"),
      target: this.mkdir(name, "merged"),
    };
  }

  /**
   * Runs bench/c/ovl-cycle in `mode` for `n` mount+umount cycles. Returns per-cycle ms: `total`, `mount`,
   * `umount`, and `phases`, one array per phase the program names in its header (in its order).
   */
  cCycle(mode, n, d) {
    const out = execFileSync(join(this.buildDir, "ovl-cycle"), [mode, String(n), d.lower, d.upper, d.work, d.target], {
      encoding: "utf8",
      maxBuffer: 1 << 26,
    });
    const res = { total: [], mount: [], umount: [], phases: {} };
    let names = [];
    for (const line of out.split("\n")) {
      if (!line) continue;
      if (line.startsWith("#")) {
        names = line.split(" ").slice(3); // "# mount umount <phases...>"
        for (const k of names) res.phases[k] = [];
        continue;
      }
      const ns = line.split(" ").map(Number);
      res.mount.push(ns[0] / 1e6);
      res.umount.push(ns[1] / 1e6);
      res.total.push((ns[0] + ns[1]) / 1e6);
      names.forEach((k, i) => res.phases[k].push(ns[i + 2] / 1e6));
    }
    if (res.total.length !== n) throw new Error(`ovl-cycle ${mode}: expected ${n} cycles, got ${res.total.length}`);
    return res;
  }

  /**
   * Fills the mount table with `n` small tmpfs mounts under one tmpfs of their own (dropped in one lazy
   * unmount). Returns the wall time and its mkdir/mount split (ms).
   */
  makeTable(n) {
    const dir = this.mkdir("table");
    sh("mount", ["-t", "tmpfs", "-o", "size=16m", "ovl-bench-table", dir]);
    this.table = dir;
    const t0 = performance.now();
    const [mkdirNs, mountNs] = sh(join(this.buildDir, "mount-table"), ["tmpfs", dir, String(n)]).trim().split(" ").map(Number);
    return { wallMs: performance.now() - t0, mkdirMs: mkdirNs / 1e6, mountMs: mountNs / 1e6 };
  }

  /** Unmounts the table (all of it, lazily); returns the time it took (ms, including spawning umount). */
  dropTable() {
    if (!this.table) return 0;
    const t0 = performance.now();
    sh("umount", ["-l", this.table]);
    this.table = undefined;
    return performance.now() - t0;
  }

  /** Unmounts everything the bench mounted (the namespace would drop it anyway when the bench exits). */
  teardown() {
    if (!this.mounted) return;
    this.mounted = false;
    sh("umount", ["-l", this.dir]);
  }
}
