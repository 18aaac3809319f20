/**
 * The CLI on paths that are not UTF-8 (issue 11), from a shell: arguments are taken as the bytes given,
 * tables show undecodable bytes as `\xff`, and `--json` stays valid JSON that gives the bytes back. Node cannot
 * pass such bytes to a child (its argv is strings), so bash's `$'\xff'` quoting does, as a user's shell would.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { cleanEnv, cliPath, requireBuiltCli } from "./cli-helpers.js";
import { mountsUnder, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => {
  requirePrivateMountNamespace();
  requireBuiltCli();
});
beforeEach(() => {
  s = scratch("ovl-clibytes-");
});
afterEach(() => s.cleanup());

/** One argument as bash's ANSI-C quoting: every byte written as \xNN, so the shell passes exactly these bytes. */
const shellBytes = (arg: string | Buffer) => `$'${[...Buffer.from(arg)].map((b) => `\\x${b.toString(16).padStart(2, "0")}`).join("")}'`;

/** `ovl ARGS...` run by bash, each argument passed as its exact bytes. */
function ovlBytes(args: (string | Buffer)[]) {
  const line = ["exec", shellBytes(process.execPath), shellBytes(cliPath), ...args.map(shellBytes)].join(" ");
  return execa("bash", ["-c", line], { reject: false, extendEnv: false, env: cleanEnv(), encoding: "buffer" }).then((r) => ({
    exitCode: r.exitCode,
    stdout: Buffer.from(r.stdout as Uint8Array),
    stderr: Buffer.from(r.stderr as Uint8Array),
  }));
}

const B = (...parts: (string | number[] | Buffer)[]) => Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p))));

describe("ovl on non-UTF-8 paths", () => {
  it("mount, ls (table, JSON, TARGET), diff, which and umount of the right one, byte for byte", async () => {
    const dir = s.dir;
    const lower = B(dir, "/l", [0xff]);
    const t1 = B(dir, "/t", [0xff]);
    const t2 = B(dir, "/t", [0xef, 0xbf, 0xbd]); // what a lossy decoding makes of t\xff
    for (const d of [lower, t1, t2, B(dir, "/u"), B(dir, "/w"), B(dir, "/u2"), B(dir, "/w2")]) mkdirSync(d);
    writeFileSync(B(lower, "/f", [0xfe]), "x");

    const m1 = await ovlBytes(["mount", "--lower", lower, "--upper", `${dir}/u`, "--work", `${dir}/w`, t1]);
    expect([m1.exitCode, m1.stderr.toString()]).toEqual([0, ""]);
    const m2 = await ovlBytes(["mount", "--lower", lower, "--upper", `${dir}/u2`, "--work", `${dir}/w2`, t2]);
    expect(m2.exitCode).toBe(0);

    const ls = (await ovlBytes(["ls"])).stdout.toString();
    expect(ls).toContain(`${dir}/t\\xff `); // escaped, as ls -b shows it
    expect(ls).toContain(`${dir}/t\ufffd `); // a real U+FFFD, shown as itself
    expect(ls).toContain(`${dir}/l\\xff`);

    const json = JSON.parse((await ovlBytes(["ls", "--json"])).stdout.toString()) as { target: string; lower: string[] }[];
    const mine = json.filter((e) => e.target.startsWith(dir));
    expect(mine.map((e) => overlay.pathToBuffer(e.target)).sort(Buffer.compare)).toEqual([t1, t2].sort(Buffer.compare));
    expect(overlay.pathToBuffer(mine.find((e) => e.target.endsWith("\udcff"))!.lower[0]!)).toEqual(lower);

    const one = await ovlBytes(["ls", t1]);
    expect(one.exitCode).toBe(0);
    expect(one.stdout.toString().split("\n").filter((l) => l.startsWith(dir))).toEqual([expect.stringMatching(/^\S+\/t\\xff\s/)]);

    writeFileSync(B(t1, "/new", [0x80]), "y");
    const d = await ovlBytes(["diff", t1]);
    expect([d.exitCode, d.stdout.toString()]).toEqual([0, "A /new\\x80"]);
    const dj = JSON.parse((await ovlBytes(["diff", t1, "--json"])).stdout.toString()) as { path: string }[];
    expect(dj.map((c) => overlay.pathToBuffer(c.path))).toEqual([B("/new", [0x80])]);

    const w = await ovlBytes(["which", B(t1, "/f", [0xfe])]);
    expect(w.exitCode).toBe(0);
    expect(w.stdout.toString()).toContain(`${dir}/l\\xff/f\\xfe`);

    const u = await ovlBytes(["umount", t1]);
    expect(u.exitCode).toBe(0);
    expect(mountsUnder(dir).map((r) => r.targetBytes)).toEqual([t2]); // the other one stays
    expect((await ovlBytes(["umount", t2])).exitCode).toBe(0);
    expect(mountsUnder(dir)).toEqual([]);
  });

  it("ls -F reads a saved mountinfo file (non-UTF-8 names kept), and refuses a missing one", async () => {
    const file = `${s.dir}/saved`;
    writeFileSync(
      file,
      Buffer.concat([
        Buffer.from("24 1 0:22 / / rw - ext4 /dev/sda1 rw\n"),
        Buffer.from("40 24 0:40 / /srv/t"),
        Buffer.from([0xff]),
        Buffer.from(" rw - overlay overlay rw,lowerdir+=/srv/l\\134x,upperdir=/srv/u,workdir=/srv/w\n"),
        Buffer.from("41 24 0:41 /  /x rw - tmpfs tmpfs rw\n"), // an empty field: reported, not read one field off
      ]),
    );
    const r = await ovlBytes(["ls", "-F", file]);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.toString().split("\n");
    expect(lines[1]).toMatch(/^\/srv\/t\\xff\s+overlay\s+\/srv\/l\\\\x\s+\/srv\/u\s+\/srv\/w\s+rw$/);
    const all = await ovlBytes(["ls", "-F", file, "--all", "--json"]);
    const entries = JSON.parse(all.stdout.toString()) as { target: string }[];
    expect(entries.map((e) => e.target)).toEqual(["/", "/srv/t\udcff"]);
    expect(all.stderr.toString()).toContain("skipped mountinfo line 3: empty mount point field");
    expect((await ovlBytes(["ls", "-F", file, B("/srv/t", [0xff])])).stdout.toString()).toContain("/srv/t\\xff");
    const missing = await ovlBytes(["ls", "-F", `${s.dir}/nope`]);
    expect([missing.exitCode, missing.stderr.toString()]).toEqual([1, expect.stringContaining("cannot read the mountinfo file")]);
    const both = await ovlBytes(["ls", "-F", file, "--pid", "1"]);
    expect(both.exitCode).toBe(1);
    expect(readFileSync(file).length).toBeGreaterThan(0);
  });
});
