/**
 * The package as a user gets it. `npm pack` of this checkout (run in a copy, so that prepack's clean build of
 * dist/ leaves the checkout's dist/ alone while other test files run it), then one `npm install` of the
 * tarball into a fresh `"type": "commonjs"` project, which builds the addon from source and fetches the
 * dependencies from the npm registry (CI has network to it); then `require`, `import` and TypeScript there.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repo = fileURLToPath(new URL("..", import.meta.url));
const tsc = join(repo, "node_modules", "typescript", "bin", "tsc");

/** This environment without npm's own variables (an outer `npm test` sets npm_config_*, which npm would obey). */
function npmFreeEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(
      (e): e is [string, string] => e[1] !== undefined && !/^npm_/i.test(e[0]) && e[0] !== "INIT_CWD",
    ),
  );
}
const env = npmFreeEnv();

/** Whether this Node loads ES modules with require() by default (20.19+, 22.12+): the same binary runs the scripts. */
const requireEsmByDefault = (process.features as { require_module?: boolean }).require_module === true;

let tmp = "";
let consumer = "";
let tarball = "";
let entries: string[] = [];
let packedManifest: { scripts?: Record<string, string>; files?: string[] } = {};
let installOutput = "";

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "pkg-ovl-test-"));
  // The checkout as a clone has it (plus uncommitted edits): no build output, no node_modules of its own.
  const stage = join(tmp, "source");
  const skip = new Set([".git", "node_modules", "build", "build-sanitize", "dist", "bench", "test"]);
  cpSync(repo, stage, {
    recursive: true,
    filter: (from) => {
      const rel = relative(repo, from);
      return rel === "" || (!skip.has(rel.split(sep)[0]!) && !rel.endsWith(".tgz"));
    },
  });
  symlinkSync(join(repo, "node_modules"), join(stage, "node_modules")); // typescript, for prepack
  const pack = await execa("npm", ["pack", "--pack-destination", tmp], { cwd: stage, env, extendEnv: false, all: true, reject: false });
  if (pack.exitCode !== 0) throw new Error(`npm pack failed (exit ${pack.exitCode}):\n${pack.all}`);
  tarball = join(tmp, pack.stdout.trim().split("\n").pop()!);
  entries = (await execa("tar", ["-tzf", tarball])).stdout.split("\n").filter(Boolean);
  packedManifest = JSON.parse((await execa("tar", ["-xzOf", tarball, "package/package.json"])).stdout);

  consumer = join(tmp, "consumer");
  mkdirSync(consumer);
  const spec = `file:${tarball}`;
  writeFileSync(
    join(consumer, "package.json"),
    JSON.stringify({ name: "consumer", version: "1.0.0", private: true, type: "commonjs", dependencies: { ovl: spec }, allowScripts: { [spec]: true } }),
  );
  // --foreground-scripts: the install script's own output is shown (npm otherwise holds it back unless it fails).
  const install = await execa("npm", ["install", "--foreground-scripts", "--no-audit", "--no-fund"], {
    cwd: consumer,
    env,
    extendEnv: false,
    all: true,
    reject: false,
  });
  installOutput = install.all ?? "";
  if (install.exitCode !== 0) throw new Error(`npm install of ${tarball} failed (exit ${install.exitCode}):\n${installOutput}`);
}, 900_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Runs node on a script in the consumer project; never throws on a non-zero exit. */
function node(args: string[]) {
  return execa(process.execPath, args, { cwd: consumer, env, extendEnv: false, reject: false });
}

describe("the packed tarball", () => {
  it("holds LICENSE, README, dist (ESM and the CommonJS entry), native sources, binding.gyp and the build script; no src, tests or tarballs", () => {
    for (const file of [
      "package/LICENSE",
      "package/README.md",
      "package/package.json",
      "package/binding.gyp",
      "package/scripts/build-addon.js",
      "package/dist/index.js",
      "package/dist/index.d.ts",
      "package/dist/cli.js",
      "package/dist/cjs/index.js",
      "package/dist/cjs/index.d.ts",
      "package/dist/cjs/package.json",
      "package/native/addon.cc",
      "package/man/ovl.1",
    ]) {
      expect(entries, file).toContain(file);
    }
    expect(entries.filter((e) => /^package\/(src|test|bench|build)\//.test(e) || e.endsWith(".tgz"))).toEqual([]);
    expect(readFileSync(join(consumer, "node_modules", "ovl", "LICENSE"), "utf8")).toContain("Copyright (c) 2026 the ovl authors");
    // The man page ships, and package.json names it, so npm installs it as ovl(1) with a global install.
    expect(readFileSync(join(consumer, "node_modules", "ovl", "man", "ovl.1"), "utf8")).toMatch(/^\.TH OVL 1/);
    expect(JSON.parse(readFileSync(join(consumer, "node_modules", "ovl", "package.json"), "utf8")).man).toBe("./man/ovl.1");
  });

  it("has no source map (or sourceMappingURL) pointing at a file it does not ship", async () => {
    const missing: string[] = [];
    const shipped = new Set(entries);
    for (const entry of entries.filter((e) => e.endsWith(".map"))) {
      const map = JSON.parse((await execa("tar", ["-xzOf", tarball, entry])).stdout) as { sources: string[]; sourcesContent?: unknown[] };
      for (const source of map.sources) {
        const target = posix.join(posix.dirname(entry), source);
        if (!shipped.has(target)) missing.push(`${entry} -> ${source}`);
      }
    }
    for (const entry of entries.filter((e) => /\.[cm]?js$/.test(e))) {
      const text = readFileSync(join(consumer, "node_modules", "ovl", entry.slice("package/".length)), "utf8");
      for (const m of text.matchAll(/^\/\/# sourceMappingURL=(\S+)$/gm)) {
        if (!m[1]!.startsWith("data:") && !shipped.has(posix.join(posix.dirname(entry), m[1]!))) missing.push(`${entry} -> ${m[1]}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it("has an install script but no prepare script (npm 11 counts prepare among the scripts awaiting approval)", () => {
    expect(packedManifest.scripts?.install).toBe("node scripts/build-addon.js rebuild");
    expect(packedManifest.scripts).not.toHaveProperty("prepare");
    expect(packedManifest.files).toContain("LICENSE");
  });
});

describe("installed from the tarball into a fresh project", () => {
  it("built the addon quietly: the install script ran, printing no gyp info or make progress lines", () => {
    expect(installOutput).toContain("node scripts/build-addon.js rebuild"); // npm's header line: the script ran, in the foreground
    expect(existsSync(join(consumer, "node_modules", "ovl", "build", "Release", "ovl.node"))).toBe(true);
    const noisy = installOutput.split("\n").filter((line) => /^gyp (info|verb)|CXX\(target\)|SOLINK_MODULE|make: (Entering|Leaving)/.test(line));
    expect(noisy).toEqual([]);
  });

  it("works from CommonJS: require('ovl').list() returns an array, with no warning", async () => {
    writeFileSync(
      join(consumer, "cjs.js"),
      `const ovl = require("ovl");
ovl.list().then((mounts) => console.log(JSON.stringify({ isArray: Array.isArray(mounts), names: Object.keys(ovl).sort() })));
`,
    );
    const r = await node(["cjs.js"]);
    if (requireEsmByDefault) {
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      const out = JSON.parse(r.stdout) as { isArray: boolean; names: string[] };
      expect(out.isArray).toBe(true);
      expect(out.names).toEqual(expect.arrayContaining(["list", "mount", "mountSync", "umount", "OverlayError", "MountedOverlay"]));
    } else {
      // This Node (20.17-20.18, 22.0-22.11) cannot require() ES modules: the error says so and what to do.
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toContain('ovl: require("ovl") needs require() of ES modules');
    }
  });

  it("says what to do when require() of ES modules is off (--no-experimental-require-module, as older Node)", async () => {
    const r = await node(["--no-experimental-require-module", "cjs.js"]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('ovl: require("ovl") needs require() of ES modules, which Node.js 20.19+ and 22.12+ do by default');
    expect(r.stderr).toContain('await import("ovl")');
  });

  it("works from ESM: import gives the same module (and the same classes) as require", async () => {
    writeFileSync(
      join(consumer, "esm.mjs"),
      `import * as ovl from "ovl";
import { createRequire } from "node:module";
const required = ${requireEsmByDefault} ? createRequire(import.meta.url)("ovl") : ovl;
const mounts = await ovl.list();
console.log(JSON.stringify({ isArray: Array.isArray(mounts), same: required.MountedOverlay === ovl.MountedOverlay && required.list === ovl.list }));
`,
    );
    const r = await node(["esm.mjs"]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ isArray: true, same: true });
  });

  // "type": "commonjs" projects: TypeScript resolves the `require` condition's types; each compiled file runs.
  it.each(["nodenext", "node16", "commonjs"])('type-checks and runs in a "type": "commonjs" TypeScript project (module %s)', async (module) => {
    const dir = join(consumer, `ts-${module}`);
    mkdirSync(dir);
    writeFileSync(
      join(dir, "index.ts"),
      `import { list, OverlayError, type OverlayMount } from "ovl";
import ovl = require("ovl");

async function main(): Promise<void> {
  const overlays: OverlayMount[] = await list();
  const every = await ovl.list({ all: true });
  console.log(JSON.stringify({ isArray: Array.isArray(overlays), all: every.length > 0, error: typeof OverlayError }));
}
void main();
`,
    );
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          module,
          target: "ES2022",
          strict: true,
          skipLibCheck: false,
          outDir: "out",
          types: ["node"],
          typeRoots: [join(repo, "node_modules", "@types")],
          ...(module === "commonjs" ? { esModuleInterop: true } : {}),
        },
        files: ["index.ts"],
      }),
    );
    const check = await execa(process.execPath, [tsc, "-p", dir], { cwd: dir, env, extendEnv: false, all: true, reject: false });
    expect(check.all).toBe("");
    expect(check.exitCode).toBe(0);
    const r = await node([join(dir, "out", "index.js")]);
    if (!requireEsmByDefault) {
      expect(r.stderr).toContain('ovl: require("ovl") needs require() of ES modules');
      return;
    }
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ isArray: true, all: true, error: "function" });
  });
});
