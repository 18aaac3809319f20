/**
 * Whether idmapped layers work here, found by doing it once: for a store or a snapshotter that must say so
 * up front (containerd's `remap-ids` capability) rather than fail at a container's first mount.
 */
import { mkdtemp, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { OverlayError } from "../kernel/errors.js";
import { mountOverlay } from "./mount.js";

export type IdmapProbe = { supported: true } | { supported: false; error: OverlayError | Error };

/**
 * Mounts a throwaway read-only overlay of two layers made in a new directory below `scratchDir`, idmapped
 * with this process's own uid and gid mapped onto themselves, checks that the merged view shows a layer
 * file with that owner, and takes it all down again. `scratchDir` should be on the filesystem the layers will be on (a store's root): idmapping is
 * a filesystem's feature. Never throws for a refusal: `{ supported: false, error }` says why.
 */
export async function probeIdmap(scratchDir: string): Promise<IdmapProbe> {
  const dir = await mkdtemp(join(scratchDir, ".ovl-idmap-probe-"));
  try {
    const [l1, l2, target] = ["l1", "l2", "merged"].map((n) => join(dir, n)) as [string, string, string];
    await Promise.all([mkdir(l1), mkdir(l2), mkdir(target)]);
    await writeFile(join(l2, "probe"), "");
    const uid = process.geteuid!();
    const gid = process.getegid!();
    // One id mapped onto itself: a map any caller may write (root, or root of a user namespace), and still a
    // real idmapped mount for the kernel to accept or refuse on this filesystem.
    const m = await mountOverlay({ lower: [l1, l2], target, idmap: { uidMap: [[uid, uid, 1]], gidMap: [[gid, gid, 1]] } });
    try {
      const st = await stat(join(target, "probe"));
      if (st.uid !== uid || st.gid !== gid) {
        return { supported: false, error: new Error(`idmapped probe file shows as ${st.uid}:${st.gid}, expected ${uid}:${gid}`) };
      }
    } finally {
      await m.unmount({ lazy: true });
    }
    return { supported: true };
  } catch (e) {
    return { supported: false, error: e as Error };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
