/**
 * How the command line fails: util-linux's exit codes (mount(8)/umount(8), findmnt(8) for lookups) and one
 * error line on stderr, `ovl: <command> <path>: <what is wrong> (<CODE>)`, with any hint after it.
 */
import { MountOptionError } from "../mounting/mount-options.js";
import { printable } from "./output.js";

/**
 * As mount(8)/umount(8): 0 success, 1 usage or permission, 32 mount failure, 64 some of several targets
 * succeeded; `ls` follows findmnt(8): 1 when nothing was found or the lookup failed.
 */
export const EXIT = { OK: 0, USAGE: 1, FAILURE: 32, SOME_FAILED: 64 } as const;

/** Stack traces with errors: `--debug`, or OVL_DEBUG set to anything but "" or "0". */
let debug = !!process.env.OVL_DEBUG && process.env.OVL_DEBUG !== "0";

/** `--debug` was given: print stack traces with errors from now on. */
export function enableDebug(): void {
  debug = true;
}

/** A mistake in how the command was called: exit 1, no error code. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = "UsageError";
  }
}

export type ErrorLike = Error & { code?: string; path?: string; hint?: string; syscall?: string };

const usageCodes = new Set(["EPERM", "EACCES"]);

/** Commands whose failure is a failed mount or unmount (util-linux's 32); for the others it is a lookup (1). */
const MOUNTING = new Set(["mount", "umount", "run", "demo", "image mount"]);

/**
 * The exit code for an error, util-linux's rule for every command: 1 for usage, permission, or a lookup
 * that found nothing or failed (`ls`, `which`, `diff`, `fuser`); 32 only for a failed mount or unmount.
 */
function exitCodeFor(command: string, err: unknown): number {
  const code = (err as ErrorLike)?.code;
  if (err instanceof UsageError || err instanceof MountOptionError) return EXIT.USAGE;
  if (code !== undefined && (usageCodes.has(code) || code.startsWith("ERR_"))) return EXIT.USAGE;
  return MOUNTING.has(command) ? EXIT.FAILURE : EXIT.USAGE;
}

/** What umount(8) says, in the same words, for the errors umount2(2) gives. */
const umountWords: Record<string, { what: string; hint?: (path: string) => string }> = {
  EBUSY: { what: "target is busy", hint: (p) => `'ovl umount -l ${p}' detaches it now and frees it when the last user is gone` },
  EINVAL: { what: "not a mount point" },
  ENOENT: { what: "no such file or directory" },
  ENOTDIR: { what: "a component of the path is not a directory" },
  EPERM: {
    what: "permission denied",
    hint: () => "unmounting needs root (CAP_SYS_ADMIN), or the user namespace that owns the mount namespace",
  },
};

/** The parts of an error line: the path it is about, what is wrong, the code and a hint. */
export function describeError(command: string, err: unknown): { path?: string; what: string; code?: string; hint?: string } {
  if (!(err instanceof Error)) return { what: String(err) };
  const e = err as ErrorLike & { dest?: string };
  // A layer's fault is about a mount: the line names the act (mount TARGET), then the culprit in the text.
  const path = command === "mount" && e.dest !== undefined ? e.dest : e.path;
  if (command === "umount" && e.code && umountWords[e.code] && path !== undefined) {
    const words = umountWords[e.code]!;
    return { path, what: words.what, code: e.code, ...(words.hint ? { hint: words.hint(path) } : {}) };
  }
  // OverlayError and Node's system errors: `CODE: detail, syscall 'path'. Hint: ...`; keep the detail.
  let what = e.message.replace(/\. Hint: .*$/s, "");
  if (e.code && what.startsWith(`${e.code}: `)) what = what.slice(e.code.length + 2);
  if (e.syscall !== undefined) what = what.replace(new RegExp(`, ${e.syscall}( '.*')?$`, "s"), "");
  let hint = e.hint;
  if (e.code === "EPERM" && command === "mount") {
    hint = "mounting needs root (CAP_SYS_ADMIN), or a user namespace that owns the mount namespace (e.g. unshare -Urm; ovl adds userxattr there by itself)";
  }
  if (e.code === "EBUSY" && hint) hint = hint.replace("`lazy: true` (umount -l)", "'ovl umount -l'");
  // `ovl run` has a throwaway upper of its own to offer.
  if (command === "run" && hint?.startsWith("add an upper and a work directory")) {
    hint = "add --tmp (a throwaway upper and work on a tmpfs), --upper U --work W, or a second --lower";
  }
  return {
    ...(path !== undefined ? { path } : {}),
    what,
    ...(e.code && !(err instanceof UsageError) ? { code: e.code } : {}),
    ...(hint ? { hint } : {}),
  };
}

/**
 * Prints `ovl: <command> <path>: <what is wrong> (<CODE>)`, any `details` lines, and a hint line to stderr,
 * and returns the exit code for the error. With --debug or OVL_DEBUG, the stack too.
 */
export function reportError(
  command: string,
  err: unknown,
  details: { lines: string[]; hints: string[]; replaceHint?: boolean } = { lines: [], hints: [] },
): number {
  if (debug) console.error((err as Error)?.stack ?? err);
  const d = describeError(command, err);
  const path = d.path !== undefined ? ` ${printable(d.path)}` : "";
  const code = d.code ? ` (${d.code})` : "";
  console.error(`ovl: ${command}${path}: ${printable(d.what, { keepNewlines: false })}${code}`);
  for (const line of details.lines) console.error(`ovl:   ${line}`);
  for (const hint of [...details.hints, ...(d.hint && !details.replaceHint ? [d.hint] : [])]) {
    console.error(`ovl: hint: ${printable(hint, { keepNewlines: false })}`);
  }
  return exitCodeFor(command, err);
}
