#!/usr/bin/env node
// Runs the test suite inside a private mount namespace, so every mount a test makes is invisible to the
// machine and vanishes with the namespace even if a test crashes. As root: `unshare -m`. Otherwise a user
// namespace (`unshare -Urm`), which is how rootless users mount overlays.
import { spawnSync } from "node:child_process";
import { chmodSync, cpSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const vitest = join(dirname(require.resolve("vitest/package.json")), "vitest.mjs");
const args = process.argv.slice(2);
const isRoot = process.getuid?.() === 0;

if (process.env.CI && !isRoot) {
  console.error("run-tests: CI must run as root so that no mount test is skipped (uid is %d)", process.getuid?.());
  process.exit(1);
}
/**
 * Some tests run the built package as the user nobody. Where nobody cannot read this checkout (a clone under
 * /root, say), stage a world-readable copy of what the package needs at run time, for this run only.
 */
function packageRootForNobody(repo) {
  const probe = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e",
    `require("fs").accessSync(${JSON.stringify(join(repo, "dist", "cli.js"))})`]);
  if (probe.status === 0) return { root: repo, staged: false };
  const stage = mkdtempSync(join(tmpdir(), "ovl-nobody-"));
  for (const part of ["package.json", "dist", join("build", "Release", "ovl.node"), join("node_modules", "commander")]) {
    cpSync(join(repo, part), join(stage, part), { recursive: true });
  }
  spawnSync("chmod", ["-R", "a+rX", stage]);
  chmodSync(stage, 0o755);
  return { root: stage, staged: true };
}

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const nobody = isRoot ? packageRootForNobody(repo) : { root: repo, staged: false };
const unshareArgs = isRoot ? ["-m", "--propagation", "private"] : ["-Urm", "--propagation", "private"];
const r = spawnSync("unshare", [...unshareArgs, "--", process.execPath, vitest, "run", ...args], {
  stdio: "inherit",
  env: { ...process.env, OVL_TEST_NAMESPACE: isRoot ? "root" : "user", OVL_TEST_NOBODY_ROOT: nobody.root },
});
if (nobody.staged) rmSync(nobody.root, { recursive: true, force: true });
if (r.error) {
  console.error(`run-tests: could not start unshare: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
