/**
 * sandbox(): a mounted throwaway overlay for a test harness. Its own upper and work (on a tmpfs of its own
 * if asked), the lower layers given or an image's from the store; `changes()` is what was done in it,
 * `exportLayer()` those changes as a layer, `commit(name)` a new image of them; at dispose the overlay, the
 * tmpfs and every directory it made are gone.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FsConfigKind, native, type NativeFailure } from "../kernel/native.js";
import { fromNative, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { mountOverlay, type MountedOverlay } from "../mounting/mount.js";
import { diff, type Change } from "../layers/diff.js";
import { exportLayerTo, type ExportResult } from "../layers/export.js";
import type { Writable } from "node:stream";

export interface SandboxOptions {
  /** Lower layers, top-most first; or `image`. */
  lower?: string[];
  /** An image of the store (ovl image import) as the lower layers. */
  image?: string;
  /** The store `image` is in; default as the CLI's (`$OVL_STORE`, /var/lib/ovl for root). */
  store?: string;
  /** Upper and work on a tmpfs of the sandbox's own: `true`, or its size as tmpfs takes it (`64m`). */
  tmpfs?: boolean | string;
}

export interface Sandbox extends AsyncDisposable {
  /** The merged tree: work here. */
  readonly path: string;
  readonly upper: string;
  readonly lower: string[];
  readonly mount: MountedOverlay;
  /** What changed, as diff() reports it. */
  changes(): Promise<Change[]>;
  /** The changes as an OCI layer (a file path or a stream). */
  exportLayer(dest: string | Writable, options?: { gzip?: boolean }): Promise<ExportResult>;
  /** A new image of the changes, on top of the sandbox's image (only for `image` sandboxes). */
  commit(name: string): Promise<{ name: string; manifestDigest: string; diffId: string }>;
  /** Unmounts and removes everything (what `await using` calls). */
  dispose(): Promise<void>;
}

export async function sandbox(options: SandboxOptions): Promise<Sandbox> {
  if (typeof options !== "object" || options === null) throw invalidArgType("options", "of type object", options);
  if ((options.lower === undefined) === (options.image === undefined)) throw invalidArgValue("options", options, "give either lower or image");
  let lower = options.lower ?? [];
  let storeRoot: string | undefined;
  if (options.image !== undefined) {
    const { defaultStoreRoot } = await import("../images/location.js");
    const { openStore } = await import("../store/index.js");
    const { imageLayers } = await import("../images/images.js");
    storeRoot = options.store ?? defaultStoreRoot();
    const store = await openStore(storeRoot);
    try {
      lower = await imageLayers(store as never, options.image);
    } finally {
      store.close();
    }
  }
  if (!Array.isArray(lower) || lower.length === 0) throw invalidArgValue("options.lower", options.lower, "must name at least one lower layer");
  const dir = mkdtempSync(join(tmpdir(), "ovl-sandbox-"));
  let tmpfs = false;
  let m: MountedOverlay | undefined;
  const cleanup = async () => {
    if (m) await m.unmount({ lazy: true }).catch(() => undefined);
    m = undefined;
    if (tmpfs) {
      try {
        native().umountSync(join(dir, "rw"), 2 /* MNT_DETACH */);
      } catch {
        // already gone
      }
      tmpfs = false;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const rw = join(dir, "rw");
    mkdirSync(rw);
    if (options.tmpfs) {
      const { paths } = native().openPathsSync([rw]);
      const fd = paths[0]!.fd!;
      try {
        native().fsMountSync("tmpfs", [[FsConfigKind.String, "mode", "0755"], ...(typeof options.tmpfs === "string" ? [[FsConfigKind.String, "size", options.tmpfs] as [1, string, string]] : [])], 0, fd);
      } catch (e) {
        throw fromNative(e as NativeFailure, { path: rw, what: "mounting the sandbox's tmpfs" });
      } finally {
        (await import("node:fs")).closeSync(fd);
      }
      tmpfs = true;
    }
    const upper = join(rw, "upper");
    const work = join(rw, "work");
    const target = join(dir, "merged");
    for (const d of [upper, work, target]) mkdirSync(d);
    m = await mountOverlay({ lower, upper, work, target, source: options.image !== undefined ? `ovl:${options.image}` : "ovl-sandbox" });
    const mounted = m;
    const box: Sandbox = {
      path: target,
      upper,
      lower,
      mount: mounted,
      changes: () => diff({ upper, lower }),
      exportLayer: (dest, o) => exportLayerTo(upper, dest, { lower, ...(o?.gzip ? { gzip: true } : {}) }),
      async commit(name) {
        if (storeRoot === undefined) throw invalidArgValue("commit", name, "needs a sandbox made from an image");
        const { openStore } = await import("../store/index.js");
        const { commitOverlay } = await import("../images/commit.js");
        const store = await openStore(storeRoot);
        try {
          return await commitOverlay(store as never, target, name);
        } finally {
          store.close();
        }
      },
      dispose: cleanup,
      [Symbol.asyncDispose]: cleanup,
    };
    return box;
  } catch (e) {
    await cleanup();
    throw e;
  }
}
