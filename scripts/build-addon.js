#!/usr/bin/env node
// Builds the native addon with node-gyp. When the running Node's headers are installed beside it
// (<prefix>/include/node, as distro packages and the official tarballs do), build against those, so that no
// download is needed; otherwise node-gyp fetches them as usual. Extra arguments go to node-gyp.
//
// Quiet unless something is wrong: node-gyp runs at --loglevel=warn and make's progress lines are held back;
// on success only what went to stderr (warnings) is shown, on failure everything, in order. Everything is
// shown as it happens with OVL_BUILD_VERBOSE=1 or npm's --loglevel=info (or more verbose).
//
// In a source checkout (`npm ci`/`npm install` in a clone, which runs this as the `install` script), it also
// compiles the TypeScript to dist/ (scripts/build-dist.js), so that one command sets the clone up. The
// published package has no scripts/build-dist.js: there it builds the addon only (dist/ is in the tarball).
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

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
const verbose =
  /^(1|true|yes)$/i.test(process.env.OVL_BUILD_VERBOSE ?? "") ||
  ["info", "http", "timing", "verbose", "silly"].includes(process.env.npm_config_loglevel ?? "");
const [command = "rebuild", ...rest] = process.argv.slice(2);
const args = [
  nodeGyp,
  command,
  ...(verbose ? [] : ["--loglevel=warn"]),
  ...(localHeaders && !process.env.npm_config_nodedir ? [`--nodedir=${prefix}`] : []),
  ...rest,
];

/** Runs node-gyp; resolves with its exit status once its output has been shown as described above. */
function nodeGypRun() {
  if (verbose) return Promise.resolve(spawnSync(process.execPath, args, { stdio: "inherit" }).status ?? 1);
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    const all = []; // [stream, chunk] in the order they came
    child.stdout.on("data", (chunk) => all.push([process.stdout, chunk]));
    child.stderr.on("data", (chunk) => all.push([process.stderr, chunk]));
    child.on("error", (error) => {
      console.error(`build-addon: could not run node-gyp: ${error.message}`);
      done(1);
    });
    child.on("close", (code, signal) => {
      const status = code ?? 1;
      if (status === 0) {
        for (const [stream, chunk] of all) if (stream === process.stderr) process.stderr.write(chunk);
      } else {
        for (const [, chunk] of all) process.stderr.write(chunk);
        console.error(
          `build-addon: node-gyp ${command} failed (${signal ? `signal ${signal}` : `exit ${status}`}); the addon needs` +
            " python3, make and a C++ compiler. Run with OVL_BUILD_VERBOSE=1 for node-gyp's full log.",
        );
      }
      done(status);
    });
  });
}

let status = await nodeGypRun();
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const buildDist = join(root, "scripts", "build-dist.js");
if (status === 0 && process.env.npm_lifecycle_event === "install" && existsSync(buildDist)) {
  status = spawnSync(process.execPath, [buildDist], { stdio: "inherit" }).status ?? 1;
}
process.exit(status);
