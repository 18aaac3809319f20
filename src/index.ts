/**
 * ovl: Linux overlay filesystems from Node.
 *
 *   import * as overlay from "ovl";
 *   await using m = await overlay.mount({ lower: ["/l1", "/l2"], upper: "/u", work: "/w", target: "/mnt" });
 */
import type { PathLike } from "./kernel/bytes.js";
import { invalidArgType } from "./kernel/errors.js";
import { MountedOverlay, mountOverlay, mountOverlaySync } from "./mounting/mount.js";
import type { MountSpec } from "./mounting/validate.js";

export { OverlayError } from "./kernel/errors.js";
export { bufferToPath, pathToBuffer, type PathEncoding, type PathLike } from "./kernel/bytes.js";
export type { MountFlags } from "./mounting/flags.js";
export { kernelStrategy, MountedOverlay, umount, umountSync, type KernelStrategy, type UmountOptions } from "./mounting/mount.js";
export { parseMountInfo, MountInfoParseError, type MountInfoIssue, type ParseMountInfoOptions, type ParseMountInfoResult } from "./table/mountinfo.js";
export { parseOverlayOptions, toOverlayMount, type OverlayLayers } from "./mounting/overlay-options.js";
export { list, readMountTable, isOverlay, settleUpperWork, type ListOptions, type MountList } from "./table/table.js";
export { watch, type MountEvent, type MountWatch, type WatchOptions } from "./table/watch.js";
export type { DetachedLayers, MountInfo, OverlayFeatures, OverlayMount, OverlayOptions } from "./types.js";
export {
  makeUserNamespace,
  makeUserNamespaceSync,
  parseIdmap,
  UserNamespace,
  type IdMapping,
  type IdMaps,
  type IdmapSpec,
} from "./mounting/idmap.js";
export { probeIdmap, type IdmapProbe } from "./mounting/idmap-probe.js";
export type { MountSpec, MountStrategy } from "./mounting/validate.js";
export { diff, type Change, type DiffLayers, type DiffOptions } from "./layers/diff.js";
export { applyLayer, entryPath, LayerError, type ApplyLayerOptions, type ApplyLayerResult, type ApplyProgress, type LayerSource } from "./layers/apply.js";
export { exportLayer, exportLayerTo, type ExportLayerOptions, type ExportResult, type LayerExport } from "./layers/export.js";
export { TarError } from "./layers/tar.js";
export { sandbox, type Sandbox, type SandboxOptions } from "./sandbox/sandbox.js";
export { importImage, imageLayers, removeImage, getImage, type ImageRecord, type ImportOptions, type ImportProgress, type ImportResult } from "./images/images.js";
export { ImageError } from "./images/source.js";
export { defaultStoreRoot } from "./images/location.js";
export { openStore, StoreError, type Store, type StoreCheck, type OpenStoreOptions, type SnapshotInfo, type SnapshotKind, type SnapshotMounts, type Usage } from "./store/index.js";
export { which, type LayerKind, type LayerRef, type WhichOptions, type WhichResult } from "./layers/which.js";
export {
  stack,
  type Stack,
  type StackCell,
  type StackLayer,
  type StackLayers,
  type StackMerged,
  type StackOptions,
  type StackRow,
  type StackSource,
  type StackState,
} from "./layers/stack.js";
export { findHolders, submountsOf, type FindHoldersOptions, type HeldFile, type Holder, type HolderList, type HolderUse } from "./table/fuser.js";
export { MountOptionError, parseMountOptions, splitOptionString, type ParsedMountOptions } from "./mounting/mount-options.js";

/** The rest of a spec, after the four positional arguments. */
export type MountRest = Omit<MountSpec, "lower" | "upper" | "work" | "target">;

/**
 * Mounts an overlay and returns its mount-table entry, which also unmounts it when disposed (`await using`).
 *
 * `mount({ lower, upper, work, target, ... })`, or positionally `mount(lower, upper, work, target, rest?)`
 * (`upper` and `work` undefined for a read-only overlay). One string in `lower` is one layer.
 */
export function mount(spec: MountSpec): Promise<MountedOverlay>;
export function mount(
  lower: PathLike | PathLike[],
  upper: PathLike | undefined,
  work: PathLike | undefined,
  target: PathLike,
  rest?: MountRest,
): Promise<MountedOverlay>;
export async function mount(...args: unknown[]): Promise<MountedOverlay> {
  return mountOverlay(specOf(args));
}

/**
 * `mount()` on the calling thread, like `fs.*Sync`: the same checks and calls without the thread pool, for
 * command lines and test set-up. Same arguments, same result.
 */
export function mountSync(spec: MountSpec): MountedOverlay;
export function mountSync(
  lower: PathLike | PathLike[],
  upper: PathLike | undefined,
  work: PathLike | undefined,
  target: PathLike,
  rest?: MountRest,
): MountedOverlay;
export function mountSync(...args: unknown[]): MountedOverlay {
  return mountOverlaySync(specOf(args));
}

/** The spec of either call form. */
function specOf(args: unknown[]): MountSpec {
  if (args.length <= 1) return args[0] as MountSpec;
  const [lower, upper, work, target, rest] = args;
  if (rest !== undefined && (typeof rest !== "object" || rest === null)) throw invalidArgType("rest", "of type object", rest);
  return {
    ...(rest as MountRest | undefined),
    lower: lower as PathLike[],
    ...(upper !== undefined ? { upper: upper as PathLike } : {}),
    ...(work !== undefined ? { work: work as PathLike } : {}),
    target: target as PathLike,
  };
}
