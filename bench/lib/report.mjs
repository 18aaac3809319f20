/** Printing results: aligned rows while the bench runs, a Markdown table at the end. */

/** A duration in ms, in the unit that reads best. */
export function fmtTime(ms) {
  if (!Number.isFinite(ms)) return "-";
  if (ms < 1) return `${(ms * 1000).toFixed(ms < 0.1 ? 1 : 0)} µs`;
  if (ms < 100) return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
  if (ms < 10000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * A result row. `kind` says how its goal reads:
 *  - "ratio":   subject/baseline must be at most `goal` (≤ 1.25×)
 *  - "faster":  baseline/subject must be at least `goal` (≥ 7× faster)
 *  - "check":   no baseline; `pass` decides, `note` says what was checked
 *  - "info":    subject/baseline shown for context; no goal
 */
export function makeRow({ name, kind, subject, baseline, goal, pass, note }) {
  let ratio = "";
  let goalText = "";
  let verdict;
  if (kind === "ratio") {
    const r = subject / baseline;
    ratio = `${r.toFixed(2)}×`;
    goalText = `≤ ${goal}×`;
    verdict = r <= goal;
  } else if (kind === "faster") {
    const r = baseline / subject;
    ratio = `${r.toFixed(1)}× faster`;
    goalText = `≥ ${goal}× faster`;
    verdict = r >= goal;
  } else if (kind === "info") {
    ratio = baseline === undefined ? "" : `${(subject / baseline).toFixed(2)}×`;
    goalText = "(context)";
  } else {
    goalText = goal ?? "";
    verdict = pass;
  }
  return {
    name,
    subject: kind === "check" && subject === undefined ? "" : fmtTime(subject),
    baseline: baseline === undefined ? "" : fmtTime(baseline),
    ratio,
    goal: goalText,
    result: verdict === undefined ? "" : verdict ? "PASS" : "MISS",
    note: note ?? "",
  };
}

export function errorRow(name, goal, err) {
  return { name, subject: "", baseline: "", ratio: "", goal, result: "ERROR", note: String(err?.message ?? err).split("\n")[0] };
}

const COLUMNS = [
  ["name", "measure"],
  ["subject", "ovl (median)"],
  ["baseline", "baseline (median)"],
  ["ratio", "ratio"],
  ["goal", "goal"],
  ["result", "result"],
];

export function formatText(rows) {
  const widths = COLUMNS.map(([k, h]) => Math.max(h.length, ...rows.map((r) => String(r[k]).length)));
  const line = (cells) => cells.map((c, i) => String(c).padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(COLUMNS.map(([, h]) => h)), line(widths.map((w) => "-".repeat(w)))];
  for (const r of rows) {
    out.push(line(COLUMNS.map(([k]) => r[k])));
    if (r.note) out.push(`    ${r.note}`);
  }
  return out.join("\n");
}

export function formatMarkdown(rows) {
  const esc = (s) => String(s).replace(/\|/g, "\\|");
  const out = [
    `| ${COLUMNS.map(([, h]) => h).join(" | ")} |`,
    `|${COLUMNS.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${COLUMNS.map(([k]) => esc(r[k])).join(" | ")} |`),
    "",
    ...rows.filter((r) => r.note).map((r) => `- ${r.name.trim()}: ${r.note}`),
  ];
  return out.join("\n");
}
