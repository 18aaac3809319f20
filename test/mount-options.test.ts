/** mount(8)-style `-o` strings: parsing, and agreement with what the kernel mounts for the same string. */
import fc from "fast-check";
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { MountOptionError, parseMountOptions, splitOptionString } from "../src/mounting/mount-options.js";
import { list } from "../src/table/table.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

/** Escapes a path for a `lowerdir=` list by hand (kept apart from src/ so the parser is not checked with itself). */
const esc = (p: string) => p.replace(/\\/g, "\\\\").replace(/:/g, "\\:").replace(/,/g, "\\,");

describe("splitOptionString", () => {
  it("splits on commas that no backslash escapes, keeping the escapes", () => {
    expect(splitOptionString("a,b\\,c,d\\\\,e")).toEqual(["a", "b\\,c", "d\\\\", "e"]);
  });
  it("drops empty options", () => {
    expect(splitOptionString(",a,,b,")).toEqual(["a", "b"]);
  });
});

describe("parseMountOptions", () => {
  it("reads lowerdir= (top-most first), upperdir=, workdir=", () => {
    expect(parseMountOptions("lowerdir=/a:/b:/c,upperdir=/u,workdir=/w")).toEqual({
      lower: ["/a", "/b", "/c"],
      upper: "/u",
      work: "/w",
      options: {},
      flags: {},
    });
  });

  it("reads data-only layers after :: in lowerdir=", () => {
    const o = parseMountOptions("lowerdir=/a:/b::/d1::/d2");
    expect(o.lower).toEqual(["/a", "/b"]);
    expect(o.data).toEqual(["/d1", "/d2"]);
  });

  it("takes overlay's escapes: \\: \\, and \\\\ in layer paths", () => {
    const o = parseMountOptions("lowerdir=/x\\:y:/p\\,q,upperdir=/u\\,1,workdir=/w\\\\2");
    expect(o.lower).toEqual(["/x:y", "/p,q"]);
    expect(o.upper).toBe("/u,1");
    expect(o.work).toBe("/w\\2");
  });

  it("reads lowerdir+= and datadir+= one layer each, in order", () => {
    const o = parseMountOptions("lowerdir+=/a,lowerdir+=/b:c,datadir+=/d");
    expect(o.lower).toEqual(["/a", "/b:c"]);
    expect(o.data).toEqual(["/d"]);
  });

  it("takes lowerdir+= and datadir+= paths literally, backslashes included, as the kernel does", () => {
    const o = parseMountOptions(String.raw`lowerdir+=/r/e\f,lowerdir+=/r/g\:h,datadir+=/r/x\y,upperdir=/r/u\v,workdir=/r/w`);
    expect(o.lower).toEqual([String.raw`/r/e\f`, String.raw`/r/g\:h`]);
    expect(o.data).toEqual([String.raw`/r/x\y`]);
    expect(o.upper).toBe("/r/uv"); // upperdir= loses its escapes
  });

  it("maps every overlay feature option to the typed options", () => {
    const o = parseMountOptions(
      "redirect_dir=follow,index=on,nfs_export=off,xino=auto,metacopy=off,volatile,userxattr,uuid=null,verity=require,default_permissions",
    );
    expect(o.options).toEqual({
      redirectDir: "follow",
      index: true,
      nfsExport: false,
      xino: "auto",
      metacopy: false,
      volatile: true,
      userxattr: true,
      uuid: "null",
      verity: "require",
      defaultPermissions: true,
    });
    expect(parseMountOptions("fsync=volatile").options).toEqual({ volatile: true });
  });

  it("maps the generic flags, applying them left to right as mount(8) does", () => {
    expect(parseMountOptions("ro,nosuid,nodev,noexec,nodiratime,nosymfollow,sync,dirsync,lazytime").flags).toEqual({
      readonly: true,
      nosuid: true,
      nodev: true,
      noexec: true,
      nodiratime: true,
      nosymfollow: true,
      sync: true,
      dirsync: true,
      lazytime: true,
    });
    expect(parseMountOptions("ro,nosuid,rw,suid").flags).toEqual({});
    // One atime mode replaces another.
    expect(parseMountOptions("noatime,relatime,strictatime").flags).toEqual({ strictatime: true });
    expect(parseMountOptions("strictatime,noatime").flags).toEqual({ noatime: true });
    expect(parseMountOptions("ro,nosuid,defaults").flags).toEqual({});
  });

  it("reads several -o strings as one", () => {
    const o = parseMountOptions(["lowerdir=/a:/b", "nosuid", "index=off"]);
    expect(o).toEqual({ lower: ["/a", "/b"], options: { index: false }, flags: { nosuid: true } });
  });

  it("refuses an unknown option, naming it", () => {
    expect(() => parseMountOptions("lowerdir=/a,bogus,nosuid")).toThrow(MountOptionError);
    expect(() => parseMountOptions("lowerdir=/a,bogus")).toThrow(
      expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE", option: "bogus", message: "unknown mount option 'bogus'" }),
    );
  });

  it("refuses a value outside an option's set, naming the option and the values", () => {
    expect(() => parseMountOptions("redirect_dir=maybe")).toThrow(/'redirect_dir=maybe'.*redirect_dir=on/);
    expect(() => parseMountOptions("index")).toThrow(/'index' needs one of the values index=on, index=off/);
    expect(() => parseMountOptions("volatile=on")).toThrow(/'volatile' takes no value/);
    expect(() => parseMountOptions("ro=1")).toThrow(/'ro' takes no value/);
  });

  it("refuses empty layers and lowerdir= mixed with lowerdir+=", () => {
    expect(() => parseMountOptions("lowerdir=")).toThrow(/'lowerdir=' needs a directory/);
    expect(() => parseMountOptions("upperdir")).toThrow(/'upperdir' needs a directory/);
    expect(() => parseMountOptions("lowerdir=::")).toThrow(/names no lower layer/);
    expect(() => parseMountOptions("lowerdir=/a,lowerdir+=/b")).toThrow(/cannot be combined/);
  });

  it("gives back any list of paths joined with overlay's escapes (property)", () => {
    const segment = fc.stringMatching(/^[a-z:,\\ ]{1,6}$/);
    const path = fc.array(segment, { minLength: 1, maxLength: 3 }).map((parts) => `/${parts.join("/")}`);
    fc.assert(
      fc.property(fc.array(path, { minLength: 1, maxLength: 4 }), fc.array(path, { maxLength: 2 }), path, (lower, data, upper) => {
        const lowerdir = lower.map(esc).join(":") + data.map((d) => `::${esc(d)}`).join("");
        const o = parseMountOptions(`lowerdir=${lowerdir},upperdir=${esc(upper)},workdir=/w,nosuid`);
        expect(o.lower).toEqual(lower);
        expect(o.data ?? []).toEqual(data);
        expect(o.upper).toBe(upper);
        expect(o.flags).toEqual({ nosuid: true });
      }),
    );
  });
});

describe("agreement with the kernel (util-linux mount(8) given the same string)", () => {
  beforeAll(() => requirePrivateMountNamespace());
  let s: Scratch;
  beforeEach(() => {
    s = scratch("ovl-mopts-");
  });
  afterEach(() => s.cleanup());

  it("names the same layers as the kernel mounts, in both lowerdir forms", async () => {
    const names = [String.raw`e\f`, "c:d", "plain", String.raw`ef`, "g,h", "end\\"];
    for (const n of names) s.dirs(`layers/${n}`);
    const [upper, work, m1, m2] = s.dirs("upper", "work", "m1", "m2");
    const L = (n: string) => `${s.dir}/layers/${n}`;
    const strings = [
      // new-API form: literal paths (neither a comma nor a trailing backslash, which would escape the next comma)
      `lowerdir+=${L(String.raw`e\f`)},lowerdir+=${L("c:d")},lowerdir+=${L("plain")},upperdir=${upper},workdir=${work}`,
      // legacy form: overlay's escapes
      `lowerdir=${esc(L(String.raw`e\f`))}:${esc(L("c:d"))}:${esc(L("g,h"))}:${esc(L("end\\"))},upperdir=${upper},workdir=${work}`,
    ];
    for (const [i, text] of strings.entries()) {
      const target = i === 0 ? m1! : m2!;
      execFileSync("mount", ["-t", "overlay", "overlay", "-o", text, target]);
      const [kernel] = await list({ target });
      expect(kernel, text).toBeDefined();
      expect(parseMountOptions(text).lower, text).toEqual(kernel!.lower);
      execFileSync("umount", [target]);
      rmSync(work!, { recursive: true });
      s.dirs("work");
    }
  });
});

describe("userxattr=off", () => {
  it("is ovl's spelling of the library's userxattr: false; the bare flag and userxattr=on still turn it on", () => {
    expect(parseMountOptions("lowerdir=/a:/b,userxattr=off").options).toEqual({ userxattr: false });
    expect(parseMountOptions("lowerdir=/a:/b,userxattr").options).toEqual({ userxattr: true });
    expect(parseMountOptions("lowerdir=/a:/b,userxattr=on").options).toEqual({ userxattr: true });
    expect(() => parseMountOptions("lowerdir=/a:/b,userxattr=maybe")).toThrow(/userxattr=on, userxattr=off/);
  });
});

