#!/usr/bin/env node
// Runs the test suite inside a private mount namespace, so every mount a test makes is invisible to the
// machine and vanishes with the namespace even if a test crashes. As root: `unshare -m`. Otherwise a user
// namespace (`unshare -Urm`), which is how rootless users mount overlays.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const vitest = join(dirname(require.resolve("vitest/package.json")), "vitest.mjs");
const args = process.argv.slice(2);
const isRoot = process.getuid?.() === 0;

if (process.env.CI && !isRoot) {
  console.error("run-tests: CI must run as root so that no mount test is skipped (uid is %d)", process.getuid?.());
  process.exit(1);
}
const unshareArgs = isRoot ? ["-m", "--propagation", "private"] : ["-Urm", "--propagation", "private"];
const r = spawnSync("unshare", [...unshareArgs, "--", process.execPath, vitest, "run", ...args], {
  stdio: "inherit",
  env: { ...process.env, OVL_TEST_NAMESPACE: isRoot ? "root" : "user" },
});
if (r.error) {
  console.error(`run-tests: could not start unshare: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
