/**
 * What a snapshot's `Mounts` answer is: the mounts containerd makes itself, as its own overlay snapshotter
 * gives them (a bind of the only layer; an overlay with `lowerdir=`, `upperdir=`, `workdir=`), or, where
 * containerd could not make that overlay, a bind of one that ovl has mounted itself. A pure function of the
 * store's spec: the I/O is in the server.
 */
import type { SnapshotMounts } from "../store/store.js";

/** containerd's containerd.types.Mount. */
export interface ContainerdMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/**
 * containerd mounts an overlay with mount(2), its options as the data page: the kernel takes at most one
 * page, NUL included, and silently cuts what is past it (../shared/overlayfs-notes.md).
 */
export const MOUNT_DATA_MAX = 4095;

export type MountPlan =
  /** Mounts containerd can make as they are. */
  | { kind: "plain"; mounts: ContainerdMount[] }
  /**
   * ovl mounts the overlay (layers by fd: no page limit, no escaping), and containerd gets a bind of it.
   * `why` says what containerd's mount(2) could not take.
   */
  | { kind: "self"; spec: SnapshotMounts; readonly: boolean; why: string };

export interface PlanOptions {
  /** The store's empty filler layer (`root/empty`): containerd gets a bind where the store fills in with it. */
  empty: string;
  /** `index=off`, as containerd's overlay snapshotter passes where the kernel has the option. */
  indexOff?: boolean;
  /** `userxattr`, for an overlay mounted in a user namespace. */
  userxattr?: boolean;
  /** The data page's limit (tests make it small). */
  dataMax?: number;
  /**
   * The layers are to be idmapped: only ovl can mount that without attaching each layer somewhere (containerd
   * attaches idmapped binds of every layer under temporary directories), so ovl mounts it.
   */
  idmapped?: boolean;
}

/** A character mount(2)'s overlay options cannot carry in a path without escaping, which containerd does not do. */
const NEEDS_ESCAPE = /[,:\\]/;

/** The mounts of an active snapshot (`spec.upper` set) or a view, given the store's spec of it. */
export function planMounts(spec: SnapshotMounts, opts: PlanOptions): MountPlan {
  const active = spec.upper !== undefined;
  const lowers = spec.lower.filter((l) => l !== opts.empty);
  const ro = active ? "rw" : "ro";
  const bind = (source: string): MountPlan => ({ kind: "plain", mounts: [{ type: "bind", source, target: "", options: [ro, "rbind"] }] });
  // Idmapped, even a lone layer is an overlay (with the store's empty filler layer), each layer idmapped.
  if (opts.idmapped) return { kind: "self", spec, readonly: !active, why: "its layers are idmapped" };
  // One layer and nothing else: a bind of it (an active snapshot without parent is its own upper).
  if (active && lowers.length === 0) return bind(spec.upper!);
  if (!active && lowers.length === 1) return bind(lowers[0]!);

  const options = [
    ...(opts.indexOff ? ["index=off"] : []),
    ...(opts.userxattr ? ["userxattr"] : []),
    ...(active ? [`workdir=${spec.work!}`, `upperdir=${spec.upper!}`] : []),
    `lowerdir=${lowers.join(":")}`,
  ];
  const paths = [...lowers, ...(active ? [spec.upper!, spec.work!] : [])];
  const odd = paths.find((p) => NEEDS_ESCAPE.test(p));
  if (odd !== undefined) {
    return { kind: "self", spec: { ...spec, lower: lowers }, readonly: !active, why: `the layer path '${odd}' has a ',', ':' or '\\'` };
  }
  const data = Buffer.byteLength(options.join(","));
  const max = opts.dataMax ?? MOUNT_DATA_MAX;
  if (data > max) {
    return { kind: "self", spec: { ...spec, lower: lowers }, readonly: !active, why: `the options of ${lowers.length} layers take ${data} bytes, over mount(2)'s ${max}` };
  }
  return { kind: "plain", mounts: [{ type: "overlay", source: "overlay", target: "", options }] };
}

/** The bind containerd gets of an overlay ovl mounted at `dir`. */
export function bindOf(dir: string, readonly: boolean): ContainerdMount[] {
  return [{ type: "bind", source: dir, target: "", options: [readonly ? "ro" : "rw", "rbind"] }];
}
