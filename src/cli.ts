#!/usr/bin/env node
/**
 * The `ovl` command: a thin shell over the library, in util-linux's vocabulary. This module only wires: it
 * builds the program, registers each command (one module a command, src/cli/commands/), and runs it.
 * Exit codes follow mount(8)/umount(8) and findmnt(8) (src/cli/errors.ts). Output for people goes to stdout,
 * diagnostics to stderr.
 */
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Command, CommanderError } from "commander";
import { exactArgv } from "./cli/argv.js";
import { commandFactory, prefixLines } from "./cli/command.js";
import { addCompletionCommand } from "./cli/commands/completion.js";
import { addDemoCommand } from "./cli/commands/demo.js";
import { addDiffCommand } from "./cli/commands/diff.js";
import { addFuserCommand } from "./cli/commands/fuser.js";
import { addLsCommand } from "./cli/commands/ls.js";
import { addMountCommand } from "./cli/commands/mount.js";
import { addRunCommand } from "./cli/commands/run.js";
import { addStackCommand } from "./cli/commands/stack.js";
import { addUmountCommand } from "./cli/commands/umount.js";
import { addWhichCommand } from "./cli/commands/which.js";
import { addExamples } from "./cli/docs.js";
import { EXIT, enableDebug, reportError } from "./cli/errors.js";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

/** The whole command line: what `main` runs, and what the help, the completion scripts and the man page describe. */
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
      if (cmd.opts().debug) enableDebug();
    });

  // Every subcommand: commander's errors as `ovl: <command>: <what>`, and a pointer to its own help.
  const command = commandFactory(program);
  // In this order in the help, the completion scripts and the man page.
  addLsCommand(command);
  addMountCommand(command);
  addUmountCommand(command);
  addFuserCommand(command);
  addDemoCommand(command);
  addDiffCommand(command);
  addWhichCommand(command);
  addStackCommand(command);
  addRunCommand(command);
  addCompletionCommand(command, program);

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
