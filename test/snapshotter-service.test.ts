/**
 * The snapshots service as containerd's gRPC client sees it, without containerd: a grpc-js client on ovl's
 * proto, against the service on a scratch socket and store. What containerd branches on (codes, mounts'
 * shapes) is checked here call by call; test/snapshotter.test.ts drives it with a real containerd.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type * as GrpcJs from "@grpc/grpc-js";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { loadGrpc } from "../src/snapshotter/grpc.js";
import { MOUNT_DATA_MAX, planMounts } from "../src/snapshotter/mounts.js";
import { serveSnapshotter, type Snapshotter } from "../src/snapshotter/server.js";
import { CODE } from "../src/snapshotter/service.js";
import { list as listMounts } from "../src/index.js";
import { mountsUnder, rawMounts, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}
type Call = (method: string, req: object) => Promise<any>;

let s: Scratch;
let served: Snapshotter | undefined;
let client: GrpcJs.Client & Record<string, any>;
let root: string;
let address: string;

function connect(): void {
  const { grpc, service } = loadGrpc();
  const Client = grpc.makeGenericClientConstructor(service, "Snapshots");
  client = new Client(`unix://${address}`, grpc.credentials.createInsecure()) as never;
}
const call: Call = (method, req) =>
  new Promise((done, fail) => client[method]!({ snapshotter: "ovl", ...req }, (err: Error | null, reply: unknown) => (err ? fail(err) : done(reply))));
/** The gRPC code a call fails with (fails the test when it succeeds). */
async function codeOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    return (e as { code: number }).code;
  }
  throw new Error("expected the call to fail");
}
function list(filters: string[] = []): Promise<any[]> {
  return new Promise((done, fail) => {
    const out: any[] = [];
    const stream = client.List!({ snapshotter: "ovl", filters });
    stream.on("data", (r: { info: any[] }) => out.push(...r.info));
    stream.on("end", () => done(out));
    stream.on("error", fail);
  });
}
/** Mounts what a Mounts reply says on `dir`, as containerd does (mount(8) with the options as given). */
function mountAsContainerd(mounts: Mount[], dir: string): void {
  expect(mounts).toHaveLength(1);
  const m = mounts[0]!;
  mkdirSync(dir, { recursive: true });
  if (m.type === "bind") {
    execFileSync("mount", ["--rbind", m.source, dir]);
    if (m.options.includes("ro")) execFileSync("mount", ["-o", "remount,bind,ro", dir]);
  } else execFileSync("mount", ["-t", m.type, m.source, "-o", m.options.join(","), dir]);
}
const umount = (dir: string) => execFileSync("umount", ["-R", dir]);

beforeAll(() => requirePrivateMountNamespace());
beforeEach(async () => {
  s = scratch("snapshotter-");
  root = s.path("root");
  address = s.path("ovl.sock");
  served = await serveSnapshotter({ address, root });
  connect();
});
afterEach(async () => {
  client.close();
  await served?.close();
  served = undefined;
  s.cleanup();
});

/** A committed chain of `n` layers, each with its own file `l<i>`; the key of the top one. */
async function chain(n: number, prefix = "layer"): Promise<string> {
  let parent = "";
  for (let i = 0; i < n; i++) {
    const key = `${prefix}-${i}`;
    const { mounts } = await call("Prepare", { key: `extract-${key}`, parent, labels: { "containerd.io/snapshot.ref": key } });
    const dir = s.path(`apply-${i}`);
    mountAsContainerd(mounts, dir);
    writeFileSync(join(dir, `l${i}`), `layer ${i}\n`);
    umount(dir);
    await call("Commit", { name: key, key: `extract-${key}`, labels: { "containerd.io/snapshot.ref": key } });
    parent = key;
  }
  return parent;
}

describe("the snapshots service", () => {
  it("answers as containerd's snapshotters do: kinds, parents, labels, timestamps, usage, and each error's code", async () => {
    const a = await call("Prepare", { key: "a", parent: "", labels: { x: "1" } });
    // An active snapshot without parent: a bind of its own directory, writable.
    expect(a.mounts).toEqual([{ type: "bind", source: join(root, "snapshots", "1", "fs"), target: "", options: ["rw", "rbind"] }]);
    expect(await codeOf(call("Prepare", { key: "a", parent: "" }))).toBe(CODE.ALREADY_EXISTS);
    expect(await codeOf(call("Stat", { key: "nope" }))).toBe(CODE.NOT_FOUND);
    expect(await codeOf(call("Prepare", { key: "b", parent: "a" }))).toBe(CODE.FAILED_PRECONDITION); // parent not committed
    expect(await codeOf(call("Prepare", { key: "c", parent: "nope" }))).toBe(CODE.NOT_FOUND);
    expect(await codeOf(call("Prepare", { key: "", parent: "" }))).toBe(CODE.INVALID_ARGUMENT);
    const dir = s.path("a-mnt");
    mountAsContainerd(a.mounts, dir);
    writeFileSync(join(dir, "f"), "12345");
    umount(dir);
    const before = Date.now();
    await call("Commit", { name: "A", key: "a", labels: { y: "2" } });
    expect(await codeOf(call("Stat", { key: "a" }))).toBe(CODE.NOT_FOUND);
    const { info } = await call("Stat", { key: "A" });
    expect(info).toMatchObject({ name: "A", parent: "", kind: "COMMITTED", labels: { y: "2" } });
    expect(Number(info.created_at.seconds) * 1000).toBeLessThanOrEqual(before + 1000);
    expect(await call("Usage", { key: "A" })).toEqual({ size: expect.any(Number), inodes: 2 });
    const a2 = (await call("Prepare", { key: "a2", parent: "" })).mounts[0].source as string;
    expect(await codeOf(call("Commit", { name: "A", key: "a2" }))).toBe(CODE.ALREADY_EXISTS);
    expect(await codeOf(call("Commit", { name: "Z", key: "nope" }))).toBe(CODE.NOT_FOUND);

    // An active snapshot on a parent: the overlay containerd's own snapshotter would give.
    const b = await call("Prepare", { key: "b", parent: "A" });
    const id = /\/snapshots\/(\d+)\/work$/.exec(b.mounts[0]?.options[1] ?? "")?.[1];
    expect(id).toBeDefined();
    expect(b.mounts).toEqual([
      {
        type: "overlay",
        source: "overlay",
        target: "",
        options: ["index=off", `workdir=${join(root, "snapshots", id!, "work")}`, `upperdir=${join(root, "snapshots", id!, "fs")}`, `lowerdir=${join(root, "snapshots", "1", "fs")}`],
      },
    ]);
    expect(await codeOf(call("Remove", { key: "A" }))).toBe(CODE.FAILED_PRECONDITION); // has a child
    // A view of one layer: a read-only bind of it.
    const v = await call("View", { key: "v", parent: "A" });
    expect(v.mounts).toEqual([{ type: "bind", source: join(root, "snapshots", "1", "fs"), target: "", options: ["ro", "rbind"] }]);
    expect(await call("Mounts", { key: "v" })).toEqual(v);
    expect(await codeOf(call("Mounts", { key: "A" }))).toBe(CODE.FAILED_PRECONDITION); // committed: not mounted
    expect(await codeOf(call("Commit", { name: "V", key: "v" }))).toBe(CODE.FAILED_PRECONDITION); // a view

    // Labels: one by path, all by "labels", none changed by an empty mask... and nothing but labels.
    let u = await call("Update", { info: { name: "A", labels: { z: "3" } }, update_mask: { paths: ["labels.z"] } });
    expect(u.info.labels).toEqual({ y: "2", z: "3" });
    u = await call("Update", { info: { name: "A", labels: { only: "this" } }, update_mask: { paths: [] } });
    expect(u.info.labels).toEqual({ only: "this" });
    expect(await codeOf(call("Update", { info: { name: "A", parent: "x" }, update_mask: { paths: ["parent"] } }))).toBe(CODE.INVALID_ARGUMENT);
    expect(await codeOf(call("Update", { info: { name: "nope", labels: {} }, update_mask: { paths: ["labels"] } }))).toBe(CODE.NOT_FOUND);

    // List, all and with containerd's filters.
    expect((await list()).map((i) => `${i.name}:${i.kind}:${i.parent}`).sort()).toEqual(["A:COMMITTED:", "a2:ACTIVE:", "b:ACTIVE:A", "v:VIEW:A"]);
    expect((await list(["kind==committed"])).map((i) => i.name)).toEqual(["A"]);
    expect((await list(["parent==A", "name==a2"])).map((i) => i.name).sort()).toEqual(["a2", "b", "v"]);
    expect(await codeOf(list(["name~=("]))).toBe(CODE.INVALID_ARGUMENT);

    await call("Remove", { key: "v" });
    await call("Remove", { key: "b" });
    await call("Remove", { key: "A" });
    expect(await codeOf(call("Remove", { key: "A" }))).toBe(CODE.NOT_FOUND);
    await call("Cleanup", {});
    expect(readdirSync(join(root, "snapshots")).map((n) => join(root, "snapshots", n, "fs"))).toEqual([a2]);
  });

  it("List streams every snapshot of a big store, in replies of at most 100", async () => {
    for (let i = 0; i < 250; i++) await call("Prepare", { key: `k${i}`, parent: "" });
    const replies: number[] = [];
    await new Promise<void>((done, fail) => {
      const stream = client.List!({ snapshotter: "ovl", filters: [] });
      stream.on("data", (r: { info: unknown[] }) => replies.push(r.info.length));
      stream.on("end", done);
      stream.on("error", fail);
    });
    expect(replies).toEqual([100, 100, 50]);
  });

  it("past mount(2)'s page, ovl mounts the stack itself by fd and hands out a bind of it; commit and remove take it down", async () => {
    // 140 layers of .../root/snapshots/NNN/fs: their lowerdir= alone is over 4095 bytes.
    const top = await chain(140);
    const { mounts } = await call("Prepare", { key: "ctr", parent: top });
    expect(mounts).toHaveLength(1);
    expect(mounts[0]).toMatchObject({ type: "bind", options: ["rw", "rbind"] });
    const own = mounts[0].source as string;
    expect(own.startsWith(join(root, "mounts") + "/")).toBe(true);
    expect(mountsUnder(own).map((m) => m.fstype)).toEqual(["overlay"]);
    // Again, and after a restart of the service: the same mount, not a second one.
    expect((await call("Mounts", { key: "ctr" })).mounts).toEqual(mounts);
    client.close();
    await served!.close();
    served = await serveSnapshotter({ address, root });
    connect();
    expect((await call("Mounts", { key: "ctr" })).mounts).toEqual(mounts);
    expect(mountsUnder(own)).toHaveLength(1);
    // Through containerd's bind, every layer is there and writes go to the snapshot's upper.
    const dir = s.path("rootfs");
    mountAsContainerd(mounts, dir);
    expect(readFileSync(join(dir, "l0"), "utf8")).toBe("layer 0\n");
    expect(readFileSync(join(dir, "l139"), "utf8")).toBe("layer 139\n");
    expect(readdirSync(dir)).toHaveLength(140);
    writeFileSync(join(dir, "new"), "x");
    umount(dir);
    await call("Commit", { name: "C", key: "ctr" });
    expect(mountsUnder(join(root, "mounts"))).toEqual([]);
    expect(existsSync(own)).toBe(false);
    // A read-only view of the deep stack: also ovl's own mount, and Remove takes it down.
    const v = await call("View", { key: "v", parent: "C" });
    expect(v.mounts[0]).toMatchObject({ type: "bind", options: ["ro", "rbind"] });
    expect(readFileSync(join(v.mounts[0].source, "new"), "utf8")).toBe("x");
    await call("Remove", { key: "v" });
    expect(mountsUnder(join(root, "mounts"))).toEqual([]);
  }, 120_000);

  it("remapped snapshots (containerd's uidmapping/gidmapping labels): idmapped layers, only the overlay attached", async () => {
    expect(served!.remapIds).toEqual({ supported: true });
    const top = await chain(2);
    const layer0 = join(root, "snapshots", "1", "fs", "l0");
    const before = rawMounts().length;
    const labels = { "containerd.io/snapshot/uidmapping": "0:100000:65536", "containerd.io/snapshot/gidmapping": "0:200000:65536" };
    const { mounts } = await call("Prepare", { key: "remapped", parent: top, labels });
    expect(mounts).toEqual([{ type: "bind", source: expect.stringMatching(/\/mounts\/[0-9a-f]+$/), target: "", options: ["rw", "rbind"] }]);
    const merged = mounts[0].source as string;
    // The layers' root-owned files show as the container's root on the host; the layer itself is unchanged.
    expect([statSync(join(merged, "l0")).uid, statSync(join(merged, "l0")).gid]).toEqual([100000, 200000]);
    expect([statSync(merged).uid, statSync(merged).gid]).toEqual([100000, 200000]);
    expect([statSync(layer0).uid, statSync(layer0).gid]).toEqual([0, 0]);
    // The container's root (100000 on the host) writes through containerd's bind of it (the store's own
    // directories are root's, 0700): the copy-up and the new file are its own in the upper.
    chmodSync(s.dir, 0o755);
    const rootfs = s.path("rootfs");
    mountAsContainerd(mounts, rootfs);
    execFileSync("setpriv", ["--reuid=100000", "--regid=200000", "--clear-groups", "sh", "-c", `echo changed >> ${rootfs}/l0 && echo new > ${rootfs}/new`]);
    umount(rootfs);
    const [m] = await listMounts({ target: merged });
    expect(m!.target).toBe(merged);
    expect(m!.detached?.pathsKnown).toBe(false); // the table shows idmapped layers as lowerdir+=/
    const upper = m!.upper!;
    expect([statSync(join(upper, "l0")).uid, statSync(join(upper, "new")).uid]).toEqual([100000, 100000]);
    expect(readFileSync(layer0, "utf8")).toBe("layer 0\n");
    // Nothing attached but the overlay: one mount more than before, none for the layers.
    expect(rawMounts().length).toBe(before + 1);
    expect(mountsUnder(root).map((x) => x.fstype)).toEqual(["overlay"]);
    // Mounts again: the same; a view of it remapped too; commit takes the mount down.
    expect((await call("Mounts", { key: "remapped" })).mounts).toEqual(mounts);
    await call("Commit", { name: "R", key: "remapped" });
    expect(rawMounts().length).toBe(before);
    // A view of it, remapped the same way: the image's files show as the container's root; what the
    // container wrote is stored with its host id (as containerd's remapped snapshots keep it), which the map
    // does not cover, so it shows as the overflow id.
    const v = await call("View", { key: "rv", parent: "R", labels });
    expect(statSync(join(v.mounts[0].source, "l1")).uid).toBe(100000);
    expect(statSync(join(v.mounts[0].source, "new")).uid).toBe(65534);
    await call("Remove", { key: "rv" });
    expect(rawMounts().length).toBe(before);
    // Bad labels are refused before anything is made.
    expect(await codeOf(call("Prepare", { key: "bad", parent: top, labels: { "containerd.io/snapshot/uidmapping": "0:100000" , "containerd.io/snapshot/gidmapping": "0:1:1" } }))).toBe(CODE.INVALID_ARGUMENT);
    expect(await codeOf(call("Prepare", { key: "bad", parent: top, labels: { "containerd.io/snapshot/uidmapping": "0:100000:65536" } }))).toBe(CODE.INVALID_ARGUMENT);
    expect(await codeOf(call("Stat", { key: "bad" }))).toBe(CODE.NOT_FOUND);
  }, 60_000);

  it("one instance per store: a second is refused while the first serves, and may start once it stopped", async () => {
    const other = s.path("other.sock");
    await expect(serveSnapshotter({ address: other, root })).rejects.toMatchObject({ code: "EBUSY", message: expect.stringMatching(/already serves/) });
    expect(existsSync(other)).toBe(false);
    // The socket of a live instance is not taken over either.
    await expect(serveSnapshotter({ address, root: s.path("root2") })).rejects.toMatchObject({ code: "EADDRINUSE" });
    client.close();
    await served!.close();
    expect(existsSync(address)).toBe(false);
    served = await serveSnapshotter({ address: other, root });
    address = other;
    connect();
    expect(await list()).toEqual([]);
  });
});

describe("planMounts", () => {
  const empty = "/s/empty";
  it("binds where one layer is all there is, and an overlay containerd can mount otherwise", () => {
    expect(planMounts({ lower: [empty], upper: "/s/1/fs", work: "/s/1/work" }, { empty })).toEqual({
      kind: "plain",
      mounts: [{ type: "bind", source: "/s/1/fs", target: "", options: ["rw", "rbind"] }],
    });
    expect(planMounts({ lower: ["/s/2/fs", empty] }, { empty })).toMatchObject({ mounts: [{ type: "bind", source: "/s/2/fs", options: ["ro", "rbind"] }] });
    expect(planMounts({ lower: ["/s/3/fs", "/s/2/fs"] }, { empty, userxattr: true })).toMatchObject({
      mounts: [{ type: "overlay", options: ["userxattr", "lowerdir=/s/3/fs:/s/2/fs"] }],
    });
  });
  it("mounts itself what mount(2) cannot take: over the page, or paths with ',' ':' '\\'", () => {
    const lower = Array.from({ length: 300 }, (_, i) => `/var/lib/ovl/snapshots/${i}/fs`);
    const plan = planMounts({ lower, upper: "/u", work: "/w" }, { empty, indexOff: true });
    expect(plan).toMatchObject({ kind: "self", readonly: false, why: expect.stringMatching(new RegExp(`over mount\\(2\\)'s ${MOUNT_DATA_MAX}`)) });
    expect(planMounts({ lower: ["/a,b/fs", "/c"] }, { empty })).toMatchObject({ kind: "self", readonly: true, why: expect.stringContaining("'/a,b/fs'") });
    // Exactly at the limit is still containerd's; one byte past it is not.
    const one = ["/x"];
    const at = "lowerdir=".length + 1; // "lowerdir=/x:/y" with a /y of the right length
    const y = `/${"y".repeat(MOUNT_DATA_MAX - at - one[0]!.length - 1)}`;
    expect(planMounts({ lower: [...one, y] }, { empty })).toMatchObject({ kind: "plain" });
    expect(planMounts({ lower: [...one, `${y}y`] }, { empty })).toMatchObject({ kind: "self" });
  });
});
