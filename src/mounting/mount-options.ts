/**
 * mount(8)-style `-o` strings for overlays: `lowerdir=A:B,upperdir=U,workdir=W,redirect_dir=on,nosuid`,
 * parsed into the layers, the typed overlay options and the generic flags that `mount()` takes.
 *
 * Syntax (overlay's own, as the kernel parses a mount(2) data string):
 * - options are split on commas not preceded by a backslash; a backslash escapes the character after it;
 * - `lowerdir=` lists lower layers top-most first, split on unescaped `:`, with `::` before data-only layers;
 * - `lowerdir=`, `upperdir=` and `workdir=` paths then lose their backslash escapes, so `\:` `\,` and `\\`
 *   stand for `:` `,` and `\`;
 * - `lowerdir+=` and `datadir+=` paths are literal (the kernel takes them without unescaping): `e\f` is the
 *   directory named `e\f`, and a comma cannot be written in them at all.
 * - Generic flags (`ro`, `nosuid`, ...) and their negations (`rw`, `suid`, ...) are applied left to right, as
 *   mount(8) does: the last word on a flag wins, and one atime mode replaces another.
 * Several `-o` strings are read as one, joined by commas.
 */
import type { MountFlags } from "./flags.js";
import { splitLowerdir, unescapeOverlayPath } from "./overlay-options.js";
import type { OverlayOptions } from "../types.js";
import { IdmapSyntaxError, type IdmapSpec, parseIdmap } from "./idmap.js";

/** What an `-o` string says: layers (only those it names), overlay options and generic flags. */
export interface ParsedMountOptions {
  /** Lower layers, top-most first (`lowerdir=` or `lowerdir+=`). */
  lower?: string[];
  /** Data-only layers (after `::` in `lowerdir=`, or `datadir+=`). */
  data?: string[];
  /** `upperdir=`. */
  upper?: string;
  /** `workdir=`. */
  work?: string;
  /** Overlay feature options. */
  options: OverlayOptions;
  /** Generic mount flags that are set (only `true` entries). */
  flags: MountFlags;
  /** `X-mount.idmap=` (util-linux's spelling): idmapped lower layers. */
  idmap?: IdmapSpec;
}

/** A bad `-o` string: a usage error, with Node's code for a bad argument value. */
export class MountOptionError extends TypeError {
  readonly code = "ERR_INVALID_ARG_VALUE";
  /** The option (as written) that was refused. */
  readonly option: string;
  /** What would be accepted instead. */
  readonly hint?: string;
  constructor(option: string, message: string, hint?: string) {
    super(message);
    this.name = "MountOptionError";
    this.option = option;
    if (hint !== undefined) this.hint = hint;
  }
}

type FlagName = keyof MountFlags;
const ATIME_MODES = ["noatime", "relatime", "strictatime"] as const satisfies readonly FlagName[];

/** Generic option words: which flag each sets (true) or clears (false). */
const GENERIC: Record<string, Array<[FlagName, boolean]>> = {
  ro: [["readonly", true]],
  rw: [["readonly", false]],
  nosuid: [["nosuid", true]],
  suid: [["nosuid", false]],
  nodev: [["nodev", true]],
  dev: [["nodev", false]],
  noexec: [["noexec", true]],
  exec: [["noexec", false]],
  noatime: [["noatime", true]],
  atime: [["noatime", false]],
  relatime: [["relatime", true]],
  norelatime: [["relatime", false]],
  strictatime: [["strictatime", true]],
  nostrictatime: [["strictatime", false]],
  nodiratime: [["nodiratime", true]],
  diratime: [["nodiratime", false]],
  nosymfollow: [["nosymfollow", true]],
  symfollow: [["nosymfollow", false]],
  sync: [["sync", true]],
  async: [["sync", false]],
  dirsync: [["dirsync", true]],
  lazytime: [["lazytime", true]],
  nolazytime: [["lazytime", false]],
  // mount(8): defaults = rw, suid, dev, exec, auto, nouser, async.
  defaults: [
    ["readonly", false],
    ["nosuid", false],
    ["nodev", false],
    ["noexec", false],
    ["sync", false],
  ],
};

const ON_OFF = ["on", "off"] as const;
const REDIRECT_DIR = ["on", "follow", "nofollow", "off"] as const;
const XINO = ["on", "off", "auto"] as const;
const UUID = ["on", "off", "null", "auto"] as const;
const VERITY = ["off", "on", "require"] as const;

/** Overlay options with a value: the values each takes and where it goes in OverlayOptions. */
const VALUED: Record<string, { values: readonly string[]; set: (o: OverlayOptions, v: string) => void }> = {
  redirect_dir: { values: REDIRECT_DIR, set: (o, v) => (o.redirectDir = v as OverlayOptions["redirectDir"]) },
  index: { values: ON_OFF, set: (o, v) => (o.index = v === "on") },
  nfs_export: { values: ON_OFF, set: (o, v) => (o.nfsExport = v === "on") },
  xino: { values: XINO, set: (o, v) => (o.xino = v as OverlayOptions["xino"]) },
  metacopy: { values: ON_OFF, set: (o, v) => (o.metacopy = v === "on") },
  uuid: { values: UUID, set: (o, v) => (o.uuid = v as OverlayOptions["uuid"]) },
  verity: { values: VERITY, set: (o, v) => (o.verity = v as OverlayOptions["verity"]) },
  // ovl's own: `userxattr=off` keeps ovl from adding `userxattr` in a user namespace (the library's
  // `userxattr: false`); the kernel itself knows only the bare flag.
  userxattr: { values: ON_OFF, set: (o, v) => (o.userxattr = v === "on") },
  // The kernel's newer spelling of `volatile`; `fsync=auto` is the default. ovl has no `fsync=strict`.
  fsync: {
    values: ["volatile", "auto"],
    set: (o, v) => {
      if (v === "volatile") o.volatile = true;
      else delete o.volatile;
    },
  },
};

/** Overlay options without a value. */
const BARE: Record<string, (o: OverlayOptions) => void> = {
  volatile: (o) => (o.volatile = true),
  userxattr: (o) => (o.userxattr = true),
  default_permissions: (o) => (o.defaultPermissions = true),
};

const LAYER_KEYS = ["lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir"];

/** The overlay option words `parseMountOptions` knows, for messages. */
const OVERLAY_WORDS = [...LAYER_KEYS.map((k) => `${k}=`), ...Object.keys(VALUED).map((k) => `${k}=`), ...Object.keys(BARE)];

/**
 * Splits a mount(2)-style option string on commas not preceded by a backslash, keeping the escapes (as
 * the kernel's ovl_next_opt() does). Empty options (`a,,b`, a trailing comma) are dropped.
 */
export function splitOptionString(text: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\") i++;
    else if (c === ",") {
      out.push(text.slice(start, i));
      start = i + 1;
    }
  }
  out.push(text.slice(start));
  return out.filter((o) => o !== "");
}

/**
 * Parses one or more `-o` strings. Throws a MountOptionError (code ERR_INVALID_ARG_VALUE) naming the option
 * for an unknown option, a value outside an option's set, an empty layer, or `lowerdir=` mixed with
 * `lowerdir+=`/`datadir+=`. Conflicts between overlay options are left to `mount()`, which names them.
 */
export function parseMountOptions(text: string | readonly string[]): ParsedMountOptions {
  const strings = typeof text === "string" ? [text] : [...text];
  const options: OverlayOptions = {};
  const flags: MountFlags = {};
  let legacyLower: { lower: string[]; data: string[] } | undefined;
  const appendedLower: string[] = [];
  const appendedData: string[] = [];
  let upper: string | undefined;
  let work: string | undefined;
  let idmap: IdmapSpec | undefined;

  for (const opt of strings.flatMap(splitOptionString)) {
    const eq = opt.indexOf("=");
    const key = eq === -1 ? opt : opt.slice(0, eq);
    const value = eq === -1 ? undefined : opt.slice(eq + 1);

    if (key === "X-mount.idmap") {
      try {
        idmap = parseIdmap(value ?? "");
      } catch (e) {
        if (!(e instanceof IdmapSyntaxError)) throw e;
        throw new MountOptionError(
          opt,
          `mount option '${opt}': ${(e as IdmapSyntaxError).rule}`,
          "X-mount.idmap=0:100000:65536 (uids and gids), X-mount.idmap='u:0:100000:65536 g:0:100000:65536', or X-mount.idmap=/proc/PID/ns/user",
        );
      }
      continue;
    }

    if (LAYER_KEYS.includes(key)) {
      if (value === undefined || value === "") {
        throw new MountOptionError(opt, `mount option '${opt}' needs a directory (${key}=DIR)`);
      }
      if (key === "lowerdir") {
        legacyLower = splitLowerdir(value);
        if (legacyLower.lower.length === 0) {
          throw new MountOptionError(opt, `mount option '${opt}' names no lower layer`);
        }
      } else if (key === "lowerdir+") appendedLower.push(value);
      else if (key === "datadir+") appendedData.push(value);
      else if (key === "upperdir") upper = unescapeOverlayPath(value);
      else work = unescapeOverlayPath(value);
      continue;
    }

    const valued = VALUED[key];
    if (valued && !(value === undefined && BARE[key])) {
      if (value === undefined || !valued.values.includes(value)) {
        throw new MountOptionError(
          opt,
          `mount option '${opt}' needs one of the values ${valued.values.map((v) => `${key}=${v}`).join(", ")}`,
        );
      }
      valued.set(options, value);
      continue;
    }

    const bare = BARE[key] ?? GENERIC[key];
    if (bare && value !== undefined) {
      throw new MountOptionError(opt, `mount option '${key}' takes no value (got '${opt}')`);
    }
    if (BARE[key]) {
      BARE[key](options);
      continue;
    }
    const generic = GENERIC[key];
    if (generic) {
      for (const [name, on] of generic) {
        // One atime mode replaces another, as with mount(8)'s left-to-right reading.
        if (on && (ATIME_MODES as readonly string[]).includes(name)) for (const m of ATIME_MODES) delete flags[m];
        if (on) flags[name] = true;
        else delete flags[name];
      }
      continue;
    }
    throw new MountOptionError(
      opt,
      `unknown mount option '${key}'`,
      `overlay options: ${OVERLAY_WORDS.join(" ")}; generic: ${Object.keys(GENERIC).join(" ")}`,
    );
  }

  if (legacyLower && (appendedLower.length > 0 || appendedData.length > 0)) {
    throw new MountOptionError(
      "lowerdir",
      "mount options 'lowerdir=' and 'lowerdir+='/'datadir+=' cannot be combined; list the layers one way",
    );
  }
  const parsed: ParsedMountOptions = { options, flags };
  const lower = legacyLower?.lower ?? appendedLower;
  const data = legacyLower?.data ?? appendedData;
  if (lower.length > 0) parsed.lower = lower;
  if (data.length > 0) parsed.data = data;
  if (upper !== undefined) parsed.upper = upper;
  if (work !== undefined) parsed.work = work;
  if (idmap !== undefined) parsed.idmap = idmap;
  return parsed;
}
