/** findHolders(): real processes holding a real overlay, checked against what umount2(2) says. */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, chmodSync, mkdirSync, openSync, readFileSync, readlinkSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { findHolders, submountsOf, unmountOrder } from "../src/table/fuser.js";
import * as overlay from "../src/index.js";
import type { MountInfo } from "../src/types.js";
import { killChild, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
let children: ChildProcess[] = [];
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-fuser-");
  children = [];
});
afterEach(async () => {
  for (const c of children) await killChild(c);
  s.cleanup();
});

async function mounted() {
  const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
  s.file("l1/file", "from l1");
  s.dirs("l1/sub");
  await overlay.mount({ lower: [l1!, l2!], upper: upper!, work: work!, target: merged! });
  return { l1: l1!, merged: merged! };
}

/** Starts a process and waits until `ready()` says it has reached the state the test needs. */
async function start(cmd: string, args: string[], opts: Parameters<typeof spawn>[2], ready: (pid: number) => boolean) {
  const child = spawn(cmd, args, { stdio: "ignore", ...opts });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("spawn", () => resolve());
  });
  const pid = child.pid!;
  for (let i = 0; i < 200; i++) {
    let ok = false;
    try {
      ok = ready(pid);
    } catch {
      ok = false;
    }
    if (ok) return pid;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${cmd} (pid ${pid}) never became ready`);
}

const comm = (pid: number) => readFileSync(`/proc/${pid}/comm`, "utf8").trim();

describe("findHolders", () => {
  it("finds a process whose working directory is on the mount", async () => {
    const { merged } = await mounted();
    const pid = await start("sleep", ["1000"], { cwd: `${merged}/sub` }, (p) => comm(p) === "sleep");
    const holders = await findHolders(merged);
    expect(holders.map((h) => h.pid)).toEqual([pid]);
    expect(holders[0]).toEqual({
      pid,
      command: "sleep",
      uid: 0,
      uses: ["cwd"],
      files: [{ use: "cwd", path: `${merged}/sub` }],
    });
    expect(holders.mount.target).toBe(merged);
    await expect(overlay.umount(merged)).rejects.toMatchObject({ code: "EBUSY" });
  });

  it("finds an open file, with its descriptor, and not this process once it closed its copy", async () => {
    const { merged } = await mounted();
    const fd = openSync(`${merged}/file`, "r");
    let pid: number;
    try {
      pid = await start("sleep", ["1000"], { stdio: [fd, "ignore", "ignore"] }, (p) => comm(p) === "sleep");
    } finally {
      closeSync(fd);
    }
    const holders = await findHolders(merged);
    expect(holders.map((h) => h.pid)).toEqual([pid]);
    expect(holders[0]!.uses).toEqual(["open"]);
    expect(holders[0]!.files).toEqual([{ use: "open", path: `${merged}/file`, fd: 0 }]);
  });

  it("lists this process too when it really holds the mount", async () => {
    const { merged } = await mounted();
    const fd = openSync(`${merged}/file`, "r");
    try {
      const holders = await findHolders(merged);
      expect(holders.find((h) => h.pid === process.pid)?.files).toContainEqual({ use: "open", path: `${merged}/file`, fd });
    } finally {
      closeSync(fd);
    }
    expect((await findHolders(merged)).map((h) => h.pid)).not.toContain(process.pid);
  });

  it("finds a running executable on the mount, and a library mapped from it", async () => {
    const { l1, merged } = await mounted();
    copyFileSync("/bin/sleep", `${l1}/sleep`);
    chmodSync(`${l1}/sleep`, 0o755);
    const exePid = await start(`${merged}/sleep`, ["1000"], {}, (p) => readlinkSync(`/proc/${p}/exe`) === `${merged}/sleep`);

    // The C library this Node uses, copied onto the overlay and loaded from there by an ordinary sleep.
    const libc = readFileSync("/proc/self/maps", "utf8").match(/\s(\/\S*\/libc\.so\.6)$/m)?.[1];
    expect(libc).toBeDefined();
    mkdirSync(`${l1}/lib`);
    copyFileSync(libc!, `${l1}/lib/libc.so.6`);
    const mapPid = await start("sleep", ["1000"], { env: { ...process.env, LD_LIBRARY_PATH: `${merged}/lib` } }, (p) =>
      readFileSync(`/proc/${p}/maps`, "utf8").includes(`${merged}/lib/libc.so.6`),
    );

    const holders = await findHolders(merged);
    expect(holders.map((h) => h.pid)).toEqual([exePid, mapPid].sort((a, b) => a - b));
    const exe = holders.find((h) => h.pid === exePid)!;
    expect(exe.uses).toEqual(["exe"]);
    expect(exe.files).toEqual([{ use: "exe", path: `${merged}/sleep` }]);
    const map = holders.find((h) => h.pid === mapPid)!;
    expect(map.uses).toEqual(["map"]);
    expect(map.files).toEqual([{ use: "map", path: `${merged}/lib/libc.so.6` }]);
  });

  it("finds a process whose root directory is on the mount", async () => {
    const { merged } = await mounted();
    const pid = await start("perl", ["-e", 'chroot($ARGV[0]) or die "chroot: $!"; chdir "/"; sleep 1000', merged], {}, (p) =>
      readlinkSync(`/proc/${p}/root`) !== "/",
    );
    const holders = await findHolders(merged);
    expect(holders.map((h) => h.pid)).toEqual([pid]);
    expect(holders[0]!.uses).toEqual(["cwd", "root"]);
  });

  it("matches by mount, not by path: the directory under the mount point is not the mount", async () => {
    const [l1, l2, upper, work, merged] = s.dirs("l1", "l2", "upper", "work", "merged");
    s.dirs("merged-other");
    // Sits in the mount point's directory before the overlay covers it, and in a sibling with a similar name.
    await start("sleep", ["1000"], { cwd: merged }, (p) => comm(p) === "sleep");
    await start("sleep", ["1000"], { cwd: s.path("merged-other") }, (p) => comm(p) === "sleep");
    await overlay.mount({ lower: [l1!, l2!], upper: upper!, work: work!, target: merged! });
    expect(await findHolders(merged!)).toEqual([]);
    await overlay.umount(merged!); // the kernel agrees: nothing holds it
  });

  it("finds a process in another mount namespace that holds this mount through a descriptor", async () => {
    const { merged } = await mounted();
    const fd = openSync(`${merged}/file`, "r");
    let inherited: number;
    try {
      inherited = await start("unshare", ["-m", "--propagation", "private", "sleep", "1000"], { stdio: [fd, "ignore", "ignore"] }, (p) =>
        comm(p) === "sleep" && readlinkSync(`/proc/${p}/ns/mnt`) !== readlinkSync("/proc/self/ns/mnt"),
      );
    } finally {
      closeSync(fd);
    }
    // And one that sits in its own copy of the mount: that copy is not this mount, and does not keep it busy.
    const copy = await start("unshare", ["-m", "--propagation", "private", "sleep", "1000"], { cwd: merged }, (p) => comm(p) === "sleep");
    const holders = await findHolders(merged);
    expect(holders.map((h) => h.pid)).toEqual([inherited]);
    expect(holders.map((h) => h.pid)).not.toContain(copy);
    expect(holders[0]!.uses).toEqual(["open"]);
  });

  it("counts files on the mounts below the target, which keep it busy too", async () => {
    const { merged } = await mounted();
    const sub = `${merged}/sub`;
    await overlay.mount({ lower: [...s.dirs("m1", "m2")], target: sub });
    const pid = await start("sleep", ["1000"], { cwd: sub }, (p) => comm(p) === "sleep");
    expect((await findHolders(merged)).map((h) => h.pid)).toEqual([pid]);
    expect((await submountsOf(merged)).map((m) => m.target)).toEqual([sub]);
  });

  it("looks at the mount containing a path that is not a mount point", async () => {
    const { merged } = await mounted();
    const pid = await start("sleep", ["1000"], { cwd: merged }, (p) => comm(p) === "sleep");
    const holders = await findHolders(`${merged}/sub`);
    expect(holders.mount.target).toBe(merged);
    expect(holders.map((h) => h.pid)).toEqual([pid]);
  });

  it("names a missing path with ENOENT, and refuses a non-string", async () => {
    await expect(findHolders(s.path("nope"))).rejects.toMatchObject({ code: "ENOENT", path: s.path("nope") });
    await expect(findHolders(42 as unknown as string)).rejects.toMatchObject({ code: "ERR_INVALID_ARG_TYPE" });
  });
});

describe("unmountOrder", () => {
  const m = (id: number, parentId: number, target: string): MountInfo => ({
    id,
    parentId,
    major: 0,
    minor: id,
    root: "/",
    target,
    mountOptions: ["rw"],
    optionalFields: [],
    fstype: "tmpfs",
    source: "t",
    superOptions: ["rw"],
  });

  it("puts children before parents, later siblings first, and leaves out other trees", () => {
    const table = [m(1, 1, "/"), m(2, 1, "/a"), m(3, 2, "/a/x"), m(4, 2, "/a/y"), m(5, 3, "/a/x/z"), m(6, 1, "/b"), m(7, 2, "/a/x")];
    expect(unmountOrder(table, 2).map((x) => x.id)).toEqual([7, 4, 5, 3, 2]);
    expect(unmountOrder(table, 6).map((x) => x.id)).toEqual([6]);
  });
});
