import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import type { MountEvent, MountWatch } from "../src/table/watch.js";
import type { MountInfo, OverlayMount } from "../src/types.js";
import { killChild, namespaceChild, openFdCount, requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
const watches: MountWatch[] = [];
const children: ChildProcess[] = [];

beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-watch-");
});
afterEach(async () => {
  for (const w of watches.splice(0)) await w.close();
  for (const c of children.splice(0)) await killChild(c);
  s.cleanup();
});

/** A watch that afterEach closes even when the test fails. */
function track<T extends MountWatch<MountInfo | OverlayMount>>(w: T): T {
  watches.push(w as unknown as MountWatch);
  return w;
}

/** Other test files mount in the same namespace at the same time: only mounts under `dir` count. */
async function nextUnder<T extends MountInfo>(w: MountWatch<T>, dir: string, ms = 10_000): Promise<MountEvent<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    const timeout = sleep(Math.max(left, 0), "timeout" as const, { ref: false });
    const r = await Promise.race([w.next(), timeout]);
    if (r === "timeout") throw new Error(`no event under ${dir} within ${ms} ms`);
    if (r.done) throw new Error("the watch ended");
    if (r.value.mount.target.startsWith(`${dir}/`)) return r.value;
  }
}

/** Layers for one overlay under the scratch dir, named by `tag`. */
function layers(tag: string) {
  const [l1, l2, upper, work, merged] = s.dirs(`${tag}/l1`, `${tag}/l2`, `${tag}/upper`, `${tag}/work`, `${tag}/merged`);
  return { lower: [l1!, l2!], upper: upper!, work: work!, target: merged! };
}


describe("watch(): events as they happen", () => {
  it("reports an overlay's mount, remount and unmount in order, and no other mounts by default", async () => {
    const w = track(overlay.watch());
    await w.ready;
    const a = layers("a");
    const m = await overlay.mount(a);

    const mounted = await nextUnder(w, s.dir);
    expect(mounted.type).toBe("mount");
    expect(mounted.previous).toBeUndefined();
    expect(mounted.mount).toMatchObject({ id: m.id, target: a.target, fstype: "overlay", lower: a.lower, upper: a.upper, work: a.work, data: [] });

    // A tmpfs is not an overlay: the next event seen is the remount.
    const [t] = s.dirs("tmp");
    execFileSync("mount", ["-t", "tmpfs", "watch-tmpfs", t!]);
    execFileSync("mount", ["-o", "remount,ro", a.target]);
    const changed = await nextUnder(w, s.dir);
    expect(changed.type).toBe("change");
    expect(changed.mount.id).toBe(m.id);
    expect(changed.mount.mountOptions[0]).toBe("ro");
    expect(changed.previous?.mountOptions[0]).toBe("rw");
    expect((changed.mount as OverlayMount).lower).toEqual(a.lower);

    execFileSync("umount", [t!]);
    await overlay.umount(a.target);
    const gone = await nextUnder(w, s.dir);
    expect(gone).toMatchObject({ type: "umount", mount: { id: m.id, target: a.target, fstype: "overlay" } });
    // The unmount carries the mount as it last was (after the remount).
    expect(gone.mount.mountOptions[0]).toBe("ro");
  });

  it("sees every mount with `all`, tmpfs included", async () => {
    const w = track(overlay.watch({ all: true }));
    await w.ready;
    const [t] = s.dirs("tmp");
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=64k", "watch-tmpfs", t!]);
    const mounted = await nextUnder(w, s.dir);
    expect(mounted).toMatchObject({ type: "mount", mount: { target: t, fstype: "tmpfs", source: "watch-tmpfs" } });
    expect(mounted.mount.superOptions).toContain("size=64k");
    expect("lower" in mounted.mount).toBe(false);

    const a = layers("a");
    const m = await overlay.mount(a);
    const ov = await nextUnder(w, s.dir);
    expect(ov).toMatchObject({ type: "mount", mount: { id: m.id, fstype: "overlay", lower: a.lower } });

    execFileSync("umount", [t!]);
    expect(await nextUnder(w, s.dir)).toMatchObject({ type: "umount", mount: { id: mounted.mount.id, target: t, fstype: "tmpfs" } });
  });

  it("loses nothing while the consumer is busy: changes between two reads come in table order", async () => {
    const w = track(overlay.watch());
    await w.ready;
    const specs = ["a", "b", "c"].map(layers);
    const ids: number[] = [];
    for (const spec of specs) ids.push((await overlay.mount(spec)).id);
    const seen = [await nextUnder(w, s.dir), await nextUnder(w, s.dir), await nextUnder(w, s.dir)];
    expect(seen.map((e) => [e.type, e.mount.id, e.mount.target])).toEqual(specs.map((spec, i) => ["mount", ids[i], spec.target]));

    // Unmounted together: each reported once, latest mounted first (the table lists mounts in mount order).
    for (const spec of specs) await overlay.umount(spec.target);
    const gone = [await nextUnder(w, s.dir), await nextUnder(w, s.dir), await nextUnder(w, s.dir)];
    expect(gone.map((e) => [e.type, e.mount.id])).toEqual([...ids].reverse().map((id) => ["umount", id]));
  });

  it("reports a mount moved elsewhere (same id, new target) as an unmount and a mount, not a change", async () => {
    const w = track(overlay.watch());
    await w.ready;
    const a = layers("a");
    const [elsewhere] = s.dirs("elsewhere");
    const m = await overlay.mount(a);
    expect((await nextUnder(w, s.dir)).type).toBe("mount");
    execFileSync("mount", ["--move", a.target, elsewhere!]);
    const first = await nextUnder(w, s.dir);
    const second = await nextUnder(w, s.dir);
    expect(first).toMatchObject({ type: "umount", mount: { id: m.id, target: a.target } });
    expect(second).toMatchObject({ type: "mount", mount: { id: m.id, target: elsewhere, lower: a.lower } });
  });

  it("reports an id the kernel reused for a new mount as an unmount and a mount", async () => {
    const w = track(overlay.watch());
    await w.ready;
    const a = layers("a");
    const b = layers("b");
    // The kernel hands out the lowest free mount id, so a mount made right after an unmount usually gets the
    // same id; other processes on the machine may take it first, so try a few times.
    let reused = false;
    for (let attempt = 0; attempt < 10 && !reused; attempt++) {
      const m = await overlay.mount(a);
      expect(await nextUnder(w, s.dir)).toMatchObject({ type: "mount", mount: { id: m.id } });
      await overlay.umount(a.target);
      const n = await overlay.mount(b); // between two reads of the table
      const first = await nextUnder(w, s.dir);
      const second = await nextUnder(w, s.dir);
      expect(first).toMatchObject({ type: "umount", mount: { id: m.id, target: a.target } });
      expect(second).toMatchObject({ type: "mount", mount: { id: n.id, target: b.target, lower: b.lower } });
      reused = n.id === m.id;
      await overlay.umount(b.target);
      expect(await nextUnder(w, s.dir)).toMatchObject({ type: "umount", mount: { id: n.id } });
    }
    expect(reused).toBe(true);
  });

  it("reports unmounted children before their parents", async () => {
    const w = track(overlay.watch({ all: true }));
    await w.ready;
    const [outer] = s.dirs("outer");
    execFileSync("mount", ["-t", "tmpfs", "outer", outer!]);
    execFileSync("mkdir", [`${outer}/inner`]);
    execFileSync("mount", ["-t", "tmpfs", "inner", `${outer}/inner`]);
    const mounted = [await nextUnder(w, s.dir), await nextUnder(w, s.dir)];
    expect(mounted.map((e) => [e.type, e.mount.target])).toEqual([
      ["mount", outer],
      ["mount", `${outer}/inner`],
    ]);
    execFileSync("umount", ["-R", outer!]);
    const gone = [await nextUnder(w, s.dir), await nextUnder(w, s.dir)];
    expect(gone.map((e) => [e.type, e.mount.target])).toEqual([
      ["umount", `${outer}/inner`],
      ["umount", outer],
    ]);
  });
});

describe("watch(): stopping", () => {
  it("break closes the table: the fd count is as before", async () => {
    const before = openFdCount();
    const w = overlay.watch();
    await w.ready;
    expect(openFdCount()).toBe(before + 1);
    const a = layers("a");
    await overlay.mount(a);
    let seen: MountEvent | undefined;
    for await (const e of w) {
      if (e.mount.target.startsWith(`${s.dir}/`)) {
        seen = e;
        break;
      }
    }
    expect(seen?.type).toBe("mount");
    expect(openFdCount()).toBe(before);
    // Once stopped it stays stopped.
    expect(await w.next()).toEqual({ done: true, value: undefined });
  });

  it("an abort while a poll is pending ends the iteration (no AbortError) and closes the table", async () => {
    const before = openFdCount();
    const ac = new AbortController();
    const w = overlay.watch({ signal: ac.signal });
    await w.ready;
    const pending = w.next(); // nothing changes under it: it waits in a poll
    await sleep(50);
    ac.abort();
    expect(await pending).toEqual({ done: true, value: undefined });
    expect(openFdCount()).toBe(before);
  });

  it("a for-await loop ends when its signal aborts", async () => {
    const before = openFdCount();
    const ac = new AbortController();
    const w = overlay.watch({ signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const events: MountEvent[] = [];
    for await (const e of w) events.push(e);
    expect(events.filter((e) => e.mount.target.startsWith(`${s.dir}/`))).toEqual([]);
    expect(openFdCount()).toBe(before);
  });

  it("an already aborted signal opens nothing", async () => {
    const before = openFdCount();
    const w = overlay.watch({ signal: AbortSignal.abort() });
    expect(openFdCount()).toBe(before);
    await w.ready;
    expect(await w.next()).toEqual({ done: true, value: undefined });
  });

  it("`await using` closes it at the end of the scope", async () => {
    const before = openFdCount();
    {
      await using w = overlay.watch();
      await w.ready;
      expect(openFdCount()).toBe(before + 1);
    }
    expect(openFdCount()).toBe(before);
  });

  it("return() while next() waits settles both, and close() twice is harmless", async () => {
    const before = openFdCount();
    const w = overlay.watch();
    await w.ready;
    const pending = w.next();
    await sleep(20);
    expect(await w.return!()).toEqual({ done: true, value: undefined });
    expect(await pending).toEqual({ done: true, value: undefined });
    await w.close();
    expect(openFdCount()).toBe(before);
  });

  it("waits in the event loop itself: no thread is held, however many watchers wait", async () => {
    // Eight watchers, more than the thread pool's four threads: waiting must hold none of them.
    const watchers = Array.from({ length: 8 }, () => track(overlay.watch()));
    await Promise.all(watchers.map((w) => w.ready));
    const pending = watchers.map((w) => w.next());
    // While they wait, a child process reads where each of our threads sleeps in the kernel: the main thread
    // idle in libuv's epoll_wait (which watches the mount table), and no thread blocked in poll().
    const script = `sleep 0.3; for t in /proc/${process.pid}/task/*; do echo "\${t##*/} $(cat $t/wchan)"; done`;
    const sampled = await new Promise<string>((resolve, reject) =>
      execFile("sh", ["-c", script], (err, stdout) => (err ? reject(err) : resolve(stdout))),
    );
    const sleepingIn = new Map(sampled.trim().split("\n").map((line) => line.split(" ") as [string, string]));
    expect(sleepingIn.get(String(process.pid))).toBe("do_epoll_wait");
    expect([...sleepingIn.values()].filter((wchan) => /poll_schedule|do_sys_poll/.test(wchan))).toEqual([]);
    // And they still see a change.
    const [target] = s.dirs("seen-by-all");
    execFileSync("mount", ["-t", "tmpfs", "seen", target!]);
    await Promise.all(watchers.map((w) => w.close()));
    for (const p of pending) expect(await p).toHaveProperty("done");
  });
});

describe("watch({ pid }): another mount namespace", () => {
  it("sees mounts made inside the other namespace and not here, and ends when the process exits", async () => {
    const child = await namespaceChild((c) => children.push(c));
    const w = track(overlay.watch({ pid: child.pid, all: true }));
    await w.ready;
    const [t, l1, l2, merged] = s.dirs("theirs", "l1", "l2", "merged");
    execFileSync("nsenter", ["-t", String(child.pid), "-m", "mount", "-t", "tmpfs", "theirs", t!]);
    const e = await nextUnder(w, s.dir);
    expect(e).toMatchObject({ type: "mount", mount: { target: t, fstype: "tmpfs", source: "theirs" } });
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(" theirs ");

    execFileSync("nsenter", ["-t", String(child.pid), "-m", "mount", "-t", "overlay", "ov", "-o", `lowerdir=${l1}:${l2}`, merged!]);
    const ov = await nextUnder(w, s.dir);
    expect(ov).toMatchObject({ type: "mount", mount: { target: merged, fstype: "overlay", lower: [l1, l2], source: "ov" } });

    await killChild(child);
    const end = await Promise.race([w.next(), sleep(10_000, "timeout" as const, { ref: false })]);
    expect(end).toEqual({ done: true, value: undefined });
  });

  it("by default shows only the other namespace's overlays", async () => {
    const child = await namespaceChild((c) => children.push(c));
    const w = track(overlay.watch({ pid: child.pid }));
    await w.ready;
    const [t, l1, l2, merged] = s.dirs("theirs", "l1", "l2", "merged");
    execFileSync("nsenter", ["-t", String(child.pid), "-m", "mount", "-t", "tmpfs", "theirs", t!]);
    execFileSync("nsenter", ["-t", String(child.pid), "-m", "mount", "-t", "overlay", "ov", "-o", `lowerdir=${l1}:${l2}`, merged!]);
    const ov = await nextUnder(w, s.dir);
    expect(ov).toMatchObject({ type: "mount", mount: { target: merged, fstype: "overlay" } });
  });

  it("rejects with ESRCH for a process that does not exist, then ends", async () => {
    const pidMax = Number(readFileSync("/proc/sys/kernel/pid_max", "utf8"));
    const w = overlay.watch({ pid: pidMax + 1 });
    await expect(w.ready).rejects.toMatchObject({ code: "ESRCH", syscall: "open" });
    await expect(w.next()).rejects.toMatchObject({ code: "ESRCH", path: `/proc/${pidMax + 1}/mountinfo` });
    expect(await w.next()).toEqual({ done: true, value: undefined });
  });
});

describe("watch(): arguments", () => {
  it("refuses bad options as Node does, before opening anything", () => {
    const before = openFdCount();
    expect(() => overlay.watch("all" as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(() => overlay.watch({ pid: 0 })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
    expect(() => overlay.watch({ pid: 1.5 })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_VALUE" }));
    expect(() => overlay.watch({ pid: "1" as never })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(() => overlay.watch({ all: 1 as never })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(() => overlay.watch({ signal: {} as never })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(() => overlay.watch({ onIssue: "x" as never })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }));
    expect(openFdCount()).toBe(before);
  });
});
