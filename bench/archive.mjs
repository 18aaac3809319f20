/**
 * Issue 13's layer benchmarks: applyLayer() against GNU tar -x (plain and gzip) and umoci unpack of the same
 * archive, exportLayer() against tar -c of the same upper, and diff() of a 100,000-file upper against
 * find -printf (the walk's floor). Whole jobs, taking turns, medians; the output directories are removed
 * between rounds (not timed).
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fmtTime, makeRow } from "./lib/report.mjs";
import { alternate, median } from "./lib/stats.mjs";

function run(cmd, args, opts = {}) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "pipe"], ...opts });
  const ms = performance.now() - t0;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${(r.stderr ?? "").trim().slice(0, 300)}`);
  return { ms, stdout: r.stdout };
}

const have = (cmd) => spawnSync(cmd, ["--version"], { stdio: "ignore" }).status === 0;

/** ~100 MB in ~20,000 files: most small (config, sources), a few large (libraries), in 400 directories. */
function makeTree(dir, quick) {
  const files = quick ? 4000 : 20000;
  const big = quick ? 20 : 100;
  const small = Buffer.alloc(2500, "x");
  for (let d = 0; d < 400; d++) mkdirSync(join(dir, `d${d}`, "sub"), { recursive: true });
  for (let i = 0; i < files - big; i++) {
    small.writeUInt32LE(i, 0); // contents differ, so compression has work to do
    writeFileSync(join(dir, `d${i % 400}`, i % 3 === 0 ? "sub" : "", `f${i}.txt`), small);
  }
  const large = Buffer.alloc(512 * 1024);
  for (let i = 0; i < big; i++) {
    for (let k = 0; k < large.length; k += 4) large.writeUInt32LE((k * 2654435761 + i) >>> 0, k);
    writeFileSync(join(dir, `d${i}`, `lib${i}.so`), large);
  }
  return { files, bytes: (files - big) * small.length + big * large.length };
}

export async function archiveRows({ lib, ws, n, rows, sections, dist, quick }) {
  // On a tmpfs: what is timed is the work, not the disk's writeback of the rounds before (on this VM's disk,
  // tar -x of the same archive took 0.6 s to 10 s depending on what the previous round left dirty).
  const base = ws.mkdir("archive");
  run("mount", ["-t", "tmpfs", "-o", "size=8g", "ovl-bench-archive", base]);
  try {
    await archiveRowsOn(base, { lib, ws, n, rows, sections, dist, quick });
  } finally {
    run("umount", ["-l", base]);
  }
}

async function archiveRowsOn(base, { lib, rows, sections, dist, quick }) {
  const { applyLayer } = await import(dist("layers/apply.js"));
  const { exportLayerTo } = await import(dist("layers/export.js"));
  const tree = join(base, "tree");
  mkdirSync(tree);
  const shape = makeTree(tree, quick);
  const tarFile = join(base, "layer.tar");
  const gzFile = join(base, "layer.tar.gz");
  run("tar", ["-cf", tarFile, "-C", tree, "."]);
  run("sh", ["-c", `gzip -c < '${tarFile}' > '${gzFile}'`]);
  const out = (name) => {
    const p = join(base, name);
    rmSync(p, { recursive: true, force: true });
    return p;
  };
  const rounds = quick ? 2 : 7;
  const what = `${shape.files} files, ${(shape.bytes / 1e6).toFixed(0)} MB`;

  // --- apply ---
  for (const [label, file, tarArgs] of [
    ["plain", tarFile, ["-xpf"]],
    ["gzip", gzFile, ["-xzpf"]],
  ]) {
    const t = await alternate(rounds, [
      {
        name: "ovl",
        run: async () => {
          const dir = out("ovl-apply");
          const t0 = performance.now();
          await applyLayer(file, dir);
          return performance.now() - t0;
        },
      },
      {
        name: "tar",
        run: () => {
          const dir = out("tar-apply");
          mkdirSync(dir);
          return run("tar", [...tarArgs, file, "-C", dir]).ms;
        },
      },
    ]);
    rows.push(
      makeRow({
        name: `applyLayer(), ${label} layer (${what})`,
        kind: "ratio",
        subject: median(t.ovl),
        baseline: median(t.tar),
        goal: 1.2,
        note: `baseline: GNU tar ${tarArgs.join(" ")} of the same archive; ${t.ovl.length} runs each`,
      }),
    );
  }

  // --- umoci unpack of the same layer (gzip, as umoci stores it) ---
  if (have("umoci")) {
    const img = join(base, "oci");
    run("umoci", ["init", "--layout", img]);
    run("umoci", ["new", "--image", `${img}:bench`]);
    run("umoci", ["raw", "add-layer", "--image", `${img}:bench`, tarFile]);
    const t = await alternate(quick ? 1 : 3, [
      {
        name: "ovl",
        run: async () => {
          const dir = out("ovl-apply");
          const t0 = performance.now();
          await applyLayer(gzFile, dir);
          return performance.now() - t0;
        },
      },
      { name: "umoci", run: () => run("umoci", ["unpack", "--image", `${img}:bench`, out("bundle")]).ms },
    ]);
    rows.push(
      makeRow({
        name: `applyLayer() vs umoci unpack (${what})`,
        kind: "faster",
        subject: median(t.ovl),
        baseline: median(t.umoci),
        goal: 1,
        note: `baseline: umoci unpack of an image holding the same layer (gzip); ${t.ovl.length} runs each`,
      }),
    );
  } else rows.push(makeRow({ name: "applyLayer() vs umoci unpack", kind: "check", goal: "umoci installed", pass: false, note: "umoci is not installed" }));

  // --- export: the applied tree as an upper with no lower ---
  const upper = join(base, "upper");
  rmSync(upper, { recursive: true, force: true });
  await applyLayer(tarFile, upper);
  const te = await alternate(rounds, [
    {
      name: "ovl",
      run: async () => {
        const t0 = performance.now();
        await exportLayerTo(upper, join(base, "export-ovl.tar"));
        return performance.now() - t0;
      },
    },
    { name: "tar", run: () => run("tar", ["-cf", join(base, "export-tar.tar"), "-C", upper, "."]).ms },
  ]);
  rows.push(
    makeRow({
      name: `exportLayer() of an upper (${what})`,
      kind: "ratio",
      subject: median(te.ovl),
      baseline: median(te.tar),
      goal: 1.2,
      note: `baseline: GNU tar -cf of the same upper; ${te.ovl.length} runs each`,
    }),
  );

  // --- diff() of a 100,000-file upper ---
  const d = { upper: join(base, "diff-upper"), lower: join(base, "diff-lower") };
  mkdirSync(d.upper);
  mkdirSync(d.lower);
  const count = quick ? 20000 : 100000;
  for (let i = 0; i < count / 100; i++) {
    const dir = join(d.upper, `d${i}`);
    mkdirSync(dir);
    for (let k = 0; k < 100; k++) writeFileSync(join(dir, `f${k}`), "");
  }
  const td = await alternate(rounds, [
    {
      name: "ovl",
      run: async () => {
        const t0 = performance.now();
        const changes = await lib.diff({ upper: d.upper, lower: [d.lower] });
        const ms = performance.now() - t0;
        if (changes.length !== count + count / 100) throw new Error(`diff saw ${changes.length} changes, not ${count + count / 100}`);
        return ms;
      },
    },
    { name: "find", run: () => run("find", [d.upper, "-printf", "%y %m %s %p\\n"]).ms },
  ]);
  rows.push(
    makeRow({
      name: `diff() of a ${count.toLocaleString("en")}-file upper`,
      kind: "ratio",
      subject: median(td.ovl),
      baseline: median(td.find),
      goal: 1.5,
      note: `baseline: find UPPER -printf (the walk's floor); ${td.ovl.length} runs each`,
    }),
  );
  sections.push({
    title: `layers (${what}): medians`,
    lines: [
      `archive ${(statSync(tarFile).size / 1e6).toFixed(1)} MB, gzip ${(statSync(gzFile).size / 1e6).toFixed(1)} MB`,
      `export ${fmtTime(median(te.ovl))} vs tar -c ${fmtTime(median(te.tar))}; diff ${fmtTime(median(td.ovl))} vs find ${fmtTime(median(td.find))}`,
    ],
  });
}
