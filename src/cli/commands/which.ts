/** `ovl which`: which layer of a mounted overlay serves a path (and, for a directory, which layers it merges). */
import type { LayerRef, WhichResult } from "../../layers/which.js";
import type { CommandFactory } from "../command.js";
import { reportError } from "../errors.js";
import { printable, style, writeJson } from "../output.js";

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

/** Registers `which` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addWhichCommand(command: CommandFactory): void {
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
