/**
 * Reading images to import: an OCI image layout directory, or an archive of one (`skopeo copy ...
 * oci-archive:`), or a Docker archive (`docker save`). Every manifest and config is checked against the
 * digest that names it; layer blobs are checked as they are applied. Archives are hostile input: their
 * entries are kept in a scratch directory under names ovl makes (never the archive's), and looked up by
 * the archive's names only in memory, so no name or symlink in an archive can write or read anywhere else.
 */
import { createHash } from "node:crypto";
import { createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { finished } from "node:stream/promises";
import { openLayer } from "../layers/compression.js";
import { entryPath } from "../layers/apply.js";
import { printableName, readTar } from "../layers/tar.js";

export class ImageError extends Error {
  readonly code: string;
  constructor(message: string, code = "ERR_OVL_IMAGE") {
    super(message);
    this.name = "ImageError";
    this.code = code;
  }
}

export interface ImageLayer {
  /** The blob's digest (`sha256:...`), checked when it is applied. */
  digest: string;
  mediaType: string;
  /** The uncompressed tar's digest, from the config's rootfs.diff_ids. */
  diffId: string;
  /** The blob: a file path. */
  path: string;
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  created?: string;
  config?: { Env?: string[]; Cmd?: string[]; Entrypoint?: string[]; WorkingDir?: string; User?: string };
  rootfs: { type: string; diff_ids: string[] };
}

export interface SourceImage {
  /** The name the source gives it (a ref annotation or a Docker RepoTag), if any. */
  name?: string;
  /** The manifest's digest; for a Docker archive, which has none, the digest of the manifest ovl writes for it. */
  manifestDigest: string;
  configDigest: string;
  config: ImageConfig;
  layers: ImageLayer[];
}

export interface ImageSourceHandle {
  images: SourceImage[];
  /** Removes the scratch copy of an archive's entries. */
  close(): void;
}

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

const LAYER_TYPES = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.diff.tar",
]);
const INDEX_TYPES = new Set(["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"]);

/** Where a source's files are: a directory, or an archive's entries copied out under ovl's own names. */
interface Files {
  /** The file for a name in the source (a layout-relative path), or undefined. */
  find(name: string): string | undefined;
  describe: string;
}

function dirFiles(root: string): Files {
  return {
    describe: root,
    find(name) {
      const parts = entryPath(name);
      if (typeof parts === "string" || parts.length === 0) return undefined;
      const p = join(root, ...parts);
      try {
        return statSync(p).isFile() ? p : undefined;
      } catch {
        return undefined;
      }
    },
  };
}

/** Copies an archive's regular files out to `scratch/N`; names (and the archive's symlinks between them) stay in a map. */
async function archiveFiles(file: string, scratch: string, onProgress?: (bytes: number) => void): Promise<Files> {
  const byName = new Map<string, string>();
  const links = new Map<string, string>();
  const key = (name: string): string | undefined => {
    const parts = entryPath(name);
    return typeof parts === "string" ? undefined : parts.join("/");
  };
  let n = 0;
  let bytes = 0;
  const layer = openLayer(file);
  for await (const item of readTar(layer.chunks)) {
    const e = item.entry;
    const k = key(e.name);
    if (k === undefined) throw new ImageError(`archive entry '${printableName(e.name)}': not a plain relative name; refused`);
    if (e.type === "dir") continue;
    if (e.type === "symlink" || e.type === "hardlink") {
      // Kept as a name-to-name mapping; resolved below the archive's root, in memory only.
      const base = e.type === "symlink" ? k.split("/").slice(0, -1) : [];
      const target = key([...base, e.linkname].join("/").replace(/^\/+/, ""));
      if (target !== undefined) links.set(k, normalise(target));
      continue;
    }
    if (e.type !== "file") throw new ImageError(`archive entry '${printableName(e.name)}': a ${e.type}, where an image archive holds files`);
    const out = join(scratch, String(n++));
    const stream = createWriteStream(out, { flags: "wx", mode: 0o600 });
    if (item.data) stream.write(item.data);
    else if (item.body) for await (const c of item.body) if (!stream.write(c)) await new Promise<void>((r) => stream.once("drain", () => r()));
    stream.end();
    await finished(stream);
    bytes += e.size;
    onProgress?.(bytes);
    byName.set(k, out);
  }
  return {
    describe: file,
    find(name) {
      let k = key(name);
      for (let hops = 0; k !== undefined && hops < 16; hops++) {
        const hit = byName.get(k);
        if (hit) return hit;
        k = links.get(k);
      }
      return undefined;
    },
  };
}

/** `a/../b` as `b`, for symlink targets inside an archive; one that leaves the archive's root is dropped. */
function normalise(path: string): string {
  const out: string[] = [];
  for (const p of path.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") out.pop();
    else out.push(p);
  }
  return out.join("/");
}

function readVerified(files: Files, digest: string, what: string): Buffer {
  if (!DIGEST.test(digest)) throw new ImageError(`${what}: '${digest}' is not a sha256 digest`);
  const path = files.find(`blobs/sha256/${digest.slice(7)}`);
  if (!path) throw new ImageError(`${what} ${digest} is not in ${files.describe}`);
  const b = readFileSync(path);
  if (sha256(b) !== digest) throw new ImageError(`${what} ${digest} in ${files.describe} does not match its digest (${sha256(b)})`, "ERR_OVL_DIGEST");
  return b;
}

function parseJson<T>(b: Buffer, what: string): T {
  try {
    return JSON.parse(b.toString("utf8")) as T;
  } catch (e) {
    throw new ImageError(`${what} is not JSON: ${(e as Error).message}`);
  }
}

const ARCH: Record<string, string> = { x64: "amd64", arm64: "arm64", arm: "arm", ppc64: "ppc64le", s390x: "s390x", riscv64: "riscv64" };

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string };
}

/** The images of an OCI layout: each manifest of index.json (an index inside: this machine's platform). */
function layoutImages(files: Files): SourceImage[] {
  const indexPath = files.find("index.json");
  if (!indexPath) throw new ImageError(`${files.describe}: no index.json (not an OCI image layout)`);
  const index = parseJson<{ manifests?: Descriptor[] }>(readFileSync(indexPath), "index.json");
  const out: SourceImage[] = [];
  for (const d of index.manifests ?? []) {
    const name = d.annotations?.["org.opencontainers.image.ref.name"];
    out.push(manifestImage(files, pickManifest(files, d, 0), name));
  }
  if (out.length === 0) throw new ImageError(`${files.describe}: index.json lists no image`);
  return out;
}

function pickManifest(files: Files, d: Descriptor, depth: number): Descriptor {
  if (!d.mediaType || !INDEX_TYPES.has(d.mediaType)) return d;
  if (depth > 4) throw new ImageError("image indexes nested too deep");
  const inner = parseJson<{ manifests?: Descriptor[] }>(readVerified(files, d.digest, "image index"), `image index ${d.digest}`);
  const list = inner.manifests ?? [];
  const arch = ARCH[process.arch] ?? process.arch;
  const hit = list.find((m) => m.platform?.os === "linux" && m.platform.architecture === arch) ?? (list.length === 1 ? list[0] : undefined);
  if (!hit) throw new ImageError(`image index ${d.digest} has no linux/${arch} image`);
  return pickManifest(files, hit, depth + 1);
}

function manifestImage(files: Files, d: Descriptor, name: string | undefined): SourceImage {
  const manifest = parseJson<{ config?: Descriptor; layers?: Descriptor[] }>(readVerified(files, d.digest, "manifest"), `manifest ${d.digest}`);
  if (!manifest.config) throw new ImageError(`manifest ${d.digest} names no config`);
  const configDigest = manifest.config.digest;
  const config = parseJson<ImageConfig>(readVerified(files, configDigest, "image config"), `image config ${configDigest}`);
  const diffIds = config.rootfs?.diff_ids ?? [];
  const layers = manifest.layers ?? [];
  if (diffIds.length !== layers.length) {
    throw new ImageError(`image config ${configDigest} lists ${diffIds.length} diff ids for ${layers.length} layers`);
  }
  return {
    ...(name !== undefined ? { name } : {}),
    manifestDigest: d.digest,
    configDigest,
    config,
    layers: layers.map((l, i) => {
      if (l.mediaType && !LAYER_TYPES.has(l.mediaType)) throw new ImageError(`layer ${l.digest}: media type ${l.mediaType} is not a layer ovl can apply`);
      const path = files.find(`blobs/sha256/${l.digest.replace(/^sha256:/, "")}`);
      if (!DIGEST.test(l.digest) || !path) throw new ImageError(`layer ${l.digest} is not in ${files.describe}`);
      return { digest: l.digest, mediaType: l.mediaType ?? "application/vnd.oci.image.layer.v1.tar", diffId: diffIds[i]!, path };
    }),
  };
}

/** The images of a Docker archive: manifest.json's entries, each config a file named in it. */
function dockerImages(files: Files): SourceImage[] {
  const manifestPath = files.find("manifest.json")!;
  const list = parseJson<Array<{ Config: string; RepoTags?: string[] | null; Layers: string[] }>>(readFileSync(manifestPath), "manifest.json");
  if (!Array.isArray(list) || list.length === 0) throw new ImageError(`${files.describe}: manifest.json lists no image`);
  return list.map((m) => {
    const configPath = files.find(m.Config);
    if (!configPath) throw new ImageError(`${files.describe}: config ${m.Config} is missing`);
    const configBytes = readFileSync(configPath);
    const configDigest = sha256(configBytes);
    // Named blobs/sha256/<hex> in newer archives: then the name is the digest, and must match.
    const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(m.Config)?.[1];
    if (named && `sha256:${named}` !== configDigest) throw new ImageError(`config ${m.Config} does not match its digest (${configDigest})`, "ERR_OVL_DIGEST");
    const config = parseJson<ImageConfig>(configBytes, `config ${m.Config}`);
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== m.Layers.length) throw new ImageError(`config ${m.Config} lists ${diffIds.length} diff ids for ${m.Layers.length} layers`);
    const layers = m.Layers.map((name, i) => {
      const path = files.find(name);
      if (!path) throw new ImageError(`${files.describe}: layer ${name} is missing`);
      // Docker keeps layers as they were made (uncompressed tar, or a blob by digest): the blob's digest is
      // checked where it is known; the diff id always is, when it is applied.
      const blob = /(?:^|\/)([0-9a-f]{64})$/.exec(name)?.[1];
      return { digest: blob ? `sha256:${blob}` : diffIds[i]!, mediaType: "application/vnd.docker.image.rootfs.diff.tar", diffId: diffIds[i]!, path, digestKnown: !!blob };
    });
    // The manifest ovl would write for it: a stable id for an image a Docker archive names by config only.
    const synthetic = Buffer.from(JSON.stringify({ schemaVersion: 2, config: configDigest, layers: layers.map((l) => l.diffId) }));
    const tag = m.RepoTags?.[0];
    return {
      ...(tag ? { name: tag } : {}),
      manifestDigest: sha256(synthetic),
      configDigest,
      config,
      layers: layers.map(({ digestKnown, ...l }) => (digestKnown ? l : { ...l, digest: "" })),
    };
  });
}

/**
 * Opens an image source: an OCI layout directory, an OCI archive or a Docker archive (a tar, possibly
 * compressed). `scratchParent` is where an archive's files are copied out (the store's, so that they are on
 * the same filesystem as the layers).
 */
export async function openImageSource(path: string, scratchParent: string, onProgress?: (bytes: number) => void): Promise<ImageSourceHandle> {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new ImageError(`${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file or directory" : (e as Error).message}`, (e as NodeJS.ErrnoException).code ?? "ERR_OVL_IMAGE");
  }
  if (st.isDirectory()) return { images: layoutImages(dirFiles(path)), close: () => undefined };
  const scratch = mkdtempSync(join(scratchParent, `import-${process.pid}-`));
  const close = () => rmSync(scratch, { recursive: true, force: true });
  try {
    const files = await archiveFiles(path, scratch, onProgress);
    const images = files.find("index.json") ? layoutImages(files) : files.find("manifest.json") ? dockerImages(files) : undefined;
    if (!images) throw new ImageError(`${path}: neither an OCI archive (index.json) nor a Docker archive (manifest.json)`);
    return { images, close };
  } catch (e) {
    close();
    throw e;
  }
}

/** containerd's chain ids: the first layer's diff id, then sha256 of "PARENT DIFFID" for each next one. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    out.push(out.length === 0 ? d : `sha256:${createHash("sha256").update(`${out[out.length - 1]} ${d}`).digest("hex")}`);
  }
  return out;
}
