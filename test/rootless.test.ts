import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, lstatSync, readFileSync, writeFileSync } from "node:fs";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { join } from "node:path";
import { buildArchive } from "./layer-helpers.js";
import { packageRootForNobody, realRoot, requirePrivateMountNamespace, runAsNobody, scratch, type Scratch } from "./helpers.js";

const dist = join(packageRootForNobody, "dist", "index.js");
let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch();
  chmodSync(s.dir, 0o755);
});
afterEach(() => s.cleanup());

function lstatExists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function ownedByNobody(...names: string[]): string[] {
  const dirs = s.dirs(...names);
  for (const d of dirs) chownSync(d, 65534, 65534);
  return dirs;
}

// Switching to user nobody needs real root; CI runs as root, so these run there.
describe.runIf(realRoot)("rootless: an ordinary user in a user namespace", () => {
  it("mounts, adds userxattr by itself, and can delete a lower file and replace a lower directory", () => {
    const [l1, l2, upper, work, merged] = ownedByNobody("l1", "l2", "upper", "work", "merged");
    writeFileSync(`${l1}/file`, "lower file");
    s.dirs("l2/dir");
    writeFileSync(`${l2}/dir/inner`, "inner");
    execFileSync("chown", ["-R", "65534:65534", s.dir]);
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { unlinkSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
      const m = await overlay.mount({ lower: [${JSON.stringify(l1)}, ${JSON.stringify(l2)}], upper: ${JSON.stringify(upper)}, work: ${JSON.stringify(work)}, target: ${JSON.stringify(merged)} });
      unlinkSync(${JSON.stringify(`${merged}/file`)});
      rmSync(${JSON.stringify(`${merged}/dir`)}, { recursive: true });
      mkdirSync(${JSON.stringify(`${merged}/dir`)});
      writeFileSync(${JSON.stringify(`${merged}/dir/new`)}, "new");
      const listed = await overlay.list({ target: ${JSON.stringify(merged)} });
      console.log(JSON.stringify({ features: m.features, listed: listed.map((l) => l.lower), uid: process.getuid() }));
      await m.unmount();`;
    const r = runAsNobody(script, { userNamespace: true });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { features: { userxattr?: boolean }; listed: string[][]; uid: number };
    expect(out.uid).toBe(0); // root inside the namespace, nobody outside
    expect(out.features.userxattr).toBe(true);
    expect(out.listed).toEqual([[l1, l2]]);
    const whiteout = lstatSync(`${upper}/file`);
    expect(whiteout.isCharacterDevice()).toBe(true);
    expect(whiteout.rdev).toBe(0);
    expect(readFileSync(`${l1}/file`, "utf8")).toBe("lower file");
    expect(readFileSync(`${upper}/dir/new`, "utf8")).toBe("new");
    expect(readFileSync(`${l2}/dir/inner`, "utf8")).toBe("inner");
  });

  it("warns up front about a layer whose owner has no mapping (65534), with the fix; EOVERFLOW is then what a write gets", () => {
    const [upper, work, merged] = ownedByNobody("upper", "work", "merged");
    const [rootOwned, mine] = s.dirs("root-owned", "mine");
    writeFileSync(`${rootOwned}/file`, "root's");
    chmodSync(`${rootOwned}/file`, 0o666); // writable by anyone: only the missing mapping can stop the write
    chownSync(mine!, 65534, 65534);
    writeFileSync(`${mine}/file`, "nobody's");
    chownSync(`${mine}/file`, 65534, 65534);
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { appendFileSync } from "node:fs";
      const bad = await overlay.mount({ lower: [${JSON.stringify(rootOwned)}, ${JSON.stringify(mine)}], upper: ${JSON.stringify(upper)}, work: ${JSON.stringify(work)}, target: ${JSON.stringify(merged)} });
      let write;
      try { appendFileSync(${JSON.stringify(`${merged}/file`)}, "x"); write = "ok"; } catch (e) { write = e.code; }
      console.log(JSON.stringify({ warnings: bad.warnings, write }));
      await bad.unmount();`;
    const r = runAsNobody(script, { userNamespace: true });
    expect([r.status, r.stderr]).toEqual([0, ""]);
    const out = JSON.parse(r.stdout) as { warnings: string[]; write: string };
    expect(out.warnings).toHaveLength(1); // the root-owned lower only: nobody's own layers are mapped (as root)
    expect(out.warnings[0]).toMatch(new RegExp(`lower layer 1 '${rootOwned}' has an owner and group with no mapping in this user namespace \\(shown as 65534:65534\\)`));
    expect(out.warnings[0]).toContain('chown -R "$(id -u):$(id -g)"');
    expect(out.write).toBe("EOVERFLOW"); // what the warning said would happen
  });

  it("respects userxattr: false from the caller", () => {
    const [l1, upper, work, merged] = ownedByNobody("l1", "upper", "work", "merged");
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      const m = await overlay.mount({ lower: [${JSON.stringify(l1)}], upper: ${JSON.stringify(upper)}, work: ${JSON.stringify(work)}, target: ${JSON.stringify(merged)}, options: { userxattr: false } });
      console.log(JSON.stringify(m.features));`;
    const r = runAsNobody(script, { userNamespace: true });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).userxattr).toBeUndefined();
  });

  it("outside a user namespace, EPERM says to use root or a user namespace", () => {
    const [l1, upper, work, merged] = ownedByNobody("l1", "upper", "work", "merged");
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      try {
        await overlay.mount({ lower: [${JSON.stringify(l1)}], upper: ${JSON.stringify(upper)}, work: ${JSON.stringify(work)}, target: ${JSON.stringify(merged)} });
        console.log("mounted?!");
      } catch (e) { console.log(JSON.stringify({ code: e.code, errno: e.errno, hint: e.hint, path: e.path })); }`;
    const r = runAsNobody(script, { userNamespace: false });
    expect(r.status).toBe(0);
    const e = JSON.parse(r.stdout);
    expect(e.code).toBe("EPERM");
    expect(e.errno).toBe(-1);
    expect(e.hint).toMatch(/root .*user namespace/);
  });
  it("applies a layer (whiteout, opaque directory, owners of the namespace) and keeps a store: the stack mounts as the layers say", () => {
    // A base layer, then one that deletes a file, replaces a directory (opaque) and adds a file owned by
    // uid 0 of the namespace (nobody outside) and one by uid 1000, which has no mapping there.
    const base = s.file("base.tar", "");
    writeFileSync(base, buildArchive([
      { name: "etc/", type: "dir", mode: 0o755 },
      { name: "etc/gone", data: "deleted above" },
      { name: "etc/kept", data: "kept" },
      { name: "var/", type: "dir", mode: 0o755 },
      { name: "var/old", data: "hidden by the opaque dir above" },
    ]));
    const top = s.file("top.tar", "");
    writeFileSync(top, buildArchive([
      { name: "etc/.wh.gone", data: "" },
      { name: "var/", type: "dir", mode: 0o755 },
      { name: "var/.wh..wh..opq", data: "" },
      { name: "var/new", data: "new", uid: 0, gid: 0 },
      { name: "home/", type: "dir", mode: 0o755, uid: 1000, gid: 1000 },
    ]));
    execFileSync("chown", ["-R", "65534:65534", s.dir]);
    const store = s.path("store");
    const merged = s.path("merged");
    const script = `
      import * as overlay from ${JSON.stringify(dist)};
      import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
      const store = await overlay.openStore(${JSON.stringify(store)});
      const out = {};
      await store.prepare("a", undefined);
      out.base = await overlay.applyLayer(${JSON.stringify(base)}, await store.dir("a"));
      await store.commit("base", "a");
      await store.prepare("b", "base");
      try {
        await overlay.applyLayer(${JSON.stringify(top)}, await store.dir("b"), { parents: (await store.mounts("b")).lower });
      } catch (e) { out.unmapped = { code: e.code, message: e.message }; }
      await store.remove("b");
      await store.prepare("b", "base");
      out.top = await overlay.applyLayer(${JSON.stringify(top)}, await store.dir("b"), { owners: false, parents: (await store.mounts("b")).lower });
      await store.commit("top", "b");
      await store.view("v", "top");
      mkdirSync(${JSON.stringify(merged)});
      const m = await overlay.mount({ ...(await store.mounts("v")), target: ${JSON.stringify(merged)} });
      out.userxattr = m.features.userxattr;
      out.etc = readdirSync(${JSON.stringify(`${merged}/etc`)});
      out.var = readdirSync(${JSON.stringify(`${merged}/var`)});
      out.newOwner = statSync(${JSON.stringify(`${merged}/var/new`)}).uid;
      await m.unmount();
      out.check = await store.check();
      store.close();
      console.log(JSON.stringify(out));`;
    const r = runAsNobody(script, { userNamespace: true });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    // With the archive's owners, uid 1000 cannot be given here: a clear error, and nothing kept.
    expect(out.unmapped.message).toMatch(/home/);
    expect(out.top).toMatchObject({ whiteouts: 1, opaqueDirs: 1 });
    expect(out.userxattr).toBe(true);
    expect(out.etc).toEqual(["kept"]);
    expect(out.var).toEqual(["new"]);
    expect(out.newOwner).toBe(0);
    expect(out.check).toEqual({ missing: [], orphans: [] });
    // On the host: the opaque marker in user.overlay.* (trusted.* cannot be written there), the whiteout a 0/0 device.
    const layers = execFileSync("sh", ["-c", `ls -d ${store}/snapshots/*/fs`], { encoding: "utf8" }).trim().split("\n");
    const xattrs = execFileSync("getfattr", ["-d", "-m", "-", ...layers.map((l) => `${l}/var`).filter((p) => existsSync(p))], { encoding: "utf8" });
    expect(xattrs).toMatch(/user\.overlay\.opaque="y"/);
    expect(xattrs).not.toMatch(/trusted\./);
    const gone = layers.map((l) => `${l}/etc/gone`).filter(lstatExists).map((p) => lstatSync(p));
    expect(gone.map((st) => (st.isCharacterDevice() ? `char ${st.rdev}` : st.isFile() ? "file" : "other")).sort()).toEqual(["char 0", "file"]);
  });
});
