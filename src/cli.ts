#!/usr/bin/env node
/**
 * The `ovl` command: a thin shell over the library, in util-linux's vocabulary.
 * Exit codes follow mount(8)/umount(8): 0 success, 1 usage or permission, 32 mount failure,
 * 64 some of several targets succeeded.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { list, mount, umount, type MountSpec } from "./index.js";
import type { MountInfo, OverlayMount } from "./types.js";
import { formatTable, printable, style } from "./output.js";
import { addRunCommand } from "./cli-run.js";

export const EXIT = { OK: 0, USAGE: 1, FAILURE: 32, SOME_FAILED: 64 } as const;

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
const debug = () => process.argv.includes("--debug") || !!process.env.OVL_DEBUG;

/** `ovl: <command> <path>: <what is wrong> (<CODE>)`, a hint on the next line, exit code chosen by kind. */
function reportError(command: string, err: unknown): number {
  const e = err as Error & { code?: string; path?: string; hint?: string };
  if (debug()) console.error(e.stack ?? e);
  const what = e.message.replace(/^[A-Z0-9_]+: /, "").replace(/\. Hint: .*$/s, "").replace(/, \w+ '.*'$/s, "");
  const path = e.path !== undefined ? ` ${printable(e.path)}` : "";
  console.error(`ovl: ${command}${path}: ${printable(what, { keepNewlines: false })}${e.code ? ` (${e.code})` : ""}`);
  if (e.hint) console.error(`ovl: hint: ${e.hint}`);
  if (e.code === "EPERM" || e.code === "EACCES" || e.code?.startsWith("ERR_")) return EXIT.USAGE;
  return EXIT.FAILURE;
}

function layerSummary(m: OverlayMount): string {
  const all = [...m.lower, ...m.data.map((d) => `${d} (data)`)];
  if (all.length > 4) return `${m.lower.length} layers${m.data.length ? ` + ${m.data.length} data` : ""}`;
  return all.map((p) => printable(p)).join(" > ");
}

function keyOptions(m: OverlayMount): string {
  const f = m.features;
  const out: string[] = [m.mountOptions[0] ?? "rw"];
  if (f.redirectDir) out.push(`redirect_dir=${f.redirectDir}`);
  if (f.index !== undefined) out.push(`index=${f.index ? "on" : "off"}`);
  if (f.metacopy !== undefined) out.push(`metacopy=${f.metacopy ? "on" : "off"}`);
  if (f.xino) out.push(`xino=${f.xino}`);
  if (f.userxattr) out.push("userxattr");
  if (f.volatile) out.push("volatile");
  return out.join(",");
}

async function lsCommand(target: string | undefined, opts: { all?: boolean; pid?: string; json?: boolean }) {
  const pid = opts.pid === undefined ? undefined : Number(opts.pid);
  const mounts = await list({
    ...(opts.all ? { all: true } : {}),
    ...(pid !== undefined ? { pid } : {}),
    ...(target !== undefined ? { target } : {}),
    onIssue: (issue) => console.error(`ovl: ls: skipped mountinfo line ${issue.line}: ${issue.reason}`),
  });
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(mounts, null, 2)}\n`);
    return;
  }
  if (mounts.length === 0) {
    if (process.stdout.isTTY) console.error(target ? `ovl: ls: no overlay at ${printable(target)}` : "ovl: ls: no overlays mounted");
    return target ? EXIT.USAGE : EXIT.OK;
  }
  const rows = mounts.map((m) =>
    "lower" in m
      ? [printable(m.target), layerSummary(m), printable(m.upper ?? "-"), printable(m.work ?? "-"), keyOptions(m)]
      : [printable(m.target), `${(m as MountInfo).fstype} ${printable((m as MountInfo).source)}`, "-", "-", (m as MountInfo).mountOptions[0] ?? ""],
  );
  process.stdout.write(formatTable(["TARGET", "LOWER (top first)", "UPPER", "WORK", "OPTIONS"], rows));
  return EXIT.OK;
}

async function mountCommand(
  target: string,
  opts: { lower?: string[]; upper?: string; work?: string; data?: string[]; readOnly?: boolean },
) {
  const spec: MountSpec = {
    lower: opts.lower ?? [],
    target,
    ...(opts.upper !== undefined ? { upper: opts.upper } : {}),
    ...(opts.work !== undefined ? { work: opts.work } : {}),
    ...(opts.data ? { data: opts.data } : {}),
    ...(opts.readOnly ? { flags: { readonly: true } } : {}),
  };
  const m = await mount(spec);
  if (process.stdout.isTTY) console.log(`${style("green", "mounted")} overlay on ${printable(m.target)} (${m.lower.length} lower layer${m.lower.length === 1 ? "" : "s"}${m.upper ? ", upper " + printable(m.upper) : ", read-only"})`);
}

async function umountCommand(targets: string[], opts: { lazy?: boolean; force?: boolean }): Promise<number> {
  let failed = 0;
  for (const t of targets) {
    try {
      await umount(t, { lazy: !!opts.lazy, force: !!opts.force });
    } catch (err) {
      failed++;
      reportError("umount", err);
    }
  }
  if (failed === 0) return EXIT.OK;
  return failed === targets.length ? EXIT.FAILURE : EXIT.SOME_FAILED;
}

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

export function buildProgram(): Command {
  const program = new Command("ovl")
    .description("Linux overlay filesystems: mount, unmount, list and inspect")
    .version(pkg.version, "-V, --version")
    .option("--debug", "print stack traces with errors")
    .exitOverride()
    .showHelpAfterError("(run with --help for usage)");

  program
    .command("ls")
    .alias("list")
    .description("list mounted overlays")
    .argument("[target]", "only the mount at or containing this path")
    .option("-A, --all", "every mount, not only overlays")
    .option("-N, --pid <pid>", "the mount namespace of process PID")
    .option("-J, --json", "JSON output for scripts")
    .action(async (target: string | undefined, opts) => {
      process.exitCode = (await lsCommand(target, opts)) ?? EXIT.OK;
    });

  program
    .command("mount")
    .description("mount an overlay")
    .argument("<target>", "mount point (an existing directory)")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--upper <dir>", "upper (writable) layer")
    .option("--work <dir>", "work directory: empty, on the same mount as --upper")
    .addOption(new Option("--data <dir>", "data-only lower layer (repeatable)").argParser(collect))
    .option("-r, --read-only", "mount read-only")
    .action(async (target: string, opts) => {
      await mountCommand(target, opts);
    });

  program
    .command("umount")
    .alias("unmount")
    .description("unmount one or more targets")
    .argument("<target...>", "mount points")
    .option("-l, --lazy", "detach now, clean up when no longer busy")
    .option("-f, --force", "force (overlay has no forced unmount: a busy overlay stays busy)")
    .action(async (targets: string[], opts) => {
      process.exitCode = await umountCommand(targets, opts);
    });

  addRunCommand(program, reportError);

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    const command = program.args[0] ?? "ovl";
    return reportError(command, err);
  }
}

main(process.argv).then((code) => {
  process.exitCode = code;
});
