/**
 * `ovl commit`: a mounted overlay's changes as a new image. The overlay's lower layers must be an image's
 * layers in the store (ovl image mount --upper): its upper is exported as a layer (exportLayer), applied
 * into a new snapshot on top of that image's chain, and the new image recorded with the old config plus the
 * new layer's diff id.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { applyLayer } from "../layers/apply.js";
import { exportLayerTo } from "../layers/export.js";
import { list } from "../table/table.js";
import { chainIds, ImageError, type ImageConfig } from "./source.js";
import type { ImageStore } from "./images.js";

export interface CommitResult {
  name: string;
  manifestDigest: string;
  diffId: string;
  size: number;
}

export async function commitOverlay(store: ImageStore, target: string, name: string): Promise<CommitResult> {
  const [m] = await list({ target });
  if (!m || m.upper === undefined) throw new ImageError(`${target}: not a writable overlay (mount one with ovl image mount NAME TARGET --upper DIR --work DIR)`);
  // Which image it was mounted from: the one whose layer directories are exactly its lower layers.
  let base: { name: string; chainIds: string[]; config: unknown } | undefined;
  for (const image of await store.listImages()) {
    const dirs: string[] = [];
    for (const id of [...image.chainIds].reverse()) dirs.push(await store.dir(id));
    const lowers = m.lower.filter((l) => l !== join(store.root, "empty"));
    if (dirs.length === lowers.length && dirs.every((d, i) => d === lowers[i])) {
      base = image;
      break;
    }
  }
  if (!base) throw new ImageError(`${target}: its lower layers are not an image of the store ${store.root} (mount one with ovl image mount)`);

  const scratch = join(store.root, "tmp");
  mkdirSync(scratch, { recursive: true });
  const tmp = mkdtempSync(join(scratch, `commit-${process.pid}-`));
  const key = `commit-${process.pid}-${randomBytes(6).toString("hex")}`;
  const top = base.chainIds[base.chainIds.length - 1];
  try {
    const file = join(tmp, "layer.tar");
    const layer = await exportLayerTo(m.upper, file, { lower: m.lower });
    const config = structuredClone(base.config) as ImageConfig;
    const diffIds = [...(config.rootfs?.diff_ids ?? []), layer.diffId];
    config.rootfs = { type: "layers", diff_ids: diffIds };
    const chain = chainIds(diffIds);
    const id = chain[chain.length - 1]!;
    await store.prepare(key, top);
    try {
      await applyLayer(file, await store.dir(key), { diffId: layer.diffId, parents: m.lower });
      await store.commit(id, key, { labels: { "ovl.diff-id": layer.diffId } });
    } catch (e) {
      await store.remove(key).catch(() => undefined);
      // The same changes committed before: that snapshot is this layer.
      if ((e as { code?: string }).code !== "ERR_OVL_STORE_EXISTS") throw e;
    }
    const configText = JSON.stringify(config);
    const { createHash } = await import("node:crypto");
    const configDigest = `sha256:${createHash("sha256").update(configText).digest("hex")}`;
    const manifest = JSON.stringify({ schemaVersion: 2, config: configDigest, layers: diffIds });
    const manifestDigest = `sha256:${createHash("sha256").update(manifest).digest("hex")}`;
    await store.putImage(name, { manifestDigest, configDigest, config, chainIds: chain, labels: { "ovl.parent-image": base.name } });
    return { name, manifestDigest, diffId: layer.diffId, size: layer.size };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
