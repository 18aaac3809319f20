/**
 * Mounting and unmounting: picks how to hand the layers to the kernel, makes the calls, and describes the
 * new mount without re-reading the mount table.
 *
 * Strategies, best first (see ../shared/overlayfs-notes.md):
 * - `fd`: fsopen + one `lowerdir+`/`datadir+`/`upperdir`/`workdir` per layer as an O_PATH fd (6.13+). No
 *   escaping, no length limit but the kernel's 500 layers.
 * - `string`: the same with path strings (6.8+), at most 255 bytes per value: each layer's magic link (below).
 * - `legacy`: mount(2) with one option string escaped as overlay parses it; at most one page (4095 bytes),
 *   refused rather than truncated.
 *
 * What is checked is what is mounted: every path is opened once, into an O_PATH fd, and the rules are checked
 * on facts read from those fds. `fd` hands the kernel those very fds; every strategy attaches the mount onto
 * the target's fd. `string` and `legacy` must give the kernel path strings, which it resolves again, so they
 * give it each fd's magic link, `/proc/self/fd/N`, which resolves to exactly the directory the fd holds
 * whatever its name now leads to. (A re-check of the real path before and after the mount was tried first:
 * a process swapping names still won 8 to 18 of 200 races, and the kernel wipes `work/work` during the mount
 * itself, before any check after it.) The price: the mount table shows those layers as `/proc/self/fd/N`;
 * the result of mount() names them by their real paths.
 */
import { closeSync } from "node:fs";
import { constants, release } from "node:os";
import { basename, dirname, resolve } from "node:path";
import { OverlayError, describeErrno, fromNative, invalidArgType } from "../kernel/errors.js";
import { legacyMountFlags, mountAttrFlags, superblockFlagNames } from "./flags.js";
import { type PathLike, checkPathLike, decodeBytes, nativePath, pathBytes } from "../kernel/bytes.js";
import { mountInfoOut, parseMountInfoBytes } from "../table/mountinfo.js";
import { OVERLAY_PATHS } from "../table/table.js";
import {
  type FsConfigStep,
  FsConfigKind,
  type NativeFailure,
  type Plan,
  type StatMountResult,
  native,
  nativeCall,
  runAsync,
  runSync,
} from "../kernel/native.js";
import { escapeLowerdirPath, escapeUpperWorkPath, featureOptionStrings, toOverlayMount } from "./overlay-options.js";
import { mountInfoFromStatmount } from "../table/statmount.js";
import { inUserNamespace, overflowIds } from "../kernel/userns.js";
import { idmapLayerError, usernsForMount } from "./idmap.js";
import type { MountInfo, OverlayMount, OverlayOptions } from "../types.js";
import {
  type CheckedSpec,
  type MountSpec,
  type OpenedRole,
  type ShapedSpec,
  checkOpened,
  checkSpecShape,
  openRequest,
} from "./validate.js";

export type KernelStrategy = "fd" | "string" | "legacy";

const { ENOSYS, ENOENT, ESTALE } = constants.errno;
const MOUNT_DATA_MAX = 4095;

let knownStrategy: KernelStrategy | undefined;

/**
 * The best way this kernel takes an overlay, found once by configuring (not creating) a throwaway context
 * with `probeFd` (any open directory) as a layer: fsopen + fsconfig only, nothing is mounted.
 */
function* strategyPlan(probeFd: number): Plan<KernelStrategy> {
  if (knownStrategy) return knownStrategy;
  try {
    yield* nativeCall("fsMount", "overlay", [[FsConfigKind.Fd, "lowerdir+", probeFd]], 0, null);
    return (knownStrategy = "fd");
  } catch (e) {
    const f = e as NativeFailure;
    if (f.syscall === "fsopen") {
      if (f.errno === ENOSYS) return (knownStrategy = "legacy");
      return "fd"; // EPERM, ENODEV...: not a missing feature; let the real mount report it
    }
  }
  try {
    yield* nativeCall("fsMount", "overlay", [[FsConfigKind.String, "lowerdir+", "/"]], 0, null);
    return (knownStrategy = "string");
  } catch {
    return (knownStrategy = "legacy");
  }
}

/** The best way this kernel takes an overlay: `fd` (6.13+), `string` (6.8+) or `legacy` (mount(2)). */
export async function kernelStrategy(): Promise<KernelStrategy> {
  if (knownStrategy) return knownStrategy;
  const { paths } = await native().openPaths(["/"]);
  const fd = paths[0]!.fd;
  if (fd === undefined) return "fd";
  try {
    return await runAsync(strategyPlan(fd));
  } finally {
    closeSync(fd);
  }
}

/** Bytes of a byte string (one character per byte). */
const byteLength = (b: string) => b.length;

/** fromNative() with a context built from byte strings, shown as UTF-8. */
function nativeError(f: NativeFailure, ctx: { path?: string; dest?: string; what?: string; hints?: Record<string, string> }): OverlayError {
  return fromNative(f, {
    ...ctx,
    ...(ctx.path !== undefined ? { path: decodeBytes(ctx.path) } : {}),
    ...(ctx.dest !== undefined ? { dest: decodeBytes(ctx.dest) } : {}),
    ...(ctx.what !== undefined ? { what: decodeBytes(ctx.what) } : {}),
  });
}


/** A step of the plan and the layer (if any) it is about, to name it when the kernel refuses it. */
interface PlannedStep {
  step: FsConfigStep;
  role?: OpenedRole;
  label: string;
}

/** The layers in the order they are handed to the kernel, each with its fsconfig key. */
function layerKeys(spec: CheckedSpec): [key: string, role: OpenedRole][] {
  return [
    ...spec.lowerDirs.map((r): [string, OpenedRole] => ["lowerdir+", r]),
    ...spec.dataDirs.map((r): [string, OpenedRole] => ["datadir+", r]),
    ...(spec.upperDir && spec.workDir
      ? [
          ["upperdir", spec.upperDir] as [string, OpenedRole],
          ["workdir", spec.workDir] as [string, OpenedRole],
        ]
      : []),
  ];
}

/** Layers handed over as other fds than their own: the detached, idmapped clone of each, by role. */
type LayerFds = Map<OpenedRole, number>;

function fsConfigPlan(spec: CheckedSpec, byFd: boolean, clones?: LayerFds): PlannedStep[] {
  const plan: PlannedStep[] = [{ step: [FsConfigKind.String, "source", spec.source], label: "source" }];
  for (const [key, role] of layerKeys(spec)) {
    const clone = clones?.get(role);
    plan.push({
      step: byFd ? [FsConfigKind.Fd, key, clone ?? role.fd] : [FsConfigKind.String, key, magicLink(role)],
      role,
      label: clone !== undefined ? `${role.label} (a detached idmapped mount of it)` : role.label,
    });
  }
  for (const opt of featureOptionStrings(spec.options)) {
    const eq = opt.indexOf("=");
    plan.push({
      step: eq < 0 ? [FsConfigKind.Flag, opt] : [FsConfigKind.String, opt.slice(0, eq), opt.slice(eq + 1)],
      label: `option ${opt}`,
    });
  }
  for (const flag of superblockFlagNames(spec.flags)) plan.push({ step: [FsConfigKind.Flag, flag], label: `flag ${flag}` });
  return plan;
}

/**
 * The path string a layer is handed to the kernel as by the `string` and `legacy` strategies: its fd's magic
 * link, which the kernel resolves to exactly the directory that was checked (no escapes needed: digits only).
 */
const magicLink = (role: OpenedRole) => `/proc/self/fd/${role.fd}`;

/** The mount(2) data string, escaped exactly as overlay's parser reads it back. */
export function legacyMountData(spec: { lower: string[]; data: string[]; upper?: string; work?: string; options: OverlayOptions }): string {
  let lowerdir = spec.lower.map(escapeLowerdirPath).join(":");
  for (const d of spec.data) lowerdir += `::${escapeLowerdirPath(d)}`;
  const parts = [`lowerdir=${lowerdir}`];
  if (spec.upper !== undefined && spec.work !== undefined) {
    parts.push(`upperdir=${escapeUpperWorkPath(spec.upper)}`, `workdir=${escapeUpperWorkPath(spec.work)}`);
  }
  parts.push(...featureOptionStrings(spec.options));
  return parts.join(",");
}

const kernelSaidWhy = (f: NativeFailure) => f.messages?.length > 0 || (f.kernelLog?.length ?? 0) > 0;

const mountHints: Record<string, string> = {
  EINVAL:
    "the kernel refused the combination; its reason, if any, is in `dmesg` (overlay writes most of them only there)",
};

/** Bytes statmount needs for a mount's strings, guessed from its paths (a 500-layer table runs to 55 KB). */
function statmountSizeHint(spec: CheckedSpec): number {
  let bytes = 1024 + 2 * byteLength(spec.targetDir.real);
  for (const [, r] of layerKeys(spec)) bytes += byteLength(r.real) + 16;
  return bytes;
}

interface NewMount {
  id: number;
  unique: boolean;
  /** statmount fields when the mount call already read them. */
  statmount?: StatMountResult;
  /** What the kernel said about a mount that succeeded. */
  warnings: string[];
}

function* mountByFsConfig(spec: CheckedSpec, byFd: boolean, clones?: LayerFds): Plan<NewMount> {
  const plan = fsConfigPlan(spec, byFd, clones);
  try {
    const r = yield* nativeCall(
      "fsMount",
      "overlay",
      plan.map((p) => p.step),
      mountAttrFlags(spec.flags),
      spec.targetDir.fd,
      statmountSizeHint(spec),
    );
    return {
      id: r.mountId!,
      unique: r.unique!,
      warnings: [...r.messages, ...r.warnings],
      ...(r.statmount ? { statmount: r.statmount } : {}),
    };
  } catch (e) {
    const f = e as NativeFailure;
    const planned = f.step !== undefined ? plan[f.step] : undefined;
    throw nativeError(f, {
      path: planned?.role?.path ?? spec.target,
      dest: spec.target,
      what: planned ? `the kernel refused ${planned.label}` : `mounting overlay on '${spec.target}'`,
      hints: kernelSaidWhy(f) ? {} : mountHints,
    });
  }
}

function* mountByLegacy(spec: CheckedSpec): Plan<NewMount> {
  const data = legacyMountData({
    lower: spec.lowerDirs.map(magicLink),
    data: spec.dataDirs.map(magicLink),
    ...(spec.upperDir && spec.workDir ? { upper: magicLink(spec.upperDir), work: magicLink(spec.workDir) } : {}),
    options: spec.options,
  });
  if (byteLength(data) > MOUNT_DATA_MAX) {
    const target = decodeBytes(spec.target);
    throw new OverlayError(
      "E2BIG",
      `the mount(2) option string for '${target}' would be ${byteLength(data)} bytes; the kernel takes one page ` +
        `(${MOUNT_DATA_MAX} bytes) and silently cuts the rest, so ovl refuses it`,
      { syscall: "mount", path: target, dest: target, hint: "fewer layers, or a kernel with fsconfig() and FSCONFIG_SET_FD (the `fd` strategy, 6.13+)" },
    );
  }
  try {
    const r = yield* nativeCall("mount", spec.source, spec.targetDir.fd, "overlay", legacyMountFlags(spec.flags), data);
    return { id: r.mountId, unique: r.unique, warnings: r.warnings };
  } catch (e) {
    const f = e as NativeFailure;
    throw nativeError(f, {
      path: spec.target,
      what: f.syscall === "mount" ? `mounting overlay on '${spec.target}'` : `finding the new mount on '${spec.targetDir.real}'`,
      hints: kernelSaidWhy(f) ? {} : mountHints,
    });
  }
}

/** Describes one mount by id: statmount(2) where the kernel has it, else the mount table. */
function* describe(made: NewMount, spec: CheckedSpec, strategy: KernelStrategy): Plan<OverlayMount> {
  const { id, unique } = made;
  let info: MountInfo | undefined;
  if (made.statmount) info = mountInfoFromStatmount(made.statmount);
  else if (unique) {
    try {
      info = mountInfoFromStatmount(yield* nativeCall("statMount", id, statmountSizeHint(spec)));
    } catch (e) {
      if ((e as NativeFailure).errno !== ENOSYS) throw nativeError(e as NativeFailure, { path: spec.target, what: "describing the new mount" });
    }
  }
  if (!info) {
    const table = yield* nativeCall("readText", "/proc/self/mountinfo", true);
    const oldId = unique ? (yield* nativeCall("mountId", nativePath(spec.targetDir.real), false)).mountId : id;
    info = parseMountInfoBytes(table, { fstype: "overlay" }).mounts.find((m) => m.id === oldId);
    if (!info) {
      throw new OverlayError("ENOENT", `the new overlay on '${decodeBytes(spec.targetDir.real)}' is not in the mount table`, {
        syscall: "mount",
        path: decodeBytes(spec.target),
      });
    }
  }
  const entry = toOverlayMount(info);
  if (strategy !== "fd" || spec.idmap) {
    // Passed as magic links, the table shows the layers as `/proc/self/fd/N`, and detached (idmapped) layers
    // as `/`: name them by the real paths the kernel held for the fds when they were checked.
    entry.lower = spec.lowerDirs.map((r) => r.real);
    entry.data = spec.dataDirs.map((r) => r.real);
  }
  if (spec.idmap) {
    entry.detached = { lower: spec.lowerDirs.map((_, i) => i), data: spec.dataDirs.map((_, i) => i), pathsKnown: true };
  } else {
    delete entry.detached; // ovl passed every layer itself: a `/` in the table is the real root
  }
  if (spec.upperDir && spec.workDir) {
    // Passed as fds, upperdir/workdir show as the kernel's own paths for them, literally (no escapes).
    const literal = (key: string) => entry.superOptions.find((o) => o.startsWith(key))?.slice(key.length);
    entry.upper = strategy === "fd" ? (literal("upperdir=") ?? spec.upperDir.real) : spec.upperDir.real;
    entry.work = strategy === "fd" ? (literal("workdir=") ?? spec.workDir.real) : spec.workDir.real;
  }
  return mountInfoOut(entry, "utf8", OVERLAY_PATHS);
}

export interface UmountOptions {
  /** MNT_DETACH (`umount -l`): detach now, free when no longer busy. */
  lazy?: boolean;
  /** MNT_FORCE (`umount -f`). Overlay has no forced unmount: a busy overlay stays EBUSY. */
  force?: boolean;
  /** MNT_EXPIRE: the first call marks an idle mount (EAGAIN), a second unmounts it. */
  expire?: boolean;
  /** UMOUNT_NOFOLLOW: do not follow a symlink at the target. */
  noFollow?: boolean;
}

const MNT_FORCE = 1;
const MNT_DETACH = 2;
const MNT_EXPIRE = 4;
const UMOUNT_NOFOLLOW = 8;

function checkUmountOptions(opts: unknown): UmountOptions {
  if (opts === undefined) return {};
  if (typeof opts !== "object" || opts === null) throw invalidArgType("options", "of type object", opts);
  for (const key of ["lazy", "force", "expire", "noFollow"] as const) {
    const v = (opts as Record<string, unknown>)[key];
    if (v !== undefined && typeof v !== "boolean") throw invalidArgType(`options.${key}`, "of type boolean", v);
  }
  return opts as UmountOptions;
}

function umountFlags(path: string, o: UmountOptions): number {
  if (o.expire && (o.lazy || o.force)) {
    throw new OverlayError("EINVAL", "`expire` cannot be combined with `lazy` or `force`", { syscall: "umount2", path });
  }
  return (o.force ? MNT_FORCE : 0) | (o.lazy ? MNT_DETACH : 0) | (o.expire ? MNT_EXPIRE : 0) | (o.noFollow ? UMOUNT_NOFOLLOW : 0);
}

function umountError(f: NativeFailure, path: string, o: UmountOptions): OverlayError {
  return fromNative(f, {
    path,
    what: `unmounting '${path}'`,
    hints: {
      EINVAL: o.noFollow ? `'${path}' is not a mount point, or is a symlink (noFollow)` : `'${path}' is not a mount point`,
      EBUSY: o.force
        ? "overlay has no forced unmount; `lazy: true` (umount -l) detaches it now and frees it when the last user is gone"
        : "the mount is in use; `lazy: true` (umount -l) detaches it now and frees it when the last user is gone",
      EAGAIN: "the mount was idle and is now marked as expired; call again with `expire: true` to unmount it",
    },
  });
}

function* umountPlan(target: unknown, opts: unknown): Plan<void> {
  const bytes = checkPathLike(target, "target");
  const path = resolve(decodeBytes(bytes)); // for messages; the kernel resolves a relative path the same way
  const o = checkUmountOptions(opts);
  const flags = umountFlags(path, o);
  try {
    yield* nativeCall("umount", nativePath(bytes), flags);
  } catch (e) {
    throw umountError(e as NativeFailure, path, o);
  }
}

/**
 * umount2(2) of `target` (a string, or a Buffer of its exact bytes), with util-linux's vocabulary for the
 * flags. One trip to the thread pool.
 */
export function umount(target: PathLike, opts?: UmountOptions): Promise<void> {
  try {
    return runAsync(umountPlan(target, opts));
  } catch (e) {
    return Promise.reject(e);
  }
}

/** `umount()` on the calling thread, like `fs.*Sync`: for command lines and test set-up. */
export function umountSync(target: PathLike, opts?: UmountOptions): void {
  runSync(umountPlan(target, opts));
}

/**
 * Unmounts exactly the mount `id` (a unique mount id): the one on `target` if that is it, else, if it was moved,
 * the one where the kernel now says it is. Never another mount reached through a path swapped meanwhile.
 * `ifGone`: what to do when it no longer exists ("ok" for disposal, else an error).
 */
function* umountByIdPlan(id: number, targetView: string, o: UmountOptions, ifGone: "ok" | "error"): Plan<void> {
  const flags = umountFlags(targetView, o) & ~UMOUNT_NOFOLLOW; // the mount point is checked to be a directory
  const target = pathBytes(targetView); // a string view means its exact bytes again
  const tryAt = function* (path: string): Plan<NativeFailure | undefined> {
    if (path === "/") {
      // No parent to hold: the root is checked by id, then unmounted by path.
      const top = yield* nativeCall("mountId", "/", true);
      if (top.mountId !== id) return { errno: ESTALE, syscall: "statx", messages: [], foundMountId: top.mountId };
      yield* nativeCall("umount", "/", flags);
      return undefined;
    }
    try {
      yield* nativeCall("umountAt", nativePath(dirname(path)), nativePath(basename(path)), id, flags);
      return undefined;
    } catch (e) {
      const f = e as NativeFailure;
      if (f.errno !== ESTALE && f.errno !== ENOENT) throw umountError(f, decodeBytes(path), o);
      return f;
    }
  };
  // Not on the path (gone, moved, covered, or a name on the way is being swapped): ask the kernel where the
  // mount is and try there; a few times, since a swapped name holds still only between swaps.
  let last: NativeFailure | undefined;
  let where = target;
  for (let attempt = 0; attempt < 3; attempt++) {
    last = yield* tryAt(where);
    if (!last) return;
    let now: StatMountResult;
    try {
      now = yield* nativeCall("statMount", id, 256 + byteLength(target));
    } catch (e) {
      if ((e as NativeFailure).errno !== ENOENT) throw nativeError(e as NativeFailure, { path: target });
      if (ifGone === "ok") return;
      throw new OverlayError("EINVAL", `the overlay once mounted at '${targetView}' (mount id ${id}) is no longer mounted`, {
        syscall: "umount2",
        path: targetView,
      });
    }
    where = now.point ?? target;
  }
  const shown = decodeBytes(where);
  throw new OverlayError(
    "EBUSY",
    `another mount now covers '${shown}' (mount id ${last?.foundMountId || "unknown"}), or the path leads elsewhere; ` +
      `not unmounting it in place of this overlay (mount id ${id})`,
    { syscall: "umount2", path: shown, hint: `unmount what covers '${shown}' first` },
  );
}

/** A mounted overlay: its mount-table entry, and a handle that unmounts it (also via `await using`). */
export class MountedOverlay implements OverlayMount, AsyncDisposable {
  declare id: number;
  declare parentId: number;
  declare major: number;
  declare minor: number;
  declare root: string;
  declare target: string;
  declare mountOptions: string[];
  declare optionalFields: string[];
  declare fstype: string;
  declare source: string;
  declare superOptions: string[];
  declare lower: string[];
  declare data: string[];
  declare upper?: string;
  declare work?: string;
  declare features: OverlayMount["features"];
  /** The layers handed over as detached, idmapped mounts (`idmap`), by index; `lower`/`data` name them. */
  declare detached?: OverlayMount["detached"];
  /** The path fields whose bytes are not UTF-8 (shown with U+DC80-U+DCFF), when there are any. */
  declare nonUtf8?: string[];
  /** The kernel's unique 64-bit mount id (6.8+), which is never reused; absent on older kernels. */
  declare uniqueId?: number;
  /** How the layers were handed to the kernel. */
  declare strategy: KernelStrategy;
  /**
   * What the kernel said about this mount though it succeeded (overlay's kernel-log lines, e.g. that a layer
   * is in use by another mount, or that a feature fell back); usually empty.
   */
  declare warnings: string[];

  constructor(entry: OverlayMount, uniqueId: number | undefined, strategy: KernelStrategy, warnings: string[] = []) {
    Object.assign(this, entry);
    if (uniqueId !== undefined) this.uniqueId = uniqueId;
    Object.defineProperty(this, "strategy", { value: strategy, enumerable: false });
    Object.defineProperty(this, "warnings", { value: warnings, enumerable: false });
  }

  /**
   * Unmounts this overlay: exactly this mount (by its unique id), or an error saying why not (another mount
   * covers it, it is gone). On kernels without unique ids, `umount(target)`.
   */
  unmount(opts?: UmountOptions): Promise<void> {
    try {
      return runAsync(this.#plan(opts, "error"));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** `unmount()` on the calling thread. */
  unmountSync(opts?: UmountOptions): void {
    runSync(this.#plan(opts, "error"));
  }

  #plan(opts: unknown, ifGone: "ok" | "error"): Plan<void> {
    const o = checkUmountOptions(opts);
    if (this.uniqueId === undefined) return umountPlan(this.target, o);
    return umountByIdPlan(this.uniqueId, this.target, o, ifGone);
  }

  /**
   * Unmounts when an `await using` scope ends, unless it is already gone. Refuses to unmount something else
   * that was mounted on top of the same target since.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return runAsync(this.#plan(undefined, "ok"));
  }
}

/**
 * In a user namespace overlay cannot write `trusted.overlay.*` xattrs: without `userxattr` the mount
 * succeeds but removing a lower directory fails with EIO. Docker and containerd add it there; so does ovl,
 * unless the caller chose, or chose options that exclude it.
 */
function withRootlessDefaults(spec: ShapedSpec): ShapedSpec {
  const o = spec.options;
  if (o.userxattr !== undefined || o.metacopy === true || (o.redirectDir !== undefined && o.redirectDir !== "nofollow")) {
    return spec; // the caller chose, or chose options that rule userxattr out
  }
  if (!inUserNamespace()) return spec;
  return { ...spec, options: { ...o, userxattr: true } };
}

/**
 * In a user namespace a layer whose owner or group has no mapping shows as the overflow id (65534): the mount
 * works, but copying anything up from it fails later with EOVERFLOW, in the user's own write or `rm`. Said up
 * front, with the fix, from the facts already read off the layers' fds.
 */
function rootlessWarnings(spec: CheckedSpec): string[] {
  if (!inUserNamespace()) return [];
  const { uid, gid } = overflowIds();
  const out: string[] = [];
  for (const r of [...spec.lowerDirs, ...(spec.upperDir ? [spec.upperDir] : [])]) {
    const unmappedUid = r.facts.uid === uid;
    const unmappedGid = r.facts.gid === gid;
    if (!unmappedUid && !unmappedGid) continue;
    const who = unmappedUid && unmappedGid ? "owner and group" : unmappedUid ? "owner" : "group";
    out.push(
      `${r.label} '${decodeBytes(r.real)}' has an ${who} with no mapping in this user namespace (shown as ${r.facts.uid}:${r.facts.gid}): ` +
        `changing files that come from it will fail with EOVERFLOW. Fix: outside the namespace, chown -R it to the ` +
        `user and group that run ovl (e.g. chown -R "$(id -u):$(id -g)" DIR), or map those ids into the namespace`,
    );
  }
  return out;
}

/**
 * Mounting, written once for the async and the sync form: one trip opens every path into an fd and reads
 * the facts the rules are checked on; one more hands the same fds to the kernel and describes the result.
 */
function* mountPlan(spec: unknown): Plan<MountedOverlay> {
  const shaped = withRootlessDefaults(checkSpecShape(spec));
  const req = openRequest(shaped);
  const opened = yield* nativeCall("openPaths", req.paths, req.list, req.probes, req.table);
  const extraFds: number[] = []; // opened for this mount beyond the paths: a user namespace, the clones
  try {
    const checked = checkOpened(shaped, req, opened);
    let strategy: KernelStrategy;
    if (checked.strategy !== "auto") strategy = checked.strategy;
    else {
      strategy = yield* strategyPlan(checked.targetDir.fd);
    }
    let clones: LayerFds | undefined;
    if (checked.idmap) {
      if (strategy !== "fd") {
        throw new OverlayError(
          "ENOSYS",
          `idmapped layers need overlay to take layers as file descriptors (Linux 6.13+); this kernel (Linux ${release()}) takes them only as ${strategy === "string" ? "path strings" : "a mount(2) option string"}`,
          { syscall: "fsconfig", path: decodeBytes(checked.target), dest: decodeBytes(checked.target) },
        );
      }
      clones = yield* idmappedClones(checked, extraFds);
    }
    const made = strategy === "legacy" ? yield* mountByLegacy(checked) : yield* mountByFsConfig(checked, strategy === "fd", clones);
    try {
      const entry = yield* describe(made, checked, strategy);
      return new MountedOverlay(entry, made.unique ? made.id : undefined, strategy, [...rootlessWarnings(checked), ...made.warnings]);
    } catch (e) {
      // Leave nothing half-done: a mount the caller cannot be handed is taken down again, exactly it.
      if (made.unique) yield* umountByIdPlan(made.id, checked.targetDir.real, { lazy: true }, "ok");
      throw e;
    }
  } finally {
    for (const p of opened.paths) if (p.fd !== undefined) closeSync(p.fd);
    for (const fd of extraFds) closeSync(fd);
  }
}

/**
 * A detached, idmapped clone of each lower and data layer, made from the fd that was checked (never its path
 * again). The fds go into `extraFds` (closed by the caller, which frees the clones: they are attached nowhere).
 */
function* idmappedClones(spec: CheckedSpec, extraFds: number[]): Plan<LayerFds> {
  const ns = yield* usernsForMount(spec.idmap!);
  if (ns.owned) extraFds.push(ns.fd);
  const layers = [...spec.lowerDirs, ...spec.dataDirs];
  let clones: number[];
  try {
    clones = yield* nativeCall("cloneIdmapped", layers.map((r) => r.fd), ns.fd);
  } catch (e) {
    const f = e as NativeFailure;
    if (typeof f !== "object" || f === null || typeof f.errno !== "number") throw e; // a TypeError of the addon's
    const role = layers[f.step ?? 0]!;
    // The filesystem by name (statmount: `ext2` where statfs says only ext2/3/4), where the kernel can say.
    let fsType: string | undefined;
    if (role.facts.uniqueMountId) {
      try {
        fsType = (yield* nativeCall("statMount", role.facts.mountId, 512)).fsType;
      } catch {
        // no statmount (before 6.8): the f_type number alone
      }
    }
    throw idmapLayerError(f, role, { ...(fsType !== undefined ? { fsType } : {}) }, spec.target);
  }
  extraFds.push(...clones);
  return new Map(layers.map((r, i) => [r, clones[i]!]));
}

/** Mounts an overlay after checking every rule the kernel would apply, naming the path that broke one. */
export function mountOverlay(spec: MountSpec): Promise<MountedOverlay> {
  try {
    return runAsync(mountPlan(spec));
  } catch (e) {
    return Promise.reject(e);
  }
}

/** `mount()` on the calling thread, like `fs.*Sync`: for command lines and test set-up. */
export function mountOverlaySync(spec: MountSpec): MountedOverlay {
  return runSync(mountPlan(spec));
}
