/**
 * Argument checking and the rules the kernel would enforce, checked before any mount syscall runs, so a bad
 * spec fails with the offending path named and nothing mounted.
 */
import { resolve } from "node:path";
import { OverlayError, describeErrno, invalidArgType, invalidArgValue } from "./errors.js";
import { type MountFlags, checkMountFlags } from "./flags.js";
import { native, type PathFacts } from "./native.js";
import type { OverlayOptions } from "./types.js";

/** How the overlay is handed to the kernel; `auto` picks the best the kernel has. */
export type MountStrategy = "auto" | "fd" | "string" | "legacy";

/** What `mount()` takes. */
export interface MountSpec {
  /** Lower layers, top-most first. One string is one layer (never split on `:`). */
  lower: string[] | string;
  /** Upper (writable) layer; needs `work`. Neither: a read-only overlay. */
  upper?: string;
  /** Work directory, empty, on the same mount as `upper`. */
  work?: string;
  /** Mount point: an existing directory. */
  target: string;
  /** Data-only lower layers (reachable only through metacopy redirects). */
  data?: string[];
  /** Overlay feature options. */
  options?: OverlayOptions;
  /** Generic mount flags. */
  flags?: MountFlags;
  /** The mount's source as the mount table shows it; default `"overlay"`. */
  source?: string;
  /** How to hand the layers to the kernel (default `auto`: fds, else strings, else mount(2)). */
  strategy?: MountStrategy;
}

/** A spec that passed every check: absolute, resolved paths and clean option sets. */
export interface CheckedSpec {
  lower: string[];
  data: string[];
  upper?: string;
  work?: string;
  target: string;
  options: OverlayOptions;
  flags: MountFlags;
  source: string;
  strategy: MountStrategy;
}

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

function checkPathList(value: unknown, name: string): string[] {
  if (typeof value === "string") return [checkPathArg(value, `${name}[0]`)];
  if (!Array.isArray(value)) throw invalidArgType(name, "of type string or an array of strings", value);
  return value.map((v, i) => checkPathArg(v, `${name}[${i}]`));
}

const optionValues: { [K in keyof OverlayOptions]-?: readonly (string | boolean)[] } = {
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
    const allowed = optionValues[key as keyof OverlayOptions];
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
export function checkSpecShape(spec: unknown): CheckedSpec {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
    throw invalidArgType("spec", "of type object", spec);
  }
  const s = spec as Record<string, unknown>;
  const lower = checkPathList(s.lower, "spec.lower");
  const data = s.data === undefined ? [] : checkPathList(s.data, "spec.data");
  const upper = s.upper === undefined ? undefined : checkPathArg(s.upper, "spec.upper");
  const work = s.work === undefined ? undefined : checkPathArg(s.work, "spec.work");
  const target = checkPathArg(s.target, "spec.target");
  const options = checkOverlayOptions(s.options);
  const flags = checkMountFlags(s.flags);
  let source = "overlay";
  if (s.source !== undefined) {
    source = checkPathArg(s.source, "spec.source");
    if (Buffer.byteLength(source) > 255) throw invalidArgValue("spec.source", s.source, "must be at most 255 bytes");
  }
  const strategy = s.strategy ?? "auto";
  if (!["auto", "fd", "string", "legacy"].includes(strategy as string)) {
    throw invalidArgValue("spec.strategy", strategy, `must be one of "auto", "fd", "string", "legacy"`);
  }

  const abs = (p: string) => resolve(p);
  const targetAbs = abs(target);
  const fail = (code: string, detail: string, path?: string, hint?: string) =>
    new OverlayError(code, detail, {
      syscall: "mount",
      ...(path !== undefined ? { path } : {}),
      dest: targetAbs,
      ...(hint ? { hint } : {}),
    });
  if (lower.length === 0) throw fail("EINVAL", "at least one lower layer is required");
  if ((upper === undefined) !== (work === undefined)) {
    throw upper === undefined
      ? fail("EINVAL", `work directory '${abs(work!)}' given without an upper layer; pass both or neither`, abs(work!))
      : fail("EINVAL", `upper layer '${abs(upper)}' given without a work directory; pass both or neither`, abs(upper));
  }
  if (upper === undefined && lower.length < 2) {
    throw fail(
      "EINVAL",
      `a read-only overlay (no upper layer) needs at least two lower layers, got one: '${abs(lower[0]!)}'`,
      abs(lower[0]!),
      "add an upper and a work directory, or a second lower layer",
    );
  }
  return {
    lower: lower.map(abs),
    data: data.map(abs),
    ...(upper !== undefined ? { upper: abs(upper), work: abs(work!) } : {}),
    target: targetAbs,
    options,
    flags,
    source,
    strategy: strategy as MountStrategy,
  };
}

type FoundPath = Extract<PathFacts, { realpath: string }>;

interface Role {
  /** How the message names it: "lower layer", "upper layer", ... */
  label: string;
  path: string;
  facts: FoundPath;
}

/** Filesystem checks: every path exists and is a directory; no layer repeats or nests; upper and work fit. */
export async function checkSpecPaths(spec: CheckedSpec): Promise<CheckedSpec> {
  const roles: { label: string; path: string }[] = [
    ...spec.lower.map((path, i) => ({ label: spec.lower.length > 1 ? `lower layer ${i + 1}` : "lower layer", path })),
    ...spec.data.map((path, i) => ({ label: `data layer ${i + 1}`, path })),
    ...(spec.upper !== undefined ? [{ label: "upper layer", path: spec.upper }] : []),
    ...(spec.work !== undefined ? [{ label: "work directory", path: spec.work }] : []),
    { label: "target", path: spec.target },
  ];
  const extra = spec.work !== undefined ? [`${spec.work}/work`, `${spec.work}/work/incompat/volatile/dirty`] : [];
  // One trip: every path, plus the work directory's entries and those of a leftover `work/work`.
  const workIndex = roles.findIndex((r) => r.label === "work directory");
  const listed = workIndex < 0 ? [] : [workIndex, roles.length];
  const facts = await native().inspectPaths([...roles.map((r) => r.path), ...extra], listed);
  const fail = (code: string, detail: string, path: string, hint?: string) =>
    new OverlayError(code, detail, { syscall: "mount", path, dest: spec.target, ...(hint ? { hint } : {}) });

  const checked: Role[] = roles.map((r, i) => {
    const f = facts[i]!;
    if (f.errno !== undefined) {
      const { code, description } = describeErrno(f.errno);
      const what =
        code === "ENOENT" ? "does not exist" : code === "ENOTDIR" ? "has a path component that is not a directory" : description;
      const hint =
        code === "ENOENT" && r.label.startsWith("lower") && r.path.includes(":")
          ? "each entry of `lower` is one directory; pass an array to give several layers"
          : undefined;
      throw fail(code, `${r.label} '${r.path}' ${what}`, r.path, hint);
    }
    if (!isDir(f.mode)) throw fail("ENOTDIR", `${r.label} '${r.path}' is not a directory`, r.path);
    return { ...r, facts: f };
  });

  // The kernel's rules, as it applies them to resolved paths (symlinks followed).
  const layers = checked.filter((r) => r.label !== "target");
  const inside = (a: string, b: string) => a !== b && a.startsWith(b === "/" ? "/" : `${b}/`);
  const upper = layers.find((r) => r.label === "upper layer");
  const work = layers.find((r) => r.label === "work directory");
  if (upper && work) {
    const u = upper.facts.realpath;
    const w = work.facts.realpath;
    if (u === w) throw fail("EINVAL", `upper layer and work directory are the same directory '${u}'`, w);
    if (inside(w, u)) throw fail("EINVAL", `work directory '${w}' is inside upper layer '${u}'; they must be separate`, w);
    if (inside(u, w)) throw fail("EINVAL", `upper layer '${u}' is inside work directory '${w}'; they must be separate`, u);
  }
  // A layer repeats or nests: index the resolved paths, then walk up from each one (O(layers x depth), not
  // every pair: 500 layers are 125,000 pairs). Upper and work are already known to be apart.
  const hint = "a layer repeats, or one layer lies inside another (or inside upper/work)";
  const byPath = new Map<string, Role>();
  for (const r of layers) {
    const p = r.facts.realpath;
    const first = byPath.get(p);
    if (first) {
      throw fail("ELOOP", `${r.label} '${r.path}' is the same directory as ${first.label} '${first.path}' ('${p}')`, r.path, hint);
    }
    byPath.set(p, r);
  }
  for (const r of layers) {
    const p = r.facts.realpath;
    for (let cut = p.lastIndexOf("/"); cut >= 0; cut = p.lastIndexOf("/", cut - 1)) {
      const ancestor = byPath.get(cut === 0 ? "/" : p.slice(0, cut));
      if (ancestor) {
        throw fail("ELOOP", `${r.label} '${p}' is inside ${ancestor.label} '${ancestor.facts.realpath}'`, r.path, hint);
      }
      if (cut === 0) break;
    }
  }
  if (upper && work) {
    if (upper.facts.mountId !== work.facts.mountId) {
      throw fail(
        "EXDEV",
        `upper layer '${upper.facts.realpath}' and work directory '${work.facts.realpath}' are on different mounts; ` +
          "overlay needs them on the same mount (not only the same filesystem)",
        work.path,
        "put the work directory beside the upper layer, e.g. both under one directory",
      );
    }
    checkWorkdirEmpty(work.facts.realpath, work.facts, facts[roles.length], fail);
    const dirty = facts[roles.length + 1];
    if (dirty && dirty.errno === undefined) {
      throw fail(
        "EINVAL",
        `work directory '${work.path}' holds the marker of a volatile mount ('${dirty.realpath}'); the kernel refuses ` +
          "to mount it again because the upper layer may have lost writes",
        work.path,
        `if the upper layer is known to be good, remove '${dirty.realpath.replace(/\/dirty$/, "")}'; otherwise start from a new upper and work directory`,
      );
    }
  }
  return spec;
}

function checkWorkdirEmpty(
  work: string,
  workFacts: FoundPath,
  workWorkFacts: PathFacts | undefined,
  fail: (code: string, detail: string, path: string, hint?: string) => OverlayError,
): void {
  if (workFacts.listErrno !== undefined) {
    const { code, description } = describeErrno(workFacts.listErrno);
    throw fail(code, `work directory '${work}' cannot be read: ${description}`, work);
  }
  const entries = workFacts.entries ?? [];
  if (!workFacts.entryCount) return;
  // Overlay's own leftovers: `index/`, and `work/` as overlay leaves it (mode 000, or empty). A user's
  // directory named `work` with something in it is not a leftover: the kernel would wipe it.
  const workIsLeftover =
    !!workWorkFacts &&
    workWorkFacts.errno === undefined &&
    isDir(workWorkFacts.mode) &&
    ((workWorkFacts.mode & 0o7777) === 0 || workWorkFacts.entryCount === 0);
  const leftovers = entries.filter((name) => name === "index" || (name === "work" && workIsLeftover)).length;
  if (workFacts.entryCount > leftovers) {
    const foreign = entries.filter((name) => !(name === "index" || (name === "work" && workIsLeftover)));
    const more = workFacts.entryCount - leftovers - foreign.slice(0, 3).length;
    const shown = foreign.slice(0, 3).map((n) => `'${n}'`).join(", ") + (more > 0 ? `, and ${more} more` : "");
    throw fail(
      "ENOTEMPTY",
      `work directory '${work}' is not empty (holds ${shown}); the kernel wipes '${work}/work' at mount, so ovl ` +
        "only accepts an empty work directory or one holding overlay's own leftovers (work/, index/)",
      work,
      "use a new empty directory on the same mount as the upper layer",
    );
  }
}

/** Checks a mount spec completely: shape first (no I/O), then the filesystem. */
export async function checkSpec(spec: unknown): Promise<CheckedSpec> {
  return checkSpecPaths(checkSpecShape(spec));
}
