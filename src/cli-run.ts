/** `ovl run`: registered on the CLI program by buildProgram(). */
import { type Command, Option } from "commander";
import { RUN_NAMESPACE_ENV, reexecInNamespace, runInOverlay } from "./run.js";

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

export function addRunCommand(program: Command, reportError: (command: string, err: unknown) => number): void {
  program
    .command("run")
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
        process.exitCode = reportError("run", err);
      }
    });
}
