/** `ovl run`: registered on the CLI program by buildProgram(). */
import { type Command, Option } from "commander";
import { printable } from "./output.js";
import { CommandNotStartedError, RUN_NAMESPACE_ENV, reexecInNamespace, runInOverlay } from "./run.js";

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** Said after commander's `unknown option`: without `--`, the command's own options look like ovl's. */
const DASH_DASH_HINT = "ovl: hint: put -- before the command, so that its options are not taken for ovl's: ovl run --lower DIR ... -- COMMAND [ARGS...]\n";

/** Registers `run` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addRunCommand(command: (name: string) => Command, reportError: (command: string, err: unknown) => number): void {
  const run = command("run");
  const { outputError } = run.configureOutput();
  run.configureOutput({
    outputError: (str, write) => {
      outputError!(str, write);
      if (str.includes("unknown option")) write(DASH_DASH_HINT);
    },
  });
  run
    .description("run a command inside a throwaway overlay, in private namespaces (rootless when not root)")
    .usage("--lower DIR [--lower DIR ...] [--upper DIR --work DIR | --tmp] -- COMMAND [ARGS...]")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--upper <dir>", "upper (writable) layer")
    .option("--work <dir>", "work directory: empty, on the same mount as --upper")
    .option("--tmp", "upper and work in a temporary directory, removed afterwards")
    .argument("<command...>", "the command and its arguments (after --)")
    .action(async (command: string[], opts: { lower?: string[]; upper?: string; work?: string; tmp?: boolean }) => {
      try {
        if (!process.env[RUN_NAMESPACE_ENV]) {
          // Re-run this same command line inside fresh namespaces; the inner run does the work.
          process.exitCode = await reexecInNamespace([process.execPath, ...process.execArgv, ...process.argv.slice(1)]);
          return;
        }
        process.exitCode = await runInOverlay(
          {
            lower: opts.lower ?? [],
            ...(opts.upper !== undefined ? { upper: opts.upper } : {}),
            ...(opts.work !== undefined ? { work: opts.work } : {}),
            ...(opts.tmp ? { tmp: true } : {}),
          },
          command,
        );
      } catch (err) {
        if (err instanceof CommandNotStartedError) {
          // As a shell says it, and with its exit status: 127 not found, 126 not executable.
          console.error(`ovl: run ${printable(err.command)}: ${err.message}${err.code === "EACCES" ? " (EACCES)" : ""}`);
          process.exitCode = err.status;
          return;
        }
        process.exitCode = reportError("run", err);
      }
    });
}
