#!/usr/bin/env node
/**
 * The `ovl` command: a thin shell over the library, in util-linux's vocabulary. This module only wires: it
 * builds the program, registers each command (one module a command, src/cli/commands/), and runs it.
 * Exit codes follow mount(8)/umount(8) and findmnt(8) (src/cli/errors.ts). Output for people goes to stdout,
 * diagnostics to stderr.
 */
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { exactArgv } from "./cli/argv.js";
import type { CommandFactory } from "./cli/command.js";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

/**
 * Each command's module, loaded only when needed: `ovl ls` loads ls's and no other (the help, the
 * completion scripts and the man page load them all). In this order in the help.
 */
const COMMANDS: Record<string, () => Promise<(command: CommandFactory, program: Command) => void>> = {
  ls: async () => (await import("./cli/commands/ls.js")).addLsCommand,
  mount: async () => (await import("./cli/commands/mount.js")).addMountCommand,
  umount: async () => (await import("./cli/commands/umount.js")).addUmountCommand,
  fuser: async () => (await import("./cli/commands/fuser.js")).addFuserCommand,
  demo: async () => (await import("./cli/commands/demo.js")).addDemoCommand,
  diff: async () => (await import("./cli/commands/diff.js")).addDiffCommand,
  which: async () => (await import("./cli/commands/which.js")).addWhichCommand,
  stack: async () => (await import("./cli/commands/stack.js")).addStackCommand,
  run: async () => (await import("./cli/commands/run.js")).addRunCommand,
  image: async () => (await import("./cli/commands/image.js")).addImageCommands,
  snapshotter: async () => (await import("./cli/commands/snapshotter.js")).addSnapshotterCommands,
  completion: async () => (await import("./cli/commands/completion.js")).addCompletionCommand,
};
/** Names that reach a command module other than by its own name. */
const ALIASES: Record<string, string> = { list: "ls", unmount: "umount", commit: "image", layer: "image", snapshot: "snapshotter" };

/**
 * The whole command line: what `main` runs, and what the help, the completion scripts and the man page
 * describe. With `only`, just that command (what running it needs).
 */
export async function buildProgram(only?: string): Promise<Command> {
  const { Command } = await import("commander");
  const { commandFactory, prefixLines } = await import("./cli/command.js");
  const { enableDebug } = await import("./cli/errors.js");
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
      if (cmd.opts().debug) enableDebug();
    });

  // Every subcommand: commander's errors as `ovl: <command>: <what>`, and a pointer to its own help.
  const command = commandFactory(program);
  const names = only !== undefined ? [only] : Object.keys(COMMANDS);
  const adders = await Promise.all(names.map((n) => COMMANDS[n]!()));
  for (const add of adders) add(command, program);
  if (only === undefined) {
    const { addExamples } = await import("./cli/docs.js");
    addExamples(program);
  }
  return program;
}

/** The command a command line runs, when it surely runs just that one (no help asked for, no completion). */
function soleCommand(argv: string[]): string | undefined {
  const args = argv.slice(2);
  if (args.some((a) => a === "-h" || a === "--help")) return undefined;
  let i = 0;
  while (args[i] === "--debug") i++; // the one global option that runs a command
  const first = args[i];
  if (first === undefined || first.startsWith("-")) return undefined;
  const name = ALIASES[first] ?? first;
  return name in COMMANDS && name !== "completion" ? name : undefined;
}

export async function main(argv: string[]): Promise<number> {
  const only = soleCommand(argv);
  // `ovl ls`: the kernel writes the mount table (tens of ms with thousands of mounts) on the thread pool
  // while the command line's code loads.
  if (only === "ls" && !argv.some((a) => /^(-[a-zA-Z]*[pFw]|--pid|--file|--watch)/.test(a))) {
    const { prefetchMountTable } = await import("./table/table.js");
    prefetchMountTable();
  }
  const program = await buildProgram(only);
  const { CommanderError } = await import("commander");
  const { EXIT, reportError } = await import("./cli/errors.js");
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
