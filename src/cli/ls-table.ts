/**
 * `ovl ls` output the way findmnt(8) users expect it: columns chosen with `-o` (`--list-columns` lists them),
 * no header with `-n`, `-r` raw (one space between cells, spaces and control characters escaped), `--tree`
 * showing what is mounted (or stacked) on what, and on a terminal a table fitted to its width (the widest
 * path columns cut with `…`), padded by display width (wide characters count two, combining marks none).
 */
import { readlinkSync } from "node:fs";
import { pathToBuffer } from "../kernel/bytes.js";
import { access, displayWidth, keyOptions, printable, style } from "./output.js";
import type { MountInfo, OverlayMount } from "../types.js";

type Mount = MountInfo | OverlayMount;
const isOverlayEntry = (m: Mount): m is OverlayMount => "lower" in m;

const DOCKER_SHORT_LINK = /\/overlay2\/l\/[A-Za-z0-9]+$/;
const DOCKER_LAYER = /^\.\.\/([0-9a-f]{12,64})\/diff$/;
const shortLinks = new Map<string, string>();

/**
 * Docker's overlay2 passes layers as short links (`/var/lib/docker/overlay2/l/<short id>`, to keep mount(2)'s
 * option string under a page): shown as the layer ids they point to (12 characters, as docker shows ids).
 */
function layerName(path: string): string {
  if (!DOCKER_SHORT_LINK.test(path)) return path;
  let shown = shortLinks.get(path);
  if (shown === undefined) {
    try {
      const m = DOCKER_LAYER.exec(readlinkSync(pathToBuffer(path), { encoding: "buffer" }).toString("latin1"));
      shown = m ? m[1]!.slice(0, 12) : path;
    } catch {
      shown = path;
    }
    shortLinks.set(path, shown);
  }
  return shown;
}

/** A column: how it is named, what it shows, and whether a table may cut it to fit the terminal. */
interface Column {
  name: string;
  header: string;
  help: string;
  cell: (m: Mount, raw: boolean) => string;
  /** Lists of paths that a table on a terminal may cut with `…`. */
  cuttable?: boolean;
}

// Cells are the text as it is; escaping for the output form (table or raw) comes after.
const dash = "-";
const overlayOnly = (f: (m: OverlayMount, raw: boolean) => string) => (m: Mount, raw: boolean) => (isOverlayEntry(m) ? f(m, raw) : dash);
const path = (p: string | undefined) => (p === undefined ? dash : p);

/**
 * A layer as a table shows it: a detached layer whose directory the mount table cannot name as
 * `(detached)`, never as the `/` the kernel prints for it (which would read as the root directory).
 */
function shownLayer(m: OverlayMount, kind: "lower" | "data", i: number, p: string): string {
  return m.detached && !m.detached.pathsKnown && m.detached[kind].includes(i) ? "(detached)" : layerName(p);
}

export const COLUMNS: readonly Column[] = [
  { name: "TARGET", header: "TARGET", help: "mount point", cell: (m) => m.target, cuttable: true },
  { name: "SOURCE", header: "SOURCE", help: "source (the name the mount was given)", cell: (m) => m.source || dash },
  { name: "FSTYPE", header: "FSTYPE", help: "filesystem type", cell: (m) => m.fstype },
  {
    name: "LOWER",
    header: "LOWER (top first)",
    help: "lower layers, top-most first (Docker overlay2 short links as the layer ids they point to)",
    cell: overlayOnly((m, raw) => {
      const all = [...m.lower.map((l, i) => shownLayer(m, "lower", i, l)), ...m.data.map((d, i) => `${shownLayer(m, "data", i, d)} (data)`)];
      if (raw) return all.join(":");
      if (all.length > 4) return `${m.lower.length} layers${m.data.length ? ` + ${m.data.length} data` : ""}`;
      return all.join(" > ");
    }),
    cuttable: true,
  },
  { name: "UPPER", header: "UPPER", help: "upper (writable) layer", cell: overlayOnly((m) => path(m.upper)), cuttable: true },
  { name: "WORK", header: "WORK", help: "work directory", cell: overlayOnly((m) => path(m.work)), cuttable: true },
  { name: "DATA", header: "DATA", help: "data-only lower layers", cell: overlayOnly((m) => (m.data.length ? m.data.join(":") : dash)), cuttable: true },
  { name: "LAYERS", header: "LAYERS", help: "number of lower layers (data-only ones not counted)", cell: overlayOnly((m) => String(m.lower.length)) },
  { name: "OPTIONS", header: "OPTIONS", help: "ro/rw and the overlay features that change behaviour", cell: (m) => (isOverlayEntry(m) ? keyOptions(m) : access(m)) },
  { name: "VFS-OPTIONS", header: "VFS-OPTIONS", help: "per-mount options (mountinfo field 6)", cell: (m) => m.mountOptions.join(",") },
  { name: "FS-OPTIONS", header: "FS-OPTIONS", help: "per-superblock options", cell: (m) => m.superOptions.join(","), cuttable: true },
  { name: "ID", header: "ID", help: "mount id", cell: (m) => String(m.id) },
  { name: "PARENT", header: "PARENT", help: "parent mount id", cell: (m) => String(m.parentId) },
  { name: "MAJ:MIN", header: "MAJ:MIN", help: "device numbers of the filesystem", cell: (m) => `${m.major}:${m.minor}` },
  { name: "FSROOT", header: "FSROOT", help: "the filesystem's directory that is this mount's root", cell: (m) => m.root },
  { name: "PROPAGATION", header: "PROPAGATION", help: "shared:N, master:N, ... (optional fields)", cell: (m) => m.optionalFields.join(" ") || dash },
];

const byName = new Map(COLUMNS.map((c) => [c.name, c]));

/** The default columns: overlays, or every mount with `--all`. */
export function defaultColumns(all: boolean): string[] {
  return all ? ["TARGET", "FSTYPE", "SOURCE", "LOWER", "UPPER", "WORK", "OPTIONS"] : ["TARGET", "SOURCE", "LOWER", "UPPER", "WORK", "OPTIONS"];
}

/** `-o A,B` (names as --list-columns gives them, any case), or an error naming the unknown one. */
export function parseColumns(spec: string): string[] | { unknown: string } {
  const names = spec.split(",").map((n) => n.trim().toUpperCase()).filter(Boolean);
  for (const n of names) if (!byName.has(n)) return { unknown: n };
  return names;
}

/** `--list-columns`: one column a line, name and what it shows. */
export function listColumns(): string {
  const w = Math.max(...COLUMNS.map((c) => c.name.length));
  return COLUMNS.map((c) => `${c.name.padEnd(w)}  ${c.help}`).join("\n") + "\n";
}

const padTo = (s: string, width: number) => s + " ".repeat(Math.max(0, width - displayWidth(s)));

/**
 * findmnt's raw form: one space between cells, so a space, a backslash and every control character (and a
 * byte that is not UTF-8) is written `\xNN`; invisible formatting characters as printable() writes them.
 */
function rawEscape(s: string): string {
  return s
    .split(/([ \\\n\t])/)
    .map((part) => {
      if (part.length === 1 && " \\\n\t".includes(part)) return `\\x${part.charCodeAt(0).toString(16).padStart(2, "0")}`;
      return printable(part);
    })
    .join("");
}

/** The first characters of `s` that fit in `width` cells, with `…` when cut. */
function cut(s: string, width: number): string {
  if (displayWidth(s) <= width) return s;
  let out = "";
  let w = 0;
  for (const ch of s) {
    const cw = displayWidth(ch);
    if (w + cw > width - 1) break;
    out += ch;
    w += cw;
  }
  return `${out}…`;
}

export interface LsTableOptions {
  columns: string[];
  headings: boolean;
  raw: boolean;
  tree: boolean;
  /** The terminal's width, to fit the table to (undefined: no limit, as when piped). */
  width?: number;
}

/** The mounts in tree order, each with its depth and whether it is the last of its siblings. */
function treeOrder(mounts: Mount[]): { m: Mount; prefix: string }[] {
  const ids = new Set(mounts.map((m) => m.id));
  const children = new Map<number, Mount[]>();
  const roots: Mount[] = [];
  for (const m of mounts) {
    if (m.parentId !== m.id && ids.has(m.parentId)) {
      const list = children.get(m.parentId) ?? [];
      list.push(m);
      children.set(m.parentId, list);
    } else roots.push(m);
  }
  const out: { m: Mount; prefix: string }[] = [];
  const visit = (m: Mount, lead: string, branch: string) => {
    out.push({ m, prefix: branch });
    const kids = children.get(m.id) ?? [];
    kids.forEach((k, i) => {
      const last = i === kids.length - 1;
      visit(k, lead + (last ? "  " : "│ "), lead + (last ? "└─" : "├─"));
    });
  };
  for (const r of roots) visit(r, "", "");
  return out;
}

/** The listing as text: a table (fitted to `width`), or raw lines. */
export function formatLs(mounts: Mount[], o: LsTableOptions): string {
  const cols = o.columns.map((n) => byName.get(n)!);
  const ordered = o.tree ? treeOrder(mounts) : mounts.map((m) => ({ m, prefix: "" }));
  const escape = o.raw ? rawEscape : (s: string) => printable(s);
  const rows = ordered.map(({ m, prefix }) =>
    cols.map((c, i) => {
      const text = escape(c.cell(m, o.raw));
      return i === 0 && c.name === "TARGET" ? prefix + text : text;
    }),
  );
  if (o.raw) {
    const lines = rows.map((r) => r.join(" "));
    if (o.headings) lines.unshift(cols.map((c) => c.name).join(" "));
    return lines.length ? `${lines.join("\n")}\n` : "";
  }
  const headers = cols.map((c) => c.header);
  const widths = cols.map((_, i) => Math.max(displayWidth(headers[i]!), ...rows.map((r) => displayWidth(r[i]!))));
  if (o.width !== undefined) fit(widths, cols, o.width);
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? cut(c, widths[i]!) : padTo(cut(c, widths[i]!), widths[i]!)))
      .join("  ")
      .trimEnd();
  const out = rows.map(line);
  if (o.headings) out.unshift(style("bold", line(headers)));
  return out.length ? `${out.join("\n")}\n` : "";
}

/** Narrows the widest cuttable columns until the table fits `width` (each to no less than 6 cells). */
function fit(widths: number[], cols: Column[], width: number): void {
  const MIN = 6;
  const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
  while (total() > width) {
    let widest = -1;
    widths.forEach((w, i) => {
      if (cols[i]!.cuttable && w > MIN && (widest < 0 || w > widths[widest]!)) widest = i;
    });
    if (widest < 0) return;
    widths[widest] = Math.max(MIN, widths[widest]! - (total() - width));
  }
}
