/**
 * Overlay's option syntax, both ways: reading the super options the mount table shows, and escaping
 * paths for the strings handed to mount(2) / fsconfig(2).
 *
 * What the kernel does (fs/overlayfs/params.c, checked against Linux 6.18 on this machine):
 *
 * - mount(2) data: ovl_next_opt() splits options on commas not preceded by `\` and leaves the `\` in.
 * - `lowerdir=` (legacy, mount(2) data or FSCONFIG_SET_STRING): ovl_parse_param_split_lowerdirs() splits
 *   on unescaped `:` (`::` = data-only layers follow), keeping the escapes; ovl_unescape() then drops each
 *   `\` and keeps the character after it. The string is stored and shown *as typed*: mountinfo prints
 *   `lowerdir=/a\:b:/c` (octal-escaped on top of that).
 * - `lowerdir+=` / `datadir+=` (new API, 6.8+): one layer per option, looked up with no unescaping
 *   (ovl_mount_dir_noesc); shown literally, one option per layer.
 * - `upperdir=` / `workdir=`: a *string* value goes through ovl_unescape() before the lookup but is stored
 *   and shown as typed, in both the legacy and the new API (ovl_parse_layer keeps param->string).
 *   Observed: fsconfig(SET_STRING, "upperdir", "/t/up\\\\per") mounts /t/up\per and shows
 *   `upperdir=/t/up\134\134per`. So we unescape upperdir/workdir in both forms.
 *   Caveat: a layer passed *by fd* (FSCONFIG_SET_FD, 6.13+) is shown as its resolved path, literally
 *   (fsconfig(SET_FD, "upperdir", fd of /t/u\p) shows `upperdir=/t/u\134p`). The mount table cannot tell
 *   the two apart, so an fd-passed upper/work path that contains a backslash reads back without it.
 * - Feature options are shown only when they differ from the module defaults, in this order:
 *   default_permissions, redirect_dir, index, uuid, nfs_export, xino, metacopy, fsync/volatile,
 *   userxattr, verity. `volatile` is an alias of `fsync=volatile`; 6.18 also takes `fsync=auto`
 *   (the default, never shown) and `fsync=strict` (shown as `fsync=strict`). Older kernels show `volatile`.
 */
import type { DetachedLayers, MountInfo, OverlayFeatures, OverlayMount, OverlayOptions } from "../types.js";

/** The layers and features of an overlay, as read from its super options. */
export interface OverlayLayers {
  /** Lower layers, top-most first. */
  lower: string[];
  /** Data-only lower layers. */
  data: string[];
  upper?: string;
  work?: string;
  features: OverlayFeatures;
}

const REDIRECT_DIR = ["on", "follow", "nofollow", "off"] as const;
const XINO = ["on", "off", "auto"] as const;
const UUID = ["on", "off", "null", "auto"] as const;
const VERITY = ["off", "on", "require"] as const;

function oneOf<T extends string>(values: readonly T[], value: string): value is T {
  return (values as readonly string[]).includes(value);
}

function onOff(value: string | undefined): boolean | undefined {
  return value === "on" ? true : value === "off" ? false : undefined;
}

/**
 * Reads an overlay's super options (already octal-decoded, one per entry, as `splitMountOptions` gives
 * them) into layers and features. A leading `rw`/`ro` is skipped; anything not understood goes to
 * `features.other` verbatim. Never throws.
 */
export function parseOverlayOptions(superOptions: string[]): OverlayLayers {
  let lower: string[] = [];
  let data: string[] = [];
  let upper: string | undefined;
  let work: string | undefined;
  const features: OverlayFeatures = { other: [] };

  for (let i = 0; i < superOptions.length; i++) {
    const opt = superOptions[i];
    if (typeof opt !== "string") continue;
    if (i === 0 && (opt === "rw" || opt === "ro")) continue;
    const eq = opt.indexOf("=");
    const key = eq === -1 ? opt : opt.slice(0, eq);
    const value = eq === -1 ? undefined : opt.slice(eq + 1);
    let known = true;
    switch (key) {
      case "lowerdir":
        // A later lowerdir= replaces the earlier layers, as in the kernel.
        if (value === undefined) known = false;
        else ({ lower, data } = splitLowerdir(value));
        break;
      case "lowerdir+":
        if (value === undefined) known = false;
        else lower.push(value);
        break;
      case "datadir+":
        if (value === undefined) known = false;
        else data.push(value);
        break;
      case "upperdir":
        if (value === undefined) known = false;
        else upper = unescapeOverlayPath(value);
        break;
      case "workdir":
        if (value === undefined) known = false;
        else work = unescapeOverlayPath(value);
        break;
      case "redirect_dir":
        if (value !== undefined && oneOf(REDIRECT_DIR, value)) features.redirectDir = value;
        else known = false;
        break;
      case "index":
      case "nfs_export":
      case "metacopy": {
        const b = onOff(value);
        if (b === undefined) known = false;
        else if (key === "index") features.index = b;
        else if (key === "nfs_export") features.nfsExport = b;
        else features.metacopy = b;
        break;
      }
      case "xino":
        if (value !== undefined && oneOf(XINO, value)) features.xino = value;
        else known = false;
        break;
      case "uuid":
        if (value !== undefined && oneOf(UUID, value)) features.uuid = value;
        else known = false;
        break;
      case "verity":
        if (value !== undefined && oneOf(VERITY, value)) features.verity = value;
        else known = false;
        break;
      case "volatile":
        if (value === undefined) features.volatile = true;
        else known = false;
        break;
      case "fsync":
        if (value === undefined || value === "") known = false;
        else {
          features.fsync = value;
          if (value === "volatile") features.volatile = true;
        }
        break;
      case "userxattr":
        if (value === undefined) features.userxattr = true;
        else known = false;
        break;
      case "default_permissions":
        if (value === undefined) features.defaultPermissions = true;
        else known = false;
        break;
      default:
        known = false;
    }
    if (!known) features.other.push(opt);
  }

  const layers: OverlayLayers = { lower, data, features };
  if (upper !== undefined) layers.upper = upper;
  if (work !== undefined) layers.work = work;
  return layers;
}

/** An overlay mount-table entry: the mount plus its layers and features. */
export function toOverlayMount(info: MountInfo): OverlayMount {
  const { lower, data, upper, work, features } = parseOverlayOptions(info.superOptions);
  const mount: OverlayMount = { ...info, lower, data, features };
  if (upper !== undefined) mount.upper = upper;
  if (work !== undefined) mount.work = work;
  const detached = detachedLayers(info.superOptions, lower.length, data.length);
  if (detached) mount.detached = detached;
  return mount;
}

/**
 * Layers passed one by one (`lowerdir+=`, `datadir+=`) that the kernel prints as `/`: a detached tree's own
 * root (an idmapped layer). Only when those options are what the layers were parsed from (a legacy
 * `lowerdir=` after them replaces them, and prints what was typed).
 */
function detachedLayers(superOptions: string[], nLower: number, nData: number): DetachedLayers | undefined {
  const lower: number[] = [];
  const data: number[] = [];
  let li = 0;
  let di = 0;
  for (const o of superOptions) {
    if (o.startsWith("lowerdir=")) return undefined;
    if (o.startsWith("lowerdir+=")) {
      if (o === "lowerdir+=/") lower.push(li);
      li++;
    } else if (o.startsWith("datadir+=")) {
      if (o === "datadir+=/") data.push(di);
      di++;
    }
  }
  if (li !== nLower || di !== nData || lower.length + data.length === 0) return undefined;
  return { lower, data, pathsKnown: false };
}

/**
 * Splits a legacy `lowerdir=` value as typed (and as the mount table shows it): on unescaped `:`
 * between lower layers, on unescaped `::` before each data-only layer, then drops overlay's backslash
 * escapes from each path. Best effort on values the kernel would reject: runs of three or more colons
 * count as `::`, empty paths are dropped, and once a data layer is seen every later layer is data.
 */
export function splitLowerdir(value: string): { lower: string[]; data: string[] } {
  const lower: string[] = [];
  const data: string[] = [];
  const n = value.length;
  let inData = false;
  let cur = "";
  let hasEscape = false;
  let segStart = 0;
  let i = 0;
  const flush = (endIdx: number) => {
    const path = hasEscape ? cur : value.slice(segStart, endIdx);
    if (path.length > 0) (inData ? data : lower).push(path);
  };
  while (i < n) {
    const c = value.charCodeAt(i);
    if (c === 0x5c /* \ */) {
      if (!hasEscape) {
        cur = value.slice(segStart, i);
        hasEscape = true;
      }
      if (i + 1 < n) cur += value[i + 1];
      i += 2;
      continue;
    }
    if (c === 0x3a /* : */) {
      flush(i);
      let j = i + 1;
      while (j < n && value.charCodeAt(j) === 0x3a) j++;
      if (j - i >= 2) inData = true;
      i = j;
      segStart = i;
      cur = "";
      hasEscape = false;
      continue;
    }
    if (hasEscape) cur += value[i];
    i++;
  }
  flush(n);
  return { lower, data };
}

/** Drops overlay's backslash escapes, as the kernel's ovl_unescape(): `\x` reads as `x`, a final `\` vanishes. */
export function unescapeOverlayPath(value: string): string {
  let i = value.indexOf("\\");
  if (i === -1) return value;
  let out = value.slice(0, i);
  const n = value.length;
  while (i < n) {
    const c = value[i]!;
    if (c === "\\") {
      if (i + 1 < n) out += value[i + 1];
      i += 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/**
 * Escapes one path for a `lowerdir=` list: `\`, `:` and `,` get a backslash, so that the kernel's
 * split on `:`/`::`, mount(2)'s split on `,` and ovl_unescape() give the path back literally.
 * Join the escaped paths with `:` (and `::` before data-only layers). Paths must not be empty.
 */
export function escapeLowerdirPath(path: string): string {
  return path.replace(/[\\:,]/g, "\\$&");
}

/**
 * Escapes a path for `upperdir=`/`workdir=` in a mount(2) data string (`\` and `,`), which also suits
 * fsconfig(FSCONFIG_SET_STRING, "upperdir"/"workdir") since the kernel unescapes those strings too.
 * Not for `lowerdir+`/`datadir+` strings: those are taken literally.
 */
export function escapeUpperWorkPath(path: string): string {
  return path.replace(/[\\,]/g, "\\$&");
}

function badOption(name: string, value: unknown, allowed: string): TypeError {
  const err = new TypeError(`The overlay option "${name}" must be ${allowed}. Received ${String(value)}`) as TypeError & {
    code: string;
  };
  err.code = "ERR_INVALID_ARG_VALUE";
  return err;
}

function flag(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") throw badOption(name, value, "a boolean");
  return value;
}

function onOffString(name: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "boolean") throw badOption(name, value, "a boolean");
  return value ? "on" : "off";
}

function enumString(name: string, values: readonly string[], value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || !values.includes(value)) {
    throw badOption(name, value, `one of ${values.map((v) => `"${v}"`).join(", ")}`);
  }
  return value;
}

/**
 * The mount options for an OverlayOptions, in the kernel's own display order:
 * `default_permissions, redirect_dir=, index=, uuid=, nfs_export=, xino=, metacopy=, volatile, userxattr,
 * verity=`. Unset fields give nothing; `false` flags (defaultPermissions, volatile, userxattr) give
 * nothing either, since the kernel has no option to turn them off. `volatile: true` gives `volatile`,
 * which every kernel since 5.10 takes. Throws a TypeError (code ERR_INVALID_ARG_VALUE) for a value
 * outside the option's set. `parseOverlayOptions(featureOptionStrings(o))` gives `o` back (with
 * `other: []`, and minus those `false` flags).
 */
export function featureOptionStrings(options: OverlayOptions): string[] {
  const out: string[] = [];
  if (options === undefined || options === null) return out;
  if (typeof options !== "object") throw badOption("options", options, "an object");
  if (flag("defaultPermissions", options.defaultPermissions)) out.push("default_permissions");
  const redirect = enumString("redirectDir", REDIRECT_DIR, options.redirectDir);
  if (redirect !== undefined) out.push(`redirect_dir=${redirect}`);
  const index = onOffString("index", options.index);
  if (index !== undefined) out.push(`index=${index}`);
  const uuid = enumString("uuid", UUID, options.uuid);
  if (uuid !== undefined) out.push(`uuid=${uuid}`);
  const nfsExport = onOffString("nfsExport", options.nfsExport);
  if (nfsExport !== undefined) out.push(`nfs_export=${nfsExport}`);
  const xino = enumString("xino", XINO, options.xino);
  if (xino !== undefined) out.push(`xino=${xino}`);
  const metacopy = onOffString("metacopy", options.metacopy);
  if (metacopy !== undefined) out.push(`metacopy=${metacopy}`);
  if (flag("volatile", options.volatile)) out.push("volatile");
  if (flag("userxattr", options.userxattr)) out.push("userxattr");
  const verity = enumString("verity", VERITY, options.verity);
  if (verity !== undefined) out.push(`verity=${verity}`);
  return out;
}
