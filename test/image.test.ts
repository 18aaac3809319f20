import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { openStore } from "../src/store/index.js";
import { importImage, imageLayers, removeImage } from "../src/images/images.js";
import { buildArchive } from "./layer-helpers.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

const cli = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
let s: Scratch;
const missing = ["umoci", "skopeo"].filter((t) => {
  try {
    execFileSync(t, ["--version"], { stdio: "ignore" });
    return false;
  } catch {
    return true;
  }
});
if (missing.length > 0 && !process.env.CI) console.warn(`image tests skipped: ${missing.join(", ")} not installed (CI installs them)`);
const d = missing.length > 0 && !process.env.CI ? describe.skip : describe;

beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-image-");
});
afterEach(() => s.cleanup());

const umoci = (...args: string[]) => execFileSync("umoci", args, { stdio: ["ignore", "pipe", "pipe"] });

/**
 * An image built offline by umoci: a base layer with busybox (a shell to run) and files, then a second layer
 * that deletes and adds; tagged `base` (one layer) and `app` (both), in one OCI layout.
 */
function buildImages(root: string): string {
  const layout = join(root, "layout");
  umoci("init", "--layout", layout);
  umoci("new", "--image", `${layout}:base`);
  const b = join(root, "bundle");
  umoci("unpack", "--image", `${layout}:base`, b);
  const r = join(b, "rootfs");
  for (const dir of ["bin", "etc", "proc", "dev", "tmp"]) mkdirSync(join(r, dir), { recursive: true });
  cpSync("/bin/busybox", join(r, "bin", "busybox"));
  symlinkSync("busybox", join(r, "bin", "sh"));
  writeFileSync(join(r, "etc", "greeting"), "hello from the base\n");
  writeFileSync(join(r, "etc", "doomed"), "deleted in app\n");
  umoci("repack", "--image", `${layout}:base`, b);
  umoci("config", "--image", `${layout}:base`, "--config.cmd=/bin/sh", "--config.cmd=-c", "--config.cmd=cat greeting; echo FOO=$FOO", "--config.env=FOO=bar", "--config.workingdir=/etc");
  execFileSync("rm", ["-rf", b]);
  umoci("unpack", "--image", `${layout}:base`, b);
  execFileSync("rm", [join(r, "etc", "doomed")]);
  writeFileSync(join(r, "etc", "app.conf"), "app=1\n");
  umoci("repack", "--image", `${layout}:app`, b);
  execFileSync("rm", ["-rf", b]);
  return layout;
}

d("images: import, list, mount, run, remove (against umoci-built images)", () => {
  it("imports an OCI layout, an OCI archive and a Docker archive; layers are shared by chain id", async () => {
    const layout = buildImages(s.dir);
    execFileSync("skopeo", ["copy", "-q", `oci:${layout}:app`, `oci-archive:${s.path("app-oci.tar")}`]);
    execFileSync("skopeo", ["copy", "-q", `oci:${layout}:app`, `docker-archive:${s.path("app-docker.tar")}:example/app:1`]);
    const store = await openStore(s.path("store"), { create: true });
    try {
      const base = await importImage(store, layout, { pick: "base", name: "base" });
      expect(base).toMatchObject({ applied: 1, reused: 0 });
      const app = await importImage(store, layout, { pick: "app", name: "app" });
      expect(app).toMatchObject({ applied: 1, reused: 1 }); // the base layer is the same snapshot
      expect(app.chainIds[0]).toBe(base.chainIds[0]);
      const fromOci = await importImage(store, s.path("app-oci.tar"), { name: "app-oci" });
      expect(fromOci).toMatchObject({ applied: 0, reused: 2, chainIds: app.chainIds });
      const fromDocker = await importImage(store, s.path("app-docker.tar"));
      expect(fromDocker).toMatchObject({ name: "docker.io/example/app:1", applied: 0, reused: 2, chainIds: app.chainIds });
      expect((await store.listImages()).map((i) => i.name).sort()).toEqual(["app", "app-oci", "base", "docker.io/example/app:1"]);

      // Mounted, the stack is what umoci unpacks.
      const target = s.dirs("m")[0]!;
      const m = await overlay.mount({ lower: await imageLayers(store, "app"), target });
      try {
        const ref = s.path("ref");
        umoci("unpack", "--image", `${layout}:app`, ref);
        expect(readdirSync(join(target, "etc")).sort()).toEqual(readdirSync(join(ref, "rootfs", "etc")).sort());
        expect(existsSync(join(target, "etc", "doomed"))).toBe(false);
        expect(readFileSync(join(target, "etc", "greeting"), "utf8")).toBe("hello from the base\n");
      } finally {
        await m.unmount();
      }

      // Removing an image frees only what no other image uses.
      expect(await removeImage(store, "app")).toEqual([]); // app-oci and example/app:1 still use both layers
      await removeImage(store, "app-oci");
      expect(await removeImage(store, "docker.io/example/app:1")).toEqual([app.chainIds[1]]);
      expect(await removeImage(store, "base")).toEqual([base.chainIds[0]]);
      expect((await store.list()).length).toBe(0);
    } finally {
      store.close();
    }
  });

  it("refuses an archive entry that leaves the archive, and a layer that does not match its digest", async () => {
    const layout = buildImages(s.dir);
    const store = await openStore(s.path("store"), { create: true });
    try {
      writeFileSync(s.path("evil.tar"), buildArchive([{ name: "../escaped", data: "x" }, { name: "index.json", data: "{}" }]));
      await expect(importImage(store, s.path("evil.tar"), { name: "evil" })).rejects.toThrow(/archive entry '\.\.\/escaped': not a plain relative name/);
      expect(existsSync(join(s.dir, "escaped"))).toBe(false);
      // Corrupt the app layer's blob: the import fails and leaves no snapshot of it.
      const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
      const appDesc = index.manifests.find((m: { annotations: Record<string, string> }) => m.annotations["org.opencontainers.image.ref.name"] === "app");
      const manifest = JSON.parse(readFileSync(join(layout, "blobs", "sha256", appDesc.digest.slice(7)), "utf8"));
      const top = manifest.layers[1].digest.slice(7);
      const blob = readFileSync(join(layout, "blobs", "sha256", top));
      blob[blob.length - 30] = blob[blob.length - 30]! ^ 0xff;
      writeFileSync(join(layout, "blobs", "sha256", top), blob);
      await expect(importImage(store, layout, { pick: "app", name: "app" })).rejects.toThrow();
      const left = await store.list();
      expect(left.map((i) => i.kind)).toEqual(["committed"]); // the base layer, applied before the bad one
      expect(await store.getImage("app")).toBeUndefined();
    } finally {
      store.close();
    }
  });

  it("ovl image import / ls / mount / rm, ovl run --image with the image's command, ovl commit", async () => {
    const layout = buildImages(s.dir);
    const env = { ...process.env, OVL_STORE: s.path("store") };
    const ovl = (...args: string[]) => execa("node", [cli, ...args], { env, reject: false });
    expect((await ovl("image", "import", "--pick", "app", layout, "app")).exitCode).toBe(0);
    const ls = await ovl("image", "ls", "--json");
    expect(JSON.parse(ls.stdout)).toMatchObject([{ name: "app", layers: 2 }]);

    // Its own command, environment and working directory, in its own root.
    const run = await ovl("run", "--image", "app");
    expect(run.stderr).toBe("");
    expect(run.stdout).toBe("hello from the base\nFOO=bar");
    expect(run.exitCode).toBe(0);
    const own = await ovl("run", "--image", "app", "--", "/bin/sh", "-c", "echo changed > /etc/greeting; cat /etc/greeting; ls /etc; exit 3");
    expect(own.stdout).toBe("changed\napp.conf\ngreeting");
    expect(own.exitCode).toBe(3);
    // The run's changes were thrown away.
    expect((await ovl("run", "--image", "app", "--", "/bin/sh", "-c", "cat /etc/greeting")).stdout).toBe("hello from the base");

    // Writable mount, changes, commit: a new image with one more layer.
    const [upper, work, target] = s.dirs("upper", "work", "m");
    expect((await ovl("image", "mount", "app", target!, "--upper", upper!, "--work", work!)).exitCode).toBe(0);
    writeFileSync(join(target!, "etc", "committed"), "in the new layer\n");
    const commit = await ovl("commit", target!, "app2");
    expect(commit.stderr).toBe("");
    expect(commit.exitCode).toBe(0);
    expect((await ovl("umount", target!)).exitCode).toBe(0);
    expect((await ovl("run", "--image", "app2", "--", "/bin/sh", "-c", "cat /etc/committed")).stdout).toBe("in the new layer");
    expect(JSON.parse((await ovl("image", "ls", "-J")).stdout).map((i: { name: string; layers: number }) => [i.name, i.layers])).toEqual([
      ["app", 2],
      ["app2", 3],
    ]);

    // A layer export of an upper, from the command line.
    const exp = await ovl("layer", "export", upper!, "-o", s.path("changes.tar"));
    expect(exp.exitCode).toBe(0);
    expect(execFileSync("tar", ["-tf", s.path("changes.tar")]).toString().split("\n")).toContain("etc/committed");

    expect((await ovl("image", "rm", "app2", "app")).exitCode).toBe(0);
    const none = await ovl("image", "ls");
    expect(none.exitCode).toBe(1);
    expect((await ovl("image", "rm", "nonesuch")).stderr).toMatch(/ovl: image rm: .*no image named 'nonesuch'/);
  });
});

d("imports killed with SIGKILL at random points", () => {
  it("leave a store that reopens consistent; the next import reclaims their half-applied layers and completes", async () => {
    // An image whose second layer takes a while to apply (3,000 files, 16 MB), so that kills land inside it.
    const layout = join(s.dir, "layout");
    umoci("init", "--layout", layout);
    umoci("new", "--image", `${layout}:big`);
    const b = join(s.dir, "bundle");
    umoci("unpack", "--image", `${layout}:big`, b);
    writeFileSync(join(b, "rootfs", "base"), "base layer");
    umoci("repack", "--image", `${layout}:big`, b);
    for (let i = 0; i < 30; i++) {
      mkdirSync(join(b, "rootfs", `d${i}`));
      for (let k = 0; k < 100; k++) writeFileSync(join(b, "rootfs", `d${i}`, `f${k}`), `file ${i}/${k}`.repeat(20));
    }
    writeFileSync(join(b, "rootfs", "big.bin"), Buffer.alloc(16 << 20, 7));
    umoci("repack", "--image", `${layout}:big`, b);
    const root = s.path("store");
    const env = { ...process.env, OVL_STORE: root };
    const seen = { duringApply: 0, other: 0, completed: 0 };
    for (let i = 0; i < 25; i++) {
      const p = execa("node", [cli, "image", "import", layout, `img${i}`], { env, reject: false });
      const delay = 150 + ((i * 97) % 700);
      await new Promise((r) => setTimeout(r, delay));
      // Where the kill lands: an import's active snapshot exists while a layer is being applied into it.
      const store = await openStore(root);
      const applying = (await store.list(["kind==active"])).some((x) => x.key.startsWith("import-"));
      store.close();
      p.kill("SIGKILL");
      const r = await p;
      if (r.exitCode === 0) seen.completed++;
      else if (applying) seen.duringApply++;
      else seen.other++;
      const after = await openStore(root);
      try {
        const c = await after.check();
        expect(c.missing).toEqual([]);
        for (const x of await after.list()) if (x.parent !== undefined) expect((await after.stat(x.parent)).kind).toBe("committed");
        for (const img of await after.listImages()) for (const id of img.chainIds) expect((await after.stat(id)).kind).toBe("committed");
      } finally {
        after.close();
      }
    }
    console.log(`image import kill test: ${JSON.stringify(seen)}`);
    expect(seen.duringApply).toBeGreaterThan(0); // the kills raced the apply, not only the start
    // A full import now: the half-applied snapshots are reclaimed, and the image is whole.
    const full = await execa("node", [cli, "image", "import", layout, "final"], { env, reject: false });
    expect(full.stderr).toBe("");
    expect(full.exitCode).toBe(0);
    const store = await openStore(root);
    try {
      expect((await store.list(["kind==active"])).map((x) => x.key)).toEqual([]);
      await store.cleanup();
      const c = await store.check();
      expect([c.missing, c.orphans]).toEqual([[], []]);
      const target = s.dirs("m")[0]!;
      const lower = await imageLayers(store, "final");
      if (lower.length === 1) lower.push(s.dirs("empty")[0]!); // umoci may fold both changes into one layer
      const m = await overlay.mount({ lower, target });
      try {
        expect(readdirSync(join(target, "d29")).length).toBe(100);
        expect(readFileSync(join(target, "big.bin")).length).toBe(16 << 20);
        expect(readFileSync(join(target, "base"), "utf8")).toBe("base layer");
      } finally {
        await m.unmount();
      }
    } finally {
      store.close();
    }
  }, 180_000);
});

describe("sandbox(): a throwaway overlay for tests", () => {
  it("mounts, reports changes, exports them, and leaves nothing at dispose", async () => {
    const [a, b] = s.dirs("a", "b");
    writeFileSync(join(a!, "file"), "a");
    writeFileSync(join(b!, "gone"), "b");
    let path: string;
    {
      await using box = await overlay.sandbox({ lower: [a!, b!], tmpfs: "16m" });
      path = box.path;
      writeFileSync(join(box.path, "new"), "new");
      execFileSync("rm", [join(box.path, "gone")]);
      expect((await box.changes()).map((c) => [c.path, c.change])).toEqual([
        ["/gone", "D"],
        ["/new", "A"],
      ]);
      const r = await box.exportLayer(s.path("layer.tar"));
      expect(r.entries).toBe(2);
    }
    expect(existsSync(path)).toBe(false);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain("ovl-sandbox-");
  });
});
