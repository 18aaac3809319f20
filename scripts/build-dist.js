#!/usr/bin/env node
// Compiles the TypeScript to dist/ (tsconfig.build.json), then adds the CommonJS entry of `require("ovl")`:
//   dist/cjs/index.js    loads the ES module build (../index.js) with require(), which Node 20.19+ and 22.12+ do
//                        without a flag (the build has no top-level await, so it can); on an older Node, or with
//                        --no-experimental-require-module, it throws an error that says so and what to do.
//   dist/cjs/**/*.d.ts   the declarations again, in the same folders, beside a package.json saying "type":
//                        "commonjs", so that TypeScript reads them as what they describe there: a CommonJS module
//                        (under "module": "node16"/"node18" it refuses to require() the ES module declarations).
// Both load the same ES module, so `require("ovl")` and `import("ovl")` share one instance (no dual package).
// --clean empties dist/ first: `npm pack` (prepack) packs nothing left over from an older build.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const cjs = join(dist, "cjs");

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

rmSync(cjs, { recursive: true, force: true });
mkdirSync(cjs);
writeFileSync(join(cjs, "package.json"), `${JSON.stringify({ type: "commonjs" }, null, 2)}\n`);
/** Copies the declarations under `from` (dist/ and its folders, but not dist/cjs/ itself) to the same place under `to`. */
function copyDeclarations(from, to) {
  for (const entry of readdirSync(from, { withFileTypes: true })) {
    const source = join(from, entry.name);
    if (entry.isDirectory()) {
      if (source === cjs) continue;
      mkdirSync(join(to, entry.name), { recursive: true });
      copyDeclarations(source, join(to, entry.name));
    } else if (entry.name.endsWith(".d.ts")) {
      copyFileSync(source, join(to, entry.name));
    }
  }
}
copyDeclarations(dist, cjs);
writeFileSync(
  join(cjs, "index.js"),
  `"use strict";
// require("ovl"): ovl is ES modules (../index.js, no top-level await); require() loads them on Node 20.19+, 22.12+.
try {
  module.exports = require("../index.js");
} catch (error) {
  if (!error || error.code !== "ERR_REQUIRE_ESM") throw error;
  const e = new Error(
    'ovl: require("ovl") needs require() of ES modules, which Node.js 20.19+ and 22.12+ do by default; this is ' +
      process.version +
      ", where it is off (too old, or started with --no-experimental-require-module). Upgrade Node.js, or load" +
      ' ovl with \`const ovl = await import("ovl")\`.',
    { cause: error },
  );
  e.code = "ERR_OVL_REQUIRE_ESM";
  throw e;
}
`,
);
