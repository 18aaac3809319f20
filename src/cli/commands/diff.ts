/**
 * `ovl diff`: what an overlay's upper layer changed, like `docker diff`, for a mounted overlay or for layers
 * that are not mounted. The layer walk loads when the command runs.
 */
import { type Command, Option } from "commander";
import type { Change } from "../../layers/diff.js";
import { type CommandFactory, collect } from "../command.js";
import { reportError } from "../errors.js";
import { printable, style, writeJson } from "../output.js";

const changeColor = { A: "green", C: "yellow", D: "red" } as const;

/** One change a line, like `docker diff`, with what overlay adds (opaque, metadata only, renamed from). */
export function formatChanges(changes: Change[]): string {
  return changes
    .map((c) => {
      const notes = [
        ...(c.opaque ? ["opaque"] : []),
        ...(c.metadataOnly ? ["metadata only"] : []),
        ...(c.renamedFrom !== undefined ? [`renamed from ${printable(c.renamedFrom)}`] : []),
      ];
      const suffix = notes.length > 0 ? `  ${style("dim", `(${notes.join(", ")})`)}` : "";
      return `${style(changeColor[c.change], c.change)} ${printable(c.path)}${suffix}\n`;
    })
    .join("");
}

/** Registers `diff` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addDiffCommand(command: CommandFactory): void {
  command("diff")
    .description("what changed in an overlay's upper layer, like docker diff (A added, C changed, D deleted)")
    .argument("[target]", "mount point of the overlay")
    .option("--upper <dir>", "upper layer of an overlay that is not mounted (with --lower)")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--userxattr", "the layers keep overlay xattrs in user.overlay.* (a userxattr mount)")
    .option("-J, --json", "JSON output for scripts")
    .action(async (target: string | undefined, opts: { upper?: string; lower?: string[]; userxattr?: boolean; json?: boolean }, cmd: Command) => {
      if (target !== undefined && (opts.upper !== undefined || opts.lower !== undefined)) {
        cmd.error("error: give either a TARGET or --upper with --lower, not both");
      }
      if (target === undefined && (opts.upper === undefined || opts.lower === undefined)) {
        cmd.error("error: give a TARGET (a mounted overlay), or --upper and --lower for layers that are not mounted");
      }
      if (target !== undefined && opts.userxattr) {
        cmd.error("error: --userxattr is for --upper/--lower; a mounted overlay's own options say whether it uses it");
      }
      let changes: Change[];
      try {
        // Loaded when the command runs: `ovl ls` does not pay for the layer walk's modules.
        const { diff } = await import("../../layers/diff.js");
        // Without --userxattr, diff() finds out from the layers themselves.
        changes = await diff(target ?? { upper: opts.upper!, lower: opts.lower!, ...(opts.userxattr ? { userxattr: true } : {}) });
      } catch (err) {
        process.exitCode = reportError("diff", err);
        return;
      }
      if (opts.json) writeJson(changes);
      else process.stdout.write(formatChanges(changes));
      process.exitCode = 0;
    });
}
