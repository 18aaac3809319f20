#!/usr/bin/env node
/**
 * The `ovl` command: a thin shell over the library, in util-linux's vocabulary.
 * Exit codes follow mount(8)/umount(8): 0 success, 1 usage or permission, 32 mount failure,
 * 64 some of several targets succeeded; `ls` follows findmnt(8): 1 when nothing was found or the lookup failed. Output for people goes to stdout, diagnostics to stderr.
 */
import { readFileSync, realpathSync } from "node:fs";
import { realpath } from "node:fs/promises";
import { exactArgv } from "./cli/argv.js";
import { bufferToPath, pathToBuffer } from "./kernel/bytes.js";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, Option } from "commander";
import { addInspectCommands } from "./cli/commands/inspect.js";
import { addStackCommand } from "./cli/commands/stack.js";
import { addRunCommand } from "./cli/commands/run.js";
import { describeErrno } from "./kernel/errors.js";
import type { Holder, HolderList } from "./table/fuser.js";
import type { MountSpec } from "./mounting/validate.js";
import { list } from "./table/table.js";
import { MountOptionError, parseMountOptions } from "./mounting/mount-options.js";
import type { NativeFailure } from "./kernel/native.js";
import { formatMountEvent, formatTable, printable, style, writeJson } from "./cli/output.js";
import { defaultColumns, formatLs, listColumns, parseColumns } from "./cli/ls-table.js";
import { addExamples, completionScript } from "./cli/docs.js";

export const EXIT = { OK: 0, USAGE: 1, FAILURE: 32, SOME_FAILED: 64 } as const;

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

/** Stack traces with errors: `--debug`, or OVL_DEBUG set to anything but "" or "0". */
let debug = !!process.env.OVL_DEBUG && process.env.OVL_DEBUG !== "0";

/** A mistake in how the command was called: exit 1, no error code. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = "UsageError";
  }
}

type ErrorLike = Error & { code?: string; path?: string; hint?: string; syscall?: string };

const usageCodes = new Set(["EPERM", "EACCES"]);

/** Commands whose failure is a failed mount or unmount (util-linux's 32); for the others it is a lookup (1). */
const MOUNTING = new Set(["mount", "umount", "run", "demo"]);

/**
 * The exit code for an error, util-linux's rule for every command: 1 for usage, permission, or a lookup
 * that found nothing or failed (`ls`, `which`, `diff`, `fuser`); 32 only for a failed mount or unmount.
 */
function exitCodeFor(command: string, err: unknown): number {
  const code = (err as ErrorLike)?.code;
  if (err instanceof UsageError || err instanceof MountOptionError) return EXIT.USAGE;
  if (code !== undefined && (usageCodes.has(code) || code.startsWith("ERR_"))) return EXIT.USAGE;
  return MOUNTING.has(command) ? EXIT.FAILURE : EXIT.USAGE;
}

/** What umount(8) says, in the same words, for the errors umount2(2) gives. */
const umountWords: Record<string, { what: string; hint?: (path: string) => string }> = {
  EBUSY: { what: "target is busy", hint: (p) => `'ovl umount -l ${p}' detaches it now and frees it when the last user is gone` },
  EINVAL: { what: "not a mount point" },
  ENOENT: { what: "no such file or directory" },
  ENOTDIR: { what: "a component of the path is not a directory" },
  EPERM: {
    what: "permission denied",
    hint: () => "unmounting needs root (CAP_SYS_ADMIN), or the user namespace that owns the mount namespace",
  },
};

/** The parts of an error line: the path it is about, what is wrong, the code and a hint. */
function describeError(command: string, err: unknown): { path?: string; what: string; code?: string; hint?: string } {
  if (!(err instanceof Error)) return { what: String(err) };
  const e = err as ErrorLike & { dest?: string };
  // A layer's fault is about a mount: the line names the act (mount TARGET), then the culprit in the text.
  const path = command === "mount" && e.dest !== undefined ? e.dest : e.path;
  if (command === "umount" && e.code && umountWords[e.code] && path !== undefined) {
    const words = umountWords[e.code]!;
    return { path, what: words.what, code: e.code, ...(words.hint ? { hint: words.hint(path) } : {}) };
  }
  // OverlayError and Node's system errors: `CODE: detail, syscall 'path'. Hint: ...`; keep the detail.
  let what = e.message.replace(/\. Hint: .*$/s, "");
  if (e.code && what.startsWith(`${e.code}: `)) what = what.slice(e.code.length + 2);
  if (e.syscall !== undefined) what = what.replace(new RegExp(`, ${e.syscall}( '.*')?$`, "s"), "");
  let hint = e.hint;
  if (e.code === "EPERM" && command === "mount") {
    hint = "mounting needs root (CAP_SYS_ADMIN), or a user namespace that owns the mount namespace (e.g. unshare -Urm; ovl adds userxattr there by itself)";
  }
  if (e.code === "EBUSY" && hint) hint = hint.replace("`lazy: true` (umount -l)", "'ovl umount -l'");
  // `ovl run` has a throwaway upper of its own to offer.
  if (command === "run" && hint?.startsWith("add an upper and a work directory")) {
    hint = "add --tmp (a throwaway upper and work on a tmpfs), --upper U --work W, or a second --lower";
  }
  return {
    ...(path !== undefined ? { path } : {}),
    what,
    ...(e.code && !(err instanceof UsageError) ? { code: e.code } : {}),
    ...(hint ? { hint } : {}),
  };
}

/**
 * Prints `ovl: <command> <path>: <what is wrong> (<CODE>)`, any `details` lines, and a hint line to stderr,
 * and returns the exit code for the error. With --debug or OVL_DEBUG, the stack too.
 */
export function reportError(
  command: string,
  err: unknown,
  details: { lines: string[]; hints: string[]; replaceHint?: boolean } = { lines: [], hints: [] },
): number {
  if (debug) console.error((err as Error)?.stack ?? err);
  const d = describeError(command, err);
  const path = d.path !== undefined ? ` ${printable(d.path)}` : "";
  const code = d.code ? ` (${d.code})` : "";
  console.error(`ovl: ${command}${path}: ${printable(d.what, { keepNewlines: false })}${code}`);
  for (const line of details.lines) console.error(`ovl:   ${line}`);
  for (const hint of [...details.hints, ...(d.hint && !details.replaceHint ? [d.hint] : [])]) {
    console.error(`ovl: hint: ${printable(hint, { keepNewlines: false })}`);
  }
  return exitCodeFor(command, err);
}

// --- ls ------------------------------------------------------------------------------------------------

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
  const { watch } = await import("./table/watch.js");
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

// --- mount ---------------------------------------------------------------------------------------------

export interface MountCliOptions {
  lower?: string[];
  upper?: string;
  work?: string;
  data?: string[];
  readOnly?: boolean;
  options?: string[];
  type?: string;
}

/** The library spec for `ovl mount`, from the flags and/or mount(8)'s `-o` string. */
export function mountSpecFromCli(source: string | undefined, target: string, opts: MountCliOptions): MountSpec {
  if (opts.type !== undefined && opts.type !== "overlay") {
    throw new UsageError(`-t ${opts.type}: ovl mounts only overlay filesystems`, "leave out -t, or use -t overlay");
  }
  const o = parseMountOptions(opts.options ?? []);
  const both = (flag: string, option: string) =>
    new UsageError(`${flag} and -o ${option} both give the ${flag.slice(2)} layer${flag === "--work" ? "" : "s"}; give them one way`);
  if (opts.lower && o.lower) throw both("--lower", "lowerdir=");
  if (opts.upper !== undefined && o.upper !== undefined) throw both("--upper", "upperdir=");
  if (opts.work !== undefined && o.work !== undefined) throw both("--work", "workdir=");
  if (opts.data && o.data) throw both("--data", "lowerdir=A::DATA / datadir+=");
  const lower = opts.lower ?? o.lower;
  if (!lower || lower.length === 0) {
    throw new UsageError("no lower layer given", "give --lower DIR (repeat for more, top-most first) or -o lowerdir=DIR1:DIR2");
  }
  const upper = opts.upper ?? o.upper;
  const work = opts.work ?? o.work;
  const data = opts.data ?? o.data;
  const flags = { ...o.flags, ...(opts.readOnly ? { readonly: true } : {}) };
  return {
    lower,
    target,
    ...(upper !== undefined ? { upper } : {}),
    ...(work !== undefined ? { work } : {}),
    ...(data ? { data } : {}),
    ...(Object.keys(o.options).length > 0 ? { options: o.options } : {}),
    ...(Object.keys(flags).length > 0 ? { flags } : {}),
    ...(source !== undefined ? { source } : {}),
  };
}

async function mountCommand(args: string[], opts: MountCliOptions): Promise<number> {
  // mount(8)'s `mount -t overlay SOURCE TARGET` form: with two arguments the first is the source.
  if (args.length > 2) throw new UsageError(`too many arguments: ${args.map((a) => `'${a}'`).join(" ")}`, "ovl mount [options] [SOURCE] TARGET");
  const [source, target] = args.length === 2 ? [args[0], args[1]!] : [undefined, args[0]!];
  // A command line refuses an upper/work directory in use by another overlay up front (the library's opt-in).
  const { mountOverlay } = await import("./mounting/mount.js"); // loaded when the command runs, as every command's own work
  const m = await mountOverlay({ ...mountSpecFromCli(source, target, opts), refuseInUse: true });
  // What the kernel said of a mount that succeeded (a fallback, a layer feature): diagnostics, on stderr.
  for (const w of m.warnings) console.error(`ovl: mount ${printable(m.target)}: kernel: ${w.replace(/^overlay(fs)?: /, "")}`);
  if (process.stdout.isTTY) {
    const layers = `${m.lower.length} lower layer${m.lower.length === 1 ? "" : "s"}`;
    console.log(`${style("green", "mounted")} overlay on ${printable(m.target)} (${layers}${m.upper ? `, upper ${printable(m.upper)}` : ", read-only"})`);
  }
  return EXIT.OK;
}

// --- umount --------------------------------------------------------------------------------------------

let userNames: Map<number, string> | undefined;

/** The user name for a uid, from /etc/passwd (Node has no getpwuid), else the number. */
function userName(uid: number): string {
  if (!userNames) {
    userNames = new Map();
    try {
      for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
        const [name, , id] = line.split(":");
        if (name && id && !userNames.has(Number(id))) userNames.set(Number(id), name);
      }
    } catch {
      // no passwd file: numbers it is
    }
  }
  return userNames.get(uid) ?? String(uid);
}

function describeUse(f: Holder["files"][number]): string {
  if (f.use === "open") return `open file ${printable(f.path)} (fd ${f.fd})`;
  if (f.use === "map") return `memory map ${printable(f.path)}`;
  if (f.use === "exe") return `executable ${printable(f.path)}`;
  return `${f.use} ${printable(f.path)}`;
}

/** One line per holder: `pid 1234 (sleep): cwd /mnt/dir, open file /mnt/f (fd 3)`. */
export function holderLine(h: Holder): string {
  const shown = h.files.slice(0, 4).map(describeUse);
  if (h.files.length > 4) shown.push(`and ${h.files.length - 4} more`);
  return `pid ${h.pid} (${printable(h.command)}, ${userName(h.uid)}): ${shown.join(", ")}`;
}

/** ` (3 processes could not be inspected: ...)` when the scan was refused some /proc entries. */
function uninspectedNote(pids: number[]): string {
  if (pids.length === 0) return "";
  const which = pids.length <= 3 ? `pid ${pids.join(", ")}` : `${pids.length} processes`;
  return ` (${which} could not be inspected: permission denied${process.geteuid?.() === 0 ? "" : "; run as root to see every process"})`;
}

/**
 * After EBUSY: who holds the target (processes, and mounts below it), as lines for the error message. Never a
 * hint that would take down more than the user named: with mounts below it (or for `/`), neither `-R` nor
 * `-l` (which detaches everything below too) is suggested; the mounts below are named instead.
 */
async function explainBusy(target: string): Promise<{ lines: string[]; hints: string[]; replaceHint?: boolean }> {
  const lines: string[] = [];
  const hints: string[] = [];
  let holders: HolderList | undefined;
  try {
    holders = await holdersOtherThanOvl(target);
  } catch (err) {
    lines.push(`(could not look for the processes holding it: ${(err as Error).message})`);
  }
  if (holders && holders.length > 0) {
    lines.push(`held by ${holders.length} process${holders.length === 1 ? "" : "es"}:`);
    for (const h of holders) lines.push(`  ${holderLine(h)}`);
  }
  // Stacked mounts share a mount point: each place once, deepest first.
  const { submountsOf } = await import("./table/fuser.js");
  const below = [...new Set((await submountsOf(target).catch(() => [])).map((m) => m.target))];
  const isRoot = resolve(target) === "/";
  if (below.length > 0) {
    const shown = below.slice(0, 4).map((t) => printable(t));
    lines.push(`mounted below it: ${shown.join(", ")}${below.length > 4 ? `, and ${below.length - 4} more` : ""}`);
    if (!isRoot) hints.push(`unmount what is mounted below it first, if those are yours to unmount: 'ovl umount ${shown.join(" ")}'`);
  }
  if (holders && holders.length === 0 && below.length === 0) {
    lines.push(`no process found holding it${uninspectedNote(holders.uninspected)}`);
  }
  return { lines, hints, replaceHint: below.length > 0 || isRoot };
}

/** The mount points to unmount for `umount -R target`: everything below it, deepest first, then it. */
async function recursiveTargets(target: string): Promise<string[]> {
  const path = resolve(target);
  const real = bufferToPath(await realpath(pathToBuffer(path), { encoding: "buffer" }));
  let id: number;
  try {
    const { native } = await import("./kernel/native.js");
    id = (await native().mountId(pathToBuffer(real), false)).mountId;
  } catch (e) {
    const { code, description } = describeErrno((e as NativeFailure).errno);
    throw Object.assign(new Error(description), { code, path, syscall: "statx" });
  }
  const mounts = await list({ all: true });
  const top = mounts.find((m) => m.id === id);
  if (!top || top.target !== real) {
    throw Object.assign(new Error("not a mount point"), { code: "EINVAL", path, syscall: "umount2" });
  }
  const { unmountOrder } = await import("./table/fuser.js");
  return unmountOrder(mounts, id).map((m) => m.target);
}

async function umountOne(target: string, opts: { lazy?: boolean; force?: boolean; recursive?: boolean; verbose?: boolean }) {
  const targets = opts.recursive ? await recursiveTargets(target) : [target];
  // util-linux: recursion stops at the first unmount that fails.
  for (const t of targets) {
    const { umount } = await import("./mounting/mount.js");
    await umount(t, { lazy: !!opts.lazy, force: !!opts.force });
    if (opts.verbose) console.log(`unmounted ${printable(resolve(t))}`);
  }
}

async function umountCommand(
  targets: string[],
  opts: { lazy?: boolean; force?: boolean; recursive?: boolean; verbose?: boolean },
): Promise<number> {
  const codes: number[] = [];
  for (const t of targets) {
    try {
      await umountOne(t, opts);
    } catch (err) {
      const busy = (err as ErrorLike).code === "EBUSY" ? await explainBusy((err as ErrorLike).path ?? t) : undefined;
      codes.push(reportError("umount", err, busy));
    }
  }
  if (codes.length === 0) return EXIT.OK;
  if (codes.length < targets.length) return EXIT.SOME_FAILED;
  return codes.every((c) => c === codes[0]) ? codes[0]! : EXIT.FAILURE;
}

/**
 * The holders of a mount but ovl itself: it inherits the shell's working directory, which may be on the
 * mount, but it is about to exit and is not what keeps the mount busy.
 */
async function holdersOtherThanOvl(target: string): Promise<HolderList> {
  const { findHolders } = await import("./table/fuser.js");
  const all = await findHolders(target);
  const others = all.filter((h) => h.pid !== process.pid);
  return Object.assign(others, { uninspected: all.uninspected, mount: all.mount });
}

// --- fuser ---------------------------------------------------------------------------------------------

async function fuserCommand(target: string, opts: { json?: boolean }): Promise<number> {
  const holders = await holdersOtherThanOvl(target);
  if (opts.json) {
    writeJson(holders);
  } else if (holders.length > 0) {
    const rows: string[][] = [];
    for (const h of holders) {
      h.files.forEach((f, i) => {
        const use = f.use === "open" ? `open (fd ${f.fd})` : f.use;
        rows.push(i === 0 ? [String(h.pid), userName(h.uid), printable(h.command), use, printable(f.path)] : ["", "", "", use, printable(f.path)]);
      });
    }
    process.stdout.write(formatTable(["PID", "USER", "COMMAND", "USE", "PATH"], rows));
  }
  if (holders.length === 0) {
    console.error(`ovl: fuser ${printable(holders.mount.target)}: no process holds this mount${uninspectedNote(holders.uninspected)}`);
  } else if (holders.uninspected.length > 0) {
    console.error(`ovl: fuser ${printable(holders.mount.target)}: not complete${uninspectedNote(holders.uninspected)}`);
  }
  // As fuser(1): non-zero when nothing holds it.
  return holders.length > 0 ? EXIT.OK : EXIT.USAGE;
}

// --- the program ---------------------------------------------------------------------------------------

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** Every line of a message with ovl's prefix: the first with `first`, the rest (commander's "Did you mean") with `rest`. */
function prefixLines(str: string, first: string, rest = first): string {
  const lines = str.replace(/\n$/, "").split("\n");
  return `${lines.map((l, i) => (i === 0 ? first : rest) + l.replace(/^\((Did you mean .*)\)$/, "$1")).join("\n")}\n`;
}

export function buildProgram(): Command {
  const program = new Command("ovl")
    .description("Linux overlay filesystems: mount, unmount, list and inspect")
    .version(pkg.version, "-V, --version")
    .option("--debug", "print stack traces with errors (also OVL_DEBUG=1)")
    .exitOverride()
    .configureOutput({
      // Commander's own errors (unknown option, missing argument) in ovl's one-line form.
      outputError: (str, write) => write(prefixLines(str.replace(/^error: /, ""), "ovl: ")),
    })
    .showHelpAfterError("ovl: hint: run 'ovl --help' for usage")
    .hook("preAction", (cmd) => {
      if (cmd.opts().debug) debug = true;
    });

  // Every subcommand: commander's errors as `ovl: <command>: <what>`, and a pointer to its own help.
  const command = (name: string) =>
    program
      .command(name)
      .configureOutput({ outputError: (str, write) => write(prefixLines(str.replace(/^error: /, ""), `ovl: ${name}: `, "ovl: ")) })
      .showHelpAfterError(`ovl: hint: run 'ovl ${name} --help' for usage`);

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

  command("mount")
    .description("mount an overlay")
    .usage("[options] [SOURCE] TARGET")
    .argument("<target...>", "the mount point (an existing directory); with two arguments, as mount(8): SOURCE TARGET, SOURCE naming the mount (default 'overlay')")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--upper <dir>", "upper (writable) layer")
    .option("--work <dir>", "work directory: empty, on the same mount as --upper")
    .addOption(new Option("--data <dir>", "data-only lower layer (repeatable)").argParser(collect))
    .option("-r, --read-only", "mount read-only")
    .addOption(
      new Option(
        "-o, --options <list>",
        "mount(8) options: lowerdir=A:B,upperdir=U,workdir=W, overlay features (redirect_dir=, index=, xino=, " +
          "metacopy=, volatile, userxattr, uuid=, verity=, nfs_export=, default_permissions) and flags (ro, nosuid, " +
          "nodev, noexec, noatime, ...); `\\` escapes `:` `,` `\\` in paths",
      ).argParser(collect),
    )
    .addOption(new Option("-t, --types <type>", "filesystem type, as mount(8); only 'overlay'").hideHelp())
    .action(async (args: string[], opts: MountCliOptions & { types?: string }) => {
      process.exitCode = await mountCommand(args, { ...opts, ...(opts.types !== undefined ? { type: opts.types } : {}) });
    });

  command("umount")
    .alias("unmount")
    .description("unmount one or more targets")
    .argument("<target...>", "mount points")
    .option("-l, --lazy", "detach now, clean up when no longer busy")
    .option("-f, --force", "force (overlay has no forced unmount: a busy overlay stays busy)")
    .option("-R, --recursive", "first unmount everything mounted below each target, deepest first")
    .option("-v, --verbose", "say what was unmounted")
    .action(async (targets: string[], opts) => {
      process.exitCode = await umountCommand(targets, opts);
    });

  command("fuser")
    .description("show the processes that keep a mount busy (like fuser -vm): cwd, root, executable, open files, memory maps")
    .argument("<target>", "a mount point, or any path on the mount")
    .option("-J, --json", "JSON output for scripts")
    .action(async (target: string, opts) => {
      process.exitCode = await fuserCommand(target, opts);
    });

  command("demo")
    .description("show how an overlay works, live, in a temporary directory (as root, or in a user namespace)")
    .option("--pause", "stop before unmounting, until Enter is pressed, to look around")
    .action(async (opts: { pause?: boolean }) => {
      const { demoCommand } = await import("./sandbox/demo.js");
      const result = await demoCommand(opts);
      if (typeof result === "string") {
        // Interrupted, and cleaned up: die of the same signal, so that the caller sees the interrupt.
        process.kill(process.pid, result);
        await new Promise((r) => setTimeout(r, 1000));
      }
      process.exitCode = typeof result === "number" ? result : EXIT.FAILURE;
    });

  addInspectCommands(command, reportError);
  addStackCommand(command, reportError);
  addRunCommand(command, reportError);

  command("completion")
    .description("print a shell completion script: bash, zsh or fish")
    .argument("<shell>", "bash, zsh or fish")
    .action((shell: string) => {
      if (shell !== "bash" && shell !== "zsh" && shell !== "fish") {
        throw new UsageError(`completion: no script for '${shell}'`, "ovl completion bash|zsh|fish");
      }
      process.stdout.write(completionScript(program, shell));
    });

  addExamples(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    const command = program.args[0] ?? "ovl";
    return reportError(command === "unmount" ? "umount" : command === "list" ? "ls" : command, err);
  }
}

/** True when this module is the program being run (not imported). */
function isEntryPoint(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  // `ovl ls | head` closes the pipe early: that is not an error.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw err;
  });
  main(exactArgv(process.argv)).then((code) => {
    process.exitCode = code;
  });
}
