/**
 * The layer and option flags `ovl mount` and `ovl run` share, read into the library's MountSpec one way for
 * both: the flags and/or mount(8)'s `-o` string. Both import it when they run.
 */
import { IdmapSyntaxError, type IdmapSpec, parseIdmap } from "../mounting/idmap.js";
import { parseMountOptions } from "../mounting/mount-options.js";
import type { MountSpec } from "../mounting/validate.js";
import { UsageError } from "./errors.js";

export interface MountCliOptions {
  lower?: string[];
  upper?: string;
  work?: string;
  data?: string[];
  readOnly?: boolean;
  options?: string[];
  type?: string;
  /** `--idmap`: X-mount.idmap's spelling. */
  idmap?: string;
}

/** `--idmap VALUE` as util-linux's X-mount.idmap spells it; a usage error naming the flag when it is not. */
export function idmapFromCli(value: string): IdmapSpec {
  try {
    return parseIdmap(value);
  } catch (e) {
    if (!(e instanceof IdmapSyntaxError)) throw e;
    throw new UsageError(
      `--idmap ${value}: ${(e as IdmapSyntaxError).rule}`,
      "--idmap 0:100000:65536 (uids and gids), --idmap 'u:0:100000:65536 g:0:100000:65536', or --idmap /proc/PID/ns/user",
    );
  }
}

/** The library spec for `ovl mount`, from the flags and/or mount(8)'s `-o` string. */
export function mountSpecFromCli(source: string | undefined, target: string, opts: MountCliOptions): MountSpec {
  if (opts.type !== undefined && opts.type !== "overlay") {
    throw new UsageError(`-t ${opts.type}: ovl mounts only overlay filesystems`, "leave out -t, or use -t overlay");
  }
  const o = parseMountOptions(opts.options ?? []);
  const both = (flag: string, option: string) =>
    new UsageError(`${flag} and -o ${option} both give the ${flag.slice(2)} layer${flag === "--work" ? "" : "s"}; give them one way`);
  if (opts.lower && o.lower) throw both("--lower", "lowerdir=");
  if (opts.upper !== undefined && o.upper !== undefined) throw both("--upper", "upperdir=");
  if (opts.work !== undefined && o.work !== undefined) throw both("--work", "workdir=");
  if (opts.data && o.data) throw both("--data", "lowerdir=A::DATA / datadir+=");
  if (opts.idmap !== undefined && o.idmap !== undefined) {
    throw new UsageError("--idmap and -o X-mount.idmap= both give the idmap; give it one way");
  }
  const idmap = opts.idmap !== undefined ? idmapFromCli(opts.idmap) : o.idmap;
  const lower = opts.lower ?? o.lower;
  if (!lower || lower.length === 0) {
    throw new UsageError("no lower layer given", "give --lower DIR (repeat for more, top-most first) or -o lowerdir=DIR1:DIR2");
  }
  const upper = opts.upper ?? o.upper;
  const work = opts.work ?? o.work;
  const data = opts.data ?? o.data;
  const flags = { ...o.flags, ...(opts.readOnly ? { readonly: true } : {}) };
  return {
    lower,
    target,
    ...(upper !== undefined ? { upper } : {}),
    ...(work !== undefined ? { work } : {}),
    ...(data ? { data } : {}),
    ...(Object.keys(o.options).length > 0 ? { options: o.options } : {}),
    ...(Object.keys(flags).length > 0 ? { flags } : {}),
    ...(source !== undefined ? { source } : {}),
    ...(idmap !== undefined ? { idmap } : {}),
  };
}
