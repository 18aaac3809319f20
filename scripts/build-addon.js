#!/usr/bin/env node
// Builds the native addon with node-gyp. When the running Node's headers are installed beside it
// (<prefix>/include/node, as distro packages and the official tarballs do), build against those, so that no
// download is needed; otherwise node-gyp fetches them as usual. Extra arguments go to node-gyp.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";

const require = createRequire(import.meta.url);
const prefix = resolve(dirname(process.execPath), "..");
const localHeaders = existsSync(join(prefix, "include", "node", "common.gypi"));

// npm passes its own bundled node-gyp to install scripts; our devDependency serves `npm run build`.
let nodeGyp = process.env.npm_config_node_gyp;
if (!nodeGyp || !existsSync(nodeGyp)) {
  try {
    nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
  } catch {
    console.error("build-addon: node-gyp was not found; install it (npm i -g node-gyp) or run through npm");
    process.exit(1);
  }
}
const [command = "rebuild", ...rest] = process.argv.slice(2);
const args = [nodeGyp, command, ...(localHeaders && !process.env.npm_config_nodedir ? [`--nodedir=${prefix}`] : []), ...rest];
const r = spawnSync(process.execPath, args, { stdio: "inherit" });
process.exit(r.status ?? 1);
