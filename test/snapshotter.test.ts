/**
 * ovl as containerd's proxy snapshotter (issue 14), against the real containerd, runc and ctr: a containerd of
 * the test's own (test/containerd-helpers.ts says what that takes) with `ovl snapshotter` as the proxy plugin
 * `ovl`. An image built offline (four layers: deletions, a removed and a replaced directory, an opaque
 * directory, a symlink, a hard link) is imported and run through ovl and through containerd's own `overlayfs`
 * snapshotter, which must give the same root filesystem; ctr's view of the snapshots must be ovl's store's;
 * both restart; and nothing is left behind: no process, no mount, no cgroup.
 */
import { type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliPath, ovl, requireBuiltCli } from "./cli-helpers.js";
import {
  buildTestImage,
  cgroupsNamed,
  type Containerd,
  killTree,
  makeShared,
  missingContainerdTools,
  mountsUnderIn,
  type OvlSnapshotter,
  PROBE,
  PROBE_EXPECTED,
  processesMentioning,
  removeCgroups,
  startContainerd,
  startOvlSnapshotter,
} from "./containerd-helpers.js";
import { alive, mountsUnder, realRoot, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const missing = missingContainerdTools();
const reason = !realRoot ? "they need real root" : missing.length > 0 ? `${missing.join(", ")} not installed (CI installs them)` : undefined;
if (reason !== undefined && !process.env.CI) console.warn(`containerd snapshotter tests skipped: ${reason}`);
const d = reason !== undefined && !process.env.CI ? describe.skip : describe;

const NS = "ovltest";
const IMAGE = "example.com/ovl-test:1";
/** Every container id starts with this (and so does its cgroup's name). */
const ID_PREFIX = `ovltest-${process.pid}-`;
let ids = 0;
const nextId = () => `${ID_PREFIX}${++ids}`;

let s: Scratch;
let cd: Containerd | undefined;
let snap: OvlSnapshotter | undefined;
const started: ChildProcess[] = [];
const track = (c: ChildProcess) => void started.push(c);
const ovlSock = () => s.path("ovl/ovl.sock");
const ovlRoot = () => s.path("ovl/root");
/**
 * A second ovl snapshotter, proxy plugin `ovl-odd`, on a store whose path has a ',' and a ':', which
 * containerd's overlay options (one mount(2) data string, no escaping) cannot carry: ovl mounts those
 * overlays itself, by fd, and containerd gets binds of them.
 */
let odd: OvlSnapshotter | undefined;
let oddStartError: unknown;
const oddSock = () => s.path("ovl-odd/ovl.sock");
const oddRoot = () => s.path("ovl-odd/store,with:odd chars");

interface StoreEntry {
  key: string;
  parent?: string;
  kind: "active" | "view" | "committed";
  labels: Record<string, string>;
  created: string;
  updated: string;
}

/** ovl's own view of its store (the CLI, not the service). */
async function storeList(root = ovlRoot()): Promise<StoreEntry[]> {
  const r = await ovl(["snapshot", "ls", "--store", root, "-J"]);
  if (r.exitCode !== 0) throw new Error(`ovl snapshot ls: exit ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StoreEntry[];
}
async function storeInfo(key: string): Promise<StoreEntry> {
  const r = await ovl(["snapshot", "info", "--store", ovlRoot(), key, "-J"]);
  if (r.exitCode !== 0) throw new Error(`ovl snapshot info ${key}: exit ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StoreEntry;
}
async function storeUsage(key: string): Promise<{ size: number; inodes: number }> {
  const r = await ovl(["snapshot", "usage", "--store", ovlRoot(), key, "-J"]);
  if (r.exitCode !== 0) throw new Error(`ovl snapshot usage ${key}: exit ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout) as { size: number; inodes: number };
}

interface CtrSnapshot {
  name: string;
  parent: string | undefined;
  kind: string;
}

/** `ctr snapshots ls` of a snapshotter, parsed (KEY PARENT KIND; PARENT may be empty). */
async function ctrList(snapshotter: string): Promise<CtrSnapshot[]> {
  const out = await cd!.ctrOk(NS, "snapshots", "--snapshotter", snapshotter, "ls");
  const [header, ...rows] = out.split("\n").filter((l) => l.trim() !== "");
  expect(header!.split(/\s+/).filter(Boolean)).toEqual(["KEY", "PARENT", "KIND"]);
  return rows.map((l) => {
    const f = l.trim().split(/\s+/);
    return f.length === 3 ? { name: f[0]!, parent: f[1], kind: f[2]! } : { name: f[0]!, parent: undefined, kind: f[1]! };
  });
}

async function ctrInfo(snapshotter: string, name: string) {
  return JSON.parse(await cd!.ctrOk(NS, "snapshots", "--snapshotter", snapshotter, "info", name)) as {
    Kind: string;
    Name: string;
    Parent?: string;
    Labels?: Record<string, string>;
  };
}

/** `ctr snapshots usage -b NAME`: size in bytes and inodes. */
async function ctrUsage(snapshotter: string, name: string) {
  const out = await cd!.ctrOk(NS, "snapshots", "--snapshotter", snapshotter, "usage", "-b", name);
  const row = out.split("\n").find((l) => l.startsWith(`${name} `));
  if (row === undefined) throw new Error(`ctr snapshots usage ${name}: no row for it in:\n${out}`);
  const [, size, inodes] = row.trim().split(/\s+/);
  return { size: Number(size), inodes: Number(inodes) };
}

/** The store keys containerd's metadata layer gives a ctr name in this namespace: `NS/N/NAME`. */
const keysOf = (store: StoreEntry[], name: string) =>
  store.filter((e) => e.key.startsWith(`${NS}/`) && /^\d+$/.test(e.key.split("/")[1]!) && e.key.split("/").slice(2).join("/") === name);

/** `ctr run --rm` of the test image with `snapshotter`. */
async function run(snapshotter: string, ...cmd: string[]) {
  return cd!.ctr(NS, "run", "--rm", "--cgroup", "", "--fifo-dir", cd!.fifo, "--snapshotter", snapshotter, IMAGE, nextId(), ...cmd);
}
const probe = (snapshotter: string) => run(snapshotter, "/bin/sh", "-c", PROBE);

/** Why ovl's snapshotter did not start before containerd (the ovl tests fail with it; the overlayfs one runs). */
let ovlStartError: unknown;

async function ensureOvl(): Promise<OvlSnapshotter> {
  if (ovlStartError !== undefined) throw ovlStartError;
  if (snap === undefined || snap.proc.exitCode !== null || snap.proc.signalCode !== null) {
    snap = await startOvlSnapshotter(cliPath, ovlSock(), ovlRoot(), track);
  }
  return snap;
}

async function startOurContainerd(): Promise<Containerd> {
  cd = await startContainerd(s.path("containerd"), { proxies: { ovl: ovlSock(), "ovl-odd": oddSock() } }, track);
  return cd;
}

/** Stops everything the tests started, by pid, and what containerd started (its shims, their containers). */
async function teardown(): Promise<string[]> {
  const problems: string[] = [];
  for (const o of [snap, odd]) {
    if (o === undefined) continue;
    const r = await o.stop();
    if (r.code !== 0) problems.push(`ovl snapshotter (${o.root}) exited ${r.code ?? r.signal}: ${o.stderr().slice(-2000)}`);
  }
  if (cd) {
    const r = await cd.stop();
    if (r.code !== 0) problems.push(`containerd exited ${r.code ?? r.signal}`);
  }
  // Shims outlive containerd while their containers run; they name containerd's socket (below s.dir).
  for (const pid of processesMentioning(s.dir)) {
    problems.push(`left running: pid ${pid}`);
    killTree(pid);
  }
  for (const c of started) if (c.pid !== undefined && alive(c.pid)) killTree(c.pid);
  const cgroups = cgroupsNamed(ID_PREFIX);
  if (cgroups.length > 0) problems.push(`cgroups left: ${cgroups.join(", ")}`);
  removeCgroups(cgroups);
  return problems;
}

d("ovl as containerd's proxy snapshotter, with the real containerd, runc and ctr", () => {
  let img: { archive: string };
  beforeAll(async () => {
    if (reason !== undefined) throw new Error(`the containerd snapshotter tests cannot run: ${reason}`); // CI: fail, never skip
    requirePrivateMountNamespace();
    requireBuiltCli();
    s = scratch("ctr-ovl-");
    makeShared(s.dir);
    mkdirSync(s.path("ovl"));
    img = buildTestImage(s.path("image"));
    // ovl first, as a machine would start them: a containerd that starts before its proxy's socket exists
    // fails the proxy's calls ("connection error ... unavailable") until gRPC's reconnect backoff (up to 3 s)
    // comes round again.
    try {
      await ensureOvl();
    } catch (e) {
      ovlStartError = e;
    }
    mkdirSync(oddRoot(), { recursive: true });
    try {
      odd = await startOvlSnapshotter(cliPath, oddSock(), oddRoot(), track);
    } catch (e) {
      oddStartError = e;
    }
    await startOurContainerd();
  }, 300_000);

  afterAll(async () => {
    if (s === undefined) return;
    try {
      await teardown();
    } finally {
      s.cleanup();
    }
  }, 120_000);

  it("containerd runs the image with its built-in overlayfs snapshotter (the reference)", async () => {
    const imp = await cd!.ctr(NS, "images", "import", "--snapshotter", "overlayfs", "--index-name", IMAGE, img.archive);
    expect(imp.stderr).toBe("");
    expect(imp.exitCode).toBe(0);
    const r = await probe("overlayfs");
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(PROBE_EXPECTED);
    expect(r.exitCode).toBe(0);
    expect((await run("overlayfs", "/bin/true")).exitCode).toBe(0);
    expect((await run("overlayfs", "/bin/sh", "-c", "exit 7")).exitCode).toBe(7);
  }, 300_000);

  it("imports (unpacks) the image into ovl and runs it: the same root filesystem as overlayfs gives", async () => {
    await ensureOvl();
    const imp = await cd!.ctr(NS, "images", "import", "--snapshotter", "ovl", "--index-name", IMAGE, img.archive);
    expect(imp.stderr).toBe("");
    expect(imp.exitCode).toBe(0);
    // The four layers, committed, a chain: what containerd's overlayfs made of the same image.
    const layers = await ctrList("ovl");
    expect(layers.map((x) => x.kind)).toEqual(["Committed", "Committed", "Committed", "Committed"]);
    expect(layers.map((x) => [x.name, x.parent]).sort()).toEqual((await ctrList("overlayfs")).map((x) => [x.name, x.parent]).sort());

    const viaOvl = await probe("ovl");
    const viaOverlayfs = await probe("overlayfs");
    expect(viaOvl.stderr).toBe("");
    expect(viaOvl.stdout).toBe(viaOverlayfs.stdout);
    expect(viaOvl.stdout).toBe(PROBE_EXPECTED);
    expect(viaOvl.exitCode).toBe(0);

    // Writable, and what a container wrote is gone with it.
    const write = "echo changed > /etc/greeting; rm /etc/version; mkdir -p /new/dir; cat /etc/greeting; ls /etc; ls -d /new/dir";
    const w = await run("ovl", "/bin/sh", "-c", write);
    expect([w.exitCode, w.stderr]).toEqual([0, ""]);
    expect(w.stdout).toBe((await run("overlayfs", "/bin/sh", "-c", write)).stdout);
    expect(w.stdout).toBe("changed\napp.conf\ngreeting\nlayer3\n/new/dir");
    expect((await run("ovl", "/bin/cat", "/etc/greeting")).stdout).toBe("hello from the base");
    expect((await run("ovl", "/bin/sh", "-c", "exit 7")).exitCode).toBe(7);

    // The containers' snapshots, removed by containerd, are gone from ovl's store after its collection.
    await cd!.gcSync(NS);
    const store = await storeList();
    expect(store.map((e) => e.kind)).toEqual(["committed", "committed", "committed", "committed"]);
    // Nothing of the runs is mounted in containerd's namespace, nor by ovl in this one.
    expect(mountsUnderIn(cd!.pid, s.dir)).toEqual([s.dir]);
    expect(mountsUnder(s.dir).map((m) => m.target)).toEqual([s.dir]);
  }, 300_000);

  it("ctr snapshots ls / info / usage / rm agree with ovl's store", async () => {
    await ensureOvl();
    // One of each kind: the image's committed layers, a container's active snapshot, a view.
    const committed = await ctrList("ovl");
    const top = committed.find((x) => !committed.some((y) => y.parent === x.name))!;
    const bottom = committed.find((x) => x.parent === undefined)!;
    const container = nextId();
    await cd!.ctrOk(NS, "containers", "create", "--snapshotter", "ovl", IMAGE, container, "/bin/true");
    await cd!.gcSync(NS); // nothing pending, so no collection runs before the view is labelled a GC root
    await cd!.ctrOk(NS, "snapshots", "--snapshotter", "ovl", "view", "probe-view", bottom.name);
    await cd!.ctrOk(NS, "snapshots", "--snapshotter", "ovl", "label", "probe-view", "containerd.io/gc.root=test");

    const listed = await ctrList("ovl");
    expect(listed.map((x) => [x.name, x.parent, x.kind]).sort()).toEqual(
      [
        ...committed.map((x) => [x.name, x.parent, "Committed"]),
        [container, top.name, "Active"],
        ["probe-view", bottom.name, "View"],
      ].sort(),
    );
    const store = await storeList();
    // Every ctr name is exactly one store key NS/N/NAME, of the same kind, its parent the parent's key; and
    // the store has nothing else.
    const keyOf = new Map<string, string>();
    for (const x of listed) {
      const keys = keysOf(store, x.name);
      expect(keys.map((k) => k.key)).toHaveLength(1);
      keyOf.set(x.name, keys[0]!.key);
    }
    expect(store.map((e) => e.key).sort()).toEqual([...keyOf.values()].sort());
    for (const x of listed) {
      const e = store.find((k) => k.key === keyOf.get(x.name))!;
      expect(e.kind).toBe(x.kind.toLowerCase());
      expect(e.parent).toBe(x.parent === undefined ? undefined : keyOf.get(x.parent));
      const info = await ctrInfo("ovl", x.name);
      expect([info.Name, info.Kind, info.Parent]).toEqual([x.name, x.kind, x.parent]);
      expect(await storeInfo(e.key)).toMatchObject({ key: e.key, kind: e.kind });
      expect(await ctrUsage("ovl", x.name)).toEqual(await storeUsage(e.key));
    }
    // The layers' usage: a layer has files, and the bottom one (busybox) at least busybox's size.
    expect((await ctrUsage("ovl", bottom.name)).size).toBeGreaterThan(500_000);
    expect((await ctrUsage("ovl", bottom.name)).inodes).toBeGreaterThan(10);

    // rm: the view goes from ctr's list and, once containerd has collected, from ovl's store.
    const viewKey = keyOf.get("probe-view")!;
    await cd!.ctrOk(NS, "snapshots", "--snapshotter", "ovl", "rm", "probe-view");
    expect((await ctrList("ovl")).map((x) => x.name)).not.toContain("probe-view");
    await cd!.gcSync(NS);
    expect((await storeList()).map((e) => e.key)).not.toContain(viewKey);
    expect((await ovl(["snapshot", "info", "--store", ovlRoot(), viewKey, "-J"])).exitCode).not.toBe(0);
    // A layer with a child cannot go (containerd asks the backend only at collection; the metadata refuses).
    expect((await cd!.ctr(NS, "snapshots", "--snapshotter", "ovl", "rm", bottom.name)).exitCode).not.toBe(0);
    // The container's active snapshot goes with the container.
    const containerKey = keyOf.get(container)!;
    await cd!.ctrOk(NS, "containers", "rm", container);
    await cd!.gcSync(NS);
    expect((await storeList()).map((e) => e.key)).not.toContain(containerKey);
    expect((await storeList()).map((e) => e.kind)).toEqual(["committed", "committed", "committed", "committed"]);
  }, 300_000);

  it("labels pass through: ctr snapshots label, then ctr's info and ovl's store show them", async () => {
    await ensureOvl();
    const committed = await ctrList("ovl");
    const name = committed.find((x) => x.parent === undefined)!.name;
    // containerd hands the backend only labels under containerd.io/snapshot/ (its "inherited" labels); the
    // others it keeps in its own metadata.
    await cd!.ctrOk(NS, "snapshots", "--snapshotter", "ovl", "label", name, "containerd.io/snapshot/ovl-test=yes", "plain=kept-by-containerd");
    const info = await ctrInfo("ovl", name);
    expect(info.Labels).toMatchObject({ "containerd.io/snapshot/ovl-test": "yes", plain: "kept-by-containerd" });
    const [key] = keysOf(await storeList(), name);
    const e = await storeInfo(key!.key);
    expect(e.labels["containerd.io/snapshot/ovl-test"]).toBe("yes");
    expect((await storeList()).find((x) => x.key === key!.key)!.labels["containerd.io/snapshot/ovl-test"]).toBe("yes");
    // Cleared again: `label NAME k=` removes it, in both.
    await cd!.ctrOk(NS, "snapshots", "--snapshotter", "ovl", "label", name, "containerd.io/snapshot/ovl-test=");
    expect((await ctrInfo("ovl", name)).Labels?.["containerd.io/snapshot/ovl-test"]).toBeUndefined();
    expect((await storeInfo(key!.key)).labels["containerd.io/snapshot/ovl-test"]).toBeUndefined();
  }, 300_000);

  it("a store path containerd's overlay options cannot carry: ovl mounts the overlays, containerd binds them", async () => {
    if (oddStartError !== undefined) throw oddStartError;
    const imp = await cd!.ctr(NS, "images", "import", "--snapshotter", "ovl-odd", "--index-name", IMAGE, img.archive);
    expect([imp.exitCode, imp.stderr]).toEqual([0, ""]);
    const p = await probe("ovl-odd");
    expect([p.exitCode, p.stderr, p.stdout]).toEqual([0, "", PROBE_EXPECTED]);

    // While a container runs: its root is an overlay ovl mounted below its store, seen in containerd's
    // namespace too (the propagation the helpers set up), and containerd's rootfs mount is a bind of it.
    const id = nextId();
    await cd!.ctrOk(NS, "run", "-d", "--null-io", "--cgroup", "", "--snapshotter", "ovl-odd", IMAGE, id, "/bin/sh", "-c", "sleep 300");
    try {
      const own = mountsUnder(oddRoot());
      expect(own.map((m) => m.fstype)).toEqual(["overlay"]);
      expect(mountsUnderIn(cd!.pid, oddRoot())).toEqual(own.map((m) => m.target));
      const rootfs = mountsUnderIn(cd!.pid, cd!.state).filter((t) => t.endsWith(`/${id}/rootfs`));
      expect(rootfs).toHaveLength(1);
      const exec = await cd!.ctr(NS, "tasks", "exec", "--fifo-dir", cd!.fifo, "--exec-id", "probe", id, "/bin/sh", "-c", "cat /etc/greeting; test ! -e /etc/doomed && echo doomed-absent");
      expect([exec.exitCode, exec.stderr, exec.stdout]).toEqual([0, "", "hello from the base\ndoomed-absent"]);
    } finally {
      await cd!.ctr(NS, "tasks", "kill", "-s", "SIGKILL", id);
      for (let i = 0; i < 100 && (await cd!.ctr(NS, "tasks", "rm", id)).exitCode !== 0; i++) await sleep(100);
      await cd!.ctrOk(NS, "containers", "rm", id);
    }
    await cd!.gcSync(NS);
    // The container's snapshot is gone, and so is ovl's mount of it, in both namespaces.
    expect((await storeList(oddRoot())).map((e) => e.kind)).toEqual(["committed", "committed", "committed", "committed"]);
    expect(mountsUnder(oddRoot())).toEqual([]);
    expect(mountsUnderIn(cd!.pid, oddRoot())).toEqual([]);
    // The same layers as the plain store holds, under the same names.
    const names = (entries: StoreEntry[]) => entries.map((e) => e.key.split("/").slice(2).join("/")).sort();
    expect(names(await storeList(oddRoot()))).toEqual(names(await storeList()));
  }, 300_000);

  it("survives a restart of containerd: the same snapshots, and a container runs", async () => {
    await ensureOvl();
    const before = await ctrList("ovl");
    const r = await cd!.stop();
    expect(r).toEqual({ code: 0, signal: null });
    await startOurContainerd();
    expect(await ctrList("ovl")).toEqual(before);
    const p = await probe("ovl");
    expect([p.exitCode, p.stderr, p.stdout]).toEqual([0, "", PROBE_EXPECTED]);
  }, 300_000);

  it("survives its own restart (SIGTERM: exit 0, socket gone); a second instance on the same root is refused", async () => {
    const first = await ensureOvl();
    const before = await ctrList("ovl");
    const storeBefore = (await storeList()).map((e) => e.key).sort();
    // A second snapshotter on the same root (another socket): refused while the first serves.
    await expect(startOvlSnapshotter(cliPath, s.path("ovl/second.sock"), ovlRoot(), track)).rejects.toMatchObject({
      exit: { code: 1, signal: null },
      stderr: expect.stringContaining("already"),
    });
    expect(existsSync(s.path("ovl/second.sock"))).toBe(false);
    expect(await ctrList("ovl")).toEqual(before); // the first one still serves

    expect(await first.stop("SIGTERM")).toEqual({ code: 0, signal: null });
    expect(existsSync(ovlSock())).toBe(false);
    snap = undefined;
    // containerd, meanwhile, says it cannot reach it (and does not hang).
    const down = await cd!.ctr(NS, "snapshots", "--snapshotter", "ovl", "ls");
    expect(down.exitCode).not.toBe(0);

    await ensureOvl();
    expect((await storeList()).map((e) => e.key).sort()).toEqual(storeBefore);
    // containerd's connection to the proxy comes back by itself (gRPC reconnects; allow it a moment).
    let listed: CtrSnapshot[] | undefined;
    for (let i = 0; i < 50 && listed === undefined; i++) {
      const r = await cd!.ctr(NS, "snapshots", "--snapshotter", "ovl", "ls");
      if (r.exitCode === 0) listed = await ctrList("ovl");
      else await sleep(200);
    }
    expect(listed).toEqual(before);
    const p = await probe("ovl");
    expect([p.exitCode, p.stderr, p.stdout]).toEqual([0, "", PROBE_EXPECTED]);

    // SIGINT stops it cleanly too.
    expect(await snap!.stop("SIGINT")).toEqual({ code: 0, signal: null });
    expect(existsSync(ovlSock())).toBe(false);
    snap = undefined;
  }, 300_000);

  it("leaves nothing: every process it started ends, nothing stays mounted, no cgroup stays", async () => {
    await ensureOvl();
    // Images removed, then everything stopped.
    await cd!.ctrOk(NS, "images", "rm", "--sync", IMAGE);
    expect(await ctrList("ovl")).toEqual([]);
    expect(await storeList()).toEqual([]);
    expect(await storeList(oddRoot())).toEqual([]);
    const cpid = cd!.pid;
    expect(mountsUnderIn(cpid, s.dir)).toEqual([s.dir]);
    const problems = await teardown();
    snap = undefined;
    odd = undefined;
    cd = undefined;
    expect(problems).toEqual([]);
    expect(alive(cpid)).toBe(false);
    for (const c of started) expect(c.pid === undefined || !alive(c.pid)).toBe(true);
    expect(processesMentioning(s.dir)).toEqual([]);
    expect(mountsUnder(s.dir).map((m) => m.target)).toEqual([s.dir]); // only the test's own shared bind
    expect(cgroupsNamed(ID_PREFIX)).toEqual([]);
  }, 300_000);
});
