/**
 * ovl's benchmarks (issue 6). Run by `npm run bench` (scripts/run-bench.js), which builds dist/ and the C
 * baselines and starts this inside a private mount namespace. Every figure is a median over rounds in which
 * ovl and its baseline take turns, and every ratio compares two things measured side by side in this run.
 *
 * Groups (`--only=a,b`): cycle, profile, layers, eventloop, table. `--quick`: fewer rounds.
 * `--mounts=N`: size of the big table (default 10000).
 */
import { spawnSync } from "node:child_process";
import { createHook } from "node:async_hooks";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { errorRow, fmtTime, formatMarkdown, formatText, makeRow } from "./lib/report.mjs";
import { alternate, median, timed } from "./lib/stats.mjs";
import { Workspace } from "./lib/workspace.mjs";

const GROUPS = ["cycle", "profile", "layers", "eventloop", "table"];

function parseArgs(argv) {
  const opts = { quick: false, only: GROUPS, mounts: 10000 };
  for (const a of argv) {
    if (a === "--quick") opts.quick = true;
    else if (a.startsWith("--only=")) {
      opts.only = a.slice(7).split(",").filter(Boolean);
      const bad = opts.only.filter((g) => !GROUPS.includes(g));
      if (bad.length) throw new Error(`unknown group(s) ${bad.join(", ")}; groups: ${GROUPS.join(", ")}`);
    } else if (a.startsWith("--mounts=")) {
      opts.mounts = Number(a.slice(9));
      if (!Number.isInteger(opts.mounts) || opts.mounts < 0) throw new Error(`--mounts must be a whole number`);
    } else throw new Error(`unknown argument ${a} (known: --quick, --only=${GROUPS.join(",")}, --mounts=N)`);
  }
  return opts;
}

/** Round counts: [full, quick]. */
function sizes(quick) {
  const pick = (full, q) => (quick ? q : full);
  return {
    cycleRounds: pick(41, 5),
    cyclesPerBatch: pick(20, 8),
    spawnCyclesPerBatch: pick(4, 2),
    profileRounds: pick(21, 3),
    profileCycles: pick(20, 8),
    listRounds: pick(41, 7),
    lsRounds: pick(11, 2),
    jsonRounds: pick(21, 4),
    layerRounds: pick(7, 2),
    loopRounds: pick(11, 2),
  };
}

const log = (msg) => process.stderr.write(`bench: ${msg}\n`);

/** Runs a command to completion; returns its wall time (ms) and output. Throws if it fails. */
function runProcess(cmd, args) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "pipe"] });
  const ms = performance.now() - t0;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${r.stderr.trim().slice(0, 300)}`);
  return { ms, stdout: r.stdout };
}

export async function main(argv, ctx) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    console.error(`bench: ${e.message}`);
    return 2;
  }
  const n = sizes(opts.quick);
  const dist = (f) => pathToFileURL(join(ctx.root, "dist", f)).href;
  const lib = await import(dist("index.js"));
  // scripts/run-bench.js makes the workspace (and removes it once the namespace is gone).
  const ownWorkspace = !ctx.workspace;
  const workspace = ctx.workspace ?? mkdtempSync(join(os.tmpdir(), "ovl-bench-"));
  const ws = new Workspace(workspace, ctx.buildDir);
  const rows = [];
  const sections = [];
  let failed = false;
  const machine = machineLine();
  log(`${machine}${opts.quick ? " (--quick)" : ""}`);

  const group = async (name, fn) => {
    if (!opts.only.includes(name)) return;
    log(`${name}...`);
    try {
      await fn();
    } catch (e) {
      failed = true;
      console.error(e);
      rows.push(errorRow(`${name}: stopped`, "", e));
    }
  };

  try {
    ws.setup();
    const strategy = await lib.kernelStrategy();
    log(`ovl's kernel strategy here: ${strategy}`);
    const ctxt = { lib, ws, n, rows, sections, dist, root: ctx.root, quick: opts.quick, mounts: opts.mounts, strategy };
    await group("cycle", () => cycleRows(ctxt, ""));
    await group("profile", () => profile(ctxt));
    await group("layers", () => manyLayers(ctxt));
    await group("eventloop", () => eventLoop(ctxt));
    await group("table", () => tableRows(ctxt));
  } finally {
    try {
      ws.teardown();
      if (ownWorkspace) rmSync(workspace, { recursive: true, force: true });
    } catch (e) {
      failed = true;
      console.error(`bench: cleanup failed: ${e.message}`);
    }
  }

  const text = [
    "",
    `ovl bench — ${machine}${opts.quick ? " — QUICK run (few rounds; figures are rough)" : ""}`,
    "",
    formatText(rows),
    ...sections.flatMap((s) => ["", s.title, ...s.lines.map((l) => `  ${l}`)]),
    "",
  ].join("\n");
  console.log(text);

  const md = [
    `Machine: ${machine}${opts.quick ? " (--quick)" : ""}. Command: \`npm run bench\`.`,
    "",
    formatMarkdown(rows),
    ...sections.flatMap((s) => ["", `**${s.title}**`, "", "```", ...s.lines, "```"]),
    "",
  ].join("\n");
  mkdirSync(ctx.buildDir, { recursive: true });
  writeFileSync(join(ctx.buildDir, "latest.md"), md);
  log(`Markdown of these figures: ${join(ctx.buildDir, "latest.md")}`);
  return failed ? 1 : 0;
}

function machineLine() {
  const cpu = os.cpus()[0]?.model?.replace(/\s+/g, " ").trim() ?? "unknown CPU";
  let utilLinux = "";
  const r = spawnSync("findmnt", ["--version"], { encoding: "utf8" });
  if (r.status === 0) utilLinux = `, ${r.stdout.trim().replace(/^findmnt from /, "")}`;
  return `Linux ${os.release()}, ${os.availableParallelism()} CPUs (${cpu}), Node ${process.version}${utilLinux}, load ${os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`;
}

// --- mount()+umount() cycles -----------------------------------------------------------------------

/** `k` library cycles; returns per-cycle ms, and pushes the mount/umount split into `split`. */
async function libCycles(lib, spec, k, split) {
  const out = [];
  for (let i = 0; i < k; i++) {
    const t0 = performance.now();
    const m = await lib.mount(spec);
    const t1 = performance.now();
    await m.unmount();
    const t2 = performance.now();
    out.push(t2 - t0);
    split?.mount.push(t1 - t0);
    split?.umount.push(t2 - t1);
  }
  return out;
}

/** `k` cycles of spawning mount(8) and umount(8), as a program without the library would. */
function spawnCycles(d, k) {
  const out = [];
  const data = `lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work}`;
  for (let i = 0; i < k; i++) {
    const t0 = performance.now();
    runProcess("mount", ["-t", "overlay", "-o", data, "overlay", d.target]);
    runProcess("umount", [d.target]);
    out.push(performance.now() - t0);
  }
  return out;
}

/** Rows 1 and 3 (or row 2, with `suffix` naming the table). */
async function cycleRows(ctx, suffix) {
  const { lib, ws, n, rows } = ctx;
  const d = ws.overlayDirs(suffix ? "cycle-table" : "cycle");
  const spec = { lower: [d.lower], upper: d.upper, work: d.work, target: d.target };
  await libCycles(lib, spec, 10); // warm up: JIT, the strategy probe, the addon
  ws.cCycle("legacy", 5, d);
  ws.cCycle("fd", 5, d);
  const split = { mount: [], umount: [] };
  const contestants = [
    { name: "ovl", run: () => libCycles(lib, spec, n.cyclesPerBatch, split) },
    { name: "c", run: () => ws.cCycle("legacy", n.cyclesPerBatch, d).total },
    { name: "cfd", run: () => ws.cCycle("fd", n.cyclesPerBatch, d).total },
  ];
  if (!suffix) contestants.push({ name: "spawn", run: () => spawnCycles(d, n.spawnCyclesPerBatch) });
  const s = await alternate(n.cycleRounds, contestants);
  const ovl = median(s.ovl);
  const c = median(s.c);
  if (!suffix) ctx.baseCycle = { ovl, c };
  // With the big table: does the cycle grow with it (it must not re-read the table)?
  const growth = suffix && ctx.baseCycle
    ? `; vs the small table: ovl ${(ovl / ctx.baseCycle.ovl).toFixed(2)}×, C ${(c / ctx.baseCycle.c).toFixed(2)}×`
    : "";
  rows.push(
    makeRow({
      name: `mount()+umount() cycle${suffix}`,
      kind: "ratio",
      subject: ovl,
      baseline: c,
      goal: 1.25,
      note: `baseline: C mount(2)+umount2(2) loop; ovl's mount() ${fmtTime(median(split.mount))} + unmount() ${fmtTime(
        median(split.umount),
      )}; ${s.ovl.length} cycles each${growth}`,
    }),
    makeRow({
      name: `  C floor of ovl's syscalls${suffix}`,
      kind: "info",
      subject: median(s.cfd),
      baseline: c,
      note: "C doing exactly ovl's calls (realpath+statx checks, fsopen/fsconfig fds/fsmount/move_mount, statmount) vs mount(2)",
    }),
  );
  if (!suffix) {
    rows.push(
      makeRow({
        name: "same cycle vs spawning mount(8)+umount(8)",
        kind: "faster",
        subject: ovl,
        baseline: median(s.spawn),
        goal: 7,
        note: `baseline: spawnSync("mount", ["-t", "overlay", ...]) + spawnSync("umount"); ${s.spawn.length} cycles`,
      }),
    );
  }
}

// --- where mount() spends its time -----------------------------------------------------------------

/** The internal functions the profile calls, from whichever dist/ module exports them now. */
async function loadInternals(dist) {
  const files = ["validate.js", "native.js", "statmount.js", "overlay-options.js", "table.js", "mount.js"];
  const modules = await Promise.all(files.map((f) => import(dist(f)).catch(() => ({}))));
  const names = ["checkSpecShape", "checkSpecPaths", "native", "FsConfigKind", "mountInfoFromStatmount", "toOverlayMount"];
  const out = {};
  for (const name of names) out[name] = modules.find((m) => m[name] !== undefined)?.[name];
  const missing = names.filter((k) => out[k] === undefined);
  if (missing.length) {
    throw new Error(`no module of dist/ (${files.join(", ")}) exports ${missing.join(", ")}: update bench/run.mjs profile()`);
  }
  return out;
}

/** Counts async resources by type while `fn` runs: "generic" is one addon call, FSREQ* one fs call. */
async function countTrips(fn) {
  const counts = {};
  const hook = createHook({
    init(_id, type) {
      if (type !== "PROMISE") counts[type] = (counts[type] ?? 0) + 1;
    },
  });
  hook.enable();
  try {
    await fn();
  } finally {
    hook.disable();
  }
  return counts;
}

/**
 * mount() taken apart into its phases, each timed (ms): the calls mountOverlay() makes on the fd path,
 * made one by one through the internal functions. Pushes into `phases` and leaves nothing mounted.
 */
async function phasedCycle(lib, x, spec, phases) {
  const addon = x.native();
  const K = x.FsConfigKind;
  const t0 = performance.now();
  const shaped = x.checkSpecShape(spec);
  const t1 = performance.now();
  const checked = await x.checkSpecPaths(shaped);
  const t2 = performance.now();
  const steps = [
    [K.String, "source", checked.source],
    ...checked.lower.map((p) => [K.PathFd, "lowerdir+", p]),
    [K.PathFd, "upperdir", checked.upper],
    [K.PathFd, "workdir", checked.work],
  ];
  const r = await addon.fsMount("overlay", steps, 0, checked.target);
  const t3 = performance.now();
  const entry = x.toOverlayMount(x.mountInfoFromStatmount(await addon.statMount(r.mountId)));
  const m = new lib.MountedOverlay(entry, r.mountId, "fd");
  const t4 = performance.now();
  await m.unmount();
  const t5 = performance.now();
  phases.shape.push(t1 - t0);
  phases.paths.push(t2 - t1);
  phases.kernel.push(t3 - t2);
  phases.describe.push(t4 - t3);
  phases.unmount.push(t5 - t4);
  phases.sum.push(t5 - t0);
}

async function profile({ lib, ws, n, sections, dist, strategy }) {
  const x = await loadInternals(dist);
  const addon = x.native();
  const d = ws.overlayDirs("profile");
  const spec = { lower: [d.lower], upper: d.upper, work: d.work, target: d.target };
  const phases = { shape: [], paths: [], kernel: [], describe: [], unmount: [], sum: [], whole: [], trip: [], readdir: [] };
  const c = { validate: [], configure: [], create: [], attach: [], describe: [], umount: [], total: [] };
  const cRun = () => {
    const r = ws.cCycle("fd", n.profileCycles, d);
    ["validate", "configure", "create", "attach", "describe"].forEach((k, i) => c[k].push(...r.phases[i]));
    c.umount.push(...r.umount);
    c.total.push(...r.total);
    return [];
  };
  // Kernel floors of other designs, in C: mount(2) alone; mount(2) + statx + statmount (ovl's result
  // through mount(2)); the fd path without the realpath/statx checks (one native call per mount()).
  const floors = { legacy: [], "legacy-describe": [], "fd-onecall": [] };
  const floorRuns = Object.keys(floors).map((mode) => ({
    name: mode,
    run: () => {
      floors[mode].push(...ws.cCycle(mode, n.profileCycles, d).total);
      return [];
    },
  }));
  // Describing a mount in JS, from a statmount result already in hand.
  const describeJs = [];
  const describeJsRun = async () => {
    const m = await lib.mount(spec);
    const sm = await addon.statMount(m.uniqueId);
    await m.unmount();
    for (let i = 0; i < n.profileCycles; i++) {
      describeJs.push(await timed(() => new lib.MountedOverlay(x.toOverlayMount(x.mountInfoFromStatmount(sm)), sm.mountId, "fd")));
    }
    return [];
  };
  for (let i = 0; i < 5; i++) await phasedCycle(lib, x, spec, phases);
  cRun();
  for (const k of Object.keys(phases)) phases[k].length = 0; // drop the warm-up
  for (const k of Object.keys(c)) c[k].length = 0;
  await alternate(n.profileRounds, [
    {
      name: "phased",
      run: async () => {
        for (let i = 0; i < n.profileCycles; i++) await phasedCycle(lib, x, spec, phases);
        return [];
      },
    },
    {
      name: "whole",
      run: async () => {
        phases.whole.push(...(await libCycles(lib, spec, n.profileCycles)));
        return [];
      },
    },
    { name: "c", run: cRun },
    ...floorRuns,
    { name: "describeJs", run: describeJsRun },
    {
      name: "trip",
      run: async () => {
        for (let i = 0; i < n.profileCycles; i++) {
          phases.trip.push(await timed(() => addon.mountId("/", false)));
          phases.readdir.push(await timed(() => readdir(d.work)));
        }
        return [];
      },
    },
  ]);

  let mounted;
  const mountTrips = await countTrips(async () => {
    mounted = await lib.mount(spec);
  });
  const umountTrips = await countTrips(() => mounted.unmount());
  const tripText = (t) =>
    Object.entries(t)
      .map(([k, v]) => `${v} ${k === "generic" ? "addon" : k}`)
      .join(", ") || "none";

  const med = (xs) => median(xs);
  const validateOvl = med(phases.shape) + med(phases.paths);
  const trip = med(phases.trip);
  const js = med(phases.shape) + med(describeJs);
  const base = med(floors.legacy);
  const project = (floor) => `${fmtTime(floor + 2 * trip + js)} = ${(((floor + 2 * trip + js) / base)).toFixed(2)}× mount(2)`;
  const line = (label, ovl, cval, extra = "") =>
    `${label.padEnd(40)}${(ovl === undefined ? "" : fmtTime(ovl)).padStart(10)}${(cval === undefined ? "" : fmtTime(cval)).padStart(12)}${extra ? `  ${extra}` : ""}`;
  sections.push({
    title: `Where a mount()+umount() cycle goes (medians of ${phases.sum.length} cycles; ovl strategy "${strategy}")`,
    lines: [
      `${"phase".padEnd(40)}${"ovl".padStart(10)}${"C".padStart(12)}  (C: the same syscalls, no JS, no thread pool)`,
      line("validate: spec shape (sync JS)", med(phases.shape)),
      line("validate: paths (realpath,statx,readdir)", med(phases.paths), med(c.validate)),
      line(
        "kernel: fsopen, fsconfig, fsmount, move",
        med(phases.kernel),
        med(c.configure) + med(c.create) + med(c.attach),
        `configure ${fmtTime(med(c.configure))}, create ${fmtTime(med(c.create))}, attach ${fmtTime(med(c.attach))}`,
      ),
      line("describe: statmount -> MountedOverlay", med(phases.describe), med(c.describe), `of which JS ${fmtTime(med(describeJs))}`),
      line("unmount()", med(phases.unmount), med(c.umount)),
      line("sum of the phases", med(phases.sum), med(c.total)),
      line("mount()+unmount() as a whole", med(phases.whole)),
      `validation's share of mount(): ${((validateOvl / (med(phases.sum) - med(phases.unmount))) * 100).toFixed(0)}%`,
      `one addon trip to the thread pool and back (statx of "/"): ${fmtTime(trip)}; fs.promises.readdir(work): ${fmtTime(med(phases.readdir))}`,
      `thread-pool trips: mount() ${tripText(mountTrips)}; unmount() ${tripText(umountTrips)}`,
      `C floors per cycle: mount(2) ${fmtTime(base)}; mount(2)+statx+statmount ${fmtTime(med(floors["legacy-describe"]))}; ` +
        `fd path without checks ${fmtTime(med(floors["fd-onecall"]))}; fd path with ovl's checks ${fmtTime(med(c.total))}`,
      `projected cycle with one trip per mount() and one per unmount() (C floor + 2 trips + JS ${fmtTime(js)}):`,
      `  fd path: ${project(med(floors["fd-onecall"]))}; mount(2) for plain paths: ${project(med(floors["legacy-describe"]))}`,
    ],
  });
}

// --- 500 layers ------------------------------------------------------------------------------------

async function manyLayers({ lib, ws, n, rows, sections, dist }) {
  const base = ws.mkdir("layers");
  const want = 100;
  const lower = [];
  for (let i = 0; i < 500; i++) {
    const head = `${base}/${String(i).padStart(3, "0")}-`;
    lower.push(ws.mkdir("layers", `${String(i).padStart(3, "0")}-${"l".repeat(Math.max(8, want - head.length))}`));
  }
  const d = ws.overlayDirs("layers-rw");
  const spec = { lower, upper: d.upper, work: d.work, target: d.target };
  const mountMs = [];
  const umountMs = [];
  let layersSeen = -1;
  let how = "";
  const x = await loadInternals(dist);
  const phases = { shape: [], paths: [], kernel: [], describe: [], unmount: [], sum: [] };
  // mount() as a whole, and the same mount phase by phase, taking turns.
  await alternate(n.layerRounds, [
    {
      name: "whole",
      run: async () => {
        const t0 = performance.now();
        const m = await lib.mount(spec);
        const t1 = performance.now();
        layersSeen = m.lower.length;
        how = m.strategy;
        await m.unmount();
        mountMs.push(t1 - t0);
        umountMs.push(performance.now() - t1);
        return [];
      },
    },
    { name: "phased", run: () => phasedCycle(lib, x, spec, phases).then(() => []) },
  ]);
  const avgLen = lower.reduce((a, p) => a + Buffer.byteLength(p), 0) / lower.length;
  const m = (xs) => fmtTime(median(xs));
  sections.push({
    title: "500 layers: where mount() goes (medians)",
    lines: [
      `spec shape ${m(phases.shape)}; paths (realpath+statx of 503 paths, then every pair checked for nesting) ${m(phases.paths)};`,
      `kernel (fsopen .. move_mount, 500 fds) ${m(phases.kernel)}; describe (statmount, 500 options) ${m(phases.describe)};`,
      `unmount ${m(phases.unmount)}; sum of the phases ${m(phases.sum.map((t, i) => t - phases.unmount[i]))}; mount() as a whole ${m(mountMs)}`,
    ],
  });
  rows.push(
    makeRow({
      name: "500 layers, ~100-byte paths: mount()",
      kind: "check",
      subject: median(mountMs),
      goal: "mounts; time reported",
      pass: layersSeen === 500,
      note: `${layersSeen} lower layers seen in the result (strategy ${how}); paths ${avgLen.toFixed(0)} bytes on average; unmount() ${fmtTime(
        median(umountMs),
      )}; ${mountMs.length} mounts`,
    }),
  );
}

// --- event loop while 100 mounts run at once -------------------------------------------------------

/** CPU time per thread of this process (ms): `run` from schedstat (exact), `sys` from stat (clock ticks). */
function threadTimes() {
  const tick = 1000 / 100; // USER_HZ is 100 on Linux
  const out = new Map();
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const run = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
      out.set(tid, { run, sys: Number(fields[12]) * tick });
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** Adds the per-thread CPU time spent between two snapshots into `acc` (main thread vs the rest). */
function addThreadDelta(acc, before, after) {
  for (const [tid, a] of after) {
    const b = before.get(tid) ?? { run: 0, sys: 0 };
    const side = tid === String(process.pid) ? acc.main : acc.others;
    side.run += a.run - b.run;
    side.sys += a.sys - b.sys;
  }
}

async function eventLoop({ lib, ws, n, rows }) {
  const count = 100;
  const lowerA = ws.mkdir("parallel", "lowerA");
  const lowerB = ws.mkdir("parallel", "lowerB");
  const specs = [];
  for (let i = 0; i < count; i++) {
    specs.push({
      lower: [lowerA, lowerB],
      upper: ws.mkdir("parallel", String(i), "upper"),
      work: ws.mkdir("parallel", String(i), "work"),
      target: ws.mkdir("parallel", String(i), "merged"),
    });
  }
  const busy = { max: [], p99: [], mount: [], umount: [] };
  const idle = { max: [], p99: [] };
  const cpu = { main: { run: 0, sys: 0 }, others: { run: 0, sys: 0 } };
  await Promise.all(specs.map((s) => lib.mount(s))).then((ms) => Promise.all(ms.map((m) => m.unmount()))); // warm up
  for (let r = 0; r < n.loopRounds; r++) {
    const h = monitorEventLoopDelay({ resolution: 1 });
    const before = threadTimes();
    h.enable();
    const t0 = performance.now();
    const mounted = await Promise.all(specs.map((s) => lib.mount(s)));
    const t1 = performance.now();
    await Promise.all(mounted.map((m) => m.unmount()));
    const t2 = performance.now();
    h.disable();
    addThreadDelta(cpu, before, threadTimes());
    busy.max.push(h.max / 1e6);
    busy.p99.push(h.percentile(99) / 1e6);
    busy.mount.push(t1 - t0);
    busy.umount.push(t2 - t1);
    // The same monitor over an idle wait as long: what this machine's noise alone gives.
    const idleH = monitorEventLoopDelay({ resolution: 1 });
    idleH.enable();
    await sleep(t2 - t0);
    idleH.disable();
    idle.max.push(idleH.max / 1e6);
    idle.p99.push(idleH.percentile(99) / 1e6);
  }
  const maxDelay = median(busy.max);
  // A stall: one block of the loop of 10 ms or more (a frame of a 100 Hz tick), or twice the idle loop's
  // own worst on this machine if that is more.
  const stallAt = Math.max(10, 2 * median(idle.max));
  const cycles = count * busy.max.length;
  const sysShare = cpu.main.sys / (cpu.main.sys + cpu.others.sys);
  rows.push(
    makeRow({
      name: "event-loop delay, 100 mount() at once",
      kind: "check",
      subject: maxDelay,
      goal: `no stall (< ${fmtTime(stallAt)})`,
      pass: maxDelay < stallAt,
      note:
        `max delay, median of ${busy.max.length} rounds (worst ${fmtTime(Math.max(...busy.max))}); p99 ${fmtTime(median(busy.p99))}; ` +
        `idle loop: max ${fmtTime(median(idle.max))}, p99 ${fmtTime(median(idle.p99))}; 100 mounts took ${fmtTime(
          median(busy.mount),
        )}, 100 unmounts ${fmtTime(median(busy.umount))}; main-thread CPU per mount()+unmount() ${fmtTime(cpu.main.run / cycles)}`,
    }),
    makeRow({
      name: "  syscalls stay on the thread pool",
      kind: "check",
      subject: undefined,
      goal: "main thread < 25% of system time",
      // System time is sampled per 10 ms tick: with fewer than 20 ticks the share says little.
      pass: cpu.main.sys + cpu.others.sys >= 200 ? sysShare < 0.25 : undefined,
      note: `system CPU time during the batches: main thread ${fmtTime(cpu.main.sys)}, other threads ${fmtTime(
        cpu.others.sys,
      )} (${(sysShare * 100).toFixed(0)}% on the main thread; clock-tick resolution, 10 ms${
        cpu.main.sys + cpu.others.sys >= 200 ? "" : "; too few ticks for a verdict, run without --quick"
      })`,
    }),
  );
}

// --- with 10,000 other mounts ----------------------------------------------------------------------

async function tableRows(c) {
  const { lib, ws, n, rows, sections, root, mounts } = c;
  const setup = ws.makeTable(mounts);
  // A few overlays among them, so the listings have something to show.
  const overlays = [];
  for (let i = 0; i < 10; i++) {
    const d = ws.overlayDirs(`ls/${i}`);
    overlays.push(await lib.mount({ lower: [d.lower], upper: d.upper, work: d.work, target: d.target }));
  }
  const lines = readFileSync("/proc/self/mountinfo", "utf8").split("\n").filter(Boolean).length;
  const suffix = ` (${lines.toLocaleString("en-US")} mounts)`;
  const tableSection = {
    title: "Mount table",
    lines: [
      `${mounts.toLocaleString("en-US")} tmpfs mounts made by bench/c/mount-table in ${fmtTime(setup.wallMs)} (mkdir ${fmtTime(
        setup.mkdirMs,
      )}, mount(2) ${fmtTime(setup.mountMs)}); 10 overlays added; ${lines} lines in /proc/self/mountinfo`,
    ],
  };
  sections.push(tableSection);
  try {
    await cycleRows(c, suffix);
    await listRow(c, suffix);
    await cliRows(c, suffix);
  } finally {
    for (const m of overlays) await m.unmount();
    const dropMs = ws.dropTable();
    tableSection.lines.push(`dropping the table (umount -l of its parent tmpfs): ${fmtTime(dropMs)}`);
  }
}

async function listRow({ lib, n, rows, sections, dist }, suffix) {
  const { parseMountInfo } = await import(dist("mountinfo.js"));
  const { native } = await import(dist("native.js"));
  let entries = 0;
  for (let i = 0; i < 3; i++) entries = (await lib.list({ all: true })).length; // warm up
  // Ways to read the table into a string; the fastest is the baseline. fs.promises.readFile makes one
  // thread-pool trip per read(), and the kernel hands out mountinfo about a page per read().
  const reads = {
    "fs.promises.readFile": () => readFile("/proc/self/mountinfo", "utf8"),
    readFileSync: () => readFileSync("/proc/self/mountinfo", "utf8"),
  };
  if (typeof native().MountWatcher === "function") {
    // The addon's MountWatcher reads the whole table in one trip (its first next()).
    reads["one addon trip"] = async () => {
      const w = new (native().MountWatcher)("/proc/self/mountinfo");
      try {
        return await w.next(0);
      } finally {
        w.close();
      }
    };
  }
  const s = await alternate(n.listRounds, [
    { name: "list", run: () => timed(() => lib.list({ all: true })) },
    ...Object.entries(reads).map(([name, fn]) => ({ name, run: () => timed(fn) })),
  ]);
  const readNames = Object.keys(reads);
  const fastest = readNames.reduce((a, b) => (median(s[b]) < median(s[a]) ? b : a));
  rows.push(
    makeRow({
      name: `list({ all: true })${suffix}`,
      kind: "ratio",
      subject: median(s.list),
      baseline: median(s[fastest]),
      goal: 1.5,
      note: `baseline: the fastest read of /proc/self/mountinfo into a string, ${fastest} (${readNames
        .map((k) => `${k} ${fmtTime(median(s[k]))}`)
        .join(", ")}); ${entries} entries`,
    }),
  );

  // The pieces, each on its own (in this process, one after the other, medians).
  const text = readFileSync("/proc/self/mountinfo", "utf8");
  /** Garbage-collection pauses during fn (gc performance entries arrive a little later, hence the wait). */
  const gcMs = async (fn) => {
    let total = 0;
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) total += e.duration;
    });
    obs.observe({ entryTypes: ["gc"] });
    try {
      await fn();
      await sleep(20);
    } finally {
      obs.disconnect();
    }
    return total;
  };
  const overlayLines = (t) => {
    // What a list() of overlays only must look at: lines whose fstype field is "overlay".
    const out = [];
    for (let i = t.indexOf(" - overlay "); i !== -1; i = t.indexOf(" - overlay ", i + 1)) {
      const start = t.lastIndexOf("\n", i) + 1;
      const end = t.indexOf("\n", i);
      out.push(t.slice(start, end === -1 ? t.length : end));
    }
    return out;
  };
  const piece = { parse: [], listOverlays: [], prefilter: [], gcParse: [], json: [] };
  const all = await lib.list({ all: true });
  for (let i = 0; i < n.listRounds; i++) {
    piece.parse.push(await timed(() => parseMountInfo(text)));
    piece.listOverlays.push(await timed(() => lib.list()));
    piece.prefilter.push(await timed(() => parseMountInfo(overlayLines(text).join("\n"))));
    piece.json.push(await timed(() => JSON.stringify(all, null, 2)));
    if (i < 3) {
      // Amortised: collections triggered by a parse may come during a later one.
      const k = 5;
      piece.gcParse.push((await gcMs(() => { for (let j = 0; j < k; j++) parseMountInfo(text); })) / k);
    }
  }
  const m = (xs) => fmtTime(median(xs));
  sections.push({
    title: `list() at${suffix.replace(/[()]/g, "")}: the pieces (medians, one after another in this process)`,
    lines: [
      `reading ${(text.length / 1024).toFixed(0)} KiB of text: ${readNames.map((k) => `${k} ${m(s[k])}`).join(", ")}`,
      `parseMountInfo(text) ${m(piece.parse)} (GC pauses per parse, amortised over 5: ${m(piece.gcParse)}); list({ all: true }) ${m(s.list)}`,
      `list() (overlays only) ${m(piece.listOverlays)}; the same lines found by indexOf(" - overlay ") first, then parsed: ${m(piece.prefilter)}`,
      `JSON.stringify(list({ all: true }), null, 2) ${m(piece.json)} (${(JSON.stringify(all, null, 2).length / 1024).toFixed(0)} KiB)`,
    ],
  });
}

async function cliRows({ n, rows, sections, root, mounts }, suffix) {
  const cli = join(root, "dist", "cli.js");
  const node = process.execPath;
  // Check once that each command works and lists what it should, so no row times a failure.
  const ovlLs = runProcess(node, [cli, "ls"]).stdout.trim().split("\n");
  const findLs = runProcess("findmnt", ["-t", "overlay"]).stdout.trim().split("\n");
  if (ovlLs.length < 11 || findLs.length < 11) {
    throw new Error(`expected 10 overlays listed: ovl ls gave ${ovlLs.length - 1} rows, findmnt ${findLs.length - 1}`);
  }
  const ovlJsonText = runProcess(node, [cli, "ls", "--all", "--json"]).stdout;
  const findJsonText = runProcess("findmnt", ["-J", "-l"]).stdout;
  const ovlJson = JSON.parse(ovlJsonText);
  const findJson = JSON.parse(findJsonText);
  if (ovlJson.length < mounts || findJson.filesystems.length < mounts) {
    throw new Error(`expected ${mounts}+ mounts: ovl gave ${ovlJson.length}, findmnt ${findJson.filesystems.length}`);
  }

  const ls = await alternate(n.lsRounds, [
    { name: "ovl", run: () => runProcess(node, [cli, "ls"]).ms },
    { name: "findmnt", run: () => runProcess("findmnt", ["-t", "overlay"]).ms },
  ]);
  rows.push(
    makeRow({
      name: `ovl ls, whole process${suffix}`,
      kind: "faster",
      subject: median(ls.ovl),
      baseline: median(ls.findmnt),
      goal: 5,
      note: `baseline: findmnt -t overlay; ${ls.ovl.length} runs each`,
    }),
  );

  const json = await alternate(n.jsonRounds, [
    { name: "ovl", run: () => runProcess(node, [cli, "ls", "--all", "--json"]).ms },
    { name: "findmnt", run: () => runProcess("findmnt", ["-J", "-l"]).ms },
    { name: "node", run: () => runProcess(node, ["-e", "0"]).ms },
    { name: "library", run: () => runProcess(node, ["--input-type=module", "-e", `await import(${JSON.stringify(pathToFileURL(join(root, "dist", "index.js")).href)})`]).ms },
    { name: "version", run: () => runProcess(node, [cli, "--version"]).ms },
  ]);
  rows.push(
    makeRow({
      name: `ovl ls --all --json, whole process${suffix}`,
      kind: "ratio",
      subject: median(json.ovl),
      baseline: median(json.findmnt),
      goal: 2.5,
      note: `baseline: findmnt -J -l; ${json.ovl.length} runs each`,
    }),
    makeRow({ name: "  node -e 0 (Node's start)", kind: "info", subject: median(json.node), baseline: median(json.findmnt) }),
    makeRow({
      name: "  ovl --version (start + CLI imports)",
      kind: "info",
      subject: median(json.version),
      baseline: median(json.findmnt),
    }),
  );
  sections.push({
    title: `ovl ls --all --json${suffix}: where the process's time goes (medians)`,
    lines: [
      `Node start (node -e 0)             ${fmtTime(median(json.node))}`,
      `+ loading dist/cli.js and its imports ${fmtTime(median(json.version) - median(json.node))} (the library alone, dist/index.js: ${fmtTime(median(json.library) - median(json.node))})`,
      `+ list, JSON, write, exit           ${fmtTime(median(json.ovl) - median(json.version))}`,
      `= ovl ls --all --json              ${fmtTime(median(json.ovl))}; findmnt -J -l ${fmtTime(median(json.findmnt))}`,
      `output: ovl ${(Buffer.byteLength(ovlJsonText) / 1024).toFixed(0)} KiB, findmnt ${(Buffer.byteLength(findJsonText) / 1024).toFixed(0)} KiB`,
    ],
  });
}
