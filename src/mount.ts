/**
 * Mounting and unmounting: picks how to hand the layers to the kernel, makes the calls, and describes the
 * new mount without re-reading the mount table.
 *
 * Strategies, best first (see ../shared/overlayfs-notes.md):
 * - `fd`: fsopen + one `lowerdir+`/`datadir+`/`upperdir`/`workdir` per layer as an O_PATH fd (6.13+). No
 *   escaping, no length limit but the kernel's 500 layers.
 * - `string`: the same with path strings (6.8+): literal, but at most 255 bytes per value.
 * - `legacy`: mount(2) with one option string escaped as overlay parses it; at most one page (4095 bytes),
 *   refused rather than truncated.
 */
import { constants } from "node:os";
import { resolve } from "node:path";
import { OverlayError, fromNative, invalidArgType } from "./errors.js";
import { legacyMountFlags, mountAttrFlags, superblockFlagNames } from "./flags.js";
import { type FsConfigStep, FsConfigKind, type NativeFailure, type StatMountResult, native } from "./native.js";
import { escapeLowerdirPath, escapeUpperWorkPath, featureOptionStrings, toOverlayMount } from "./overlay-options.js";
import { mountInfoFromStatmount } from "./statmount.js";
import { list, settleUpperWork } from "./table.js";
import { inUserNamespace } from "./userns.js";
import type { OverlayMount } from "./types.js";
import { type CheckedSpec, type MountSpec, checkPathArg, checkSpec } from "./validate.js";

export type KernelStrategy = "fd" | "string" | "legacy";

const ENOSYS = constants.errno.ENOSYS;
const FSCONFIG_STRING_MAX = 255;
const MOUNT_DATA_MAX = 4095;

let knownStrategy: KernelStrategy | undefined;

/**
 * The best way this kernel takes an overlay, found once by configuring (not creating) a throwaway
 * context: fsopen + fsconfig only, nothing is mounted.
 */
export async function kernelStrategy(): Promise<KernelStrategy> {
  if (knownStrategy) return knownStrategy;
  const n = native();
  try {
    await n.fsMount("overlay", [[FsConfigKind.PathFd, "lowerdir+", "/"]], 0, null);
    return (knownStrategy = "fd");
  } catch (e) {
    const f = e as NativeFailure;
    if (f.syscall === "fsopen") {
      if (f.errno === ENOSYS) return (knownStrategy = "legacy");
      return "fd"; // EPERM, ENODEV...: not a missing feature; let the real mount report it
    }
  }
  try {
    await n.fsMount("overlay", [[FsConfigKind.String, "lowerdir+", "/"]], 0, null);
    return (knownStrategy = "string");
  } catch {
    return (knownStrategy = "legacy");
  }
}

const byteLength = (s: string) => Buffer.byteLength(s, "utf8");

/** A step of the plan and the path (if any) it is about, to name it when the kernel refuses it. */
interface PlannedStep {
  step: FsConfigStep;
  path?: string;
  label: string;
}

function fsConfigPlan(spec: CheckedSpec, byFd: boolean): PlannedStep[] {
  const pathStep = (key: string, path: string, label: string, literal: boolean): PlannedStep => ({
    step: byFd
      ? [FsConfigKind.PathFd, key, path]
      : [FsConfigKind.String, key, literal ? path : escapeUpperWorkPath(path)],
    path,
    label,
  });
  const plan: PlannedStep[] = [{ step: [FsConfigKind.String, "source", spec.source], label: "source" }];
  spec.lower.forEach((p, i) => plan.push(pathStep("lowerdir+", p, `lower layer ${i + 1}`, true)));
  spec.data.forEach((p, i) => plan.push(pathStep("datadir+", p, `data layer ${i + 1}`, true)));
  if (spec.upper !== undefined && spec.work !== undefined) {
    plan.push(pathStep("upperdir", spec.upper, "upper layer", false));
    plan.push(pathStep("workdir", spec.work, "work directory", false));
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

/** The first string value fsconfig() would refuse for length, if any. */
function overlongValue(plan: PlannedStep[]): PlannedStep | undefined {
  return plan.find((p) => p.step[0] === FsConfigKind.String && byteLength(p.step[2]!) > FSCONFIG_STRING_MAX);
}

/** The mount(2) data string, escaped exactly as overlay's parser reads it back. */
export function legacyMountData(spec: CheckedSpec): string {
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
  let bytes = 1024 + 2 * byteLength(spec.target);
  for (const p of [...spec.lower, ...spec.data, spec.upper ?? "", spec.work ?? ""]) bytes += byteLength(p) + 16;
  return bytes;
}

interface NewMount {
  id: number;
  unique: boolean;
  /** statmount fields when the mount call already read them. */
  statmount?: StatMountResult;
}

async function mountByFsConfig(spec: CheckedSpec, byFd: boolean): Promise<NewMount> {
  const plan = fsConfigPlan(spec, byFd);
  if (!byFd) {
    const long = overlongValue(plan);
    if (long) {
      throw new OverlayError(
        "ENAMETOOLONG",
        `${long.label} '${long.path ?? long.step[2]}' is ${byteLength(long.step[2]!)} bytes; fsconfig() takes at most ` +
          `${FSCONFIG_STRING_MAX} bytes per value`,
        { syscall: "fsconfig", path: long.path ?? spec.target, dest: spec.target, hint: "use the `fd` or `legacy` strategy" },
      );
    }
  }
  try {
    const r = await native().fsMount(
      "overlay",
      plan.map((p) => p.step),
      mountAttrFlags(spec.flags),
      spec.target,
      statmountSizeHint(spec),
    );
    return { id: r.mountId!, unique: r.unique!, ...(r.statmount ? { statmount: r.statmount } : {}) };
  } catch (e) {
    const f = e as NativeFailure;
    const planned = f.step !== undefined ? plan[f.step] : undefined;
    throw fromNative(f, {
      path: planned?.path ?? spec.target,
      dest: spec.target,
      what: planned ? `the kernel refused ${planned.label}` : `mounting overlay on '${spec.target}'`,
      hints: kernelSaidWhy(f) ? {} : mountHints,
    });
  }
}

async function mountByLegacy(spec: CheckedSpec): Promise<NewMount> {
  const data = legacyMountData(spec);
  if (byteLength(data) > MOUNT_DATA_MAX) {
    throw new OverlayError(
      "E2BIG",
      `the mount(2) option string for '${spec.target}' would be ${byteLength(data)} bytes; the kernel takes one page ` +
        `(${MOUNT_DATA_MAX} bytes) and silently cuts the rest, so ovl refuses it`,
      { syscall: "mount", path: spec.target, dest: spec.target, hint: "use shorter layer paths, or a kernel with fsconfig() (the `fd` strategy)" },
    );
  }
  const n = native();
  try {
    await n.mount(spec.source, spec.target, "overlay", legacyMountFlags(spec.flags), data);
  } catch (e) {
    throw fromNative(e as NativeFailure, {
      path: spec.target,
      what: `mounting overlay on '${spec.target}'`,
      hints: kernelSaidWhy(e as NativeFailure) ? {} : mountHints,
    });
  }
  try {
    const { mountId, unique } = await n.mountId(spec.target, true);
    return { id: mountId, unique };
  } catch (e) {
    await n.umount(spec.target, 2).catch(() => undefined);
    throw fromNative(e as NativeFailure, { path: spec.target, what: "reading the new mount's id" });
  }
}

/** Describes one mount by id: statmount(2) where the kernel has it, else the mount table. */
async function describe(made: NewMount, target: string, sizeHint: number): Promise<OverlayMount> {
  const { id, unique } = made;
  if (made.statmount) return settleUpperWork(toOverlayMount(mountInfoFromStatmount(made.statmount)));
  if (unique) {
    try {
      return await settleUpperWork(toOverlayMount(mountInfoFromStatmount(await native().statMount(id, sizeHint))));
    } catch (e) {
      if ((e as NativeFailure).errno !== ENOSYS) throw fromNative(e as NativeFailure, { path: target, what: "describing the new mount" });
    }
  }
  const all = await list({ all: true });
  const oldId = unique ? (await native().mountId(target, false)).mountId : id;
  const found = all.find((m) => m.id === oldId);
  if (!found || !("lower" in found)) {
    throw new OverlayError("ENOENT", `the new overlay on '${target}' is not in the mount table`, { syscall: "mount", path: target });
  }
  return found;
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

/** umount2(2) of `target`, with util-linux's vocabulary for the flags. */
export async function umount(target: string, opts?: UmountOptions): Promise<void> {
  const path = resolve(checkPathArg(target, "target"));
  const o = checkUmountOptions(opts);
  if (o.expire && (o.lazy || o.force)) {
    throw new OverlayError("EINVAL", "`expire` cannot be combined with `lazy` or `force`", { syscall: "umount2", path });
  }
  const flags =
    (o.force ? MNT_FORCE : 0) | (o.lazy ? MNT_DETACH : 0) | (o.expire ? MNT_EXPIRE : 0) | (o.noFollow ? UMOUNT_NOFOLLOW : 0);
  try {
    await native().umount(path, flags);
  } catch (e) {
    throw fromNative(e as NativeFailure, {
      path,
      what: `unmounting '${path}'`,
      hints: {
        EINVAL: o.noFollow
          ? `'${path}' is not a mount point, or is a symlink (noFollow)`
          : `'${path}' is not a mount point`,
        EBUSY: o.force
          ? "overlay has no forced unmount; `lazy: true` (umount -l) detaches it now and frees it when the last user is gone"
          : "the mount is in use; `lazy: true` (umount -l) detaches it now and frees it when the last user is gone",
        EAGAIN: "the mount was idle and is now marked as expired; call again with `expire: true` to unmount it",
      },
    });
  }
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
  /** The kernel's unique 64-bit mount id (6.8+), which is never reused; absent on older kernels. */
  declare uniqueId?: number;
  /** How the layers were handed to the kernel. */
  declare strategy: KernelStrategy;

  constructor(entry: OverlayMount, uniqueId: number | undefined, strategy: KernelStrategy) {
    Object.assign(this, entry);
    if (uniqueId !== undefined) this.uniqueId = uniqueId;
    Object.defineProperty(this, "strategy", { value: strategy, enumerable: false });
  }

  /** Unmounts this overlay (`umount(target, opts)`). */
  unmount(opts?: UmountOptions): Promise<void> {
    return umount(this.target, opts);
  }

  /**
   * Unmounts when an `await using` scope ends, unless it is already gone. Refuses to unmount something else
   * that was mounted on top of the same target since.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    const n = native();
    if (this.uniqueId !== undefined) {
      // Usually this overlay is still what the target shows: unmount it. Otherwise find out why not.
      const top = await n.mountId(this.target, true).catch(() => undefined);
      if (top?.unique && top.mountId === this.uniqueId) return this.unmount();
      try {
        await n.statMount(this.uniqueId);
      } catch (e) {
        if ((e as NativeFailure).errno === constants.errno.ENOENT) return; // already unmounted
        throw fromNative(e as NativeFailure, { path: this.target });
      }
      if (top && top.unique) {
        throw new OverlayError("EBUSY", `another mount now covers '${this.target}'; not unmounting it in place of this overlay`, {
          syscall: "umount2",
          path: this.target,
        });
      }
    }
    await this.unmount();
  }
}

/**
 * In a user namespace overlay cannot write `trusted.overlay.*` xattrs: without `userxattr` the mount
 * succeeds but deleting a lower file fails with EOVERFLOW. Docker and containerd add it there; so does ovl,
 * unless the caller chose, or chose options that exclude it.
 */
function withRootlessDefaults(spec: CheckedSpec): CheckedSpec {
  const o = spec.options;
  if (o.userxattr !== undefined || o.metacopy === true || (o.redirectDir !== undefined && o.redirectDir !== "nofollow")) {
    return spec; // the caller chose, or chose options that rule userxattr out
  }
  if (!inUserNamespace()) return spec;
  return { ...spec, options: { ...o, userxattr: true } };
}

/** Mounts an overlay after checking every rule the kernel would apply, naming the path that broke one. */
export async function mountOverlay(spec: MountSpec): Promise<MountedOverlay> {
  const checked = withRootlessDefaults(await checkSpec(spec));
  const strategy: KernelStrategy =
    checked.strategy !== "auto"
      ? checked.strategy
      : await kernelStrategy().then((best) =>
          best === "string" && overlongValue(fsConfigPlan(checked, false)) ? "legacy" : best,
        );
  const made =
    strategy === "legacy" ? await mountByLegacy(checked) : await mountByFsConfig(checked, strategy === "fd");
  try {
    const entry = await describe(made, checked.target, statmountSizeHint(checked));
    return new MountedOverlay(entry, made.unique ? made.id : undefined, strategy);
  } catch (e) {
    // Leave nothing half-done: a mount the caller cannot be handed is taken down again.
    await native().umount(checked.target, MNT_DETACH).catch(() => undefined);
    throw e;
  }
}
