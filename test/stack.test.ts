import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, opendirSync, readdirSync, renameSync, type Dirent } from "node:fs";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { stack } from "../src/layers/stack.js";
import { cleanEnv, cliPath, ovl as run, requireBuiltCli } from "./cli-helpers.js";
import { requirePrivateMountNamespace, scratch, setXattr, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-stack-");
});
afterEach(() => s.cleanup());

/** Runs `ovl ARGS...`, its output as text. */
async function ovl(args: string[]) {
  const r = await run(args);
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/**
 * Two lower layers and an upper one holding one of each thing a sheet can hold: a file hidden by a file above,
 * a whiteout (upper, hiding a lower file; lower 1, hiding a lower 2 directory), an opaque directory hiding a
 * lower one, a directory merged from two layers, files only in one layer, and a name that could forge a line.
 */
function layout() {
  const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
  s.file("l2/deleted", "l2");
  s.file("l2/hidden-file", "l2");
  s.file("l2/only-l2", "l2");
  s.file("l2/merged-dir/from-l2", "l2");
  s.file("l2/opaque-dir/old", "l2");
  s.file("l2/lower-gone/f", "l2");
  s.file("l1/hidden-file", "l1");
  s.file("l1/merged-dir/from-l1", "l1");
  execFileSync("mknod", [`${l1}/lower-gone`, "c", "0", "0"]);
  s.file("upper/hidden-file", "upper");
  s.file("upper/new-file", "upper");
  s.file("upper/line\nbreak", "a name that could forge a line");
  execFileSync("mknod", [`${upper}/deleted`, "c", "0", "0"]);
  s.file("upper/opaque-dir/new", "upper");
  setXattr(`${upper}/opaque-dir`, "trusted.overlay.opaque", "y");
  return { l1: l1!, l2: l2!, upper: upper!, work: work!, merged: merged! };
}

async function mounted() {
  const o = layout();
  const m = await overlay.mount({ lower: [o.l1, o.l2], upper: o.upper, work: o.work, target: o.merged });
  return { ...o, m };
}

const absent = { state: "absent" };
const present = (type: string) => ({ state: "present", type });
const hidden = (type: string, hiddenBy: number) => ({ state: "hidden", type, hiddenBy });
const whiteout = { state: "whiteout", type: "whiteout" };
const opaque = { state: "opaque", type: "directory" };

/** The root of layout(), as stack() gives it (layers 0 upper, 1 lower 1, 2 lower 2). */
function expectedRoot(o: { l1: string; l2: string; upper: string }) {
  const at = (layer: number, path: string) => ({ from: layer, realPath: `${[o.upper, o.l1, o.l2][layer]}/${path}` });
  return {
    dir: "/",
    layers: [
      { kind: "upper", index: 0, layer: o.upper, dir: { ...present("directory"), realPath: o.upper } },
      { kind: "lower", index: 1, layer: o.l1, dir: { ...present("directory"), realPath: o.l1 } },
      { kind: "lower", index: 2, layer: o.l2, dir: { ...present("directory"), realPath: o.l2 } },
    ],
    rows: [
      { name: "deleted", cells: [whiteout, absent, hidden("file", 0)], merged: null },
      { name: "hidden-file", cells: [present("file"), hidden("file", 0), hidden("file", 0)], merged: { type: "file", ...at(0, "hidden-file") } },
      { name: "line\nbreak", cells: [present("file"), absent, absent], merged: { type: "file", ...at(0, "line\nbreak") } },
      { name: "lower-gone", cells: [absent, whiteout, hidden("directory", 1)], merged: null },
      {
        name: "merged-dir",
        cells: [absent, present("directory"), present("directory")],
        merged: { type: "directory", ...at(1, "merged-dir"), mergedFrom: [at(1, "merged-dir"), at(2, "merged-dir")] },
      },
      { name: "new-file", cells: [present("file"), absent, absent], merged: { type: "file", ...at(0, "new-file") } },
      { name: "only-l2", cells: [absent, absent, present("file")], merged: { type: "file", ...at(2, "only-l2") } },
      {
        name: "opaque-dir",
        cells: [opaque, absent, hidden("directory", 0)],
        merged: { type: "directory", ...at(0, "opaque-dir"), mergedFrom: [at(0, "opaque-dir")] },
      },
    ],
  };
}

const expectedRootTable = (o: { l1: string; l2: string; upper: string; merged: string }) =>
  [
    `/ in the overlay at ${o.merged}`,
    `  upper    ${o.upper}`,
    `  lower 1  ${o.l1}`,
    `  lower 2  ${o.l2}`,
    "",
    "NAME         UPPER       LOWER 1   LOWER 2  MERGED",
    ".            dir         dir       dir      dir from upper + lower 1 + lower 2",
    "deleted      whiteout    -         (file)   -",
    "hidden-file  file        (file)    (file)   file from upper",
    "line\\nbreak  file        -         -        file from upper",
    "lower-gone   -           whiteout  (dir)    -",
    "merged-dir   -           dir       dir      dir from lower 1 + lower 2",
    "new-file     file        -         -        file from upper",
    "only-l2      -           -         file     file from lower 2",
    "opaque-dir   opaque dir  -         (dir)    dir from upper",
    "",
    "(x) hidden by a layer above; - nothing there; MERGED is what the overlay shows",
  ].join("\n");

const typeOf = (d: Dirent) => (d.isDirectory() ? "directory" : d.isSymbolicLink() ? "symlink" : d.isCharacterDevice() ? "char" : "file");

/** What the kernel lists in a directory of the mounted overlay: name → type. */
function kernelListing(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir, { withFileTypes: true }).map((d) => [d.name, typeOf(d)]));
}

/** The merged column of a `stack --json` answer: name → type, for the names the overlay shows. */
function mergedColumn(answer: { rows: Array<{ name: string; merged: { type: string } | null }> }): Record<string, string> {
  return Object.fromEntries(answer.rows.flatMap((r) => (r.merged ? [[r.name, r.merged.type]] : [])));
}

describe("ovl stack on a mounted overlay", () => {
  it("--json: every layer's cell for every name, and the merged view with the layer that serves it", async () => {
    const o = await mounted();
    const r = await ovl(["stack", "--json", o.merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const answer = JSON.parse(r.stdout);
    expect(answer).toEqual({ path: o.merged, target: o.merged, ...expectedRoot(o) });
    expect(answer).toEqual(await stack(o.merged)); // the CLI prints what the library returns
  });

  it("draws the sheets as a table: one column per layer, top first, hidden entries in parentheses", async () => {
    const o = await mounted();
    const r = await ovl(["stack", o.merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe(expectedRootTable(o)); // execa drops the final newline
  });

  it("the merged column is what the kernel lists, in every directory of the overlay", async () => {
    const o = await mounted();
    const dirs = [o.merged, `${o.merged}/merged-dir`, `${o.merged}/opaque-dir`];
    expect(Object.keys(kernelListing(o.merged)).length).toBe(6);
    for (const dir of dirs) {
      const r = await ovl(["stack", "--json", dir]);
      expect(r.exitCode).toBe(0);
      expect(mergedColumn(JSON.parse(r.stdout))).toEqual(kernelListing(dir));
    }
  });

  it("the kernel has the last word: a layer changed under the mount is an error, not a wrong picture", async () => {
    const o = await mounted();
    // While a reader holds the merged directory open, overlay keeps its listing cached and does not see
    // what is added to a lower layer behind its back (which overlay does not support).
    const held = opendirSync(o.merged);
    try {
      held.readSync();
      s.file("l2/sneaked-in", "l2");
      const r = await ovl(["stack", o.merged]);
      expect(r.exitCode).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toBe(
        `ovl: stack ${o.merged}: the layers and the overlay disagree about '/' (the layers give 'sneaked-in', the overlay does not list it; was a layer changed while mounted?) (EIO)`,
      );
    } finally {
      held.closeSync();
    }
  });

  it("a directory merged from two layers, and an opaque one hiding the lower directory and all in it", async () => {
    const o = await mounted();
    const both = JSON.parse((await ovl(["stack", "--json", `${o.merged}/merged-dir`])).stdout);
    expect(both.dir).toBe("/merged-dir");
    expect(both.layers.map((l: { dir: unknown }) => l.dir)).toEqual([
      absent,
      { ...present("directory"), realPath: `${o.l1}/merged-dir` },
      { ...present("directory"), realPath: `${o.l2}/merged-dir` },
    ]);
    expect(both.rows).toEqual([
      { name: "from-l1", cells: [absent, present("file"), absent], merged: { type: "file", from: 1, realPath: `${o.l1}/merged-dir/from-l1` } },
      { name: "from-l2", cells: [absent, absent, present("file")], merged: { type: "file", from: 2, realPath: `${o.l2}/merged-dir/from-l2` } },
    ]);

    const shut = JSON.parse((await ovl(["stack", "--json", `${o.merged}/opaque-dir`])).stdout);
    expect(shut.layers.map((l: { dir: unknown }) => l.dir)).toEqual([
      { ...opaque, realPath: `${o.upper}/opaque-dir` },
      absent,
      { ...hidden("directory", 0), realPath: `${o.l2}/opaque-dir` },
    ]);
    expect(shut.rows).toEqual([
      { name: "new", cells: [present("file"), absent, absent], merged: { type: "file", from: 0, realPath: `${o.upper}/opaque-dir/new` } },
      { name: "old", cells: [absent, absent, hidden("file", 0)], merged: null },
    ]);
    const table = (await ovl(["stack", `${o.merged}/opaque-dir`])).stdout.split("\n");
    expect(table.slice(1, 4)).toEqual([
      `  upper    ${o.upper}/opaque-dir  (opaque)`,
      `  lower 1  ${o.l1}/opaque-dir  (not in this layer)`,
      `  lower 2  ${o.l2}/opaque-dir  (hidden by upper)`,
    ]);
    expect(table.slice(5, 9)).toEqual([
      "NAME  UPPER       LOWER 1  LOWER 2  MERGED",
      ".     opaque dir  -        (dir)    dir from upper",
      "new   file        -        -        file from upper",
      "old   -           -        (file)   -",
    ]);
  });

  it("a renamed directory (redirect) and a metadata-only copy, as the kernel made them", async () => {
    const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
    s.file("l1/ren/f", "f");
    s.file("l2/mode", "mode");
    await overlay.mount({ lower: [l1!, l2!], upper: upper!, work: work!, target: merged!, options: { redirectDir: "on", metacopy: true } });
    renameSync(`${merged}/ren`, `${merged}/renamed`);
    chmodSync(`${merged}/mode`, 0o600);
    mkdirSync(`${merged}/newdir`);
    const r = await ovl(["stack", "--json", merged!]);
    expect(r.stderr).toBe("");
    const answer = JSON.parse(r.stdout);
    expect(mergedColumn(answer)).toEqual(kernelListing(merged!));
    expect(answer.rows).toEqual([
      {
        name: "mode",
        cells: [{ ...present("file"), metacopy: true }, absent, present("file")],
        merged: { type: "file", from: 0, realPath: `${upper}/mode`, metadataOnly: true, data: { from: 2, realPath: `${l2}/mode` } },
      },
      // With redirect_dir=on every new directory is opaque.
      { name: "newdir", cells: [opaque, absent, absent], merged: { type: "directory", from: 0, realPath: `${upper}/newdir`, mergedFrom: [{ from: 0, realPath: `${upper}/newdir` }] } },
      { name: "ren", cells: [whiteout, hidden("directory", 0), absent], merged: null },
      {
        name: "renamed",
        cells: [{ ...present("directory"), redirect: "ren" }, absent, absent],
        merged: {
          type: "directory",
          from: 0,
          realPath: `${upper}/renamed`,
          mergedFrom: [
            { from: 0, realPath: `${upper}/renamed` },
            { from: 1, realPath: `${l1}/ren` },
          ],
        },
      },
    ]);
    const table = (await ovl(["stack", merged!])).stdout.split("\n");
    expect(table).toContain("mode     file (metadata)  -        file     file from upper (metadata), lower 2 (data)");
    expect(table).toContain("renamed  dir (from ren)   -        -        dir from upper + lower 1 at /ren");

    const inside = JSON.parse((await ovl(["stack", "--json", `${merged}/renamed`])).stdout);
    expect(inside.layers[1].dir).toEqual({ ...present("directory"), realPath: `${l1}/ren` });
    expect(mergedColumn(inside)).toEqual(kernelListing(`${merged}/renamed`));
  });
});

describe("ovl stack on layers that are not mounted", () => {
  it("--upper/--lower: the same picture as the mounted overlay gives", async () => {
    const o = layout();
    const layers = ["--upper", o.upper, "--lower", o.l1, "--lower", o.l2];
    const json = await ovl(["stack", "--json", ...layers]);
    expect(json.stderr).toBe("");
    expect(json.exitCode).toBe(0);
    const answer = JSON.parse(json.stdout);
    expect(answer).toEqual(expectedRoot(o));
    const table = await ovl(["stack", ...layers]);
    expect(table.stdout).toBe(expectedRootTable(o).replace(`in the overlay at ${o.merged}`, "in the layers"));

    // Mounted, the kernel lists exactly the merged column.
    await overlay.mount({ lower: [o.l1, o.l2], upper: o.upper, work: o.work, target: o.merged });
    expect(mergedColumn(answer)).toEqual(kernelListing(o.merged));
  });

  it("PATH is a directory from the layers' root; without --upper, the lower layers alone", async () => {
    const o = layout();
    const sub = JSON.parse((await ovl(["stack", "--json", "--upper", o.upper, "--lower", o.l1, "--lower", o.l2, "opaque-dir"])).stdout);
    expect(sub.dir).toBe("/opaque-dir");
    expect(sub.rows.map((r: { name: string }) => r.name)).toEqual(["new", "old"]);

    const ro = await ovl(["stack", "--lower", o.l1, "--lower", o.l2]);
    expect(ro.exitCode).toBe(0);
    const lines = ro.stdout.split("\n");
    expect(lines.slice(0, 3)).toEqual(["/ in the layers", `  lower 1  ${o.l1}`, `  lower 2  ${o.l2}`]);
    expect(lines[4]).toBe("NAME         LOWER 1   LOWER 2  MERGED");
    expect(lines.slice(5, 13)).toEqual([
      ".            dir       dir      dir from lower 1 + lower 2",
      "deleted      -         file     file from lower 2",
      "hidden-file  file      (file)   file from lower 1",
      "lower-gone   whiteout  (dir)    -",
      "merged-dir   dir       dir      dir from lower 1 + lower 2",
      "only-l2      -         file     file from lower 2",
      "opaque-dir   -         dir      dir from lower 2",
      "",
    ]);

    // The same layers mounted read-only: the kernel lists the merged column, in every directory.
    await overlay.mount({ lower: [o.l1, o.l2], target: o.merged });
    for (const dir of ["", "/merged-dir", "/opaque-dir"]) {
      const fromLayers = JSON.parse((await ovl(["stack", "--json", "--lower", o.l1, "--lower", o.l2, dir || "/"])).stdout);
      const fromMount = JSON.parse((await ovl(["stack", "--json", `${o.merged}${dir}`])).stdout);
      expect(fromMount).toEqual({ path: `${o.merged}${dir}`, target: o.merged, ...fromLayers });
      expect(mergedColumn(fromMount)).toEqual(kernelListing(`${o.merged}${dir}`));
    }
  });
});

describe("ovl stack: colour, errors, exit codes", () => {
  it("colour only on a terminal and without NO_COLOR; plain characters otherwise", async () => {
    const o = layout();
    const onTty = async (env: Record<string, string>) =>
      String((await execa("script", ["-qec", `${process.execPath} ${cliPath} stack --lower ${o.l1} --lower ${o.l2}`, "/dev/null"], { reject: false, extendEnv: false, env: cleanEnv({ TERM: "xterm", ...env }) })).stdout);
    const coloured = await onTty({});
    expect(coloured).toContain("\x1b[31m\x1b[1mwhiteout"); // a whiteout in red
    expect(coloured).toContain("\x1b[2m\x1b[9m(dir)"); // hidden: dim, struck through
    expect(coloured.replace(/\x1b\[\d+m/g, "").replace(/\r/g, "")).toContain("lower-gone   whiteout  (dir)    -");
    expect(await onTty({ NO_COLOR: "1" })).not.toContain("\x1b[");
    expect((await ovl(["stack", "--lower", o.l1, "--lower", o.l2])).stdout).not.toContain("\x1b[");
  });

  it("exit 1 with one line naming the path: not an overlay, missing, not a directory, deleted", async () => {
    const o = await mounted();
    const cases: Array<[string[], string]> = [
      [[s.dir], `ovl: stack ${s.dir}: not inside an overlay (the mount at `],
      [[`${o.merged}/missing`], `ovl: stack ${o.merged}/missing: no such directory (ENOENT)`],
      [[`${o.merged}/deleted`], `ovl: stack ${o.merged}/deleted: no such directory (ENOENT)`],
      [[`${o.merged}/new-file`], `ovl: stack ${o.merged}/new-file: not a directory (ENOTDIR)`],
      [["--upper", o.upper, "--lower", o.l1, "--lower", o.l2, "deleted"], "ovl: stack /deleted: no layer serves it: '/deleted' was deleted (a whiteout in the upper layer, "],
      [["--upper", o.upper, "--lower", o.l1, "hidden-file"], "ovl: stack /hidden-file: '/hidden-file' is not a directory in the overlay (ENOTDIR)"],
      [["--lower", `${s.dir}/nowhere`], `ovl: stack ${s.dir}/nowhere: lower layer 1 does not exist (ENOENT)`],
    ];
    for (const [args, message] of cases) {
      const r = await ovl(["stack", ...args]);
      expect(r.exitCode, args.join(" ")).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toContain(message);
    }
  });

  it("usage errors exit 1: --upper without --lower, --userxattr for a mounted overlay", async () => {
    const alone = await ovl(["stack", "--upper", s.dir]);
    expect(alone.exitCode).toBe(1);
    expect(alone.stderr).toContain("--upper needs --lower");
    const userxattr = await ovl(["stack", "--userxattr", s.dir]);
    expect(userxattr.exitCode).toBe(1);
    expect(userxattr.stderr).toContain("--userxattr is for --upper/--lower");
  });

  it("the library: Buffers out with encoding: 'buffer', and dir below a mounted path", async () => {
    const o = await mounted();
    const b = await stack(o.merged, "opaque-dir", { encoding: "buffer" });
    expect(b.dir).toEqual(Buffer.from("/opaque-dir"));
    expect(b.rows.map((r) => r.name)).toEqual([Buffer.from("new"), Buffer.from("old")]);
    const fromLayers = await stack({ upper: o.upper, lower: [o.l1, o.l2] }, "/opaque-dir");
    const { path: _p, target: _t, ...fromMount } = await stack(`${o.merged}/opaque-dir`);
    expect(fromLayers).toEqual(fromMount);
  });
});
