/** Driving the built `ovl` command as a user would: execa on dist/cli.js. */
import { accessSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { execa } from "execa";
import { packageRootForNobody } from "./helpers.js";

export const cliPath = fileURLToPath(new URL("../dist/cli.js", import.meta.url));

/** The built CLI as the user nobody can read it (see packageRootForNobody). */
export const cliPathForNobody = join(packageRootForNobody, "dist", "cli.js");

/** Fails clearly when the CLI has not been built (`npm test` builds it first). */
export function requireBuiltCli(): void {
  if (!existsSync(cliPath)) {
    throw new Error(`${cliPath} is missing: build with \`npx tsc -p tsconfig.build.json\` (npm test does it first)`);
  }
}

/**
 * The environment a run starts from: this one without debug or colour settings (vitest sets FORCE_COLOR),
 * plus `extra`.
 */
export function cleanEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const name of ["OVL_DEBUG", "NO_COLOR", "FORCE_COLOR", "NODE_DISABLE_COLORS"]) delete env[name];
  Object.assign(env, extra);
  return Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
}

/** Runs `ovl ARGS...`; never throws on a non-zero exit. */
/** How a run differs from the default: extra environment variables. */
export interface RunOptions {
  env?: Record<string, string>;
}

export function ovl(args: string[], opts: RunOptions = {}) {
  return execa(process.execPath, [cliPath, ...args], { reject: false, extendEnv: false, env: cleanEnv(opts.env) });
}

/** setpriv's arguments to run a command as the user `nobody`. */
export const asNobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/** Runs `ovl ARGS...` as the user nobody (uid 65534). */
export function ovlAsNobody(args: string[], opts: RunOptions = {}) {
  return execa("setpriv", [...asNobody, process.execPath, cliPathForNobody, ...args], { reject: false, extendEnv: false, env: cleanEnv(opts.env) });
}

/**
 * The ordinary-user tests run the built CLI as `nobody`, which must be able to read the checkout. Fails
 * (rather than skipping) with the reason when it cannot, e.g. a clone under /root (mode 700).
 */
export async function requireNobodyCanRunCli(): Promise<void> {
  const r = await execa("setpriv", [...asNobody, process.execPath, "-e", `require("fs").accessSync(${JSON.stringify(cliPathForNobody)})`], {
    reject: false,
  });
  if (r.exitCode !== 0) {
    throw new Error(
      `the user nobody cannot read ${cliPathForNobody} (${r.stderr.split("\n")[0]}); the ordinary-user tests need a checkout ` +
        "that every user can read",
    );
  }
  accessSync(cliPath);
}
