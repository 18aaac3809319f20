/**
 * ovl's one error class, shaped like Node's own system errors (`code`, `errno`, `syscall`, `path`), and the
 * Node-style argument errors (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`).
 */
import { constants } from "node:os";
import { getSystemErrorMap, inspect } from "node:util";
import type { NativeFailure } from "./native.js";

const errnoByName = constants.errno as Record<string, number>;

/** A failed system call or a rule the kernel would enforce, named before any syscall ran. */
export class OverlayError extends Error {
  /** The errno name, e.g. `ELOOP`. */
  readonly code: string;
  /** Negative errno, as Node reports it (`-40` for ELOOP). */
  readonly errno: number;
  /** The system call that failed or would have failed. */
  readonly syscall: string;
  /** The path the error is about. */
  readonly path?: string;
  /** The mount point, when the error is about a layer of a mount. */
  readonly dest?: string;
  /** What to do about it, where something helps. */
  readonly hint?: string;
  /** What the kernel wrote to the fs-context log, without the `e `/`w `/`i ` prefixes. */
  readonly kernelMessages: string[];

  constructor(
    code: string,
    detail: string,
    info: { syscall: string; path?: string; dest?: string; hint?: string; kernelMessages?: string[]; errno?: number },
  ) {
    const where = info.path !== undefined ? `, ${info.syscall} '${info.path}'` : `, ${info.syscall}`;
    super(`${code}: ${detail}${where}${info.hint ? `. Hint: ${info.hint}` : ""}`);
    this.name = "OverlayError";
    this.code = code;
    this.errno = info.errno !== undefined ? -Math.abs(info.errno) : -(errnoByName[code] ?? 0);
    this.syscall = info.syscall;
    if (info.path !== undefined) this.path = info.path;
    if (info.dest !== undefined) this.dest = info.dest;
    if (info.hint !== undefined) this.hint = info.hint;
    this.kernelMessages = info.kernelMessages ?? [];
  }
}

/** The errno name and Node's description for a positive errno number. */
export function describeErrno(errno: number): { code: string; description: string } {
  const entry = getSystemErrorMap().get(-Math.abs(errno));
  return entry ? { code: entry[0], description: entry[1] } : { code: `E${errno}`, description: `error ${errno}` };
}

const kernelHints: Record<string, string> = {
  EPERM: "mounting needs root (CAP_SYS_ADMIN), or a user namespace that owns the mount namespace (unshare -Urm)",
  ELOOP: "a layer repeats, or one layer lies inside another (or inside upper/work)",
  EBUSY: "the mount is in use; `lazy: true` (umount -l) detaches it now and frees it when the last user is gone",
  EXDEV: "upper and work must be on the same mount",
};

/** Strips the fs-context log's severity prefix, the kernel log's "overlayfs: ", and trailing newlines. */
function cleanKernelMessage(message: string): string {
  return message.replace(/^[ewi] /, "").replace(/^overlayfs: /, "").replace(/\n+$/, "");
}

/** Turns a native rejection into an OverlayError, naming the path (and step) it was about. */
export function fromNative(
  failure: NativeFailure,
  context: { path?: string; dest?: string; what?: string; hints?: Record<string, string> },
): OverlayError {
  if (typeof failure !== "object" || failure === null || typeof failure.errno !== "number") {
    throw failure; // not a syscall failure (a TypeError from the addon's own argument checks)
  }
  const { code, description } = describeErrno(failure.errno);
  const kernelMessages = [...(failure.messages ?? []), ...(failure.kernelLog ?? [])].map(cleanKernelMessage);
  let detail = context.what ? `${context.what}: ${description}` : description;
  if (kernelMessages.length > 0) detail += ` (kernel: ${kernelMessages.join("; ")})`;
  const hint = context.hints?.[code] ?? kernelHints[code];
  return new OverlayError(code, detail, {
    syscall: failure.syscall,
    errno: failure.errno,
    ...(context.path !== undefined ? { path: context.path } : failure.path ? { path: failure.path } : {}),
    ...(context.dest !== undefined ? { dest: context.dest } : {}),
    ...(hint !== undefined ? { hint } : {}),
    kernelMessages,
  });
}

type ArgError = TypeError & { code: string };

function received(value: unknown): string {
  if (value === null || value === undefined) return ` Received ${value}`;
  if (typeof value === "function") return ` Received function ${value.name || "<anonymous>"}`;
  if (typeof value === "object") return ` Received ${inspect(value, { depth: 0, breakLength: Infinity })}`;
  return ` Received type ${typeof value} (${inspect(value).slice(0, 40)})`;
}

/** Node's ERR_INVALID_ARG_TYPE. */
export function invalidArgType(name: string, expected: string, value: unknown): ArgError {
  const err = new TypeError(`The "${name}" argument must be ${expected}.${received(value)}`) as ArgError;
  err.code = "ERR_INVALID_ARG_TYPE";
  return err;
}

/** Node's ERR_INVALID_ARG_VALUE. */
export function invalidArgValue(name: string, value: unknown, reason: string): ArgError {
  const err = new TypeError(
    `The argument '${name}' ${reason}. Received ${inspect(value, { depth: 0, breakLength: Infinity })}`,
  ) as ArgError;
  err.code = "ERR_INVALID_ARG_VALUE";
  return err;
}
