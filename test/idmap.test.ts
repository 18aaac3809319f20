import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { appendFileSync, chmodSync, closeSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { ovl, requireBuiltCli } from "./cli-helpers.js";
import { native } from "../src/kernel/native.js";
import {
  killChild,
  namespaceChild,
  openFdCount,
  packageRootForNobody,
  rawMounts,
  realRoot,
  requirePrivateMountNamespace,
  runAsNobody,
  scratch,
  type Scratch,
} from "./helpers.js";

const MAP: overlay.IdMapping[] = [[0, 100000, 65536]];
const kernel = release();

let s: Scratch;
let children: ChildProcess[] = [];
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-idmap-");
  chmodSync(s.dir, 0o755);
});
afterEach(async () => {
  for (const c of children) await killChild(c);
  children = [];
  s.cleanup();
});

/** A lower of root-owned files (one in a subdirectory), an empty upper and work, and a mount point. */
function layout() {
  const [lower, upper, work, merged] = s.dirs("lower", "upper", "work", "merged");
  s.file("lower/file", "lower file");
  s.file("lower/dir/inner", "inner");
  return { lower: lower!, upper: upper!, work: work!, merged: merged! };
}

/** The mount table as lines (ids included), to compare before, during and after. */
const table = () => rawMounts().map((m) => `${m.id} ${m.target} ${m.fstype}`);

/** Runs `fn`, expecting it to fail, and checks that it left no mount and no fd behind. */
async function failsCleanly(fn: () => Promise<unknown>): Promise<overlay.OverlayError> {
  const before = table();
  const fds = openFdCount();
  const err = await fn().then(
    () => {
      throw new Error("expected a failure");
    },
    (e: unknown) => e as overlay.OverlayError,
  );
  expect(table()).toEqual(before);
  expect(openFdCount()).toBe(fds);
  return err;
}

describe.runIf(realRoot)("idmapped layers, as root", () => {
  it("shows a root-owned lower as the mapped owner, copies up with it, leaves the lower alone, and attaches nothing but the overlay", async () => {
    const { lower, upper, work, merged } = layout();
    const before = table();
    const fds = openFdCount();
    const m = await overlay.mount({ lower: [lower], upper, work, target: merged, idmap: { uidMap: MAP, gidMap: MAP } });
    // During: exactly one mount more, the overlay on the target; no layer mount anywhere.
    const during = rawMounts();
    expect(during.length).toBe(before.length + 1);
    const added = during.filter((x) => !before.includes(`${x.id} ${x.target} ${x.fstype}`));
    expect(added.map((x) => [x.target, x.fstype])).toEqual([[merged, "overlay"]]);
    expect(added[0]!.superOptions).toContain("lowerdir+=/,"); // how the kernel prints a detached layer
    expect(openFdCount()).toBe(fds); // the clones and the user namespace are closed; the overlay holds them

    expect(statSync(`${merged}/file`)).toMatchObject({ uid: 100000, gid: 100000 });
    expect(statSync(`${merged}/dir/inner`)).toMatchObject({ uid: 100000, gid: 100000 });
    appendFileSync(`${merged}/dir/inner`, " changed");
    expect(statSync(`${upper}/dir/inner`)).toMatchObject({ uid: 100000, gid: 100000 }); // copied up as mapped
    expect(statSync(`${upper}/dir`)).toMatchObject({ uid: 100000, gid: 100000 });
    expect(statSync(`${lower}/dir/inner`)).toMatchObject({ uid: 0, gid: 0 });
    expect(statSync(`${lower}/file`)).toMatchObject({ uid: 0, gid: 0 });
    expect(readFileSync(`${lower}/dir/inner`, "utf8")).toBe("inner");

    // The result names the real directories, and says they are detached mounts.
    expect(m.lower).toEqual([lower]);
    expect(m.upper).toBe(upper);
    expect(m.detached).toEqual({ lower: [0], data: [], pathsKnown: true });
    // list() reads the table, which cannot name the layer: marked, with the raw text kept.
    const [listed] = await overlay.list({ target: merged });
    expect(listed!.lower).toEqual(["/"]);
    expect(listed!.detached).toEqual({ lower: [0], data: [], pathsKnown: false });
    expect(listed!.upper).toBe(upper);
    // ...and the layer tools refuse to read `/` as if it were the layer.
    await expect(overlay.diff(merged)).rejects.toThrow(/detached/);

    await m.unmount();
    expect(table()).toEqual(before);
  });

  it("idmaps every lower layer of a stack, with separate uid and gid maps, and mountSync does the same", () => {
    const [l1, l2, merged] = s.dirs("l1", "l2", "merged");
    s.file("l1/top", "1");
    s.file("l2/bottom", "2");
    execFileSync("chown", ["1000:2000", `${l2}/bottom`]);
    const before = table();
    const m = overlay.mountSync({ lower: [l1!, l2!], target: merged!, idmap: { uidMap: [[0, 300000, 65536]], gidMap: [[0, 400000, 65536]] } });
    expect(statSync(`${merged}/top`)).toMatchObject({ uid: 300000, gid: 400000 });
    expect(statSync(`${merged}/bottom`)).toMatchObject({ uid: 301000, gid: 402000 });
    expect(m.lower).toEqual([l1, l2]);
    expect(m.detached).toEqual({ lower: [0, 1], data: [], pathsKnown: true });
    expect(rawMounts().length).toBe(before.length + 1);
    m.unmountSync();
    expect(table()).toEqual(before);
  });

  it("takes a user namespace made once (makeUserNamespace) by fd, and leaves that fd open for the next mount", async () => {
    const { lower, merged } = layout();
    const [l2] = s.dirs("l2");
    const ns = await overlay.makeUserNamespace({ uidMap: [[0, 500000, 1000]] });
    try {
      expect(readFileSync(`/proc/self/fdinfo/${ns.fd}`, "utf8")).toMatch(/flags:/);
      for (let round = 0; round < 2; round++) {
        const m = await overlay.mount({ lower: [lower, l2!], target: merged, idmap: { usernsFd: ns.fd } });
        expect(statSync(`${merged}/file`).uid).toBe(500000);
        expect(statSync(`${merged}/file`).gid).toBe(500000); // gidMap defaults to uidMap
        await m.unmount();
      }
    } finally {
      ns.close();
    }
    expect(ns.fd).toBe(-1);
  });

  it("takes the user namespace of a process (usernsPid) and a path to one (usernsPath)", async () => {
    const { lower, merged } = layout();
    const [l2] = s.dirs("l2");
    const c = spawn("unshare", ["-U", "sleep", "1000"], { stdio: "ignore" });
    children.push(c);
    for (let i = 0; i < 200 && readFileSync(`/proc/${c.pid}/comm`, "utf8").trim() !== "sleep"; i++) await new Promise((r) => setTimeout(r, 10));
    writeFileSync(`/proc/${c.pid}/uid_map`, "0 200000 65536\n");
    writeFileSync(`/proc/${c.pid}/gid_map`, "0 210000 65536\n");
    for (const idmap of [{ usernsPid: c.pid! }, { usernsPath: `/proc/${c.pid}/ns/user` }]) {
      const fds = openFdCount();
      const m = await overlay.mount({ lower: [lower, l2!], target: merged, idmap });
      expect(statSync(`${merged}/file`)).toMatchObject({ uid: 200000, gid: 210000 });
      expect(openFdCount()).toBe(fds);
      await m.unmount();
    }
  });

  it("probeIdmap: supported on this ext4 scratch dir, refused (with the reason) on an ext2 one; nothing left", async () => {
    const before = table();
    expect(await overlay.probeIdmap(s.dir)).toEqual({ supported: true });
    const [ext2] = s.dirs("ext2");
    const image = s.path("probe-ext2.img");
    execFileSync("truncate", ["-s", "8M", image]);
    execFileSync("mkfs.ext2", ["-q", image]);
    execFileSync("mount", ["-t", "ext2", "-o", "loop", image, ext2!]);
    const withExt2 = table();
    const refused = await overlay.probeIdmap(ext2!);
    expect(refused.supported).toBe(false);
    expect(!refused.supported && refused.error).toMatchObject({ code: "EINVAL", syscall: "mount_setattr" });
    expect(table()).toEqual(withExt2);
    expect(execFileSync("ls", ["-A", ext2!], { encoding: "utf8" }).trim()).toBe("lost+found");
    execFileSync("umount", [ext2!]);
    expect(table()).toEqual(before);
    expect(execFileSync("ls", ["-A", s.dir], { encoding: "utf8" }).trim().split("\n").sort()).toEqual(["ext2", "probe-ext2.img"]);
  });

  it("leaves no reference to the layer's filesystem: its loop device detaches once the overlay is gone, or after a failed mount", async () => {
    const [fsDir, upper, work, merged, both, ro] = s.dirs("fs", "upper", "work", "merged", "both", "ro");
    s.dirs("both/upper", "both/work");
    execFileSync("mount", ["--bind", both!, ro!]);
    execFileSync("mount", ["-o", "remount,bind,ro", ro!]);
    const image = s.path("layer.img");
    execFileSync("truncate", ["-s", "16M", image]);
    execFileSync("mkfs.ext4", ["-q", image]);
    const attached = () => execFileSync("losetup", ["-j", image], { encoding: "utf8" }).trim() !== "";
    /** Mounts the image (loop, autoclear), runs `use` on a layer in it, unmounts it: is its loop device still held? */
    const heldAfter = async (use: (layer: string) => Promise<void>) => {
      execFileSync("mount", ["-o", "loop", image, fsDir!]);
      execFileSync("mkdir", ["-p", `${fsDir}/layer`]);
      await use(`${fsDir}/layer`);
      execFileSync("umount", [fsDir!]);
      for (let i = 0; i < 50 && attached(); i++) await new Promise((r) => setTimeout(r, 20));
      return attached();
    };
    // The detector detects: a clone whose fd is still open keeps the filesystem, and so its loop device.
    let leaked: number[] = [];
    const ns = overlay.makeUserNamespaceSync({ uidMap: MAP });
    expect(
      await heldAfter(async (layer) => {
        const { paths } = native().openPathsSync([layer]);
        leaked = native().cloneIdmappedSync([paths[0]!.fd!], ns.fd);
        closeSync(paths[0]!.fd!);
      }),
    ).toBe(true);
    for (const fd of leaked) closeSync(fd);
    ns.close();
    for (let i = 0; i < 50 && attached(); i++) await new Promise((r) => setTimeout(r, 20));
    expect(attached()).toBe(false);
    // A mount and its unmount: nothing holds it after.
    expect(
      await heldAfter(async (layer) => {
        const m = await overlay.mount({ lower: [layer], upper: upper!, work: work!, target: merged!, idmap: { uidMap: MAP } });
        await m.unmount();
      }),
    ).toBe(false);
    // A mount refused after the layer was cloned (a read-only upper): nothing holds it either.
    expect(
      await heldAfter(async (layer) => {
        await expect(
          overlay.mount({ lower: [layer], upper: join(ro!, "upper"), work: join(ro!, "work"), target: merged!, idmap: { uidMap: MAP } }),
        ).rejects.toMatchObject({ code: "EINVAL", syscall: "fsconfig" });
      }),
    ).toBe(false);
  });

  it("idmaps data-only layers too, and list() marks them", async () => {
    const [l1, l2, data, merged] = s.dirs("l1", "l2", "data", "merged");
    const m = await overlay.mount({ lower: [l1!, l2!], data: [data!], target: merged!, idmap: { uidMap: MAP } });
    expect(m.superOptions.filter((o) => o.endsWith("=/"))).toEqual(["lowerdir+=/", "lowerdir+=/", "datadir+=/"]);
    expect(m.data).toEqual([data]);
    expect(m.detached).toEqual({ lower: [0, 1], data: [0], pathsKnown: true });
    const [listed] = await overlay.list({ target: merged! });
    expect(listed!.detached).toEqual({ lower: [0, 1], data: [0], pathsKnown: false });
    await m.unmount();
  });

  it("idmaps a tmpfs lower (tmpfs allows idmapped mounts on 6.18)", async () => {
    const [t, upper, work, merged] = s.dirs("tmpfs", "upper", "work", "merged");
    execFileSync("mount", ["-t", "tmpfs", "tmpfs", t!]);
    writeFileSync(`${t}/file`, "on tmpfs");
    const m = await overlay.mount({ lower: [t!], upper: upper!, work: work!, target: merged!, idmap: { uidMap: MAP } });
    expect(statSync(`${merged}/file`).uid).toBe(100000);
    await m.unmount();
  });

  describe("a failure at each step leaves nothing mounted and no fd open", () => {
    it("a map the checks refuse (overlapping lines, a count of 0, no lines, ids past 2^32-2)", async () => {
      const { lower, upper, work, merged } = layout();
      const bad: unknown[] = [
        [[0, 100000, 65536], [1000, 300000, 10]],
        [[0, 100000, 10], [10, 100005, 10]],
        [[0, 100000, 0]],
        [],
        [[0, 4294967290, 10]],
        [[0, -1, 10]],
        [[0, 1.5, 10]],
        "0:100000:65536",
      ];
      for (const uidMap of bad) {
        const err = await failsCleanly(() => overlay.mount({ lower: [lower], upper, work, target: merged, idmap: { uidMap } as overlay.IdMaps }));
        expect((err as unknown as { code: string }).code).toMatch(/^ERR_INVALID_ARG_(VALUE|TYPE)$/);
        expect(err.message).toMatch(/spec\.idmap\.uidMap/);
      }
      await expect(overlay.mount({ lower: [lower], target: merged, idmap: { uidMap: MAP, usernsFd: 3 } as never })).rejects.toThrow(/exactly one of/);
    });

    it("a map the kernel refuses at write (native: no child or fd is left)", () => {
      const fds = openFdCount();
      const kids = () => readFileSync(`/proc/self/task/${process.pid}/children`, "utf8").trim();
      const before = kids();
      let failure: { errno: number; syscall: string; path?: string } | undefined;
      try {
        native().newUsernsSync("0 100000 10\n5 200000 10\n", "0 100000 10\n", false);
      } catch (e) {
        failure = e as typeof failure;
      }
      expect(failure).toMatchObject({ errno: 22, syscall: "write" });
      expect(failure!.path).toMatch(/^\/proc\/\d+\/uid_map$/);
      expect(openFdCount()).toBe(fds);
      expect(kids()).toBe(before);
    });

    it("the strategy: string and legacy cannot take a detached layer", async () => {
      const { lower, upper, work, merged } = layout();
      for (const strategy of ["string", "legacy"] as const) {
        const err = await failsCleanly(() => overlay.mount({ lower: [lower], upper, work, target: merged, strategy, idmap: { uidMap: MAP } }));
        expect(err.message).toMatch(/spec\.strategy.*cannot be combined with spec\.idmap/);
      }
    });

    it("the user namespace: not a namespace, not a user namespace, the initial one, no such process", async () => {
      const { lower, upper, work, merged } = layout();
      const spec = { lower: [lower], upper, work, target: merged };
      const file = await import("node:fs").then((f) => f.openSync(`${lower}/file`, "r"));
      try {
        let err = await failsCleanly(() => overlay.mount({ ...spec, idmap: { usernsFd: file } }));
        expect(err.code).toBe("ENOTTY");
        expect(err.message).toMatch(new RegExp(`usernsFd ${file} is not a namespace`));
      } finally {
        closeSync(file);
      }
      let err = await failsCleanly(() => overlay.mount({ ...spec, idmap: { usernsPath: "/proc/self/ns/mnt" } }));
      expect(err.message).toMatch(/is a namespace, but not a user namespace/);
      err = await failsCleanly(() => overlay.mount({ ...spec, idmap: { usernsPath: "/proc/self/ns/user" } }));
      expect(err.code).toBe("EPERM"); // the initial user namespace cannot idmap
      expect(err.syscall).toBe("mount_setattr");
      expect(err.message).toContain(`Linux ${kernel}`);
      err = await failsCleanly(() => overlay.mount({ ...spec, idmap: { usernsPid: 2 ** 22 + 7 } }));
      expect(err.code).toBe("ENOENT");
      // A user namespace whose maps were never written maps no ids: the kernel will not idmap with it.
      const c = spawn("unshare", ["-U", "sleep", "1000"], { stdio: "ignore" });
      children.push(c);
      for (let i = 0; i < 200 && readFileSync(`/proc/${c.pid}/comm`, "utf8").trim() !== "sleep"; i++) await new Promise((r) => setTimeout(r, 10));
      expect(readFileSync(`/proc/${c.pid}/uid_map`, "utf8")).toBe("");
      err = await failsCleanly(() => overlay.mount({ ...spec, idmap: { usernsPid: c.pid! } }));
      expect(err).toMatchObject({ code: "EINVAL", syscall: "mount_setattr" });
      expect(err.hint).toMatch(/maps no ids/);
    });

    it("open_tree: a layer in another mount namespace cannot be cloned", async () => {
      const { lower, upper, work, merged } = layout();
      const c = await namespaceChild((x) => children.push(x));
      const err = await failsCleanly(() =>
        overlay.mount({ lower: [`/proc/${c.pid}/root${lower}`], upper, work, target: merged, idmap: { uidMap: MAP } }),
      );
      expect(err).toMatchObject({ code: "EINVAL", syscall: "open_tree" });
      expect(err.message).toContain(`Linux ${kernel}`);
      expect(err.message).toMatch(/statfs f_type 0x/);
      expect(err.hint).toMatch(/another mount namespace/);
    });

    it("mount_setattr: a nested overlay as a lower (after a first layer was cloned), proc, sysfs and ext2", async () => {
      const { lower, upper, work, merged } = layout();
      const [ou, ow, inner, ext2] = s.dirs("ou", "ow", "inner", "ext2");
      execFileSync("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${lower},upperdir=${ou},workdir=${ow}`, inner!]);
      let err = await failsCleanly(() => overlay.mount({ lower: [lower, inner!], upper, work, target: merged, idmap: { uidMap: MAP } }));
      expect(err).toMatchObject({ code: "EINVAL", syscall: "mount_setattr", path: inner });
      expect(err.message).toContain(`lower layer 2 '${inner}' cannot be idmapped`);
      expect(err.message).toContain(`on Linux ${kernel}: its filesystem is overlay (statfs f_type 0x794c7630)`);

      err = await failsCleanly(() => overlay.mount({ lower: ["/proc", lower], upper, work, target: merged, idmap: { uidMap: MAP } }));
      expect(err.message).toContain("its filesystem is proc (statfs f_type 0x9fa0)");
      err = await failsCleanly(() => overlay.mount({ lower: [lower, "/sys"], upper, work, target: merged, idmap: { uidMap: MAP } }));
      expect(err.message).toContain("its filesystem is sysfs (statfs f_type 0x62656572)");

      // ext2 is served by the ext4 driver here (same f_type), but registered without idmapped mounts.
      const image = s.path("ext2.img");
      execFileSync("truncate", ["-s", "8M", image]);
      execFileSync("mkfs.ext2", ["-q", image]);
      execFileSync("mount", ["-t", "ext2", "-o", "loop", image, ext2!]);
      err = await failsCleanly(() => overlay.mount({ lower: [ext2!, lower], upper, work, target: merged, idmap: { uidMap: MAP } }));
      expect(err.message).toContain("its filesystem is ext2 (statfs f_type 0xef53)");
    });

    it("fsconfig: a read-only upper refused after the lowers were cloned", async () => {
      const { lower, merged } = layout();
      const [both, ro] = s.dirs("both", "ro");
      s.dirs("both/upper", "both/work");
      execFileSync("mount", ["--bind", both!, ro!]);
      execFileSync("mount", ["-o", "remount,bind,ro", ro!]);
      const err = await failsCleanly(() =>
        overlay.mount({ lower: [lower], upper: join(ro!, "upper"), work: join(ro!, "work"), target: merged, idmap: { uidMap: MAP } }),
      );
      expect(err).toMatchObject({ code: "EINVAL", syscall: "fsconfig" });
      expect(err.message).toMatch(/read-only/);
    });
  });
});

describe("toOverlayMount: which layers the table shows as detached", () => {
  const entry = (superOptions: string) =>
    overlay.toOverlayMount(overlay.parseMountInfo(`90 30 0:50 / /m rw,relatime - overlay overlay ${superOptions}\n`, { strict: true }).mounts[0]!);
  it("marks every lowerdir+=/ and datadir+=/ (a detached tree's root), and nothing else", () => {
    expect(entry("rw,lowerdir+=/,lowerdir+=/b,datadir+=/,upperdir=/u,workdir=/w").detached).toEqual({ lower: [0], data: [0], pathsKnown: false });
    expect(entry("ro,lowerdir+=/a,lowerdir+=/").detached).toEqual({ lower: [1], data: [], pathsKnown: false });
    expect(entry("ro,lowerdir+=/a,lowerdir+=/b").detached).toBeUndefined();
    expect(entry("ro,lowerdir+=/a/,lowerdir+=//").detached).toBeUndefined(); // not exactly `/`
    expect(entry("ro,lowerdir=/:/b").detached).toBeUndefined(); // legacy: printed as typed, a real `/`
  });
});

describe("parseIdmap: util-linux's X-mount.idmap spelling", () => {
  it("reads bare, u:, g: and b: entries and namespace paths", () => {
    expect(overlay.parseIdmap("0:100000:65536")).toEqual({ uidMap: [[0, 100000, 65536]], gidMap: [[0, 100000, 65536]] });
    expect(overlay.parseIdmap("u:0:100000:65536 g:0:200000:65536")).toEqual({ uidMap: [[0, 100000, 65536]], gidMap: [[0, 200000, 65536]] });
    expect(overlay.parseIdmap(" b:0:1:1  u:1:2:3 ")).toEqual({ uidMap: [[0, 1, 1], [1, 2, 3]], gidMap: [[0, 1, 1]] });
    expect(overlay.parseIdmap("/proc/42/ns/user")).toEqual({ usernsPath: "/proc/42/ns/user" });
    expect(() => overlay.parseIdmap("0:100000")).toThrow(/not \[u:\|g:\|b:\]inside:outside:count/);
    expect(() => overlay.parseIdmap("u:0:1:1")).toThrow(/maps no gids/);
    expect(() => overlay.parseIdmap("")).toThrow(/is empty/);
  });
});

describe.runIf(realRoot)("ovl mount --idmap, -o X-mount.idmap=, ovl run --idmap", () => {
  beforeAll(() => requireBuiltCli());

  it("mounts idmapped from either spelling, lists the layer as detached, and refuses bad values as usage errors", async () => {
    const { lower, upper, work, merged } = layout();
    const [l2] = s.dirs("l2");
    const before = table();
    let r = await ovl(["mount", "--lower", lower, "--upper", upper, "--work", work, "--idmap", "0:100000:65536", merged]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(statSync(`${merged}/file`)).toMatchObject({ uid: 100000, gid: 100000 });
    r = await ovl(["ls", "-r", "-n", "-o", "TARGET,LOWER,UPPER", merged]);
    expect(r.stdout).toBe(`${merged} (detached) ${upper}`);
    r = await ovl(["ls", "--json", merged]);
    expect(JSON.parse(r.stdout)[0]).toMatchObject({ lower: ["/"], detached: { lower: [0], data: [], pathsKnown: false } });
    expect((await ovl(["umount", merged])).exitCode).toBe(0);

    r = await ovl(["mount", "-o", `lowerdir=${lower}:${l2},X-mount.idmap=u:0:100000:65536 g:0:200000:65536`, merged]);
    expect(r.stderr).toBe("");
    expect(statSync(`${merged}/file`)).toMatchObject({ uid: 100000, gid: 200000 });
    expect((await ovl(["umount", merged])).exitCode).toBe(0);
    expect(table()).toEqual(before);

    r = await ovl(["mount", "--lower", lower, "--lower", l2!, "--idmap", "0:100000", merged]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("--idmap 0:100000: has '0:100000', which is not [u:|g:|b:]inside:outside:count");
    r = await ovl(["mount", "--lower", lower, "--lower", l2!, "--idmap", "0:1:1", "-o", "X-mount.idmap=0:1:1", merged]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("--idmap and -o X-mount.idmap= both give the idmap");
    r = await ovl(["mount", "--lower", lower, "--lower", "/proc", "--idmap", "0:100000:65536", merged]);
    expect(r.exitCode).toBe(32);
    expect(r.stderr).toContain(`ovl: mount ${merged}: lower layer 2 '/proc' cannot be idmapped (mount_setattr MOUNT_ATTR_IDMAP) on Linux ${kernel}: its filesystem is proc`);
    expect(table()).toEqual(before);
  });

  it("ovl run --idmap: the command sees the mapped owners; a namespace path is refused (the run has its own /proc)", async () => {
    const { lower } = layout();
    let r = await ovl(["run", "--lower", lower, "--tmp", "--idmap", "0:100000:65536", "--", "stat", "-c", "%u:%g", "file"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("100000:100000");
    expect(r.exitCode).toBe(0);
    r = await ovl(["run", "--lower", lower, "--tmp", "--idmap", "/proc/self/ns/user", "--", "true"]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("ovl run --idmap takes maps, not a user namespace file");
  });
});

const dist = join(packageRootForNobody, "dist", "index.js");

// Switching to user nobody needs real root; CI runs as root, so these run there.
describe.runIf(realRoot)("idmapped layers, rootless (nobody in unshare -Urm)", () => {
  it("idmaps a tmpfs mounted in the user namespace with a mapped range; refuses a host filesystem and an unmapped range, clearly", () => {
    const [hostLower] = s.dirs("host-lower");
    s.file("host-lower/file", "x");
    execFileSync("chown", ["-R", "65534:65534", s.dir]);
    const root = JSON.stringify(s.dir);
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { mkdirSync, writeFileSync, statSync, readFileSync, appendFileSync } from "node:fs";
      import { execFileSync } from "node:child_process";
      const root = ${root};
      const out = {};
      const table = () => readFileSync("/proc/self/mountinfo", "utf8").split("\\n").filter((l) => l.includes(root));
      // A tmpfs mounted here belongs to this user namespace, so this namespace may idmap it.
      mkdirSync(root + "/t");
      execFileSync("mount", ["-t", "tmpfs", "tmpfs", root + "/t"]);
      for (const d of ["l", "u", "w", "m"]) mkdirSync(root + "/t/" + d);
      writeFileSync(root + "/t/l/file", "x");
      const m = await overlay.mount({ lower: [root + "/t/l"], upper: root + "/t/u", work: root + "/t/w", target: root + "/t/m", idmap: { uidMap: [[0, 0, 1]] } });
      appendFileSync(root + "/t/m/file", "y");
      out.mounted = { uid: statSync(root + "/t/m/file").uid, upperUid: statSync(root + "/t/u/file").uid, detached: m.detached, lower: m.lower, userxattr: m.features.userxattr, table: table().map((l) => l.split(" - ")[1].split(" ")[0]) };
      await m.unmount();
      out.after = table().length;
      for (const [name, spec] of [
        ["host", { lower: [${JSON.stringify(hostLower)}, root + "/t/l"], target: root + "/t/m", idmap: { uidMap: [[0, 0, 1]] } }],
        ["unmapped", { lower: [root + "/t/l", root + "/t/u"], target: root + "/t/m", idmap: { uidMap: [[0, 1, 1]] } }],
      ]) {
        try { await overlay.mount(spec); out[name] = "mounted"; } catch (e) { out[name] = { code: e.code, syscall: e.syscall, message: e.message, hint: e.hint }; }
      }
      out.final = table().length;
      console.log(JSON.stringify(out));`;
    const hostFs = execFileSync("findmnt", ["-n", "-o", "FSTYPE", "-T", hostLower!], { encoding: "utf8" }).trim();
    const r = runAsNobody(script, { userNamespace: true });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, any>;
    expect(out.mounted).toEqual({ uid: 0, upperUid: 0, detached: { lower: [0], data: [], pathsKnown: true }, lower: [`${s.dir}/t/l`], userxattr: true, table: ["tmpfs", "overlay"] });
    expect(out.after).toBe(1); // the tmpfs only
    // A host filesystem belongs to the initial user namespace: no idmapping from inside a user namespace.
    expect(out.host).toMatchObject({ code: "EPERM", syscall: "mount_setattr" });
    expect(out.host.message).toContain(`lower layer 1 '${hostLower}' cannot be idmapped (mount_setattr MOUNT_ATTR_IDMAP) on Linux ${kernel}: its filesystem is ${hostFs}`);
    expect(out.host.hint).toMatch(/CAP_SYS_ADMIN over the layer's filesystem/);
    // Only the ids mapped into this namespace can be mapped again: the kernel refuses the map itself.
    expect(out.unmapped).toMatchObject({ code: "EPERM", syscall: "write" });
    expect(out.unmapped.message).toMatch(/the kernel refused the uid map/);
    expect(out.final).toBe(1);
  });
});
