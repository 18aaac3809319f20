/**
 * `ovl ls`: the mounted overlays (or every mount) as findmnt(8) shows them, a saved mountinfo file, or
 * with --watch the mounts and unmounts as they happen.
 */
import { realpath } from "node:fs/promises";
import { resolve } from "node:path";
import { bufferToPath, pathToBuffer } from "../../kernel/bytes.js";
import { list } from "../../table/table.js";
import type { CommandFactory } from "../command.js";
import { EXIT, UsageError, reportError } from "../errors.js";
import { defaultColumns, formatLs, listColumns, parseColumns } from "../ls-table.js";
import { formatMountEvent, printable, writeJson } from "../output.js";

interface LsOptions {
  all?: boolean;
  pid?: string;
  file?: string;
  json?: boolean;
  watch?: boolean;
  output?: string;
  listColumns?: boolean;
  noheadings?: boolean;
  raw?: boolean;
  tree?: boolean;
}

function pidOption(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const pid = Number(value);
  if (!/^\d+$/.test(value) || pid <= 0) throw new UsageError(`--pid needs a process id, got '${value}'`);
  return pid;
}

/**
 * `ls --watch`: one line per mount, unmount or change as it happens (like `findmnt --poll`), or one JSON
 * object per line with --json. With a target, only the mounts on that path. Runs until interrupted.
 */
async function lsWatch(target: string | undefined, opts: LsOptions): Promise<number> {
  const pid = pidOption(opts.pid);
  // Mount targets in the table are canonical paths: compare with the canonical form of the one given.
  const path = target !== undefined ? bufferToPath(await realpath(pathToBuffer(resolve(target)), { encoding: "buffer" })) : undefined;
  const { watch } = await import("../../table/watch.js");
  await using events = watch({
    ...(opts.all ? { all: true } : {}),
    ...(pid !== undefined ? { pid } : {}),
    onIssue: (issue) => console.error(`ovl: ls: skipped mountinfo line ${issue.line}: ${issue.reason}`),
  });
  await events.ready;
  console.error(`ovl: ls: watching ${opts.all ? "all mounts" : "overlays"}${path !== undefined ? ` on ${printable(path)}` : ""} (Ctrl-C to stop)`);
  for await (const e of events) {
    if (path !== undefined && e.mount.target !== path) continue;
    process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : formatMountEvent(e.type, e.mount));
  }
  return EXIT.OK;
}

async function lsCommand(target: string | undefined, opts: LsOptions): Promise<number> {
  if (opts.listColumns) {
    process.stdout.write(listColumns());
    return EXIT.OK;
  }
  const columns = opts.output !== undefined ? parseColumns(opts.output) : defaultColumns(!!opts.all);
  if (!Array.isArray(columns)) throw new UsageError(`-o: unknown column '${columns.unknown}'`, "'ovl ls --list-columns' lists them");
  if (opts.file !== undefined && (opts.pid !== undefined || opts.watch)) {
    throw new UsageError("--file cannot be combined with --pid or --watch", "ovl ls [-F FILE] [TARGET]");
  }
  if (opts.watch) return lsWatch(target, opts);
  const pid = pidOption(opts.pid);
  const mounts = await list({
    ...(opts.all ? { all: true } : {}),
    ...(pid !== undefined ? { pid } : {}),
    ...(opts.file !== undefined ? { file: opts.file } : {}),
    ...(target !== undefined ? { target } : {}),
    onIssue: (issue) => console.error(`ovl: ls: skipped mountinfo line ${issue.line}: ${issue.reason}`),
  });
  if (opts.json) {
    writeJson(mounts);
    // As the table below: nothing found is a failed lookup (findmnt(8) exits 1).
    return mounts.length === 0 ? EXIT.USAGE : EXIT.OK;
  }
  if (mounts.length === 0) {
    if (target !== undefined) {
      console.error(`ovl: ls ${printable(resolve(target))}: no overlay at or above this path`);
      return EXIT.USAGE;
    }
    if (process.stdout.isTTY) console.error("ovl: ls: no overlays mounted");
    return EXIT.USAGE; // nothing found: 1, as findmnt(8)
  }
  process.stdout.write(
    formatLs(mounts, {
      columns,
      headings: !opts.noheadings,
      raw: !!opts.raw,
      tree: !!opts.tree,
      ...(process.stdout.isTTY && !opts.raw ? { width: process.stdout.columns || 80 } : {}),
    }),
  );
  return EXIT.OK;
}

/** Registers `ls` (alias `list`) with `command(name)`, the CLI's factory for subcommands. */
export function addLsCommand(command: CommandFactory): void {
  command("ls")
    .alias("list")
    .description("list mounted overlays (like findmnt -t overlay)")
    .argument("[target]", "only the mount at or containing this path (with --watch: only mounts and unmounts exactly on this path)")
    .option("-A, --all", "every mount, not only overlays")
    .option("-N, --pid <pid>", "the mount namespace of process PID")
    .option("-F, --file <file>", "read a saved mountinfo file instead (from another machine or a bug report)")
    .option("-o, --output <columns>", "the columns to show, comma-separated (see --list-columns)")
    .option("--list-columns", "list the columns -o takes")
    .option("-n, --noheadings", "no header line")
    .option("-r, --raw", "raw output: one space between columns, spaces escaped as \\x20")
    .option("-T, --tree", "show what is mounted (or stacked) on what, as a tree")
    .option("-J, --json", "JSON output for scripts (with --watch: one object per line)")
    .option("-w, --watch", "print mounts and unmounts as they happen, until interrupted (like findmnt --poll)")
    .action(async (target: string | undefined, opts: LsOptions) => {
      try {
        process.exitCode = await lsCommand(target, opts);
      } catch (err) {
        // A path or process that is not there is a failed lookup, as in findmnt(8): exit 1, not 32.
        reportError("ls", err);
        process.exitCode = EXIT.USAGE;
      }
    });
}
