import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { decodeBytes } from "../src/kernel/bytes.js";
import { describe, expect, it } from "vitest";
import {
  decodeMountInfoField,
  MountInfoParseError,
  parseMountInfo,
  splitMountOptions,
  type MountInfoIssue,
} from "../src/table/mountinfo.js";
import type { MountInfo } from "../src/types.js";

const fixtureDir = fileURLToPath(new URL("./fixtures/mountinfo/", import.meta.url));
const fixture = (name: string): string => readFileSync(fixtureDir + name, "utf8");
const fixtureJson = (name: string): MountInfo[] => JSON.parse(fixture(name)) as MountInfo[];

/** Escapes like the kernel's seq_escape(): each listed character becomes `\ooo`. */
function seqEscape(s: string, chars: string): string {
  let out = "";
  for (const ch of s) out += chars.includes(ch) ? `\\${ch.charCodeAt(0).toString(8).padStart(3, "0")}` : ch;
  return out;
}

/** Prints a MountInfo the way show_mountinfo() does. */
function serialize(m: MountInfo): string {
  const field = (s: string) => seqEscape(s, " \t\n\\");
  const opts = (list: string[]) => list.map((o) => seqEscape(o, ", \t\n\\")).join(",");
  return [
    String(m.id),
    String(m.parentId),
    `${m.major}:${m.minor}`,
    field(m.root),
    field(m.target),
    opts(m.mountOptions),
    ...m.optionalFields,
    "-",
    field(m.fstype),
    field(m.source),
    opts(m.superOptions),
  ].join(" ");
}

describe("parseMountInfo on real kernel 6.18 output", () => {
  for (const name of ["kernel-6.18-general", "kernel-6.18-overlay"]) {
    it(`${name}.txt parses to ${name}.json exactly`, () => {
      const text = fixture(`${name}.txt`);
      const result = parseMountInfo(text);
      expect(result.issues).toEqual([]);
      expect(result.mounts).toEqual(fixtureJson(`${name}.json`));
      // strict mode agrees and does not throw
      expect(parseMountInfo(text, { strict: true }).mounts).toEqual(result.mounts);
    });
  }

  const general = parseMountInfo(fixture("kernel-6.18-general.txt")).mounts;
  const byId = (id: number): MountInfo => {
    const m = general.find((x) => x.id === id);
    if (!m) throw new Error(`no mount ${id}`);
    return m;
  };

  it("reads a plain line field by field", () => {
    expect(byId(27)).toEqual({
      id: 27,
      parentId: 1,
      major: 254,
      minor: 0,
      root: "/",
      target: "/",
      mountOptions: ["rw", "relatime"],
      optionalFields: [],
      fstype: "ext4",
      source: "/dev/vda",
      superOptions: ["rw", "discard", "resv_strict", "resuid=65534", "resgid=65534"],
    });
  });

  it("reads an empty source (`mount -t tmpfs \"\" DIR`) as \"\", with a shared: optional field", () => {
    const m = byId(64);
    expect(m.source).toBe("");
    expect(m.fstype).toBe("tmpfs");
    expect(m.optionalFields).toEqual(["shared:1"]);
    expect(m.superOptions).toEqual(["rw"]);
  });

  it("reads a bind mount's non-/ root and a target containing ' - '", () => {
    const m = byId(65);
    expect(m.root).toBe("/sub dir");
    expect(m.target).toBe("/tmp/ovlx/b - c");
    expect(m.optionalFields).toEqual([]);
    expect(m.source).toBe("");
  });

  it("reads master: and unbindable optional fields", () => {
    expect(byId(66).optionalFields).toEqual(["master:1"]);
    expect(byId(67).optionalFields).toEqual(["unbindable"]);
  });

  it("keeps a raw comma in the source and splits super options", () => {
    const m = byId(67);
    expect(m.source).toBe("my src,1");
    expect(m.superOptions).toEqual(["rw", "size=1024k", "mode=700"]);
  });

  it("reads per-mount options of a read-only bind", () => {
    const m = byId(68);
    expect(m.root).toBe("/src");
    expect(m.mountOptions).toEqual(["ro", "nosuid", "nodev", "noexec", "relatime"]);
    expect(m.superOptions).toEqual(["rw"]);
  });

  it("decodes tab, newline and backslash in a target and a source", () => {
    const m = byId(69);
    expect(m.target).toBe("/tmp/ovlx/t\tx\ny\\z");
    expect(m.source).toBe("we\\ird");
  });

  it("passes non-ASCII through", () => {
    const m = byId(70);
    expect(m.target).toBe("/tmp/ovlx/ünï");
    expect(m.source).toBe("ü");
    expect(m.superOptions).toEqual(["rw", "nr_inodes=100"]);
  });

  it("splits overlay super options on raw commas only (new API layer with a comma in its path)", () => {
    const overlay = parseMountInfo(fixture("kernel-6.18-overlay.txt")).mounts;
    const m3 = overlay.find((m) => m.target === "/tmp/ovlx/m3");
    expect(m3?.superOptions).toContain("lowerdir+=/tmp/ovlx/e,f");
    expect(m3?.superOptions).toContain("lowerdir+=/tmp/ovlx/nl\nx");
    expect(m3?.superOptions).toContain("upperdir=/tmp/ovlx/up\\\\per");
    expect(m3?.superOptions).toHaveLength(16);
    const m2 = overlay.find((m) => m.target === "/tmp/ovlx/m2");
    expect(m2?.superOptions[1]).toBe(
      "lowerdir=/tmp/ovlx/a b:/tmp/ovlx/c\\:d:/tmp/ovlx/e\\,f:/tmp/ovlx/g\\\\h:/tmp/ovlx/ü日本:/tmp/ovlx/x=y:/tmp/ovlx/t\tab:/tmp/ovlx/nl\nx:/tmp/ovlx/end\\\\",
    );
  });
});

describe("parseMountInfo line handling", () => {
  it("accepts a missing final newline", () => {
    const text = fixture("no-final-newline.txt");
    expect(text.endsWith("\n")).toBe(false);
    const a = parseMountInfo(text);
    const b = parseMountInfo(`${text}\n`);
    expect(a.issues).toEqual([]);
    expect(a.mounts).toHaveLength(2);
    expect(a.mounts).toEqual(b.mounts);
    expect(a.mounts[1]).toEqual({
      id: 40,
      parentId: 27,
      major: 0,
      minor: 50,
      root: "/",
      target: "/tmp/no newline",
      mountOptions: ["rw", "relatime"],
      optionalFields: ["shared:7"],
      fstype: "tmpfs",
      source: "",
      superOptions: ["rw", "size=4k"],
    });
  });

  it("returns nothing for empty and blank-line-only input", () => {
    expect(parseMountInfo("")).toEqual({ mounts: [], issues: [] });
    expect(parseMountInfo("\n\n\n")).toEqual({ mounts: [], issues: [] });
  });

  it("counts blank lines in line numbers", () => {
    const r = parseMountInfo("\n\n1 1 0:1 / / rw - rootfs rootfs rw\n\nbogus\n");
    expect(r.mounts.map((m) => m.id)).toEqual([1]);
    expect(r.issues).toEqual([{ line: 5, text: "bogus", reason: "too few fields" }]);
  });

  it("reads several optional fields, propagate_from, and id === parentId", () => {
    const r = parseMountInfo("5 5 0:2 / / rw shared:3 master:1 propagate_from:1 - rootfs none rw\n");
    expect(r.issues).toEqual([]);
    expect(r.mounts[0]).toMatchObject({
      id: 5,
      parentId: 5,
      major: 0,
      minor: 2,
      optionalFields: ["shared:3", "master:1", "propagate_from:1"],
      fstype: "rootfs",
      source: "none",
    });
  });

  it("takes the first lone '-' after field 6 as the separator, even when the target is '-'", () => {
    const r = parseMountInfo("7 1 8:1 - - rw - ext4 - rw\n");
    expect(r.issues).toEqual([]);
    expect(r.mounts[0]).toMatchObject({ root: "-", target: "-", optionalFields: [], fstype: "ext4", source: "-" });
  });

  it("ignores extra fields after the super options", () => {
    const r = parseMountInfo("7 1 8:1 / /x rw - ext4 /dev/sda1 rw,errors=remount-ro future-field\n");
    expect(r.issues).toEqual([]);
    expect(r.mounts[0]?.superOptions).toEqual(["rw", "errors=remount-ro"]);
  });

  it("keeps a carriage return (the kernel does not escape it) as part of the field", () => {
    const r = parseMountInfo("7 1 8:1 / /x\r rw - ext4 src rw,opt=a\r\n");
    expect(r.mounts[0]?.target).toBe("/x\r");
    expect(r.mounts[0]?.superOptions).toEqual(["rw", "opt=a\r"]);
  });

  it("reads a ~77 KB line (a 500-layer overlay)", () => {
    const layers = Array.from(
      { length: 500 },
      (_, i) => `/var/lib/containers/storage/overlay/${String(i).padStart(3, "0")}${"x".repeat(100)} with space,comma/diff`,
    );
    const superOptions = ["rw", ...layers.map((l) => `lowerdir+=${l}`), "upperdir=/u", "workdir=/w", "uuid=on"];
    const line = serialize({
      id: 900,
      parentId: 1,
      major: 0,
      minor: 99,
      root: "/",
      target: "/merged",
      mountOptions: ["rw", "relatime"],
      optionalFields: [],
      fstype: "overlay",
      source: "overlay",
      superOptions,
    });
    expect(line.length).toBeGreaterThan(77_000);
    const text = `1 1 0:1 / / rw - rootfs rootfs rw\n${line}\n2 1 0:3 / /proc rw - proc proc rw\n`;
    const r = parseMountInfo(text, { strict: true });
    expect(r.mounts.map((m) => m.id)).toEqual([1, 900, 2]);
    expect(r.mounts[1]?.superOptions).toEqual(superOptions);
  });

  it("parses 10,000 lines (speed is measured in bench/)", () => {
    const lines: string[] = [];
    for (let i = 0; i < 10_000; i++) {
      lines.push(
        `${i + 100} 27 0:${i} / /run/containers/storage/overlay-containers/${i}/userdata/shm rw,nosuid,nodev,noexec,relatime shared:${i} - tmpfs shm rw,size=64000k,uid=1000,gid=1000,inode64`,
      );
    }
    const text = `${lines.join("\n")}\n`;
    const r = parseMountInfo(text);
    expect(r.mounts).toHaveLength(10_000);
    expect(r.issues).toEqual([]);
    expect(r.mounts[9_999]?.minor).toBe(9_999);
    expect(r.mounts[9_999]?.optionalFields).toEqual(["shared:9999"]);
  });

  it("reports every one of 200,000 lines without spaces", () => {
    const text = "x\n".repeat(200_000);
    const r = parseMountInfo(text);
    expect(r.mounts).toEqual([]);
    expect(r.issues).toHaveLength(200_000);
    expect(r.issues[199_999]).toEqual({ line: 199_999 + 1, text: "x", reason: "too few fields" });
  });
});

describe("parseMountInfo on malformed lines", () => {
  const text = fixture("malformed.txt");
  const expected: MountInfoIssue[] = [
    { line: 2, text: "36 35 98:0 /mnt1", reason: "too few fields" },
    { line: 4, text: "36 35 98:0 / /mnt rw,relatime shared:1 ext3 /dev/root rw", reason: 'no "-" separator' },
    { line: 5, text: "x7 35 98:0 / /mnt rw - ext3 /dev/root rw", reason: "mount id is not a number" },
    { line: 6, text: "36 35 98-0 / /mnt rw - ext3 /dev/root rw", reason: "MAJ:MIN is not two numbers" },
    { line: 7, text: "36 35 98:0 / /mnt rw - ext3 /dev/root", reason: "missing super options" },
    { line: 9, text: "36 -1 98:0 / /mnt rw - ext3 /dev/root rw", reason: "parent id is not a number" },
    { line: 10, text: "   ", reason: "mount id is not a number" },
    { line: 11, text: "36 35 98:0 / /mnt rw -", reason: 'nothing after the "-" separator' },
    { line: 12, text: "36 35 98:0 / /mnt rw  - ext3 /dev/root rw", reason: "empty optional field" },
    { line: 14, text: "36 35 :0 / /mnt rw - ext3 /dev/root rw", reason: "MAJ:MIN is not two numbers" },
  ];

  it("skips malformed lines and reports each with its line number and reason", () => {
    const r = parseMountInfo(text);
    expect(r.mounts.map((m) => [m.id, m.target, m.source])).toEqual([
      [22, "/proc", "proc"],
      [27, "/", "/dev/vda"],
      [40, "/tmp/e", ""],
    ]);
    expect(r.issues).toEqual(expected);
  });

  it("throws MountInfoParseError for the first one in strict mode", () => {
    let caught: unknown;
    try {
      parseMountInfo(text, { strict: true });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(MountInfoParseError);
    expect(caught).toBeInstanceOf(Error);
    const err = caught as MountInfoParseError;
    expect(err.code).toBe("ERR_OVL_MOUNTINFO_PARSE");
    expect(err.name).toBe("MountInfoParseError");
    expect(err.line).toBe(2);
    expect(err.text).toBe("36 35 98:0 /mnt1");
    expect(err.reason).toBe("too few fields");
    expect(err.message).toContain("line 2");
  });

  it("reports other bad inputs", () => {
    const reasons = (t: string) => parseMountInfo(t).issues.map((i) => i.reason);
    expect(reasons("1 2 3:4 / /x rw - ext4\n")).toEqual(['missing source and super options after "-"']);
    expect(reasons("1 2 3 / /x rw - ext4 src rw\n")).toEqual(["MAJ:MIN is not two numbers"]);
    expect(reasons("1 2 3:x / /x rw - ext4 src rw\n")).toEqual(["MAJ:MIN is not two numbers"]);
    expect(reasons("1 2 3:4: / /x rw - ext4 src rw\n")).toEqual(["MAJ:MIN is not two numbers"]);
    expect(reasons("1 2 3:4 / /x\n")).toEqual(["too few fields"]);
    expect(reasons("12345678901234567 2 3:4 / /x rw - a b rw\n")).toEqual(["mount id is not a number"]);
    expect(reasons(" 1 2 3:4 / /x rw - a b rw\n")).toEqual(["mount id is not a number"]);
  });
});

describe("lines with an empty field the kernel always fills", () => {
  it("are issues, not mounts read one field off (procfs's real rootfs line among them); an empty source is fine", () => {
    const cases: [string, string][] = [
      ["1 1 0:5 /  /root rw,nosuid shared:8 - rootfs rootfs rw", "empty mount point field"],
      ["1 1 0:5  /root rw - rootfs rootfs rw", "empty root field"],
      ["1 1 0:5 / /root  - rootfs rootfs rw", "empty mount options field"],
      ["1 1 0:5 / /root rw -  rootfs rw", "empty filesystem type field"],
      ["1 1 0:5 / /root rw - rootfs rootfs ", "empty super options field"],
    ];
    for (const [line, reason] of cases) {
      const r = parseMountInfo(`${line}\n`);
      expect([line, r.mounts, r.issues]).toEqual([line, [], [{ line: 1, text: line, reason }]]);
      expect(() => parseMountInfo(line, { strict: true })).toThrow(MountInfoParseError);
    }
    const empty = parseMountInfo("36 35 98:0 /mnt1 /mnt2 rw - ext3  rw,errors=continue\n");
    expect(empty.issues).toEqual([]);
    expect(empty.mounts[0]).toMatchObject({ source: "", superOptions: ["rw", "errors=continue"] });
  });

  it("keeps a CR before the newline and every byte, as Buffers when asked", () => {
    const raw = Buffer.concat([Buffer.from("36 35 98:0 / /t\\040"), Buffer.from([0xff, 0xfe]), Buffer.from(" rw - ext4 /dev/x rw\r\n")]);
    const [asBytes] = parseMountInfo(raw, { encoding: "buffer" }).mounts;
    expect(asBytes!.target).toEqual(Buffer.from([0x2f, 0x74, 0x20, 0xff, 0xfe]));
    expect(asBytes!.superOptions).toEqual([Buffer.from("rw\r")]);
    const [asText] = parseMountInfo(raw).mounts;
    expect(asText!.target).toBe("/t \udcff\udcfe");
    expect(asText!.nonUtf8).toEqual(["target"]);
    expect(asText!.superOptions).toEqual(["rw\r"]);
    // Two names the old decoding made one: the bytes of U+FFFD and a byte that is no UTF-8.
    const two = parseMountInfo(Buffer.concat([Buffer.from("1 0 0:1 / /t"), Buffer.from([0xff]), Buffer.from(" rw - a b rw\n1 0 0:1 / /t\xef\xbf\xbd rw - a b rw\n", "latin1")])).mounts;
    expect(two.map((m) => m.target)).toEqual(["/t\udcff", "/t\ufffd"]);
  });
});

describe("decodeMountInfoField", () => {
  it("returns the same string when there is no backslash", () => {
    const s = "/plain/path:with=odd#chars";
    expect(decodeMountInfoField(s)).toBe(s);
    expect(decodeMountInfoField("")).toBe("");
  });

  it("decodes the kernel's escapes", () => {
    expect(decodeMountInfoField("a\\040b")).toBe("a b");
    expect(decodeMountInfoField("\\011\\012\\134\\054")).toBe("\t\n\\,");
    expect(decodeMountInfoField("\\040start")).toBe(" start");
    expect(decodeMountInfoField("end\\040")).toBe("end ");
  });

  it("decodes one level only", () => {
    expect(decodeMountInfoField("\\134040")).toBe("\\040");
    expect(decodeMountInfoField("\\134\\134")).toBe("\\\\");
  });

  it("leaves other backslashes alone", () => {
    expect(decodeMountInfoField("a\\b")).toBe("a\\b");
    expect(decodeMountInfoField("a\\")).toBe("a\\");
    expect(decodeMountInfoField("a\\04")).toBe("a\\04");
    expect(decodeMountInfoField("a\\08x")).toBe("a\\08x");
    expect(decodeMountInfoField("a\\400")).toBe("a\\400");
    expect(decodeMountInfoField("\\:\\,")).toBe("\\:\\,");
  });

  it("decodes escaped bytes >= 0x80 to those bytes (a byte string), which the string view reads as UTF-8", () => {
    expect(decodeMountInfoField("caf\\303\\251")).toBe("caf\xc3\xa9");
    expect(decodeBytes(decodeMountInfoField("caf\\303\\251"))).toBe("café");
    expect(decodeBytes(decodeMountInfoField("\\346\\227\\245x\\040y"))).toBe("日x y");
    // Not UTF-8: the byte stays itself, shown as a lone surrogate (surrogateescape), never U+FFFD.
    expect(decodeBytes(decodeMountInfoField("bad\\377"))).toBe("bad\udcff");
  });

  it("copes with very long runs of escapes", () => {
    expect(decodeMountInfoField("\\040".repeat(200_000))).toBe(" ".repeat(200_000));
    expect(decodeBytes(decodeMountInfoField("\\303\\251".repeat(100_000)))).toBe("é".repeat(100_000));
  });
});

describe("splitMountOptions", () => {
  it("splits on raw commas, then decodes", () => {
    expect(splitMountOptions("")).toEqual([]);
    expect(splitMountOptions("rw")).toEqual(["rw"]);
    expect(splitMountOptions("rw,relatime")).toEqual(["rw", "relatime"]);
    expect(splitMountOptions("lowerdir+=/a\\054b,lowerdir+=/c")).toEqual(["lowerdir+=/a,b", "lowerdir+=/c"]);
    expect(splitMountOptions("a,,b,")).toEqual(["a", "", "b", ""]);
    expect(splitMountOptions("upperdir=/x\\040y\\134\\054z")).toEqual(["upperdir=/x y\\,z"]);
  });

  it("keeps SELinux's quoted context with raw commas as one option", () => {
    expect(
      splitMountOptions('rw,context="system_u:object_r:container_file_t:s0:c12,c34",lowerdir=/a:/b,upperdir=/u'),
    ).toEqual(["rw", 'context="system_u:object_r:container_file_t:s0:c12,c34"', "lowerdir=/a:/b", "upperdir=/u"]);
    expect(splitMountOptions('rootcontext="a,b"')).toEqual(['rootcontext="a,b"']);
    expect(splitMountOptions('fscontext="a,b",defcontext="c,d"')).toEqual(['fscontext="a,b"', 'defcontext="c,d"']);
    // no closing quote: plain comma split
    expect(splitMountOptions('context="a,b')).toEqual(['context="a', "b"]);
    // only those keys
    expect(splitMountOptions('lowerdir+=/a"x,y"')).toEqual(['lowerdir+=/a"x', 'y"']);
  });
});

describe("parseMountInfo properties", () => {
  it("never throws in non-strict mode, whatever the input", () => {
    const chunk = fc.oneof(
      fc.string({ unit: "binary" }),
      fc.constantFrom(" ", "  ", "-", " - ", "\n", "\\", "\\040", ":", ",", "0", "12", '"', "context=\""),
    );
    fc.assert(
      fc.property(fc.array(chunk, { maxLength: 40 }), (parts) => {
        const text = parts.join("");
        const r = parseMountInfo(text);
        for (const issue of r.issues) {
          expect(issue.line).toBeGreaterThanOrEqual(1);
          expect(typeof issue.reason).toBe("string");
        }
        for (const m of r.mounts) {
          expect(Number.isInteger(m.id) && m.id >= 0).toBe(true);
          expect(Array.isArray(m.superOptions)).toBe(true);
        }
      }),
      { numRuns: 2_000 },
    );
  });

  it("never throws on any prefix of real output, and strict mode throws only MountInfoParseError", () => {
    const text = fixture("kernel-6.18-overlay.txt") + fixture("kernel-6.18-general.txt");
    const full = parseMountInfo(text).mounts;
    for (let n = 0; n <= text.length; n++) {
      const prefix = text.slice(0, n);
      const r = parseMountInfo(prefix);
      expect(r.mounts.length + r.issues.length).toBeLessThanOrEqual(full.length);
      expect(r.issues.length).toBeLessThanOrEqual(1);
      try {
        parseMountInfo(prefix, { strict: true });
      } catch (err) {
        expect(err).toBeInstanceOf(MountInfoParseError);
      }
    }
  });

  it("takes a string or bytes, and refuses anything else with ERR_INVALID_ARG_TYPE", () => {
    expect(parseMountInfo(new TextEncoder().encode("1 1 0:1 / / rw - a b rw\n") as unknown as string).mounts).toHaveLength(1);
    for (const bad of [undefined, null, 42, {}, Object.create(null), ["1 1 0:1 / / rw - a b rw"]]) {
      expect(() => parseMountInfo(bad as unknown as string)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    }
  });

  const text = (maxLength = 12) =>
    fc.string({
      unit: fc.oneof(
        { weight: 3, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
        { weight: 2, arbitrary: fc.constantFrom(" ", "\t", "\n", "\\", ",", ":", "=", "-", '"', "\r", "\\040", "\\134") },
      ),
      maxLength,
    });
  const option = text()
    .filter((s) => s.length > 0)
    .filter((s) => !/^(context|fscontext|defcontext|rootcontext)="/.test(s));
  const optionalField = fc.oneof(
    fc.nat(1_000).map((n) => `shared:${n}`),
    fc.nat(1_000).map((n) => `master:${n}`),
    fc.nat(1_000).map((n) => `propagate_from:${n}`),
    fc.constant("unbindable"),
    fc.stringMatching(/^[a-z_]{1,8}(:[0-9]{1,4})?$/),
  );
  const mountInfo: fc.Arbitrary<MountInfo> = fc.record({
    id: fc.nat(2 ** 31),
    parentId: fc.nat(2 ** 31),
    major: fc.nat(4095),
    minor: fc.nat(2 ** 20),
    // The kernel never prints root, mount point, options or type empty (an empty one is an issue, tested
    // above); the source may be empty.
    root: text().filter((t) => t.length > 0),
    target: text().filter((t) => t.length > 0),
    mountOptions: fc.array(option, { minLength: 1, maxLength: 5 }),
    optionalFields: fc.array(optionalField, { maxLength: 3 }),
    fstype: text(6).filter((t) => t.length > 0),
    source: text(),
    superOptions: fc.array(option, { minLength: 1, maxLength: 6 }),
  });

  it("round-trips generated mounts through the kernel's line format", () => {
    fc.assert(
      fc.property(fc.array(mountInfo, { minLength: 1, maxLength: 5 }), fc.boolean(), (mounts, finalNewline) => {
        const body = mounts.map(serialize).join("\n");
        const r = parseMountInfo(finalNewline ? `${body}\n` : body, { strict: true });
        expect(r.issues).toEqual([]);
        expect(r.mounts).toEqual(mounts);
      }),
      { numRuns: 1_000 },
    );
  });

  it("with `fstype`, gives exactly the mounts of that type (generated lines)", () => {
    const typed = fc.record({
      mount: mountInfo,
      fstype: fc.oneof(fc.constantFrom("overlay", "overlayfs", "overlay.sub", "tmpfs", "over lay", "-"), text(6).filter((t) => t.length > 0)),
    });
    fc.assert(
      fc.property(fc.array(typed, { minLength: 1, maxLength: 8 }), fc.nat(7), (rows, pick) => {
        const mounts = rows.map(({ mount, fstype }) => ({ ...mount, fstype }));
        const body = mounts.map(serialize).join("\n");
        for (const fstype of ["overlay", mounts[pick % mounts.length]!.fstype]) {
          const r = parseMountInfo(body, { fstype, strict: true });
          expect(r.issues).toEqual([]);
          expect(r.mounts).toEqual(mounts.filter((m) => m.fstype === fstype));
        }
      }),
      { numRuns: 1_000 },
    );
  });

  it("with `fstype`, reports the same issues as a full parse for the lines it looks at", () => {
    const chunk = fc.oneof(
      fc.string({ unit: "binary" }),
      fc.constantFrom(" ", "  ", "-", " - overlay ", " - overlay", "\n", "\\", "1 2 0:3 / /m rw", "overlay", "0", "12"),
    );
    fc.assert(
      fc.property(fc.array(chunk, { maxLength: 40 }), (parts) => {
        const input = parts.join("");
        const full = parseMountInfo(input);
        const some = parseMountInfo(input, { fstype: "overlay" });
        expect(some.mounts).toEqual(full.mounts.filter((m) => m.fstype === "overlay"));
        const lines = input.split("\n");
        const looked = full.issues.filter((i) => lines[i.line - 1]!.includes(" - overlay "));
        expect(some.issues).toEqual(looked);
      }),
      { numRuns: 2_000 },
    );
  });
});

describe("parseMountInfo with `fstype`", () => {
  it("picks the overlays of the recorded tables without parsing the other lines", () => {
    for (const name of ["kernel-6.18-general.txt", "kernel-6.18-overlay.txt"]) {
      const t = fixture(name);
      const overlays = parseMountInfo(t, { fstype: "overlay" });
      expect(overlays.issues).toEqual([]);
      expect(overlays.mounts.length).toBeGreaterThan(0);
      expect(overlays.mounts).toEqual(parseMountInfo(t).mounts.filter((m) => m.fstype === "overlay"));
    }
  });

  it("ignores ' - overlay ' inside another filesystem's options, and finds an escaped type", () => {
    const t = [
      "30 1 0:30 / /a rw - tmpfs tmpfs rw,raw - overlay text",
      "31 1 0:31 / /b rw - overlay ov rw,lowerdir=/l1:/l2",
      "32 1 0:32 / /c rw - fuse.my\\040fs src rw",
    ].join("\n");
    expect(parseMountInfo(t, { fstype: "overlay" }).mounts.map((m) => m.id)).toEqual([31]);
    expect(parseMountInfo(t, { fstype: "fuse.my fs" }).mounts.map((m) => m.id)).toEqual([32]);
    expect(parseMountInfo(t, { fstype: "ext4" })).toEqual({ mounts: [], issues: [] });
  });

  it("reports malformed candidate lines with their line numbers, and throws in strict mode", () => {
    const t = [
      "30 1 0:30 / /a rw - tmpfs tmpfs rw",
      "garbage without the separator",
      "",
      "x1 1 0:31 / /b rw - overlay ov rw",
      "31 1 0:31 / /c rw - overlay ov rw,lowerdir=/l1:/l2",
      "32 1 0:32 / /d rw - overlay ",
    ].join("\n");
    const r = parseMountInfo(t, { fstype: "overlay" });
    expect(r.mounts.map((m) => m.id)).toEqual([31]);
    expect(r.issues).toEqual([
      { line: 4, text: "x1 1 0:31 / /b rw - overlay ov rw", reason: "mount id is not a number" },
      { line: 6, text: "32 1 0:32 / /d rw - overlay ", reason: "missing super options" },
    ]);
    expect(() => parseMountInfo(t, { fstype: "overlay", strict: true })).toThrow(
      expect.objectContaining({ line: 4, reason: "mount id is not a number" }),
    );
  });
});
