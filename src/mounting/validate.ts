/**
 * Argument checking and the rules the kernel would enforce, checked before any mount syscall runs, so a bad
 * spec fails with the offending path named and nothing mounted.
 */
import { OverlayError, describeErrno, invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { type MountFlags, checkMountFlags } from "./flags.js";
import { type PathLike, checkPathLike, decodeBytes, nativePath } from "../kernel/bytes.js";
import { parseMountInfoBytes } from "../table/mountinfo.js";
import type { FdFacts, OpenPathsResult, ProbeFacts } from "../kernel/native.js";
import { toOverlayMount, unescapeOverlayPath } from "./overlay-options.js";
import { type CheckedIdmap, type IdmapSpec, checkIdmapSpec } from "./idmap.js";
import type { OverlayOptions } from "../types.js";

/** How the overlay is handed to the kernel; `auto` picks the best the kernel has. */
export type MountStrategy = "auto" | "fd" | "string" | "legacy";

/** What `mount()` takes. */
export interface MountSpec {
  /**
   * Lower layers, top-most first. One string is one layer (never split on `:`). Every path may be a string
   * or a Buffer of its exact bytes, as in `node:fs`.
   */
  lower: PathLike[] | PathLike;
  /** Upper (writable) layer; needs `work`. Neither: a read-only overlay. */
  upper?: PathLike;
  /** Work directory, empty, on the same mount as `upper`. */
  work?: PathLike;
  /** Mount point: an existing directory. */
  target: PathLike;
  /** Data-only lower layers (reachable only through metacopy redirects). */
  data?: PathLike[];
  /** Overlay feature options. */
  options?: OverlayOptions;
  /** Generic mount flags. */
  flags?: MountFlags;
  /** The mount's source as the mount table shows it; default `"overlay"`. */
  source?: string;
  /** How to hand the layers to the kernel (default `auto`: fds, else strings, else mount(2)). */
  strategy?: MountStrategy;
  /**
   * Refuse (EBUSY, naming the other mount) an upper or work directory that an overlay mounted in this mount
   * namespace already uses: the kernel only warns (unless `index=on`) and wipes that mount's `work/work`.
   * Costs a read of the mount table per mount (about 40 µs here; 30 ms with 10,000 mounts), so it is off by
   * default; `ovl mount` and `ovl run` turn it on.
   */
  refuseInUse?: boolean;
  /**
   * Idmap the lower and data layers: each is cloned as a detached mount from the fd ovl checked, idmapped to
   * this user namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`) and handed to the kernel by fd, so the merged view
   * shows its owners mapped (with `{ uidMap: [[0, 100000, 65536]] }` a root-owned file shows as 100000) and a
   * copy-up writes the mapped owner to the upper layer. Nothing but the overlay is ever attached. Upper and
   * work are not idmapped (see the README). Needs the `fd` strategy (Linux 6.13+).
   */
  idmap?: IdmapSpec;
}

/**
 * A spec whose shape passed: paths as given, as byte strings (src/kernel/bytes.ts; resolved by the kernel, once, when
 * opened), and clean option sets.
 */
export interface ShapedSpec {
  lower: string[];
  data: string[];
  upper?: string;
  work?: string;
  target: string;
  options: OverlayOptions;
  flags: MountFlags;
  source: string;
  strategy: MountStrategy;
  refuseInUse: boolean;
  idmap?: CheckedIdmap;
}

/** One path of a spec, opened once: the fd everything is done through, and the facts read from it. */
export interface OpenedRole {
  /** How messages name it: "lower layer 2", "upper layer", "target", ... */
  label: string;
  /** As given. */
  path: string;
  /** The path the kernel holds for the fd. */
  real: string;
  fd: number;
  facts: FdFacts;
}

/** A spec that passed every check, each path open: what is mounted is what was checked. */
export interface CheckedSpec extends ShapedSpec {
  lowerDirs: OpenedRole[];
  dataDirs: OpenedRole[];
  upperDir?: OpenedRole;
  workDir?: OpenedRole;
  targetDir: OpenedRole;
}

/** The kernel's limit on layers (lower + data-only) in one overlay. */
export const MAX_LAYERS = 500;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR;

/** A non-empty string without NUL: Node's own rule for paths. */
export function checkPathArg(value: unknown, name: string): string {
  if (typeof value !== "string") throw invalidArgType(name, "of type string", value);
  if (value === "") throw invalidArgValue(name, value, "must be a non-empty string");
  if (value.includes("\0")) throw invalidArgValue(name, value, "must be a string without null bytes");
  return value;
}

/** A list of layers: one path (string or Buffer) is one layer; each comes back as a byte string. */
function checkPathList(value: unknown, name: string): string[] {
  if (typeof value === "string" || value instanceof Uint8Array) return [checkPathLike(value, `${name}[0]`)];
  if (!Array.isArray(value)) throw invalidArgType(name, "of type string or an array of strings", value);
  // More than the kernel takes is refused before anything is opened (or even read: a sparse array of a
  // million holes costs nothing here).
  if (value.length > MAX_LAYERS) {
    throw invalidArgValue(name, `<${value.length} entries>`, `has ${value.length} entries; the kernel takes at most ${MAX_LAYERS} layers`);
  }
  const out: string[] = [];
  for (let i = 0; i < value.length; i++) {
    if (!(i in value)) throw invalidArgValue(`${name}[${i}]`, undefined, "is a hole in a sparse array; every layer must be a path");
    out.push(checkPathLike(value[i], `${name}[${i}]`));
  }
  return out;
}

const optionValues: { readonly [K in keyof OverlayOptions]-?: readonly (string | boolean)[] } = {
  redirectDir: ["on", "follow", "nofollow", "off"],
  index: [true, false],
  nfsExport: [true, false],
  xino: ["on", "off", "auto"],
  metacopy: [true, false],
  volatile: [true, false],
  userxattr: [true, false],
  uuid: ["on", "off", "null", "auto"],
  verity: ["off", "on", "require"],
  defaultPermissions: [true, false],
};

/** Checks overlay feature options and the combinations the kernel refuses. */
export function checkOverlayOptions(value: unknown, name = "spec.options"): OverlayOptions {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalidArgType(name, "of type object", value);
  }
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    // Own keys only: `constructor`, `__proto__` (from JSON.parse) and the like are not options.
    const allowed = Object.hasOwn(optionValues, key) ? optionValues[key as keyof OverlayOptions] : undefined;
    if (!allowed) {
      throw invalidArgValue(
        `${name}.${key}`,
        v,
        `is not an overlay option (known: ${Object.keys(optionValues).join(", ")})`,
      );
    }
    if (v === undefined) continue;
    if (!allowed.includes(v as string | boolean)) {
      throw invalidArgValue(`${name}.${key}`, v, `must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`);
    }
    out[key] = v;
  }
  const o = out as OverlayOptions;
  const conflict = (rule: string) =>
    new OverlayError("EINVAL", `overlay options conflict: ${rule}`, { syscall: "mount" });
  // The kernel's own conflict rules (fs/overlayfs/params.c), as observed on 6.18.
  if (o.metacopy === true && o.redirectDir !== undefined && o.redirectDir !== "on") {
    throw conflict(`metacopy=on needs redirect_dir=on, not redirect_dir=${o.redirectDir}`);
  }
  if (o.nfsExport === true && o.index === false) throw conflict("nfs_export=on needs index=on");
  if (o.nfsExport === true && o.metacopy === true) throw conflict("nfs_export=on cannot be combined with metacopy=on");
  if (o.userxattr === true && o.metacopy === true) throw conflict("userxattr cannot be combined with metacopy=on");
  if (o.userxattr === true && o.redirectDir !== undefined && o.redirectDir !== "nofollow") {
    throw conflict(`userxattr allows only redirect_dir=nofollow, not redirect_dir=${o.redirectDir}`);
  }
  return o;
}

/** Type and shape checks that need no I/O. */
export function checkSpecShape(spec: unknown): ShapedSpec {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
    throw invalidArgType("spec", "of type object", spec);
  }
  const s = spec as Record<string, unknown>;
  const lower = checkPathList(s.lower, "spec.lower");
  const data = s.data === undefined ? [] : checkPathList(s.data, "spec.data");
  const upper = s.upper === undefined ? undefined : checkPathLike(s.upper, "spec.upper");
  const work = s.work === undefined ? undefined : checkPathLike(s.work, "spec.work");
  const target = checkPathLike(s.target, "spec.target");
  const options = checkOverlayOptions(s.options);
  const flags = checkMountFlags(s.flags);
  let source = "overlay";
  if (s.source !== undefined) {
    source = checkPathArg(s.source, "spec.source");
    if (Buffer.byteLength(source) > 255) throw invalidArgValue("spec.source", s.source, "must be at most 255 bytes");
  }
  if (s.refuseInUse !== undefined && typeof s.refuseInUse !== "boolean") throw invalidArgType("spec.refuseInUse", "of type boolean", s.refuseInUse);
  const strategy = s.strategy ?? "auto";
  if (!["auto", "fd", "string", "legacy"].includes(strategy as string)) {
    throw invalidArgValue("spec.strategy", strategy, `must be one of "auto", "fd", "string", "legacy"`);
  }
  const idmap = s.idmap === undefined ? undefined : checkIdmapSpec(s.idmap);
  if (idmap && (strategy === "string" || strategy === "legacy")) {
    throw invalidArgValue(
      "spec.strategy",
      strategy,
      "cannot be combined with spec.idmap: an idmapped layer is a detached mount, which the kernel takes only as an fd (the `fd` strategy)",
    );
  }
  const fail = (code: string, detail: string, path?: string, hint?: string) => mountError(code, detail, target, path, hint);
  if (lower.length === 0) throw fail("EINVAL", "at least one lower layer is required");
  if (lower.length + data.length > MAX_LAYERS) {
    throw fail("EINVAL", `${lower.length} lower and ${data.length} data layers are more than the kernel's ${MAX_LAYERS}`);
  }
  if ((upper === undefined) !== (work === undefined)) {
    throw upper === undefined
      ? fail("EINVAL", `work directory '${work}' given without an upper layer; pass both or neither`, work)
      : fail("EINVAL", `upper layer '${upper}' given without a work directory; pass both or neither`, upper);
  }
  if (upper === undefined && lower.length < 2) {
    throw fail(
      "EINVAL",
      `a read-only overlay (no upper layer) needs at least two lower layers, got one: '${lower[0]}'`,
      lower[0],
      "add an upper and a work directory, or a second lower layer",
    );
  }
  return {
    lower,
    data,
    ...(upper !== undefined ? { upper, work: work! } : {}),
    target,
    options,
    flags,
    source,
    strategy: strategy as MountStrategy,
    refuseInUse: s.refuseInUse === true,
    ...(idmap ? { idmap } : {}),
  };
}

/**
 * An error about a mount, from byte strings (paths, and messages built from them): shown as UTF-8, with
 * undecodable bytes as U+DC80-U+DCFF.
 */
function mountError(code: string, detail: string, dest: string, path?: string, hint?: string): OverlayError {
  return new OverlayError(code, decodeBytes(detail), {
    syscall: "mount",
    ...(path !== undefined ? { path: decodeBytes(path) } : {}),
    dest: decodeBytes(dest),
    ...(hint ? { hint: decodeBytes(hint) } : {}),
  });
}

/** What the one trip that opens a spec's paths is asked for. */
export interface OpenRequest {
  roles: { label: string; path: string }[];
  paths: (string | Buffer)[];
  /** Indexes of directories to list through their fd (the work directory). */
  list: number[];
  /** Names looked up beneath the work directory's fd: its leftover `work/`, and a volatile mount's marker. */
  probes: [number, string][];
  /** The mount table, read in the same trip, to find overlays already using the upper or work directory. */
  table: string | null;
}

export function openRequest(spec: ShapedSpec): OpenRequest {
  const roles = [
    ...spec.lower.map((path, i) => ({ label: spec.lower.length > 1 ? `lower layer ${i + 1}` : "lower layer", path })),
    ...spec.data.map((path, i) => ({ label: `data layer ${i + 1}`, path })),
    ...(spec.upper !== undefined ? [{ label: "upper layer", path: spec.upper }] : []),
    ...(spec.work !== undefined ? [{ label: "work directory", path: spec.work }] : []),
    { label: "target", path: spec.target },
  ];
  const work = spec.work !== undefined ? roles.length - 2 : -1;
  return {
    roles,
    paths: roles.map((r) => nativePath(r.path)),
    list: work < 0 ? [] : [work],
    probes: work < 0 ? [] : [[work, "work"], [work, "work/incompat/volatile/dirty"]],
    table: work < 0 || !spec.refuseInUse ? null : "/proc/self/mountinfo",
  };
}

type Fail = (code: string, detail: string, path: string, hint?: string) => OverlayError;

/**
 * Every rule the kernel would apply, checked on the facts read from the fds the paths were opened into
 * (never on a path string resolved again), naming the path that broke it.
 */
export function checkOpened(spec: ShapedSpec, req: OpenRequest, opened: OpenPathsResult): CheckedSpec {
  const fail: Fail = (code, detail, path, hint) => mountError(code, detail, spec.target, path, hint);
  const roles: OpenedRole[] = req.roles.map((r, i) => {
    const p = opened.paths[i]!;
    if (p.errno !== undefined) {
      const { code, description } = describeErrno(p.errno);
      const what =
        code === "ENOENT"
          ? "does not exist"
          : code === "ENOTDIR"
            ? p.notDirectory
              ? "is not a directory"
              : "has a path component that is not a directory"
            : description;
      const hint =
        code === "ENOENT" && r.label.startsWith("lower") && r.path.includes(":")
          ? "each entry of `lower` is one directory; pass an array to give several layers"
          : undefined;
      throw fail(code, `${r.label} '${r.path}' ${what}`, r.path, hint);
    }
    if (!isDir(p.mode)) throw fail("ENOTDIR", `${r.label} '${r.path}' is not a directory`, r.path);
    return { ...r, real: p.realpath, fd: p.fd, facts: p };
  });
  const nl = spec.lower.length;
  const nd = spec.data.length;
  const checked: CheckedSpec = {
    ...spec,
    lowerDirs: roles.slice(0, nl),
    dataDirs: roles.slice(nl, nl + nd),
    ...(spec.upper !== undefined ? { upperDir: roles[nl + nd]!, workDir: roles[nl + nd + 1]! } : {}),
    targetDir: roles[roles.length - 1]!,
  };
  checkLayersApart(checked, fail);
  const { upperDir: upper, workDir: work } = checked;
  if (upper && work) {
    if (upper.facts.mountId !== work.facts.mountId) {
      throw fail(
        "EXDEV",
        `upper layer '${upper.real}' and work directory '${work.real}' are on different mounts; ` +
          "overlay needs them on the same mount (not only the same filesystem)",
        work.path,
        "put the work directory beside the upper layer, e.g. both under one directory",
      );
    }
    checkWorkdirEmpty(work, opened.probes[0]!, fail);
    if (opened.probes[1]!.errno === undefined) {
      throw fail(
        "EINVAL",
        `work directory '${work.path}' holds the marker of a volatile mount ('${work.real}/work/incompat/volatile/dirty'); ` +
          "the kernel refuses to mount it again because the upper layer may have lost writes",
        work.path,
        `if the upper layer is known to be good, remove '${work.real}/work/incompat/volatile'; otherwise start from a new upper and work directory`,
      );
    }
    if (opened.table !== undefined) checkNotInUse(upper, work, opened.table, fail);
  }
  return checked;
}

const identity = (f: FdFacts) => `${f.devMajor}:${f.devMinor}:${f.ino}`;
const inside = (a: string, b: string) => a !== b && a.startsWith(b === "/" ? "/" : `${b}/`);

/** No layer repeats (the same inode) or lies inside another; upper and work are apart. */
function checkLayersApart(spec: CheckedSpec, fail: Fail): void {
  const { upperDir: upper, workDir: work } = spec;
  if (upper && work) {
    const u = upper.real;
    const w = work.real;
    if (identity(upper.facts) === identity(work.facts)) {
      throw fail("EINVAL", `upper layer and work directory are the same directory '${u}'`, work.path);
    }
    if (inside(w, u)) throw fail("EINVAL", `work directory '${w}' is inside upper layer '${u}'; they must be separate`, work.path);
    if (inside(u, w)) throw fail("EINVAL", `upper layer '${u}' is inside work directory '${w}'; they must be separate`, upper.path);
  }
  // A layer repeats or nests: index the layers by inode and by resolved path, then walk up from each one
  // (O(layers x depth), not every pair: 500 layers are 125,000 pairs). Upper and work are already apart.
  const layers = [...spec.lowerDirs, ...spec.dataDirs, ...(upper && work ? [upper, work] : [])];
  const hint = "a layer repeats, or one layer lies inside another (or inside upper/work)";
  const byInode = new Map<string, OpenedRole>();
  const byPath = new Map<string, OpenedRole>();
  for (const r of layers) {
    const first = byInode.get(identity(r.facts));
    if (first) {
      throw fail("ELOOP", `${r.label} '${r.path}' is the same directory as ${first.label} '${first.path}' ('${r.real}')`, r.path, hint);
    }
    byInode.set(identity(r.facts), r);
    byPath.set(r.real, r);
  }
  for (const r of layers) {
    const p = r.real;
    if (p === "/") continue; // nothing lies above the root
    for (let cut = p.lastIndexOf("/"); cut >= 0; cut = p.lastIndexOf("/", cut - 1)) {
      const ancestor = byPath.get(cut === 0 ? "/" : p.slice(0, cut));
      if (ancestor && ancestor !== r) {
        throw fail("ELOOP", `${r.label} '${p}' is inside ${ancestor.label} '${ancestor.real}'`, r.path, hint);
      }
      if (cut === 0) break;
    }
  }
}

function checkWorkdirEmpty(work: OpenedRole, workWork: ProbeFacts, fail: Fail): void {
  const f = work.facts;
  if (f.listErrno !== undefined) {
    const { code, description } = describeErrno(f.listErrno);
    throw fail(code, `work directory '${work.real}' cannot be read: ${description}`, work.path);
  }
  if (!f.entryCount) return;
  const entries = f.entries ?? [];
  // Overlay's own leftovers: `index/`, and `work/` as overlay leaves it (mode 000, or empty). A user's
  // directory named `work` with something in it is not a leftover: the kernel would wipe it.
  const workIsLeftover =
    workWork.errno === undefined && isDir(workWork.mode) && ((workWork.mode & 0o7777) === 0 || workWork.entryCount === 0);
  const isLeftover = (name: string) => name === "index" || (name === "work" && workIsLeftover);
  const leftovers = entries.filter(isLeftover).length;
  if (f.entryCount > leftovers) {
    const foreign = entries.filter((name) => !isLeftover(name));
    const more = f.entryCount - leftovers - foreign.slice(0, 3).length;
    const shown = foreign.slice(0, 3).map((n) => `'${n}'`).join(", ") + (more > 0 ? `, and ${more} more` : "");
    throw fail(
      "ENOTEMPTY",
      `work directory '${work.real}' is not empty (holds ${shown}); the kernel wipes '${work.real}/work' at mount, so ovl ` +
        "only accepts an empty work directory or one holding overlay's own leftovers (work/, index/)",
      work.path,
      "use a new empty directory on the same mount as the upper layer",
    );
  }
}

/**
 * An upper or work directory that a mounted overlay already uses: the kernel only warns ("in-use by another
 * mount ... undefined behavior") unless index=on, and wipes the first mount's `work/work` either way.
 */
function checkNotInUse(upper: OpenedRole, work: OpenedRole, table: string, fail: Fail): void {
  const ours = new Map([
    [upper.real, upper],
    [work.real, work],
  ]);
  for (const m of parseMountInfoBytes(table, { fstype: "overlay" }).mounts) {
    const o = toOverlayMount(m);
    for (const [kind, theirs] of [["upper layer", o.upper], ["work directory", o.work]] as const) {
      if (theirs === undefined) continue;
      for (const reading of new Set([theirs, unescapeOverlayPath(theirs)])) {
        const mine = ours.get(reading);
        if (!mine) continue;
        throw fail(
          "EBUSY",
          `${mine.label} '${mine.real}' is already the ${kind} of the overlay mounted at '${o.target}' (mount id ${o.id}); ` +
            "a second overlay on it would wipe that mount's work directory and give undefined results",
          mine.path,
          `unmount '${o.target}' first, or give this overlay its own upper and work directories`,
        );
      }
    }
  }
}
