/**
 * Images in a snapshot store: each layer applied once into a committed snapshot named by its chain id
 * (containerd's naming, so images that share a base share its snapshots), and the image itself a record
 * naming its chain. Importing applies each missing layer into a fresh active snapshot and commits it; a
 * failure removes the half-made snapshot, and two imports of one layer at once end with one snapshot.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { applyLayer, type ApplyProgress } from "../layers/apply.js";
import { chainIds, ImageError, openImageSource, type ImageConfig, type SourceImage } from "./source.js";
import type { ImageRecord } from "../store/index.js";

/** What images need of a store (src/store): snapshots by key, and image records. */
export interface ImageStore {
  readonly root: string;
  prepare(key: string, parent?: string, opts?: { labels?: Record<string, string> }): Promise<unknown>;
  dir(key: string): Promise<string>;
  commit(name: string, key: string, opts?: { labels?: Record<string, string> }): Promise<void>;
  remove(key: string): Promise<void>;
  stat(key: string): Promise<{ kind: string; parent?: string }>;
  list(filters?: string[]): Promise<Array<{ key: string; parent?: string; kind: string }>>;
  usage(key: string): Promise<{ size: number; inodes: number }>;
  putImage(name: string, image: { manifestDigest: string; configDigest: string; config: unknown; chainIds: string[]; labels?: Record<string, string> }): Promise<void>;
  getImage(name: string): Promise<ImageRecord | undefined>;
  listImages(): Promise<ImageRecord[]>;
  removeImage(name: string): Promise<boolean>;
}

export type { ImageRecord };

export interface ImportProgress {
  /** The layer being applied (1-based) and how many the image has. */
  layer: number;
  layers: number;
  /** Entries and bytes of file contents applied in this layer so far. */
  entries: number;
  bytes: number;
  /** The layer was already in the store (shared with another image): nothing to apply. */
  reused?: boolean;
}

export interface ImportOptions {
  /** The name to keep the image under; default the source's own (a ref annotation or a Docker tag). */
  name?: string;
  /** Which image of a source with several: its name there. */
  pick?: string;
  onProgress?: (p: ImportProgress) => void;
}

export interface ImportResult {
  name: string;
  manifestDigest: string;
  configDigest: string;
  chainIds: string[];
  /** Layers applied now, and layers the store had already. */
  applied: number;
  reused: number;
}

async function exists(store: ImageStore, key: string): Promise<string | undefined> {
  try {
    return (await store.stat(key)).kind;
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_OVL_STORE_NOT_FOUND") return undefined;
    throw e;
  }
}

/**
 * Removes what imports killed half-way left: their active snapshots (`import-PID-*` of a process that is gone;
 * a layer half applied is never committed, so it is only ever in one of these). Returns their keys.
 */
export async function reclaimImports(store: ImageStore): Promise<string[]> {
  const removed: string[] = [];
  for (const s of await store.list(["kind==active"])) {
    const m = /^(?:import|commit)-(\d+)-/.exec(s.key);
    if (!m || pidAlive(Number(m[1]))) continue;
    try {
      await store.remove(s.key);
      removed.push(s.key);
    } catch (e) {
      if ((e as { code?: string }).code !== "ERR_OVL_STORE_NOT_FOUND") throw e; // another import reclaimed it
    }
  }
  // Their scratch copies of archives, in the store's tmp/.
  const tmp = join(store.root, "tmp");
  for (const n of existsSync(tmp) ? readdirSync(tmp) : []) {
    const m = /^(?:import|commit)-(\d+)-/.exec(n);
    if (m && !pidAlive(Number(m[1]))) {
      rmSync(join(tmp, n), { recursive: true, force: true });
      removed.push(`tmp/${n}`);
    }
  }
  return removed;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Imports an OCI layout directory, OCI archive or Docker archive into the store. */
export async function importImage(store: ImageStore, sourcePath: string, options: ImportOptions = {}): Promise<ImportResult> {
  const scratch = join(store.root, "tmp");
  mkdirSync(scratch, { recursive: true });
  await reclaimImports(store);
  const source = await openImageSource(sourcePath, scratch);
  try {
    const image = pickImage(source.images, options.pick, sourcePath);
    const name = options.name ?? image.name;
    if (!name) throw new ImageError(`${sourcePath} does not name its image: give a name (ovl image import SOURCE NAME)`);
    const chain = chainIds(image.layers.map((l) => l.diffId));
    let applied = 0;
    let reused = 0;
    for (let i = 0; i < image.layers.length; i++) {
      const layer = image.layers[i]!;
      const id = chain[i]!;
      const progress = (p: Partial<ApplyProgress> & { reused?: boolean }) =>
        options.onProgress?.({ layer: i + 1, layers: image.layers.length, entries: p.entries ?? 0, bytes: p.bytes ?? 0, ...(p.reused ? { reused: true } : {}) });
      const kind = await exists(store, id);
      if (kind === "committed") {
        reused++;
        progress({ reused: true });
        continue;
      }
      if (kind !== undefined) throw new ImageError(`snapshot ${id} exists but is ${kind}, not committed: the store needs \`ovl image prune\` or manual repair`);
      const key = `import-${process.pid}-${randomBytes(6).toString("hex")}`;
      await store.prepare(key, i === 0 ? undefined : chain[i - 1], { labels: { "ovl.import": sourcePath } });
      try {
        const dir = await store.dir(key);
        const parents: string[] = [];
        for (let k = i - 1; k >= 0; k--) parents.push(await store.dir(chain[k]!));
        await applyLayer(layer.path, dir, { ...(layer.digest ? { digest: layer.digest } : {}), diffId: layer.diffId, parents, onProgress: progress });
        try {
          await store.commit(id, key, { labels: { "ovl.diff-id": layer.diffId } });
          applied++;
        } catch (e) {
          // Another import committed the same layer meanwhile: theirs is the same bytes.
          if ((e as { code?: string }).code !== "ERR_OVL_STORE_EXISTS") throw e;
          await store.remove(key);
          reused++;
        }
      } catch (e) {
        await store.remove(key).catch(() => undefined);
        throw e;
      }
    }
    await store.putImage(name, { manifestDigest: image.manifestDigest, configDigest: image.configDigest, config: image.config, chainIds: chain });
    return { name, manifestDigest: image.manifestDigest, configDigest: image.configDigest, chainIds: chain, applied, reused };
  } finally {
    source.close();
  }
}

function pickImage(images: SourceImage[], pick: string | undefined, source: string): SourceImage {
  if (pick !== undefined) {
    const hit = images.find((i) => i.name === pick);
    if (!hit) throw new ImageError(`${source} has no image named '${pick}' (it has: ${images.map((i) => i.name ?? "(unnamed)").join(", ")})`);
    return hit;
  }
  if (images.length > 1) {
    throw new ImageError(`${source} holds ${images.length} images (${images.map((i) => i.name ?? "(unnamed)").join(", ")}): say which one`);
  }
  return images[0]!;
}

export async function getImage(store: ImageStore, name: string): Promise<ImageRecord> {
  const image = await store.getImage(name);
  if (!image) throw new ImageError(`no image named '${name}' in ${store.root}`, "ERR_OVL_IMAGE_NOT_FOUND");
  return image;
}

/** The layer directories of an image, top-most first: the lower layers of a mount of it. */
export async function imageLayers(store: ImageStore, name: string): Promise<string[]> {
  const image = await getImage(store, name);
  const dirs: string[] = [];
  for (const id of [...image.chainIds].reverse()) dirs.push(await store.dir(id));
  return dirs;
}

/**
 * Removes an image, then each of its layers that no other image uses and that no snapshot is built on,
 * top-most first. Returns the snapshots removed.
 */
export async function removeImage(store: ImageStore, name: string): Promise<string[]> {
  const image = await getImage(store, name);
  await store.removeImage(name);
  const used = new Set<string>();
  for (const other of await store.listImages()) for (const id of other.chainIds) used.add(id);
  const removed: string[] = [];
  for (const id of [...image.chainIds].reverse()) {
    if (used.has(id)) break; // and so is everything below it
    const children = await store.list([`parent==${id}`]);
    if (children.length > 0) break;
    await store.remove(id);
    removed.push(id);
  }
  return removed;
}

/** What `ovl run --image` runs when no command is given: Entrypoint + Cmd, with Env and WorkingDir. */
export function runDefaults(config: unknown): { command: string[]; env: string[]; workingDir: string } {
  const c = (config as ImageConfig | undefined)?.config ?? {};
  return {
    command: [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])],
    env: c.Env ?? [],
    workingDir: c.WorkingDir || "/",
  };
}
