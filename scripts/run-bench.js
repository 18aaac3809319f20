#!/usr/bin/env node
// `npm run bench`: builds what the bench needs (dist/ with tsc, the addon if missing, the C baselines in
// bench/.build/), then re-executes itself inside a private mount namespace, where bench/run.mjs mounts its
// overlays and its 10,000-mount table. Everything mounted vanishes with the namespace; the one directory
// made on the machine (the workspace under the temp dir) is removed here afterwards.
//
//   npm run bench                 full run (a few minutes)
//   npm run bench -- --quick      short smoke run
//   npm run bench -- --only=cycle,table  some groups only (see bench/run.mjs)
//   OVL_BENCH_NO_ADDON_BUILD=1 npm run bench   never build the addon here (stop if it is missing or stale)
//
// Exits non-zero only when something failed to run; a missed goal is reported, not an error.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const buildDir = join(root, "bench", ".build");
const insideEnv = "OVL_BENCH_NAMESPACE";

function fail(message) {
  console.error(`run-bench: ${message}`);
  process.exit(1);
}

function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
  if (r.error) fail(`${what}: could not start ${cmd}: ${r.error.message}`);
  return r.status;
}

function build() {
  const require = createRequire(import.meta.url);
  // dist/: tsc emits even when some file in progress has type errors; only a missing output is fatal.
  const tsc = join(dirname(require.resolve("typescript/package.json")), "bin", "tsc");
  const status = run(process.execPath, [tsc, "-p", "tsconfig.build.json"], "building dist/");
  for (const f of ["index.js", "cli.js"]) {
    if (!existsSync(join(root, "dist", f))) fail(`building dist/ failed: dist/${f} is missing`);
  }
  if (status !== 0) console.error("run-bench: tsc reported errors (above); benchmarking what it emitted");

  // The addon: built when missing, rebuilt when a native/ source is newer than it. With
  // OVL_BENCH_NO_ADDON_BUILD=1 (someone else builds it, e.g. while they edit native/) never built here:
  // a missing or stale addon stops the bench instead.
  const addon = join(root, "build", "Release", "ovl.node");
  const sources = readdirSync(join(root, "native")).map((f) => join(root, "native", f));
  const stale = !existsSync(addon) || sources.some((f) => statSync(f).mtimeMs > statSync(addon).mtimeMs);
  if (stale && process.env.OVL_BENCH_NO_ADDON_BUILD) {
    fail(`${existsSync(addon) ? "the addon is older than native/" : "the addon is not built"} and OVL_BENCH_NO_ADDON_BUILD is set: build it first, or retry`);
  }
  if (stale) {
    const gyp = join(dirname(require.resolve("node-gyp/package.json")), "bin", "node-gyp.js");
    const args = existsSync(join(root, "build", "Makefile")) ? ["build"] : ["rebuild"];
    if (run(process.execPath, [gyp, ...args], "building the addon") !== 0) fail("building the addon failed");
  }

  mkdirSync(buildDir, { recursive: true });
  const cc = process.env.CC || "cc";
  for (const name of ["ovl-cycle", "mount-table"]) {
    const status = run(cc, ["-O2", "-Wall", "-Wextra", "-o", join(buildDir, name), join(root, "bench", "c", `${name}.c`)], `compiling ${name}`);
    if (status !== 0) fail(`compiling bench/c/${name}.c with ${cc} failed`);
  }
}

function outside() {
  if (process.platform !== "linux") fail("the bench needs Linux");
  build();
  const isRoot = process.getuid?.() === 0;
  // Root: a private mount namespace. Otherwise a user namespace owning one (rootless overlay mounts).
  const unshareArgs = isRoot ? ["-m", "--propagation", "private"] : ["-Urm", "--propagation", "private"];
  const workspace = mkdtempSync(join(tmpdir(), "ovl-bench-"));
  // Ctrl-C reaches the bench too (same process group); outlive it so the workspace is still removed.
  process.on("SIGINT", () => {});
  let status = 1;
  try {
    const r = spawnSync("unshare", [...unshareArgs, "--", process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: "inherit",
      env: { ...process.env, [insideEnv]: isRoot ? "root" : "user", OVL_BENCH_WORKSPACE: workspace },
    });
    if (r.error) fail(`could not start unshare: ${r.error.message}`);
    status = r.status ?? 1;
    if (r.signal) console.error(`run-bench: the bench was killed by ${r.signal}`);
  } finally {
    // Nothing is mounted on it out here (the mounts lived in the namespace), so this removes an empty dir.
    rmSync(workspace, { recursive: true, force: true });
  }
  process.exit(status);
}

async function inside() {
  let init;
  try {
    init = readlinkSync("/proc/1/ns/mnt");
  } catch {
    init = undefined; // unreadable from a user namespace, which is private by construction
  }
  if (init !== undefined && init === readlinkSync("/proc/self/ns/mnt")) {
    fail("refusing to run in the machine's own mount namespace");
  }
  const { main } = await import(pathToFileURL(join(root, "bench", "run.mjs")).href);
  process.exitCode = await main(process.argv.slice(2), {
    root,
    buildDir,
    workspace: process.env.OVL_BENCH_WORKSPACE,
    namespace: process.env[insideEnv],
  });
}

if (process.env[insideEnv]) await inside();
else outside();
