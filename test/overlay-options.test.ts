import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { parseMountInfo } from "../src/table/mountinfo.js";
import {
  escapeLowerdirPath,
  escapeUpperWorkPath,
  featureOptionStrings,
  parseOverlayOptions,
  splitLowerdir,
  toOverlayMount,
  unescapeOverlayPath,
  type OverlayLayers,
} from "../src/mounting/overlay-options.js";
import type { OverlayOptions } from "../src/types.js";

const fixtureDir = fileURLToPath(new URL("./fixtures/mountinfo/", import.meta.url));
const fixtureMounts = (name: string) => parseMountInfo(readFileSync(fixtureDir + name, "utf8"), { strict: true }).mounts;

// ---------------------------------------------------------------------------------------------------------
// A model of what the kernel does with a mount(2) data string (fs/overlayfs/params.c), written
// independently of the code under test, char by char like the C.

/** ovl_next_opt(): split on commas not preceded by a backslash; the backslash stays. */
function kernelNextOpt(data: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let p = 0; p < data.length; p++) {
    if (data[p] === "\\") {
      p++;
    } else if (data[p] === ",") {
      out.push(data.slice(start, p));
      start = p + 1;
    }
  }
  out.push(data.slice(start));
  return out;
}

/** ovl_unescape(). */
function kernelUnescape(s: string): string {
  let d = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\") i++;
    if (i < s.length) d += s[i];
  }
  return d;
}

/** ovl_parse_param_split_lowerdirs() + the layer loop of ovl_parse_param_lowerdir(); null = EINVAL. */
function kernelLowerdir(value: string): { lower: string[]; data: string[] } | null {
  if (value === "") return { lower: [], data: [] };
  if (value[0] === ":") return null;
  // split: "\0" marks an unescaped colon, escapes are kept
  const parts: string[] = [];
  let cur = "";
  let colons = 0;
  for (let s = 0; ; s++) {
    const ch = value[s];
    if (ch === "\\") {
      cur += ch;
      s++;
      if (s < value.length) cur += value[s];
      colons = 0;
      continue;
    }
    if (ch === ":") {
      colons++;
      if (colons === 2 && value[s + 1] === ":") return null;
      parts.push(cur);
      cur = "";
      continue;
    }
    if (ch === undefined) {
      if (colons) return null;
      parts.push(cur);
      break;
    }
    cur += ch;
    colons = 0;
  }
  // parts: an empty part comes from "::" and makes the next layer a data layer
  const lower: string[] = [];
  const data: string[] = [];
  let nextIsData = false;
  for (const part of parts) {
    if (part === "") {
      nextIsData = true;
      continue;
    }
    const path = kernelUnescape(part);
    if (path === "") return null; // "empty lowerdir"
    if (nextIsData) data.push(path);
    else if (data.length > 0) return null; // "regular lower layers cannot follow data lower layers"
    else lower.push(path);
    nextIsData = false;
  }
  return { lower, data };
}

/** seq_escape(): each listed character becomes `\ooo`. */
function seqEscape(s: string, chars: string): string {
  let out = "";
  for (const ch of s) out += chars.includes(ch) ? `\\${ch.charCodeAt(0).toString(8).padStart(3, "0")}` : ch;
  return out;
}

/** One mountinfo line for an overlay with these (already as-typed) super options. */
function overlayLine(superOptions: string[]): string {
  const opts = superOptions.map((o) => seqEscape(o, ", \t\n\\")).join(",");
  return `99 1 0:77 / /merged rw,relatime - overlay overlay ${opts}\n`;
}

// Paths: any Unicode, heavy on the characters that matter. Never empty, never NUL (C strings).
const pathChar = fc.oneof(
  { weight: 3, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  { weight: 3, arbitrary: fc.constantFrom("\\", ":", ",", "=", "\n", "\t", " ", "\\:", "::", "\\\\", "é", "日") },
);
const pathArb = fc
  .string({ unit: pathChar, minLength: 1, maxLength: 12 })
  .filter((s) => s.length > 0 && !s.includes("\0"));

// ---------------------------------------------------------------------------------------------------------

describe("parseOverlayOptions on real kernel 6.18 output", () => {
  const mounts = [...fixtureMounts("kernel-6.18-general.txt"), ...fixtureMounts("kernel-6.18-overlay.txt")];
  const layersOf = (target: string): OverlayLayers => {
    const m = mounts.find((x) => x.target === target && x.fstype === "overlay");
    if (!m) throw new Error(`no overlay at ${target}`);
    return parseOverlayOptions(m.superOptions);
  };
  const R = "/tmp/ovlx";
  const oddLowers = [
    `${R}/a b`,
    `${R}/c:d`,
    `${R}/e,f`,
    `${R}/g\\h`,
    `${R}/ü日本`,
    `${R}/x=y`,
    `${R}/t\tab`,
    `${R}/nl\nx`,
    `${R}/end\\`,
  ];

  it("legacy, plain (util-linux mount)", () => {
    expect(layersOf(`${R}/m1`)).toEqual({
      lower: [`${R}/l1`, `${R}/l2`],
      data: [],
      upper: `${R}/u`,
      work: `${R}/w`,
      features: { uuid: "on", other: [] },
    });
  });

  it("legacy lowerdir= with escaped : , \\ and raw space, tab, newline, =, non-ASCII; escaped upper/work", () => {
    // typed: lowerdir=.../c\:d:.../e\,f:.../g\\h:...:.../end\\,upperdir=.../up\\per,workdir=.../wo\,rk
    expect(layersOf(`${R}/m2`)).toEqual({
      lower: oddLowers,
      data: [],
      upper: `${R}/up\\per`,
      work: `${R}/wo,rk`,
      features: { uuid: "on", other: [] },
    });
  });

  it("legacy lowerdir= with :: data layers and relative paths", () => {
    expect(layersOf(`${R}/m2b`)).toEqual({
      lower: ["l1"],
      data: [`${R}/d:1`, "d2"],
      upper: "u2",
      work: "w2",
      features: { redirectDir: "on", uuid: "on", metacopy: true, other: [] },
    });
  });

  it("new API lowerdir+=/datadir+= strings are literal; upperdir string loses its escapes", () => {
    const expected: OverlayLayers = {
      lower: oddLowers,
      data: [`${R}/d:1`, `${R}/d2`],
      upper: `${R}/up\\per`, // passed as the string ".../up\\\\per"
      work: `${R}/wo rk`,
      features: { redirectDir: "on", metacopy: true, other: [] },
    };
    expect(layersOf(`${R}/m3`)).toEqual(expected);
    // the same overlay, propagated to a slave mount
    expect(layersOf(`${R}/bind`)).toEqual(expected);
  });

  it("new API layers passed by O_PATH fd show resolved, literal paths", () => {
    expect(layersOf(`${R}/m4`)).toEqual({
      lower: [`${R}/fd\\dir`, `${R}/x=y`],
      data: [`${R}/d1`],
      upper: `${R}/u4`,
      work: `${R}/w4`,
      features: { redirectDir: "on", uuid: "on", metacopy: true, other: [] },
    });
  });

  it("fsync=volatile (volatile) and fsync=strict", () => {
    expect(layersOf(`${R}/m5`)).toEqual({
      lower: ["l1", "./l2"],
      data: [],
      upper: "u5",
      work: "w5",
      features: { uuid: "on", fsync: "volatile", volatile: true, other: [] },
    });
    expect(layersOf(`${R}/m6`)).toEqual({
      lower: ["l1"],
      data: [],
      upper: "u6",
      work: "w6",
      features: { uuid: "on", fsync: "strict", other: [] },
    });
  });

  it("read-only overlays: leading ro skipped, no upper/work", () => {
    expect(layersOf(`${R}/m7`)).toEqual({ lower: ["l1", "l2"], data: [], features: { redirectDir: "on", other: [] } });
    expect(layersOf(`${R}/m8`)).toEqual({
      lower: [`${R}/l2`, `${R}/l1`],
      data: [],
      features: { redirectDir: "on", other: [] },
    });
    expect(layersOf(`${R}/f4`).features).toEqual({ redirectDir: "on", uuid: "null", other: [] });
    expect(layersOf(`${R}/f5`).features).toEqual({ redirectDir: "on", other: [] });
  });

  it("feature options", () => {
    expect(layersOf(`${R}/f1`)).toEqual({
      lower: [`${R}/lo/l1`, `${R}/lo/l2`],
      data: [],
      upper: `${R}/up/u1`,
      work: `${R}/up/w1`,
      features: { defaultPermissions: true, index: true, uuid: "null", nfsExport: true, xino: "on", other: [] },
    });
    expect(layersOf(`${R}/f2`)).toEqual({
      lower: [`${R}/lo/l1`],
      data: [`${R}/lo/d1`],
      upper: `${R}/up/u2`,
      work: `${R}/up/w2`,
      features: {
        redirectDir: "on",
        uuid: "on",
        metacopy: true,
        fsync: "volatile",
        volatile: true,
        verity: "on",
        other: [],
      },
    });
    expect(layersOf(`${R}/f3`).features).toEqual({ redirectDir: "nofollow", uuid: "on", userxattr: true, other: [] });
    expect(layersOf(`${R}/f6`)).toEqual({
      lower: [`${R}/lo/l1`],
      data: [`${R}/lo/d1`],
      upper: `${R}/up/u4`,
      work: `${R}/up/w4`,
      features: {
        redirectDir: "on",
        uuid: "on",
        xino: "on",
        metacopy: true,
        fsync: "volatile",
        volatile: true,
        verity: "require",
        other: [],
      },
    });
  });

  it("toOverlayMount keeps the mount fields and adds the layers", () => {
    const m = mounts.find((x) => x.target === `${R}/f3`)!;
    const o = toOverlayMount(m);
    expect(o).toMatchObject({ id: m.id, target: m.target, source: "ov3", superOptions: m.superOptions });
    expect(o.lower).toEqual([`${R}/lo/l1`]);
    expect(o.upper).toBe(`${R}/up/u3`);
    expect(o.work).toBe(`${R}/up/w3`);
    expect(o.features.userxattr).toBe(true);
    const ro = toOverlayMount(mounts.find((x) => x.target === `${R}/m7`)!);
    expect("upper" in ro).toBe(false);
    expect("work" in ro).toBe(false);
  });
});

describe("parseOverlayOptions", () => {
  it("skips only a leading rw/ro and keeps unknown options verbatim", () => {
    expect(parseOverlayOptions(["rw", "lowerdir=/a", "ro", "sync", "seclabel", 'context="a,b"', "x=y=z"])).toEqual({
      lower: ["/a"],
      data: [],
      features: { other: ["ro", "sync", "seclabel", 'context="a,b"', "x=y=z"] },
    });
    expect(parseOverlayOptions([])).toEqual({ lower: [], data: [], features: { other: [] } });
  });

  it("puts values it does not know into other", () => {
    const opts = [
      "index=maybe",
      "redirect_dir=sideways",
      "xino=",
      "uuid=ON",
      "verity=strict",
      "volatile=1",
      "userxattr=on",
      "default_permissions=yes",
      "fsync",
      "fsync=",
      "lowerdir",
      "upperdir",
      "workdir",
      "lowerdir+",
      "datadir+",
      "metacopy",
    ];
    expect(parseOverlayOptions(opts)).toEqual({ lower: [], data: [], features: { other: opts } });
  });

  it("reads the older kernels' volatile flag, and fsync values other than volatile", () => {
    expect(parseOverlayOptions(["rw", "volatile"]).features).toEqual({ volatile: true, other: [] });
    expect(parseOverlayOptions(["fsync=auto"]).features).toEqual({ fsync: "auto", other: [] });
    expect(parseOverlayOptions(["fsync=strict"]).features).toEqual({ fsync: "strict", other: [] });
    expect(parseOverlayOptions(["fsync=volatile"]).features).toEqual({ fsync: "volatile", volatile: true, other: [] });
  });

  it("reads every value of every enum and on/off option", () => {
    for (const v of ["on", "follow", "nofollow", "off"] as const) {
      expect(parseOverlayOptions([`redirect_dir=${v}`]).features.redirectDir).toBe(v);
    }
    for (const v of ["on", "off", "auto"] as const) expect(parseOverlayOptions([`xino=${v}`]).features.xino).toBe(v);
    for (const v of ["on", "off", "null", "auto"] as const) expect(parseOverlayOptions([`uuid=${v}`]).features.uuid).toBe(v);
    for (const v of ["off", "on", "require"] as const) expect(parseOverlayOptions([`verity=${v}`]).features.verity).toBe(v);
    expect(parseOverlayOptions(["index=off", "nfs_export=off", "metacopy=off"]).features).toEqual({
      index: false,
      nfsExport: false,
      metacopy: false,
      other: [],
    });
  });

  it("a later lowerdir= replaces earlier layers, as in the kernel; lowerdir+= appends", () => {
    expect(parseOverlayOptions(["lowerdir=/a:/b::/d", "lowerdir=/c"])).toMatchObject({ lower: ["/c"], data: [] });
    expect(parseOverlayOptions(["lowerdir+=/a", "lowerdir+=/b", "datadir+=/d"])).toMatchObject({
      lower: ["/a", "/b"],
      data: ["/d"],
    });
    expect(parseOverlayOptions(["lowerdir=", "upperdir=/u"])).toEqual({
      lower: [],
      data: [],
      upper: "/u",
      features: { other: [] },
    });
  });

  it("does not unescape lowerdir+=/datadir+= but does unescape upperdir=/workdir=", () => {
    expect(
      parseOverlayOptions(["lowerdir+=/a\\:b\\\\", "datadir+=/d\\,", "upperdir=/u\\,\\\\x\\", "workdir=/w\\:"]),
    ).toEqual({ lower: ["/a\\:b\\\\"], data: ["/d\\,"], upper: "/u,\\x", work: "/w:", features: { other: [] } });
  });
});

describe("splitLowerdir / unescapeOverlayPath", () => {
  it("splits on unescaped : and ::", () => {
    expect(splitLowerdir("/a")).toEqual({ lower: ["/a"], data: [] });
    expect(splitLowerdir("/a:/b:/c")).toEqual({ lower: ["/a", "/b", "/c"], data: [] });
    expect(splitLowerdir("/a:/b::/d1::/d2")).toEqual({ lower: ["/a", "/b"], data: ["/d1", "/d2"] });
    expect(splitLowerdir("")).toEqual({ lower: [], data: [] });
  });

  it("honours escapes and drops them", () => {
    expect(splitLowerdir("/a\\:b:/c\\,d:/e\\\\:/f\\\\\\:::/g")).toEqual({
      lower: ["/a:b", "/c,d", "/e\\", "/f\\:"],
      data: ["/g"],
    });
    expect(splitLowerdir("/x\\y:/end\\")).toEqual({ lower: ["/xy", "/end"], data: [] });
    expect(splitLowerdir("\\:::\\:")).toEqual({ lower: [":"], data: [":"] });
    expect(splitLowerdir("\\::\\:")).toEqual({ lower: [":", ":"], data: [] });
  });

  it("gives a best effort on values the kernel rejects", () => {
    expect(splitLowerdir(":/a")).toEqual({ lower: ["/a"], data: [] });
    expect(splitLowerdir("/a:::/b")).toEqual({ lower: ["/a"], data: ["/b"] });
    expect(splitLowerdir("/a::/d:/b")).toEqual({ lower: ["/a"], data: ["/d", "/b"] });
    expect(splitLowerdir("/a:")).toEqual({ lower: ["/a"], data: [] });
  });

  it("agrees with the kernel model on any value the kernel accepts", () => {
    const raw = fc.string({ unit: fc.constantFrom("a", "\\", ":", ",", "é"), maxLength: 14 });
    fc.assert(
      fc.property(raw, (value) => {
        const k = kernelLowerdir(value);
        if (k !== null) expect(splitLowerdir(value)).toEqual(k);
      }),
      { numRuns: 5_000 },
    );
  });

  it("unescapes like ovl_unescape", () => {
    expect(unescapeOverlayPath("/plain")).toBe("/plain");
    expect(unescapeOverlayPath("/a\\,b\\:c\\\\d\\e")).toBe("/a,b:c\\de");
    expect(unescapeOverlayPath("/trailing\\")).toBe("/trailing");
    expect(unescapeOverlayPath("\\\\\\\\")).toBe("\\\\");
    fc.assert(
      fc.property(fc.string({ unit: pathChar }), (s) => {
        expect(unescapeOverlayPath(s)).toBe(kernelUnescape(s));
      }),
    );
  });
});

describe("escaping paths for mount(2) / fsconfig", () => {
  it("escapes \\ : , in lowerdir paths and \\ , in upper/work paths", () => {
    expect(escapeLowerdirPath("/a b/c:d,e\\f=g")).toBe("/a b/c\\:d\\,e\\\\f=g");
    expect(escapeLowerdirPath("/plain")).toBe("/plain");
    expect(escapeUpperWorkPath("/a b/c:d,e\\f=g")).toBe("/a b/c:d\\,e\\\\f=g");
  });

  it("round-trips any paths through escapeLowerdirPath + splitLowerdir", () => {
    fc.assert(
      fc.property(fc.array(pathArb, { minLength: 1, maxLength: 6 }), fc.array(pathArb, { maxLength: 3 }), (lower, data) => {
        const value = lower.map(escapeLowerdirPath).join(":") + data.map((d) => `::${escapeLowerdirPath(d)}`).join("");
        expect(splitLowerdir(value)).toEqual({ lower, data });
      }),
      { numRuns: 2_000 },
    );
  });

  it("the kernel model reads a built mount(2) data string back to the same paths", () => {
    fc.assert(
      fc.property(
        fc.array(pathArb, { minLength: 1, maxLength: 5 }),
        fc.array(pathArb, { maxLength: 2 }),
        pathArb,
        pathArb,
        (lower, data, upper, work) => {
          const lowerdir =
            lower.map(escapeLowerdirPath).join(":") + data.map((d) => `::${escapeLowerdirPath(d)}`).join("");
          const mountData = [
            `lowerdir=${lowerdir}`,
            `upperdir=${escapeUpperWorkPath(upper)}`,
            `workdir=${escapeUpperWorkPath(work)}`,
            ...featureOptionStrings({ index: false, redirectDir: "on" }),
          ].join(",");
          const opts = kernelNextOpt(mountData);
          expect(opts).toHaveLength(5);
          const kv = opts.map((o) => [o.slice(0, o.indexOf("=")), o.slice(o.indexOf("=") + 1)] as const);
          expect(kernelLowerdir(kv[0]![1])).toEqual({ lower, data });
          expect(kernelUnescape(kv[1]![1])).toBe(upper);
          expect(kernelUnescape(kv[2]![1])).toBe(work);
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it("paths survive mount(2) -> mountinfo -> parseMountInfo -> toOverlayMount (legacy form)", () => {
    fc.assert(
      fc.property(
        fc.array(pathArb, { minLength: 1, maxLength: 5 }),
        fc.array(pathArb, { maxLength: 2 }),
        pathArb,
        pathArb,
        (lower, data, upper, work) => {
          // The kernel keeps lowerdir/upperdir/workdir strings exactly as they were typed.
          const typed = [
            "rw",
            `lowerdir=${lower.map(escapeLowerdirPath).join(":")}${data.map((d) => `::${escapeLowerdirPath(d)}`).join("")}`,
            `upperdir=${escapeUpperWorkPath(upper)}`,
            `workdir=${escapeUpperWorkPath(work)}`,
            "uuid=on",
          ];
          const { mounts, issues } = parseMountInfo(overlayLine(typed));
          expect(issues).toEqual([]);
          const o = toOverlayMount(mounts[0]!);
          expect(o.lower).toEqual(lower);
          expect(o.data).toEqual(data);
          expect(o.upper).toBe(upper);
          expect(o.work).toBe(work);
          expect(o.features).toEqual({ uuid: "on", other: [] });
        },
      ),
      { numRuns: 1_000 },
    );
  });

  it("paths survive fsconfig strings -> mountinfo -> parse (new API form)", () => {
    fc.assert(
      fc.property(
        fc.array(pathArb, { minLength: 1, maxLength: 5 }),
        fc.array(pathArb, { maxLength: 2 }),
        pathArb,
        pathArb,
        (lower, data, upper, work) => {
          const shown = [
            "rw",
            ...lower.map((l) => `lowerdir+=${l}`), // SET_STRING lowerdir+: literal
            ...data.map((d) => `datadir+=${d}`),
            `upperdir=${escapeUpperWorkPath(upper)}`, // SET_STRING upperdir: unescaped by the kernel
            `workdir=${escapeUpperWorkPath(work)}`,
          ];
          const o = toOverlayMount(parseMountInfo(overlayLine(shown), { strict: true }).mounts[0]!);
          expect([o.lower, o.data, o.upper, o.work]).toEqual([lower, data, upper, work]);
        },
      ),
      { numRuns: 1_000 },
    );
  });
});

describe("featureOptionStrings", () => {
  it("lists every option in the kernel's display order", () => {
    const all: OverlayOptions = {
      verity: "require",
      userxattr: true,
      volatile: true,
      metacopy: true,
      xino: "auto",
      nfsExport: false,
      uuid: "null",
      index: true,
      redirectDir: "follow",
      defaultPermissions: true,
    };
    expect(featureOptionStrings(all)).toEqual([
      "default_permissions",
      "redirect_dir=follow",
      "index=on",
      "uuid=null",
      "nfs_export=off",
      "xino=auto",
      "metacopy=on",
      "volatile",
      "userxattr",
      "verity=require",
    ]);
    expect(featureOptionStrings({})).toEqual([]);
    expect(featureOptionStrings({ volatile: false, userxattr: false, defaultPermissions: false })).toEqual([]);
    expect(featureOptionStrings({ index: false, metacopy: false })).toEqual(["index=off", "metacopy=off"]);
  });

  it("rejects values outside an option's set", () => {
    const bad = [
      { redirectDir: "yes" },
      { xino: "maybe" },
      { uuid: "ON" },
      { verity: "off,upperdir=/evil" },
      { index: "on" },
      { volatile: 1 },
      { userxattr: "true" },
    ] as unknown as OverlayOptions[];
    for (const options of bad) {
      expect(() => featureOptionStrings(options)).toThrow(TypeError);
      try {
        featureOptionStrings(options);
      } catch (err) {
        expect((err as { code?: string }).code).toBe("ERR_INVALID_ARG_VALUE");
      }
    }
  });

  it("round-trips with parseOverlayOptions for every OverlayOptions value", () => {
    const options: fc.Arbitrary<OverlayOptions> = fc.record(
      {
        redirectDir: fc.constantFrom("on", "follow", "nofollow", "off"),
        index: fc.boolean(),
        nfsExport: fc.boolean(),
        xino: fc.constantFrom("on", "off", "auto"),
        metacopy: fc.boolean(),
        volatile: fc.boolean(),
        userxattr: fc.boolean(),
        uuid: fc.constantFrom("on", "off", "null", "auto"),
        verity: fc.constantFrom("off", "on", "require"),
        defaultPermissions: fc.boolean(),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(options, (o) => {
        const strings = featureOptionStrings(o);
        expect(new Set(strings).size).toBe(strings.length);
        const parsed = parseOverlayOptions(["rw", ...strings]);
        // the kernel has no "off" spelling for these flags: false reads back as absent
        const expected: Record<string, unknown> = { ...o, other: [] };
        for (const k of ["volatile", "userxattr", "defaultPermissions"]) if (expected[k] === false) delete expected[k];
        expect(parsed.features).toEqual(expected);
        expect(parsed.lower).toEqual([]);
        expect(featureOptionStrings(parsed.features)).toEqual(strings);
      }),
      { numRuns: 2_000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// Against the running kernel: build a mount(2) data string with the escape helpers, mount it in a private
// mount namespace, and read it back from /proc/self/mountinfo.

const isRoot = process.getuid?.() === 0;
const hasUnshare = spawnSync("unshare", ["--version"]).status === 0;

// Locally without root or unshare(1) this block is skipped (said below); under CI it always runs (and fails if it cannot).
const kernelSkip = (!isRoot || !hasUnshare) && !process.env.CI;
if (kernelSkip) console.log("skipping the running-kernel option tests: they need root and unshare(1) (CI runs them)");
describe.skipIf(kernelSkip)("against the running kernel (root, private mount namespace)", () => {
  const base = mkdtempSync(join(tmpdir(), "ovl-opts-"));
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it("mounts odd paths escaped by escapeLowerdirPath/escapeUpperWorkPath and reads them back", () => {
    const lowerNames = ["a b", "c:d", "e,f", "g\\h", "ü日本", "x=y", "t\tab", "nl\nx", "end\\", "-", "\\:", "=:,"];
    const lower = lowerNames.map((n) => join(base, "lower", n));
    lower.forEach((dir, i) => {
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, `marker-${i}`), "");
    });
    const data = [join(base, "data", "d:a,t\\a")];
    mkdirSync(data[0]!, { recursive: true });
    const rw = join(base, "rw");
    const merged = join(base, "merged - x");
    mkdirSync(rw);
    mkdirSync(merged);
    const upper = join(rw, "up\\,per");
    const work = join(rw, "wo,r k");
    const features = featureOptionStrings({ metacopy: true, redirectDir: "on", index: true });
    const opts = [
      `lowerdir=${lower.map(escapeLowerdirPath).join(":")}${data.map((d) => `::${escapeLowerdirPath(d)}`).join("")}`,
      `upperdir=${escapeUpperWorkPath(upper)}`,
      `workdir=${escapeUpperWorkPath(work)}`,
      ...features,
    ].join(",");
    const script = [
      "set -e",
      // upper/work on a tmpfs, so the test works wherever /tmp is
      'mount -t tmpfs ovl-opts-test "$RW"',
      'mkdir -p "$UPPER" "$WORK"',
      'mount -t overlay ovl-opts-test -o "$OPTS" "$MERGED"',
      "cat /proc/self/mountinfo",
      "echo ---ls---",
      'ls -A "$MERGED"',
    ].join("\n");
    const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script], {
      env: { ...process.env, RW: rw, UPPER: upper, WORK: work, MERGED: merged, OPTS: opts, LIBMOUNT_FORCE_MOUNT2: "always" },
      encoding: "utf8",
    });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const [mountinfo, ls] = r.stdout.split("---ls---\n") as [string, string];
    // the kernel found every lower directory: all markers are visible in the merged view
    expect(ls.trim().split("\n").sort()).toEqual(lowerNames.map((_, i) => `marker-${i}`).sort());

    const { mounts, issues } = parseMountInfo(mountinfo, { strict: true });
    expect(issues).toEqual([]);
    const overlay = mounts.find((m) => m.target === merged);
    expect(overlay).toBeDefined();
    const o = toOverlayMount(overlay!);
    expect(o.fstype).toBe("overlay");
    expect(o.source).toBe("ovl-opts-test");
    expect(o.lower).toEqual(lower);
    expect(o.data).toEqual(data);
    expect(o.upper).toBe(upper);
    expect(o.work).toBe(work);
    expect(o.features).toMatchObject({ metacopy: true, redirectDir: "on", index: true, other: [] });
    const tmpfs = mounts.find((m) => m.target === rw);
    expect(tmpfs?.source).toBe("ovl-opts-test");
  });
});
