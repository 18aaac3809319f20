import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import { applyLayer } from "../src/layers/apply.js";
import { exportLayer, exportLayerTo } from "../src/layers/export.js";
import { buildArchive, describeTree } from "./layer-helpers.js";
import { requirePrivateMountNamespace, scratch, type Scratch } from "./helpers.js";

let s: Scratch;
beforeAll(() => requirePrivateMountNamespace());
beforeEach(() => {
  s = scratch("ovl-export-");
});
afterEach(() => s.cleanup());

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(c);
  return Buffer.concat(parts);
}

/** A base layer with something of every kind, applied by ovl. */
async function baseLayer(dir: string): Promise<void> {
  await applyLayer(
    buildArchive([
      { name: "etc/", type: "dir", mode: 0o755 },
      { name: "etc/hosts", data: "127.0.0.1 localhost\n" },
      { name: "etc/gone", data: "to be deleted" },
      { name: "etc/mode", data: "chmod me", mode: 0o644 },
      { name: "var/lib/app/data", data: "data" },
      { name: "var/lib/app/more/deep", data: "deep" },
      { name: "var/cache/x", data: "cache" },
      { name: "old/a", data: "a" },
      { name: "old/sub/b", data: "b" },
      { name: "big", data: Buffer.alloc(3 * 1024 * 1024, 7) },
    ]),
    dir,
  );
}

/** Changes of every kind made through a mounted overlay, as a user makes them. */
function change(m: string): void {
  writeFileSync(`${m}/etc/hosts`, "10.0.0.1 changed\n");
  unlinkSync(`${m}/etc/gone`);
  chmodSync(`${m}/etc/mode`, 0o4711);
  rmSync(`${m}/var/cache`, { recursive: true });
  rmSync(`${m}/var/lib/app`, { recursive: true });
  mkdirSync(`${m}/var/lib/app`); // opaque: the old contents must not show
  writeFileSync(`${m}/var/lib/app/fresh`, "fresh");
  renameSync(`${m}/old`, `${m}/new`); // a redirect (redirect_dir=on): exported whole
  writeFileSync(`${m}/new/added`, "added in the renamed dir");
  writeFileSync(`${m}/caf\xe9`, "latin1 name"); // a UTF-8 name; the byte name is below
  writeFileSync(Buffer.from(`${m}/raw-\xff`, "latin1"), "not UTF-8");
  writeFileSync(`${m}/h1`, "linked");
  linkSync(`${m}/h1`, `${m}/h2`);
  symlinkSync("etc/hosts", `${m}/link`);
  execFileSync("setfattr", ["-n", "user.note", "-v", "kept", `${m}/h1`]);
  writeFileSync(`${m}/big`, Buffer.alloc(2 * 1024 * 1024 + 5, 9));
}

describe("exportLayer: an upper directory as an OCI layer", () => {
  it("applied over the same lower, it gives the tree the overlay showed (whiteouts, opaque, renames, metacopy, links, xattrs)", async () => {
    const [lower, upper, work, m] = s.dirs("lower-root", "upper", "work", "m") as [string, string, string, string];
    rmSync(lower, { recursive: true });
    await baseLayer(lower);
    const mounted = await overlay.mount({ lower: [lower], upper, work, target: m, options: { redirectDir: "on", metacopy: true } });
    change(m);
    // Layers keep mtimes to the second (what tar headers hold without a PAX record per entry).
    const want = describeTree(m, { mtimes: "seconds" });
    await mounted.unmount();

    const { chunks, result } = exportLayer(upper, { lower: [lower] });
    const bytes = await collect(chunks);
    const r = await result;
    expect(r).toMatchObject({ digest: sha(bytes), diffId: sha(bytes), size: bytes.length, mediaType: "application/vnd.oci.image.layer.v1.tar" });

    // What the layer says, in GNU tar's words.
    const listing = execFileSync("tar", ["-tf", "-"], { input: bytes }).toString().split("\n");
    expect(listing).toContain("etc/.wh.gone");
    expect(listing).toContain("var/.wh.cache");
    expect(listing).toContain("var/lib/app/.wh..wh..opq");
    expect(listing).toContain("new/.wh..wh..opq");
    expect(listing).toContain("new/sub/b"); // the renamed directory, whole
    expect(listing).toContain(".wh.old");
    expect(listing).not.toContain("var/lib/app/data");

    const applied = s.path("applied");
    await applyLayer(bytes, applied);
    const m2 = s.dirs("m2")[0]!;
    const again = await overlay.mount({ lower: [applied, lower], target: m2 });
    try {
      expect(describeTree(m2, { mtimes: "seconds" })).toEqual(want);
    } finally {
      await again.unmount();
    }
  });

  it("the same tree gives the same bytes, plain and gzip; the gzip digest is of the compressed bytes", async () => {
    const [lower, upper, work, m] = s.dirs("lower-root", "upper", "work", "m") as [string, string, string, string];
    rmSync(lower, { recursive: true });
    await baseLayer(lower);
    const mounted = await overlay.mount({ lower: [lower], upper, work, target: m, options: { redirectDir: "on" } });
    change(m);
    await mounted.unmount();
    const a = await collect(exportLayer(upper, { lower: [lower] }).chunks);
    const b = await collect(exportLayer(upper, { lower: [lower] }).chunks);
    expect(sha(a)).toBe(sha(b));
    const gz = exportLayer(upper, { lower: [lower], gzip: true });
    const gzBytes = await collect(gz.chunks);
    const gr = await gz.result;
    expect(gr).toMatchObject({ digest: sha(gzBytes), diffId: sha(a), mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" });
    expect(sha(gunzipSync(gzBytes))).toBe(sha(a));
    expect(sha(await collect(exportLayer(upper, { lower: [lower], gzip: true }).chunks))).toBe(sha(gzBytes));
    // To a file.
    const out = s.path("layer.tar");
    const fr = await exportLayerTo(upper, out, { lower: [lower] });
    expect(sha(readFileSync(out))).toBe(fr.digest);
    expect(fr.digest).toBe(sha(a));
  });

  it("exports a mounted overlay by its mount point", async () => {
    const [lower, upper, work, m] = s.dirs("lower-root", "upper", "work", "m") as [string, string, string, string];
    rmSync(lower, { recursive: true });
    await baseLayer(lower);
    const mounted = await overlay.mount({ lower: [lower], upper, work, target: m, strategy: "fd" });
    try {
      unlinkSync(`${m}/etc/gone`);
      writeFileSync(`${m}/new-file`, "new");
      const bytes = await collect(exportLayer(m).chunks);
      const listing = execFileSync("tar", ["-tf", "-"], { input: bytes }).toString().trim().split("\n").sort();
      expect(listing).toEqual(["etc/", "etc/.wh.gone", "new-file"]);
    } finally {
      await mounted.unmount();
    }
  });
});
