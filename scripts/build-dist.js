#!/usr/bin/env node
// Compiles the TypeScript to dist/ (tsconfig.build.json).
// --clean empties dist/ first: `npm pack` (prepack) packs nothing left over from an older build.
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");

if (process.argv.includes("--clean")) rmSync(dist, { recursive: true, force: true });

let tsc;
try {
  tsc = require.resolve("typescript/bin/tsc");
} catch {
  console.error("build-dist: typescript was not found; run `npm ci` (it is a devDependency)");
  process.exit(1);
}
const r = spawnSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { stdio: "inherit", cwd: root });
if (r.status !== 0) process.exit(r.status ?? 1);
