/**
 * ovl's benchmarks (issues 6 and 10). Run by `npm run bench` (scripts/run-bench.js), which builds dist/ and the C
 * baselines and starts this inside a private mount namespace. Every figure is a median over rounds in which
 * ovl and its baseline take turns, and every ratio compares two things measured side by side in this run.
 *
 * Groups (`--only=a,b`): cycle, profile, layers, eventloop, table, archive (issue 13: applying, exporting, diff),
 * snapshotter (issue 14: a container start through ovl's containerd snapshotter vs containerd's overlayfs). `--quick`: fewer rounds.
 * `--mounts=N`: size of the big table (default 10000).
 */
import { spawnSync } from "node:child_process";
import { createHook } from "node:async_hooks";
import { closeSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { errorRow, fmtTime, formatMarkdown, formatText, makeRow } from "./lib/report.mjs";
import { alternate, median, timed } from "./lib/stats.mjs";
import { Workspace } from "./lib/workspace.mjs";

const GROUPS = ["cycle", "profile", "layers", "eventloop", "table", "archive", "snapshotter"];

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
    // with the big table every mount() reads and parses the whole table: fewer cycles
    tableCycleRounds: pick(11, 3),
    tableCyclesPerBatch: pick(5, 3),
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
    await group("archive", async () => (await import("./archive.mjs")).archiveRows(ctxt));
    await group("snapshotter", async () => (await import("./snapshotter.mjs")).snapshotterRows(ctxt));
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

/** `k` library cycles, async (`mount()` + `handle.unmount()`); per-cycle ms, the mount/umount split in `split`. */
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

/** The same with the sync twins (`mountSync()` + `handle.unmountSync()`). */
function syncCycles(lib, spec, k, split) {
  const out = [];
  for (let i = 0; i < k; i++) {
    const t0 = performance.now();
    const m = lib.mountSync(spec);
    const t1 = performance.now();
    m.unmountSync();
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

/** Thread-pool trips among counted async resources: addon calls ("generic") and fs calls (FSREQ*). */
const tripsOf = (counts) => Object.entries(counts).reduce((a, [k, v]) => a + (k === "generic" || k.startsWith("FSREQ") ? v : 0), 0);
const tripText = (t) =>
  Object.entries(t)
    .map(([k, v]) => `${v} ${k === "generic" ? "addon" : k}`)
    .join(", ") || "none";

/** Trips of one mount() and of its handle's unmount() (after a warm-up, so one-time probes are not counted). */
async function measureTrips(lib, spec) {
  await (await lib.mount(spec)).unmount();
  let mounted;
  const mount = await countTrips(async () => {
    mounted = await lib.mount(spec);
  });
  const umount = await countTrips(() => mounted.unmount());
  return { mount, umount };
}

const range = (xs) => (xs.length ? `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}×` : "-");

/**
 * The cycle rows: async and sync cycles against the bare C loop (legacy mount(2)+umount2(2)) and against C
 * making ovl's own safe fd sequence (`safe`), all taking turns in one run. With `suffix` (the big table):
 * fewer cycles, since every mount() reads the mount table.
 */
async function cycleRows(ctx, suffix) {
  const { lib, ws, n, rows } = ctx;
  const d = ws.overlayDirs(suffix ? "cycle-table" : "cycle");
  const spec = { lower: [d.lower], upper: d.upper, work: d.work, target: d.target };
  const rounds = suffix ? n.tableCycleRounds : n.cycleRounds;
  const k = suffix ? n.tableCyclesPerBatch : n.cyclesPerBatch;
  await libCycles(lib, spec, 10); // warm up: JIT, the strategy probe, the addon
  syncCycles(lib, spec, 10);
  ws.cCycle("legacy", 5, d);
  ws.cCycle("safe", 5, d);
  const split = { ovl: { mount: [], umount: [] }, sync: { mount: [], umount: [] } };
  const c = { legacy: { mount: [], umount: [] }, safe: { mount: [], umount: [] } };
  /** Per-round medians, for the spread of the ratios from round to round. */
  const perRound = { ovl: [], sync: [], c: [], csafe: [] };
  const keep = (name, xs) => {
    perRound[name].push(median(xs));
    return xs;
  };
  const cRun = (mode, name) => () => {
    const r = ws.cCycle(mode, k, d);
    c[mode].mount.push(...r.mount);
    c[mode].umount.push(...r.umount);
    return keep(name, r.total);
  };
  const contestants = [
    { name: "ovl", run: async () => keep("ovl", await libCycles(lib, spec, k, split.ovl)) },
    { name: "sync", run: () => keep("sync", syncCycles(lib, spec, k, split.sync)) },
    { name: "c", run: cRun("legacy", "c") },
    { name: "csafe", run: cRun("safe", "csafe") },
  ];
  if (!suffix) contestants.push({ name: "spawn", run: () => spawnCycles(d, n.spawnCyclesPerBatch) });
  const s = await alternate(rounds, contestants);
  const ovl = median(s.ovl);
  const sync = median(s.sync);
  const bare = median(s.c);
  const safe = median(s.csafe);
  if (!suffix) ctx.baseCycle = { ovl, sync, bare, safe };
  const m = (xs) => fmtTime(median(xs));
  const ratios = (a, b) => range(perRound[a].map((x, i) => x / perRound[b][i]));
  const growth =
    suffix && ctx.baseCycle
      ? `; vs the small table: ovl ${(ovl / ctx.baseCycle.ovl).toFixed(2)}×, sync ${(sync / ctx.baseCycle.sync).toFixed(2)}×, ` +
        `C bare ${(bare / ctx.baseCycle.bare).toFixed(2)}×, C safe ${(safe / ctx.baseCycle.safe).toFixed(2)}×`
      : "";
  const each = `${s.ovl.length} cycles each, in ${rounds} rounds`;
  rows.push(
    makeRow({
      name: `mount()+unmount() cycle${suffix}`,
      kind: "ratio",
      subject: ovl,
      baseline: bare,
      goal: 2.5,
      note:
        `baseline: C mount(2)+umount2(2) loop (mount(2) ${m(c.legacy.mount)} + umount2 ${m(c.legacy.umount)}); ` +
        `ovl's async mount() ${m(split.ovl.mount)} + handle.unmount() ${m(split.ovl.umount)}; ${each}; ` +
        `per-round ratio ${ratios("ovl", "c")}${growth}`,
    }),
    makeRow({
      name: `  same cycle vs C making ovl's safe fd sequence${suffix}`,
      kind: "ratio",
      subject: ovl,
      baseline: safe,
      goal: 1.5,
      note:
        `baseline: bench/c/ovl-cycle safe, ovl's syscalls in ovl's order on one thread (mount ${m(c.safe.mount)} + ` +
        `unmount ${m(c.safe.umount)}); per-round ratio ${ratios("ovl", "csafe")}`,
    }),
    makeRow({
      name: `mountSync()+unmountSync() cycle${suffix}`,
      kind: "ratio",
      subject: sync,
      baseline: bare,
      goal: 1.5,
      note:
        `baseline: the C mount(2)+umount2(2) loop; mountSync() ${m(split.sync.mount)} + unmountSync() ${m(split.sync.umount)}; ` +
        `vs C safe ${(sync / safe).toFixed(2)}×; per-round ratio ${ratios("sync", "c")}`,
    }),
    makeRow({
      name: `  C safe fd sequence vs the bare loop${suffix}`,
      kind: "info",
      subject: safe,
      baseline: bare,
      note: `what ovl's checks and fd route cost in the kernel alone; per-round ratio ${ratios("csafe", "c")}`,
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
    const trips = await measureTrips(lib, spec);
    ctx.trips = trips;
    const mt = tripsOf(trips.mount);
    const ut = tripsOf(trips.umount);
    rows.push(
      makeRow({
        name: "thread-pool trips per mount() / unmount()",
        kind: "check",
        subject: undefined,
        goal: "mount() ≤ 2, unmount() 1",
        pass: mt <= 2 && ut === 1,
        note: `mount() ${mt} (${tripText(trips.mount)}); unmount() ${ut} (${tripText(trips.umount)}); counted with async_hooks`,
      }),
    );
  }
}

// --- where mount() spends its time -----------------------------------------------------------------

/** The internal functions the profile calls, from whichever dist/ module exports them now. */
async function loadInternals(dist) {
  const files = [
    "mounting/validate.js",
    "kernel/native.js",
    "table/statmount.js",
    "mounting/overlay-options.js",
    "mounting/flags.js",
    "table/mountinfo.js",
    "mounting/mount.js",
  ];
  const modules = await Promise.all(files.map((f) => import(dist(f)).catch(() => ({}))));
  const names = [
    "checkSpecShape",
    "openRequest",
    "checkOpened",
    "native",
    "FsConfigKind",
    "mountInfoFromStatmount",
    "toOverlayMount",
    "featureOptionStrings",
    "mountAttrFlags",
    "superblockFlagNames",
    "parseMountInfo",
  ];
  const out = {};
  for (const name of names) out[name] = modules.find((m) => m[name] !== undefined)?.[name];
  const missing = names.filter((k) => out[k] === undefined);
  if (missing.length) {
    throw new Error(`no module of dist/ (${files.join(", ")}) exports ${missing.join(", ")}: update bench/run.mjs profile()`);
  }
  return out;
}

/** The fsconfig steps mount() hands the kernel on the fd strategy (src/mounting/mount.ts fsConfigPlan). */
function fdSteps(x, checked) {
  const K = x.FsConfigKind;
  const steps = [[K.String, "source", checked.source]];
  for (const r of checked.lowerDirs) steps.push([K.Fd, "lowerdir+", r.fd]);
  for (const r of checked.dataDirs) steps.push([K.Fd, "datadir+", r.fd]);
  if (checked.upperDir && checked.workDir) steps.push([K.Fd, "upperdir", checked.upperDir.fd], [K.Fd, "workdir", checked.workDir.fd]);
  for (const opt of x.featureOptionStrings(checked.options)) {
    const eq = opt.indexOf("=");
    steps.push(eq < 0 ? [K.Flag, opt] : [K.String, opt.slice(0, eq), opt.slice(eq + 1)]);
  }
  for (const flag of x.superblockFlagNames(checked.flags)) steps.push([K.Flag, flag]);
  return steps;
}

/** statmount's buffer hint as mount() sizes it (src/mounting/mount.ts statmountSizeHint). */
function sizeHint(checked) {
  const len = (s) => Buffer.byteLength(s);
  let bytes = 1024 + 2 * len(checked.targetDir.real);
  for (const r of [...checked.lowerDirs, ...checked.dataDirs, checked.upperDir, checked.workDir]) if (r) bytes += len(r.real) + 16;
  return bytes;
}

/**
 * mount() taken apart into its phases, each timed (ms), through the internal functions mountPlan() calls on
 * the fd strategy, async (one trip per addon call) or with the addon's *Sync twins; then the handle's
 * unmount. Pushes into `phases`; returns the handle's plain fields (nothing stays mounted).
 */
async function phasedCycle(lib, x, spec, phases, sync) {
  const addon = x.native();
  const t0 = performance.now();
  const shaped = x.checkSpecShape(spec);
  const req = x.openRequest(shaped);
  const t1 = performance.now();
  const opened = sync
    ? addon.openPathsSync(req.paths, req.list, req.probes, req.table)
    : await addon.openPaths(req.paths, req.list, req.probes, req.table);
  const t2 = performance.now();
  let t3, t4, t5, m, checked;
  try {
    checked = x.checkOpened(shaped, req, opened);
    t3 = performance.now();
    const args = ["overlay", fdSteps(x, checked), x.mountAttrFlags(checked.flags), checked.targetDir.fd, sizeHint(checked)];
    const r = sync ? addon.fsMountSync(...args) : await addon.fsMount(...args);
    t4 = performance.now();
    const entry = x.toOverlayMount(x.mountInfoFromStatmount(r.statmount));
    entry.lower = checked.lowerDirs.map((d) => d.real);
    entry.data = checked.dataDirs.map((d) => d.real);
    if (checked.upperDir && checked.workDir) {
      entry.upper = checked.upperDir.real;
      entry.work = checked.workDir.real;
    }
    m = new lib.MountedOverlay(entry, r.mountId, "fd", [...r.messages, ...r.warnings]);
    t5 = performance.now();
  } finally {
    for (const p of opened.paths) if (p.fd !== undefined) closeSync(p.fd);
  }
  const t6 = performance.now();
  if (sync) m.unmountSync();
  else await m.unmount();
  const t7 = performance.now();
  phases.shape.push(t1 - t0);
  phases.open.push(t2 - t1);
  phases.checks.push(t3 - t2);
  phases.kernel.push(t4 - t3);
  phases.describe.push(t5 - t4);
  phases.close.push(t6 - t5);
  phases.unmount.push(t7 - t6);
  phases.sum.push(t7 - t0);
  phases.table = opened.table;
  return { ...m };
}

const newPhases = () => ({ shape: [], open: [], checks: [], kernel: [], describe: [], close: [], unmount: [], sum: [] });

/** Fails loudly if phasedCycle no longer does what mount() does (same result but for ids and device). */
async function checkPhasedMatches(lib, x, spec) {
  // Each mount has its own ids and its own anonymous device number.
  const strip = (o) => JSON.stringify({ ...o, id: 0, uniqueId: 0, major: 0, minor: 0 });
  // Not the first mount of these layers: the kernel shows `uuid=on` only on a fresh upper's first mount.
  await (await lib.mount(spec)).unmount();
  const phased = await phasedCycle(lib, x, spec, newPhases(), false);
  const m = await lib.mount(spec);
  const real = { ...m };
  await m.unmount();
  if (strip(phased) !== strip(real) || m.strategy !== "fd") {
    throw new Error(
      `the phased mount no longer matches mount() (strategy ${m.strategy}): update bench/run.mjs phasedCycle()\n` +
        `  phased: ${strip(phased)}\n  mount(): ${strip(real)}`,
    );
  }
}

async function profile({ lib, ws, n, sections, dist, strategy, trips }) {
  const x = await loadInternals(dist);
  const addon = x.native();
  const d = ws.overlayDirs("profile");
  const spec = { lower: [d.lower], upper: d.upper, work: d.work, target: d.target };
  if (strategy === "fd") await checkPhasedMatches(lib, x, spec);
  const ph = { async: newPhases(), sync: newPhases() };
  const whole = { async: [], sync: [], asyncMount: [], asyncUmount: [], syncMount: [], syncUmount: [] };
  const trip = { async: [], sync: [] };
  const parse = [];
  const c = {};
  const floors = { legacy: [], "legacy-describe": [], "fd-bare": [] };
  const cRun = () => {
    const r = ws.cCycle("safe", n.profileCycles, d);
    for (const [k, v] of Object.entries(r.phases)) (c[k] ??= []).push(...v);
    (c.mount ??= []).push(...r.mount);
    (c.umount ??= []).push(...r.umount);
    (c.total ??= []).push(...r.total);
    return [];
  };
  const floorRuns = Object.keys(floors).map((mode) => ({
    name: mode,
    run: () => {
      floors[mode].push(...ws.cCycle(mode, n.profileCycles, d).total);
      return [];
    },
  }));
  const phasedRun = (kind) => ({
    name: `phased-${kind}`,
    run: async () => {
      for (let i = 0; i < n.profileCycles; i++) await phasedCycle(lib, x, spec, ph[kind], kind === "sync");
      return [];
    },
  });
  // warm up, then drop what the warm-up measured
  for (let i = 0; i < 5; i++) {
    await phasedCycle(lib, x, spec, ph.async, false);
    await phasedCycle(lib, x, spec, ph.sync, true);
  }
  for (const p of Object.values(ph)) for (const k of Object.keys(p)) if (Array.isArray(p[k])) p[k].length = 0;
  await alternate(n.profileRounds, [
    phasedRun("async"),
    phasedRun("sync"),
    {
      name: "whole-async",
      run: async () => {
        const split = { mount: [], umount: [] };
        whole.async.push(...(await libCycles(lib, spec, n.profileCycles, split)));
        whole.asyncMount.push(...split.mount);
        whole.asyncUmount.push(...split.umount);
        return [];
      },
    },
    {
      name: "whole-sync",
      run: () => {
        const split = { mount: [], umount: [] };
        whole.sync.push(...syncCycles(lib, spec, n.profileCycles, split));
        whole.syncMount.push(...split.mount);
        whole.syncUmount.push(...split.umount);
        return [];
      },
    },
    { name: "c", run: cRun },
    ...floorRuns,
    {
      name: "trip",
      run: async () => {
        for (let i = 0; i < n.profileCycles; i++) {
          trip.async.push(await timed(() => addon.mountId("/", false)));
          const t0 = performance.now();
          addon.mountIdSync("/", false);
          trip.sync.push(performance.now() - t0);
          const table = ph.async.table ?? "";
          parse.push(await timed(() => x.parseMountInfo(table, { fstype: "overlay" })));
        }
        return [];
      },
    },
  ]);
  const mountTrips = trips?.mount ?? (await measureTrips(lib, spec)).mount;
  const umountTrips = trips?.umount ?? (await measureTrips(lib, spec)).umount;

  const med = (xs) => median(xs ?? []);
  const f = (v) => (v === undefined ? "" : fmtTime(v));
  const sumOf = (keys) => keys.reduce((a, k) => a + med(c[k]), 0);
  const cOpen = ["paths", "probes", "mountinfo"];
  const cKernel = ["kmsg-open", "configure", "create", "fsmount", "logs", "attach", "statmount"];
  const cUmount = ["umount-lookup", "umount2"];
  const detail = (keys) => keys.map((k) => `${k} ${fmtTime(med(c[k]))}`).join(", ");
  const line = (label, a, s, cv, extra = "") =>
    `${label.padEnd(44)}${f(a).padStart(10)}${f(s).padStart(10)}${f(cv).padStart(10)}${extra ? `  ${extra}` : ""}`;
  const hop = med(trip.async) - med(trip.sync);
  const A = ph.async;
  const S = ph.sync;
  const js = ["shape", "checks", "describe", "close"].reduce((a, k) => a + med(S[k]), 0);
  const projected = med(c.total) + 3 * hop + js;
  const base = med(floors.legacy);
  sections.push({
    title: `Where a mount()+unmount() cycle goes (medians of ${A.sum.length} phased cycles each; ovl strategy "${strategy}")`,
    lines: [
      `${"phase".padEnd(44)}${"async".padStart(10)}${"sync".padStart(10)}${"C safe".padStart(10)}  (C: the same syscalls, one thread, no JS)`,
      line("shape: checkSpecShape + openRequest (JS)", med(A.shape), med(S.shape)),
      line("trip 1: openPaths", med(A.open), med(S.open), sumOf(cOpen), detail(cOpen)),
      line("checks: checkOpened (JS)", med(A.checks), med(S.checks), undefined, `of which parsing the table for overlays ${fmtTime(med(parse))}`),
      line("trip 2: fsMount (kmsg, fsopen .. statmount)", med(A.kernel), med(S.kernel), sumOf(cKernel), detail(cKernel)),
      line("describe: statmount fields -> MountedOverlay", med(A.describe), med(S.describe)),
      line("close the path fds", med(A.close), med(S.close), med(c.close)),
      line("trip 3: handle.unmount() (umountAt)", med(A.unmount), med(S.unmount), sumOf(cUmount), detail(cUmount)),
      line("sum of the phases", med(A.sum), med(S.sum), med(c.total)),
      line("mount()+unmount() as a whole", med(whole.async), med(whole.sync)),
      line("  of which mount()", med(whole.asyncMount), med(whole.syncMount), med(c.mount)),
      line("  of which unmount()", med(whole.asyncUmount), med(whole.syncUmount), med(c.umount)),
      `one bare addon call (statx of "/"): async ${fmtTime(med(trip.async))}, sync ${fmtTime(med(trip.sync))}: a thread-pool hand-off costs ${fmtTime(hop)}`,
      `per trip, async minus sync: openPaths ${fmtTime(med(A.open) - med(S.open))}, fsMount ${fmtTime(med(A.kernel) - med(S.kernel))}, ` +
        `unmount ${fmtTime(med(A.unmount) - med(S.unmount))}`,
      `addon + N-API overhead over C (sync minus C safe): openPaths ${fmtTime(med(S.open) - sumOf(cOpen))}, fsMount ${fmtTime(
        med(S.kernel) - sumOf(cKernel),
      )}, unmount ${fmtTime(med(S.unmount) - sumOf(cUmount))}`,
      `thread-pool trips: mount() ${tripText(mountTrips)}; unmount() ${tripText(umountTrips)}`,
      `C floors per cycle: mount(2) ${fmtTime(base)}; mount(2)+statx+statmount ${fmtTime(med(floors["legacy-describe"]))}; ` +
        `fd route without checks ${fmtTime(med(floors["fd-bare"]))}; ovl's safe fd sequence ${fmtTime(med(c.total))}`,
      `floor of this design, async (C safe + 3 hand-offs + the JS phases ${fmtTime(js)}): ${fmtTime(projected)} = ${(projected / base).toFixed(2)}× mount(2), ` +
        `${(projected / med(c.total)).toFixed(2)}× C safe`,
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
  const phases = newPhases();
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
    { name: "phased", run: () => phasedCycle(lib, x, spec, phases, false).then(() => []) },
  ]);
  const avgLen = lower.reduce((a, p) => a + Buffer.byteLength(p), 0) / lower.length;
  const m = (xs) => fmtTime(median(xs));
  sections.push({
    title: "500 layers: where mount() goes (medians)",
    lines: [
      `spec shape ${m(phases.shape)}; trip 1, openPaths (503 paths opened, statx'd and readlink'd) ${m(phases.open)};`,
      `checks (checkOpened: repeats and nesting by inode and ancestor walk, the table) ${m(phases.checks)};`,
      `trip 2, fsMount (fsopen .. move_mount, 500 fds, statmount of 500 options) ${m(phases.kernel)}; describe ${m(phases.describe)};`,
      `closing 503 fds ${m(phases.close)}; unmount ${m(phases.unmount)}; sum of the mount phases ${m(
        phases.sum.map((t, i) => t - phases.unmount[i]),
      )}; mount() as a whole ${m(mountMs)}`,
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
  const { parseMountInfo } = await import(dist("table/mountinfo.js"));
  const { native } = await import(dist("kernel/native.js"));
  let entries = 0;
  for (let i = 0; i < 3; i++) entries = (await lib.list({ all: true })).length; // warm up
  // Ways to read the table into a string; the fastest is the baseline. fs.promises.readFile makes one
  // thread-pool trip per read(), and the kernel hands out mountinfo about a page per read().
  const reads = {
    "fs.promises.readFile": () => readFile("/proc/self/mountinfo", "utf8"),
    readFileSync: () => readFileSync("/proc/self/mountinfo", "utf8"),
  };
  if (typeof native().readText === "function") {
    // The addon's readText reads the whole table in one trip (what list() uses).
    reads["one addon trip"] = () => native().readText("/proc/self/mountinfo");
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
