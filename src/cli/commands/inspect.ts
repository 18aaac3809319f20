/**
 * The inspection commands of `ovl`: `diff` (what the upper layer changed) and `which` (which layer serves a
 * path). Registered on the main program by src/cli.ts.
 */
import { Command, Option } from "commander";
import type { Change } from "../../layers/diff.js";
import { printable, style, writeJson } from "../output.js";
import type { LayerRef, WhichResult } from "../../layers/which.js";

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

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

function layerLabel(r: LayerRef): string {
  return r.kind === "upper" ? "upper" : `${r.kind} ${r.index}`;
}

/** The serving layer first, then (for a directory) the layers merged under it, or a metacopy's data. */
export function formatWhich(r: WhichResult): string {
  const rows: Array<[LayerRef, string]> = [];
  if (r.mergedFrom) r.mergedFrom.forEach((m, i) => rows.push([m, i === 0 ? "" : "merged"]));
  else if (!r.metadataOnly) rows.push([r, ""]);
  else if (r.data) rows.push([r, "metadata"], [r.data, "data"]);
  else rows.push([r, "metadata; its data was not found"]);
  const width = Math.max(...rows.map(([ref]) => layerLabel(ref).length));
  return rows
    .map(([ref, note]) => {
      const label = layerLabel(ref).padEnd(width);
      const suffix = note ? `  ${style("dim", `(${note})`)}` : "";
      return `${style("bold", label)}  ${printable(ref.realPath)}${suffix}\n`;
    })
    .join("");
}

/** Registers `diff` and `which` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addInspectCommands(command: (name: string) => Command, reportError: (command: string, err: unknown) => number): void {
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

  command("which")
    .description("which layer of a mounted overlay serves a path")
    .argument("<path>", "a path inside a mounted overlay")
    .option("-J, --json", "JSON output for scripts")
    .action(async (path: string, opts: { json?: boolean }) => {
      let result: WhichResult;
      try {
        const { which } = await import("../../layers/which.js");
        result = await which(path);
      } catch (err) {
        process.exitCode = reportError("which", err);
        return;
      }
      if (opts.json) writeJson(result);
      else process.stdout.write(formatWhich(result));
      process.exitCode = 0;
    });
}
