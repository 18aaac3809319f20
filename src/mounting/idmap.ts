/**
 * Idmapped layers: what `mount({ idmap })` takes, checked; the user namespace an idmapped mount is made from
 * (one made from maps, or one the caller names); and the errors when the kernel refuses to idmap a layer.
 *
 * Measured on Linux 6.18 (README, "Idmapped layers"): a detached clone of a layer's directory
 * (`open_tree(OPEN_TREE_CLONE)` on the fd ovl checked), idmapped with `mount_setattr(MOUNT_ATTR_IDMAP)` and
 * handed over with `FSCONFIG_SET_FD`, mounts; nothing but the overlay is ever attached. Only lower and data
 * layers are idmapped: upper and work must be one mount (two clones are two mounts: EINVAL), and on an
 * idmapped upper overlay creates `work/work` as the mounter, whose ids the map must then cover (root under
 * `0:100000:65536`: EOVERFLOW, and the overlay falls back to read-only).
 */
import { closeSync } from "node:fs";
import { constants, release } from "node:os";
import { OverlayError, describeErrno, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { type PathLike, checkPathLike, decodeBytes, nativePath } from "../kernel/bytes.js";
import { type NativeFailure, type Plan, nativeCall, runAsync, runSync } from "../kernel/native.js";

/** One line of /proc/PID/uid_map or gid_map: ids `inside..inside+count-1` are `outside..outside+count-1` outside. */
export type IdMapping = [inside: number, outside: number, count: number];

/** Id maps for a new user namespace: `gidMap` defaults to `uidMap`. */
export interface IdMaps {
  uidMap: IdMapping[];
  gidMap?: IdMapping[];
}

/**
 * How `mount()` idmaps its lower layers: maps (ovl makes a user namespace with them, and lets it go after the
 * mount), or an existing user namespace: an open fd of one (not closed by ovl), a process whose user namespace
 * it is, or a path such as `/proc/PID/ns/user`.
 */
export type IdmapSpec = IdMaps | { usernsFd: number } | { usernsPid: number } | { usernsPath: PathLike };

/** An idmap spec that passed its checks. */
export type CheckedIdmap =
  | { kind: "maps"; uidMap: IdMapping[]; gidMap: IdMapping[] }
  | { kind: "fd"; fd: number }
  | { kind: "path"; path: string };

const U32_MAX = 0xffffffff;
/** The kernel's limit on lines in one map (UID_GID_MAP_MAX_EXTENTS, since 4.15). */
export const MAX_ID_MAPPINGS = 340;
const CLONE_NEWUSER = 0x10000000;

/** A map as the kernel's rules for /proc/PID/uid_map take it (kernel/user_namespace.c map_write). */
export function checkIdMap(value: unknown, name: string): IdMapping[] {
  if (!Array.isArray(value)) throw invalidArgType(name, "an array of [inside, outside, count] triples", value);
  if (value.length === 0) throw invalidArgValue(name, value, "must hold at least one [inside, outside, count] triple");
  if (value.length > MAX_ID_MAPPINGS) throw invalidArgValue(name, `<${value.length} entries>`, `has more than the kernel's ${MAX_ID_MAPPINGS} lines`);
  const out: IdMapping[] = [];
  for (let i = 0; i < value.length; i++) {
    const t: unknown = value[i];
    const at = `${name}[${i}]`;
    if (!Array.isArray(t) || t.length !== 3) throw invalidArgValue(at, t, "must be an [inside, outside, count] triple");
    for (const [k, what] of ["inside", "outside", "count"].entries()) {
      const v: unknown = t[k];
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > U32_MAX) {
        throw invalidArgValue(at, t, `needs ${what} as an integer from 0 to ${U32_MAX}`);
      }
    }
    const [inside, outside, count] = t as IdMapping;
    if (count === 0) throw invalidArgValue(at, t, "has a count of 0 (each line maps at least one id)");
    // The kernel keeps (u32)-1 unmapped: a range must end below it.
    if (inside + count > U32_MAX) throw invalidArgValue(at, t, `maps inside ids past ${U32_MAX - 1}`);
    if (outside + count > U32_MAX) throw invalidArgValue(at, t, `maps outside ids past ${U32_MAX - 1}`);
    for (let j = 0; j < out.length; j++) {
      const [pi, po, pc] = out[j]!;
      const overlaps = (a: number, b: number) => a < b + pc && b < a + count;
      if (overlaps(inside, pi)) throw invalidArgValue(at, t, `overlaps ${name}[${j}] on the inside ids (the kernel refuses overlapping lines)`);
      if (overlaps(outside, po)) throw invalidArgValue(at, t, `overlaps ${name}[${j}] on the outside ids (the kernel refuses overlapping lines)`);
    }
    out.push([inside, outside, count]);
  }
  return out;
}

export function checkIdmapSpec(value: unknown, name = "spec.idmap"): CheckedIdmap {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw invalidArgType(name, "of type object", value);
  const v = value as Record<string, unknown>;
  const given = ["uidMap", "usernsFd", "usernsPid", "usernsPath"].filter((k) => v[k] !== undefined);
  if (given.length !== 1 || (v.gidMap !== undefined && given[0] !== "uidMap")) {
    throw invalidArgValue(name, value, "must give exactly one of uidMap (with gidMap), usernsFd, usernsPid or usernsPath");
  }
  for (const k of Object.keys(v)) {
    if (!["uidMap", "gidMap", "usernsFd", "usernsPid", "usernsPath"].includes(k)) {
      throw invalidArgValue(`${name}.${k}`, v[k], "is not an idmap field (known: uidMap, gidMap, usernsFd, usernsPid, usernsPath)");
    }
  }
  switch (given[0]) {
    case "uidMap": {
      const uidMap = checkIdMap(v.uidMap, `${name}.uidMap`);
      return { kind: "maps", uidMap, gidMap: v.gidMap === undefined ? uidMap : checkIdMap(v.gidMap, `${name}.gidMap`) };
    }
    case "usernsFd":
      if (typeof v.usernsFd !== "number" || !Number.isInteger(v.usernsFd) || v.usernsFd < 0 || v.usernsFd > 0x7fffffff) {
        throw invalidArgValue(`${name}.usernsFd`, v.usernsFd, "must be an open file descriptor (a non-negative integer)");
      }
      return { kind: "fd", fd: v.usernsFd };
    case "usernsPid":
      if (typeof v.usernsPid !== "number" || !Number.isInteger(v.usernsPid) || v.usernsPid < 1 || v.usernsPid > 0x7fffffff) {
        throw invalidArgValue(`${name}.usernsPid`, v.usernsPid, "must be a process id (a positive integer)");
      }
      return { kind: "path", path: `/proc/${v.usernsPid}/ns/user` };
    default:
      return { kind: "path", path: checkPathLike(v.usernsPath, `${name}.usernsPath`) };
  }
}

/** An `X-mount.idmap=` value that is not one: Node's ERR_INVALID_ARG_VALUE, with the rule it broke apart. */
export class IdmapSyntaxError extends TypeError {
  readonly code = "ERR_INVALID_ARG_VALUE";
  constructor(readonly value: string, readonly rule: string) {
    super(`The argument 'idmap' ${rule}. Received ${JSON.stringify(value)}`);
    this.name = "IdmapSyntaxError";
  }
}

/**
 * util-linux's `X-mount.idmap=` value (mount(8)): space-separated `[u:|g:|b:]inside:outside:count` entries (no
 * prefix and `b:` map both uids and gids), or an absolute path to a user namespace file (`/proc/PID/ns/user`).
 */
export function parseIdmap(text: string): IdmapSpec {
  if (typeof text !== "string") throw invalidArgType("text", "of type string", text);
  const value = text.trim();
  if (value.startsWith("/")) return { usernsPath: value };
  if (value === "") throw new IdmapSyntaxError(text, "is empty; give inside:outside:count (e.g. 0:100000:65536) or a path such as /proc/PID/ns/user");
  const uidMap: IdMapping[] = [];
  const gidMap: IdMapping[] = [];
  for (const entry of value.split(/\s+/)) {
    const m = /^(?:([ugb]):)?(\d+):(\d+):(\d+)$/.exec(entry);
    if (!m) {
      throw new IdmapSyntaxError(text, `has '${entry}', which is not [u:|g:|b:]inside:outside:count (e.g. 0:100000:65536, u:0:100000:65536)`);
    }
    const triple: IdMapping = [Number(m[2]), Number(m[3]), Number(m[4])];
    if (m[1] !== "g") uidMap.push(triple);
    if (m[1] !== "u") gidMap.push(triple);
  }
  if (uidMap.length === 0) throw new IdmapSyntaxError(text, "maps no uids (add a u: or b: entry, or one without a prefix)");
  if (gidMap.length === 0) throw new IdmapSyntaxError(text, "maps no gids (add a g: or b: entry, or one without a prefix)");
  return { uidMap, gidMap };
}

/** A map as /proc/PID/uid_map takes it: one line per triple, in one write. */
const mapText = (map: IdMapping[]) => map.map(([a, b, c]) => `${a} ${b} ${c}\n`).join("");

const usernsHints: Record<string, string> = {
  EPERM:
    "writing a map needs CAP_SETUID/CAP_SETGID over the outside ids: root, or in a user namespace only the ids mapped into it (cat /proc/self/uid_map)",
  EINVAL: "the kernel refused the map (overlapping lines, or ids out of range)",
};

/** A user namespace with the given maps: the fd, after the process that made it is gone. */
export function* userNamespacePlan(maps: { uidMap: IdMapping[]; gidMap: IdMapping[] }): Plan<number> {
  try {
    return yield* nativeCall("newUserns", mapText(maps.uidMap), mapText(maps.gidMap), false);
  } catch (e) {
    const f = e as NativeFailure;
    const which = f.path?.endsWith("gid_map") ? "gid map" : f.path?.endsWith("uid_map") ? "uid map" : "user namespace";
    throw fromFailure(f, `making a user namespace for the idmap: the kernel refused the ${which}`, usernsHints);
  }
}

function fromFailure(f: NativeFailure, what: string, hints: Record<string, string> = {}): OverlayError {
  if (typeof f !== "object" || f === null || typeof f.errno !== "number") throw f;
  const { code, description } = describeErrno(f.errno);
  return new OverlayError(code, `${what}: ${description}`, {
    syscall: f.syscall,
    errno: f.errno,
    ...(f.path !== undefined ? { path: f.path } : {}),
    ...(hints[code] ? { hint: hints[code] } : {}),
  });
}

/** A user namespace held open by its fd, for idmapped mounts; close it when done (or `using`). */
export class UserNamespace implements Disposable {
  #fd: number;
  constructor(fd: number, readonly uidMap: IdMapping[], readonly gidMap: IdMapping[]) {
    this.#fd = fd;
  }
  /** The namespace's fd (what `mount({ idmap: { usernsFd } })` and mount_setattr take); -1 once closed. */
  get fd(): number {
    return this.#fd;
  }
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeFd(fd);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

const closeFd = (fd: number) => closeSync(fd);

function checkMaps(maps: unknown): { uidMap: IdMapping[]; gidMap: IdMapping[] } {
  if (typeof maps !== "object" || maps === null || Array.isArray(maps)) throw invalidArgType("maps", "of type object", maps);
  const m = maps as Record<string, unknown>;
  const uidMap = checkIdMap(m.uidMap, "maps.uidMap");
  return { uidMap, gidMap: m.gidMap === undefined ? uidMap : checkIdMap(m.gidMap, "maps.gidMap") };
}

/**
 * A new user namespace with these maps, held by an fd and by no process (a child is cloned into it, its maps
 * written, its namespace opened, and the child reaped). As root any outside ids can be mapped; in a user
 * namespace only ids mapped into it. The store and the snapshotter keep one per mapping and pass
 * `{ usernsFd: ns.fd }` to each mount.
 */
export function makeUserNamespace(maps: IdMaps): Promise<UserNamespace> {
  try {
    const m = checkMaps(maps);
    return runAsync(userNamespacePlan(m)).then((fd) => new UserNamespace(fd, m.uidMap, m.gidMap));
  } catch (e) {
    return Promise.reject(e);
  }
}

/** `makeUserNamespace()` on the calling thread. */
export function makeUserNamespaceSync(maps: IdMaps): UserNamespace {
  const m = checkMaps(maps);
  return new UserNamespace(runSync(userNamespacePlan(m)), m.uidMap, m.gidMap);
}

/** The user namespace fd for a mount: `owned` when ovl opened or made it (and closes it after the mount). */
export function* usernsForMount(idmap: CheckedIdmap): Plan<{ fd: number; owned: boolean }> {
  if (idmap.kind === "maps") return { fd: yield* userNamespacePlan(idmap), owned: true };
  if (idmap.kind === "fd") {
    let type: number;
    try {
      type = yield* nativeCall("namespaceType", idmap.fd);
    } catch (e) {
      const f = e as NativeFailure;
      const what = f.errno === constants.errno.EBADF ? "not an fd open for reading" : "not a namespace";
      throw fromFailure(f, `idmap.usernsFd ${idmap.fd} is ${what}`, {
        EBADF: "pass an fd opened for reading (not O_PATH) on /proc/PID/ns/user",
        ENOTTY: "pass an fd of /proc/PID/ns/user",
      });
    }
    if (type !== CLONE_NEWUSER) throw notUserns(`idmap.usernsFd ${idmap.fd}`);
    return { fd: idmap.fd, owned: false };
  }
  let opened: { fd: number; type: number };
  const shown = decodeBytes(idmap.path);
  try {
    opened = yield* nativeCall("openNamespace", nativePath(idmap.path));
  } catch (e) {
    throw fromFailure(e as NativeFailure, `opening the user namespace '${shown}' for the idmap`, {
      ENOENT: "no such process, or no such file: give /proc/PID/ns/user of a running process",
      ENOTTY: "not a namespace file: give /proc/PID/ns/user",
    });
  }
  if (opened.type !== CLONE_NEWUSER) {
    closeFd(opened.fd);
    throw notUserns(`'${shown}'`);
  }
  return { fd: opened.fd, owned: true };
}

const notUserns = (what: string) =>
  new OverlayError("EINVAL", `${what} is a namespace, but not a user namespace`, {
    syscall: "ioctl",
    hint: "an idmap takes a user namespace: /proc/PID/ns/user",
  });

/** statfs f_type numbers of filesystems one may meet as layers, to name the one that refused. */
const FS_MAGIC: Record<number, string> = {
  0xef53: "ext2/ext3/ext4",
  0x01021994: "tmpfs",
  0x794c7630: "overlay",
  0x58465342: "xfs",
  0x9123683e: "btrfs",
  0x73717368: "squashfs",
  0xe0f5e1e2: "erofs",
  0x65735546: "fuse",
  0x6969: "nfs",
  0x9fa0: "proc",
  0x62656572: "sysfs",
  0x4d44: "vfat",
  0x2fc12fc1: "zfs",
  0xf2f52010: "f2fs",
  0x858458f6: "ramfs",
  0xff534d42: "cifs",
};

/** "overlay (statfs f_type 0x794c7630)": a filesystem by name and by number. */
export function describeFilesystem(fsType: string | undefined, magic: number | undefined): string {
  const hex = magic !== undefined ? `0x${magic.toString(16)}` : undefined;
  const name = fsType ?? (magic !== undefined ? FS_MAGIC[magic] : undefined) ?? "an unknown filesystem";
  return hex ? `${name} (statfs f_type ${hex})` : name;
}

/**
 * Why the kernel refused to clone or idmap a layer, from what was measured on 6.18: mount_setattr EINVAL for
 * a filesystem without idmapped mounts (overlay, proc, sysfs, ext2 mounted as `ext2` though the ext4 driver
 * serves it), EPERM without privilege over the layer's filesystem (a user namespace on a host filesystem) or
 * over the idmap's user namespace; open_tree EINVAL for a layer in another mount namespace.
 */
export function idmapLayerError(
  f: NativeFailure,
  layer: { label: string; path: string; real: string },
  fs: { fsType?: string; magic?: number },
  dest: string,
): OverlayError {
  const { code, description } = describeErrno(f.errno);
  const kernel = `Linux ${release()}`;
  const filesystem = describeFilesystem(fs.fsType, fs.magic ?? f.fsMagic);
  const what =
    f.syscall === "open_tree"
      ? `${layer.label} '${decodeBytes(layer.real)}' cannot be cloned as a detached mount (open_tree OPEN_TREE_CLONE) on ${kernel}, filesystem ${filesystem}: ${description}`
      : `${layer.label} '${decodeBytes(layer.real)}' cannot be idmapped (mount_setattr MOUNT_ATTR_IDMAP) on ${kernel}: its filesystem is ${filesystem}: ${description}`;
  let hint: string | undefined;
  if (code === "ENOSYS") hint = "idmapped layers need open_tree (5.2+), mount_setattr (5.12+) and layers by fd (6.13+)";
  else if (f.syscall === "open_tree" && code === "EINVAL") hint = "the layer is in another mount namespace (e.g. reached through /proc/PID/root): only mounts of this namespace can be cloned";
  else if (code === "EINVAL")
    hint = `${fs.fsType ?? "this filesystem"} does not support idmapped mounts (measured here: ext4, tmpfs do; overlay, ext2, proc, sysfs do not), or the user namespace maps no ids`;
  else if (code === "EPERM")
    hint = "idmapping needs CAP_SYS_ADMIN over the layer's filesystem (in a user namespace: only filesystems mounted in it, such as a tmpfs) and over the idmap's user namespace, which cannot be the initial one";
  return new OverlayError(code, what, {
    syscall: f.syscall,
    errno: f.errno,
    path: decodeBytes(layer.path),
    dest: decodeBytes(dest),
    ...(hint ? { hint } : {}),
  });
}
