/** Output for people: escaped paths, aligned tables, colour only on a terminal. */
import { styleText } from "node:util";

/**
 * A path as it is safe to print: control characters and backslashes escaped (`\n`, `\t`, `\x1b`, `\\`), so a
 * name cannot forge a table row or move the cursor.
 */
export function printable(s: string, opts: { keepNewlines?: boolean } = {}): string {
  return s.replace(/[\\\x00-\x1f\x7f-\x9f]/g, (c) => {
    if (c === "\\") return opts.keepNewlines === false ? "\\" : "\\\\";
    if (c === "\n") return opts.keepNewlines === false ? " " : "\\n";
    if (c === "\t") return "\\t";
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;
  });
}

/** True when colour may be used on `stream`: a terminal, and NO_COLOR unset. */
export function useColor(stream: NodeJS.WriteStream = process.stdout): boolean {
  return !!stream.isTTY && !process.env.NO_COLOR && process.env.TERM !== "dumb";
}

export function style(format: Parameters<typeof styleText>[0], text: string, stream = process.stdout): string {
  return useColor(stream) ? styleText(format, text) : text;
}

/** A left-aligned table with a header; widths by visible length. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [style("bold", line(header)), ...rows.map(line)].join("\n") + "\n";
}
