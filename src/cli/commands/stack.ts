/**
 * `ovl stack`: one directory of an overlay drawn as sheets on an overhead projector. One column per layer,
 * top first, one row per name any layer holds there; each cell says what that layer has (an entry, a
 * whiteout, an opaque directory, or something hidden by a layer above), and the last column what the
 * overlay shows and from which layer.
 */
import { type Command, Option } from "commander";
import type { Stack, StackCell, StackLayer, StackMerged, StackSource } from "../../layers/stack.js";
import { type CommandFactory, collect } from "../command.js";
import { reportError } from "../errors.js";
import { displayWidth, printable, style, writeJson } from "../output.js";

const typeWords: Record<string, string> = { directory: "dir", symlink: "link" };
const typeWord = (t: string) => typeWords[t] ?? t;

/** How a layer is named in the table: `upper`, `lower 2`, `data 1`. */
export function layerLabel(l: Pick<StackLayer, "kind" | "index">): string {
  return l.kind === "upper" ? "upper" : `${l.kind} ${l.index}`;
}

/** A cell as text (no colour), and the colour it gets on a terminal. */
function cellText(c: StackCell): { text: string; colour: Parameters<typeof style>[0] } {
  if (c.state === "absent") return { text: "-", colour: "dim" };
  let what = c.type === "whiteout" ? "whiteout" : typeWord(c.type ?? "?");
  if (c.metacopy) what += " (metadata)";
  if (c.redirect !== undefined) what += ` (from ${printable(c.redirect)})`;
  switch (c.state) {
    case "present":
      return { text: what, colour: "green" };
    case "opaque":
      return { text: `opaque ${what}`, colour: ["yellow", "bold"] };
    case "whiteout":
      return { text: what, colour: ["red", "bold"] };
    case "hidden":
      return { text: `(${what})`, colour: ["dim", "strikethrough"] };
  }
}

/** The merged view's cell: the type, then the layer that serves it (and, for a directory, every merged one). */
function mergedText(m: StackMerged | null, s: Stack, name: string | undefined): string {
  if (!m) return "-";
  const at = (x: StackSource) => {
    const l = s.layers[x.from]!;
    const label = layerLabel(l);
    // Somewhere else in the layer than the name itself: a renamed directory's origin, or a metacopy's data.
    const expected = name === undefined || l.dir.realPath === undefined ? undefined : `${l.dir.realPath.replace(/\/$/, "")}/${name}`;
    if (expected === undefined || x.realPath === expected) return label;
    const inLayer = x.realPath.startsWith(`${l.layer.replace(/\/$/, "")}/`) ? x.realPath.slice(l.layer.replace(/\/$/, "").length) : x.realPath;
    return `${label} at ${printable(inLayer)}`;
  };
  let from: string;
  if (m.mergedFrom) from = m.mergedFrom.map(at).join(" + ");
  else if (m.metadataOnly) from = `${at(m)} (metadata)${m.data ? `, ${at(m.data)} (data)` : ", its data not found"}`;
  else from = at(m);
  return `${typeWord(m.type)} from ${from}`;
}

/**
 * The picture: a title naming the directory, the layers and their paths, then the table (a first row `.` for
 * the directory itself) and a legend. Colour only on a terminal (style()).
 */
export function formatStack(s: Stack): string {
  const shown = s.layers.map((l, i) => ({ l, i })).filter(({ l }) => l.kind !== "data"); // never listed in directories
  const where = s.target !== undefined ? `the overlay at ${printable(s.target)}` : "the layers";
  const out: string[] = [`${style("bold", printable(s.dir))} in ${where}`];
  const labelWidth = Math.max(...s.layers.map((l) => layerLabel(l).length));
  for (const l of s.layers) {
    const d = l.dir;
    const by = d.hiddenBy !== undefined ? ` by ${layerLabel(s.layers[d.hiddenBy]!)}` : "";
    const what = d.type === "whiteout" ? "a whiteout" : `a ${typeWord(d.type ?? "?")}`;
    const note =
      l.kind === "data"
        ? "data-only: never listed in directories"
        : d.state === "absent"
          ? "not in this layer"
          : d.state === "hidden"
            ? `${d.type === "directory" ? "" : `${what} here, `}hidden${by}`
            : d.state === "opaque"
              ? "opaque"
              : "";
    // Where the directory is in this layer, or would be.
    const path = d.realPath ?? (l.kind === "data" || s.dir === "/" ? l.layer : `${l.layer.replace(/\/$/, "")}${s.dir}`);
    out.push(`  ${layerLabel(l).padEnd(labelWidth)}  ${printable(path)}${note ? `  ${style("dim", `(${note})`)}` : ""}`);
  }
  out.push("");

  type Cell = { text: string; colour?: Parameters<typeof style>[0] };
  const header: Cell[] = ["NAME", ...shown.map(({ l }) => layerLabel(l).toUpperCase()), "MERGED"].map((text) => ({ text, colour: "bold" }));
  const selfMerged: StackMerged | null = s.layers[0]
    ? (() => {
        const merged = shown.filter(({ l }) => l.dir.state === "present" || l.dir.state === "opaque");
        const first = merged[0];
        return first
          ? {
              type: "directory" as const,
              from: first.i,
              realPath: first.l.dir.realPath!,
              mergedFrom: merged.map(({ l, i }) => ({ from: i, realPath: l.dir.realPath! })),
            }
          : null;
      })()
    : null;
  const rows: Cell[][] = [
    [{ text: "." }, ...shown.map(({ l }) => cellText(l.dir)), { text: mergedText(selfMerged, s, undefined), colour: "bold" }],
    ...s.rows.map((r) => [
      { text: printable(r.name) },
      ...shown.map(({ i }) => cellText(r.cells[i]!)),
      { text: mergedText(r.merged, s, r.name), ...(r.merged ? { colour: "bold" as const } : { colour: "dim" as const }) },
    ]),
  ];
  const widths = header.map((_, k) => Math.max(...[header, ...rows].map((row) => displayWidth(row[k]!.text))));
  const line = (row: Cell[]) =>
    row
      .map((c, k) => {
        const padded = k === row.length - 1 ? c.text : c.text + " ".repeat(widths[k]! - displayWidth(c.text));
        // Colour the text only, not the padding (so that a strike-through does not run on).
        const styled = c.colour ? style(c.colour, c.text) : c.text;
        return styled + padded.slice(c.text.length);
      })
      .join("  ")
      .trimEnd();
  out.push(line(header), ...rows.map(line), "");
  out.push(style("dim", "(x) hidden by a layer above; - nothing there; MERGED is what the overlay shows"));
  return `${out.join("\n")}\n`;
}

/** Registers `stack` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addStackCommand(command: CommandFactory): void {
  command("stack")
    .description("one directory of an overlay, layer by layer: what each layer holds there, what it hides, and what the overlay shows")
    .argument("[path]", "a directory of a mounted overlay (default: the current directory); with --lower, a directory from the layers' root (default /)")
    .option("--upper <dir>", "upper layer of an overlay that need not be mounted (with --lower)")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--userxattr", "the layers keep overlay xattrs in user.overlay.* (a userxattr mount)")
    .option("-J, --json", "JSON output for scripts")
    .action(async (path: string | undefined, opts: { upper?: string; lower?: string[]; userxattr?: boolean; json?: boolean }, cmd: Command) => {
      if (opts.upper !== undefined && opts.lower === undefined) cmd.error("error: --upper needs --lower (a layer below it)");
      if (opts.lower === undefined && opts.userxattr) {
        cmd.error("error: --userxattr is for --upper/--lower; a mounted overlay's own options say whether it uses it");
      }
      let result: Stack;
      try {
        const { stack } = await import("../../layers/stack.js");
        result =
          opts.lower !== undefined
            ? await stack({ ...(opts.upper !== undefined ? { upper: opts.upper } : {}), lower: opts.lower, userxattr: !!opts.userxattr }, path)
            : await stack(path ?? ".");
      } catch (err) {
        process.exitCode = reportError("stack", err);
        return;
      }
      if (opts.json) writeJson(result);
      else process.stdout.write(formatStack(result));
      process.exitCode = 0;
    });
}
