/**
 * `ovl run`: a command run inside an overlay that exists only for it, in a mount namespace of its own (and
 * a user namespace too when not root). Everything is gone when the command exits.
 *
 * A Node process cannot move itself into new namespaces (it is multithreaded), so the outer process
 * re-executes itself under `unshare`; the inner one mounts and runs the command.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { constants } from "node:os";
import { invalidArgValue } from "./errors.js";
import { mountOverlay } from "./mount.js";
import { checkPathArg } from "./validate.js";

/** Set in the re-executed process: it is already in its own namespaces. */
export const RUN_NAMESPACE_ENV = "OVL_RUN_NAMESPACE";

export interface RunSpec {
  lower: string[];
  upper?: string;
  work?: string;
  /** Upper and work in a temporary directory removed afterwards (like bubblewrap's --tmp-overlay). */
  tmp?: boolean;
}

/**
 * The command itself could not be started: not found (exit status 127) or found but not executable (126),
 * as shells, unshare(1) and bwrap report it.
 */
export class CommandNotStartedError extends Error {
  readonly status: 126 | 127;
  constructor(
    readonly command: string,
    readonly code: "ENOENT" | "EACCES",
  ) {
    super(code === "ENOENT" ? "command not found" : "permission denied");
    this.name = "CommandNotStartedError";
    this.status = code === "ENOENT" ? 127 : 126;
  }
}

/** The signals ovl run passes on to the command, as a shell does: it ends when the command does. */
const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Passes FORWARDED_SIGNALS on to `child`; returns the function that stops it. */
function forwardSignals(child: ChildProcess): () => void {
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  for (const sig of FORWARDED_SIGNALS) process.on(sig, forward);
  return () => {
    for (const sig of FORWARDED_SIGNALS) process.off(sig, forward);
  };
}

/** Exit status of a child as a shell reports it: its code, or 128 + the signal number. */
function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const n = signal ? (constants.signals as Record<string, number>)[signal] : undefined;
  return 128 + (n ?? 1);
}

/** Runs `argv` with `unshare` so that it starts in private namespaces; returns its exit status. */
export function reexecInNamespace(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const isRoot = process.getuid?.() === 0;
  const unshareArgs = [isRoot ? "-m" : "-Urm", "--propagation", "private", "--", ...argv];
  return new Promise((resolve, reject) => {
    const child = spawn("unshare", unshareArgs, { stdio: "inherit", env: { ...env, [RUN_NAMESPACE_ENV]: isRoot ? "root" : "user" } });
    const stopForwarding = forwardSignals(child);
    child.on("error", (err) => {
      stopForwarding();
      reject(Object.assign(err, { hint: "ovl run needs unshare(1) from util-linux" }));
    });
    child.on("exit", (code, signal) => {
      stopForwarding();
      resolve(exitStatus(code, signal));
    });
  });
}

/**
 * Inside the private namespace: mounts the overlay on a temporary directory, runs the command there, and
 * removes what it made. Returns the command's exit status.
 */
export async function runInOverlay(spec: RunSpec, command: string[]): Promise<number> {
  if (!process.env[RUN_NAMESPACE_ENV]) {
    throw new Error("runInOverlay() must run in the private namespace made by reexecInNamespace()");
  }
  if (command.length === 0) throw invalidArgValue("command", command, "must name a program to run");
  command.forEach((c, i) => checkPathArg(c, `command[${i}]`));
  if (spec.tmp && (spec.upper !== undefined || spec.work !== undefined)) {
    throw invalidArgValue("tmp", true, "cannot be combined with an upper or work directory");
  }
  const scratch = mkdtempSync(join(tmpdir(), "ovl-run-"));
  try {
    const target = join(scratch, "merged");
    mkdirSync(target);
    let upper = spec.upper;
    let work = spec.work;
    if (spec.tmp) {
      upper = join(scratch, "upper");
      work = join(scratch, "work");
      mkdirSync(upper);
      mkdirSync(work);
    }
    const m = await mountOverlay({
      refuseInUse: true,
      lower: spec.lower,
      target,
      ...(upper !== undefined ? { upper } : {}),
      ...(work !== undefined ? { work } : {}),
    });
    try {
      return await new Promise<number>((resolve, reject) => {
        const child = spawn(command[0]!, command.slice(1), { cwd: target, stdio: "inherit" });
        const stopForwarding = forwardSignals(child);
        child.on("error", (err: NodeJS.ErrnoException) => {
          stopForwarding();
          const code = err.code;
          reject(code === "ENOENT" || code === "EACCES" ? new CommandNotStartedError(command[0]!, code) : err);
        });
        child.on("exit", (code, signal) => {
          stopForwarding();
          resolve(exitStatus(code, signal));
        });
      });
    } finally {
      // Lazy: the command may have left a process behind holding the mount; the namespace ends anyway.
      await m.unmount({ lazy: true });
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
