/** Output for people: escaped paths, aligned tables, colour only on a terminal. */
import { styleText } from "node:util";
import type { MountInfo, OverlayMount } from "../types.js";

/**
 * A path as it is safe to print: control characters and backslashes escaped (`\n`, `\t`, `\x1b`, `\\`), so a
 * name cannot forge a table row or move the cursor; bytes that are not UTF-8 (ovl's U+DC80-U+DCFF) shown as
 * `\xff`, as `ls -b` does.
 */
export function printable(s: string, opts: { keepNewlines?: boolean } = {}): string {
  return s.replace(UNSAFE, (c) => {
    if (c === "\\") return opts.keepNewlines === false ? "\\" : "\\\\";
    if (c === "\n") return opts.keepNewlines === false ? " " : "\\n";
    if (c === "\t") return "\\t";
    const code = c.charCodeAt(0);
    if (code >= 0xdc80 && code <= 0xdcff) return `\\x${(code - 0xdc00).toString(16)}`;
    if (code > 0x9f) return `\\u{${code.toString(16)}}`; // invisible formatting: bidi controls, zero-width
    return `\\x${code.toString(16).padStart(2, "0")}`;
  });
}

/**
 * What printable() escapes: backslash, C0/C1 controls, bytes that are not UTF-8 (lone U+DC80-U+DCFF), and
 * invisible formatting characters (Unicode Cf: bidi overrides and isolates, zero-width space and joiners, BOM;
 * and the line/paragraph separators), which could reorder or hide what a line shows.
 */
const UNSAFE = /[\\\x00-\x1f\x7f-\x9f\u2028\u2029]|\p{Cf}|(?<![\ud800-\udbff])[\udc80-\udcff]/gu;

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

/**
 * `ro` or `rw` as the mount works: read-only when either the mount or its superblock is (an overlay without
 * an upper layer has a read-only superblock on a mount that says `rw`).
 */
export function access(m: MountInfo): "ro" | "rw" {
  return m.mountOptions[0] === "ro" || m.superOptions[0] === "ro" ? "ro" : "rw";
}

function layerSummary(m: OverlayMount): string {
  const unknown = (kind: "lower" | "data", i: number) => !!m.detached && !m.detached.pathsKnown && m.detached[kind].includes(i);
  const all = [
    ...m.lower.map((l, i) => (unknown("lower", i) ? "(detached)" : printable(l))),
    ...m.data.map((d, i) => `${unknown("data", i) ? "(detached)" : printable(d)} (data)`),
  ];
  if (all.length > 4) return `${m.lower.length} layers${m.data.length ? ` + ${m.data.length} data` : ""}`;
  return all.join(" > ");
}

export function keyOptions(m: OverlayMount): string {
  const f = m.features;
  const out: string[] = [access(m)];
  if (f.redirectDir) out.push(`redirect_dir=${f.redirectDir}`);
  if (f.index !== undefined) out.push(`index=${f.index ? "on" : "off"}`);
  if (f.metacopy !== undefined) out.push(`metacopy=${f.metacopy ? "on" : "off"}`);
  if (f.xino) out.push(`xino=${f.xino}`);
  if (f.userxattr) out.push("userxattr");
  if (f.volatile) out.push("volatile");
  return out.join(",");
}

/** One `ovl ls --watch` line: what happened and to which mount, as `formatMountList` describes it. */
export function formatMountEvent(type: "mount" | "umount" | "change", m: MountInfo | OverlayMount): string {
  const colour = type === "mount" ? "green" : type === "umount" ? "red" : "yellow";
  const what =
    "lower" in m
      ? `${layerSummary(m)}${m.upper !== undefined ? `  upper ${printable(m.upper)}` : ""}  ${keyOptions(m)}`
      : `${printable(m.fstype)} ${printable(m.source)}  ${access(m)}`;
  return `${style(colour, type.padEnd(6))}  ${printable(m.target)}  ${what}\n`;
}

/** `--json` output: indented for a person at a terminal, one compact line for scripts (half the bytes). */
export function writeJson(value: unknown, stream: NodeJS.WriteStream = process.stdout): void {
  stream.write(`${JSON.stringify(value, null, stream.isTTY ? 2 : undefined)}\n`);
}

/**
 * Display width, the cells a terminal gives a string: wide characters (East Asian wide, emoji) two, combining
 * marks, Hangul medial/final jamo and zero-width space none, the rest one. For padding tables.
 */
export function displayWidth(s: string): number {
  let w = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (COMBINING.test(ch) || (c >= 0x1160 && c <= 0x11ff) || c === 0x200b) continue;
    w += isWide(c) || EMOJI.test(ch) ? 2 : 1;
  }
  return w;
}

const COMBINING = /\p{Mn}|\p{Me}/u;
const EMOJI = /\p{Extended_Pictographic}/u;
function isWide(c: number): boolean {
  return (
    (c >= 0x1100 && c <= 0x115f) ||
    (c >= 0x2e80 && c <= 0xa4cf && c !== 0x303f) ||
    (c >= 0xac00 && c <= 0xd7a3) ||
    (c >= 0xf900 && c <= 0xfaff) ||
    (c >= 0xfe30 && c <= 0xfe4f) ||
    (c >= 0xff00 && c <= 0xff60) ||
    (c >= 0xffe0 && c <= 0xffe6) ||
    (c >= 0x20000 && c <= 0x3fffd)
  );
}
