/**
 * `ovl umount`: unmounts targets as umount(8) does (-l, -f, -R), and when one is busy says who holds it
 * (processes, mounts below it) without suggesting anything that would take down more than was named.
 */
import { realpath } from "node:fs/promises";
import { resolve } from "node:path";
import { bufferToPath, pathToBuffer } from "../../kernel/bytes.js";
import { describeErrno } from "../../kernel/errors.js";
import type { NativeFailure } from "../../kernel/native.js";
import type { HolderList } from "../../table/fuser.js";
import { list } from "../../table/table.js";
import type { CommandFactory } from "../command.js";
import { EXIT, type ErrorLike, reportError } from "../errors.js";
import { printable } from "../output.js";

interface UmountOptions {
  lazy?: boolean;
  force?: boolean;
  recursive?: boolean;
  verbose?: boolean;
}

/**
 * After EBUSY: who holds the target (processes, and mounts below it), as lines for the error message. Never a
 * hint that would take down more than the user named: with mounts below it (or for `/`), neither `-R` nor
 * `-l` (which detaches everything below too) is suggested; the mounts below are named instead.
 */
async function explainBusy(target: string): Promise<{ lines: string[]; hints: string[]; replaceHint?: boolean }> {
  const { holderLine, holdersOtherThanOvl, uninspectedNote } = await import("../holders.js"); // only for a busy target
  const lines: string[] = [];
  const hints: string[] = [];
  let holders: HolderList | undefined;
  try {
    holders = await holdersOtherThanOvl(target);
  } catch (err) {
    lines.push(`(could not look for the processes holding it: ${(err as Error).message})`);
  }
  if (holders && holders.length > 0) {
    lines.push(`held by ${holders.length} process${holders.length === 1 ? "" : "es"}:`);
    for (const h of holders) lines.push(`  ${holderLine(h)}`);
  }
  // Stacked mounts share a mount point: each place once, deepest first.
  const { submountsOf } = await import("../../table/fuser.js");
  const below = [...new Set((await submountsOf(target).catch(() => [])).map((m) => m.target))];
  const isRoot = resolve(target) === "/";
  if (below.length > 0) {
    const shown = below.slice(0, 4).map((t) => printable(t));
    lines.push(`mounted below it: ${shown.join(", ")}${below.length > 4 ? `, and ${below.length - 4} more` : ""}`);
    if (!isRoot) hints.push(`unmount what is mounted below it first, if those are yours to unmount: 'ovl umount ${shown.join(" ")}'`);
  }
  if (holders && holders.length === 0 && below.length === 0) {
    lines.push(`no process found holding it${uninspectedNote(holders.uninspected)}`);
  }
  return { lines, hints, replaceHint: below.length > 0 || isRoot };
}

/** The mount points to unmount for `umount -R target`: everything below it, deepest first, then it. */
async function recursiveTargets(target: string): Promise<string[]> {
  const path = resolve(target);
  const real = bufferToPath(await realpath(pathToBuffer(path), { encoding: "buffer" }));
  let id: number;
  try {
    const { native } = await import("../../kernel/native.js");
    id = (await native().mountId(pathToBuffer(real), false)).mountId;
  } catch (e) {
    const { code, description } = describeErrno((e as NativeFailure).errno);
    throw Object.assign(new Error(description), { code, path, syscall: "statx" });
  }
  const mounts = await list({ all: true });
  const top = mounts.find((m) => m.id === id);
  if (!top || top.target !== real) {
    throw Object.assign(new Error("not a mount point"), { code: "EINVAL", path, syscall: "umount2" });
  }
  const { unmountOrder } = await import("../../table/fuser.js");
  return unmountOrder(mounts, id).map((m) => m.target);
}

async function umountOne(target: string, opts: UmountOptions) {
  const targets = opts.recursive ? await recursiveTargets(target) : [target];
  // util-linux: recursion stops at the first unmount that fails.
  for (const t of targets) {
    const { umount } = await import("../../mounting/mount.js");
    await umount(t, { lazy: !!opts.lazy, force: !!opts.force });
    if (opts.verbose) console.log(`unmounted ${printable(resolve(t))}`);
  }
}

async function umountCommand(targets: string[], opts: UmountOptions): Promise<number> {
  const codes: number[] = [];
  for (const t of targets) {
    try {
      await umountOne(t, opts);
    } catch (err) {
      const busy = (err as ErrorLike).code === "EBUSY" ? await explainBusy((err as ErrorLike).path ?? t) : undefined;
      codes.push(reportError("umount", err, busy));
    }
  }
  if (codes.length === 0) return EXIT.OK;
  if (codes.length < targets.length) return EXIT.SOME_FAILED;
  return codes.every((c) => c === codes[0]) ? codes[0]! : EXIT.FAILURE;
}

/** Registers `umount` (alias `unmount`) with `command(name)`, the CLI's factory for subcommands. */
export function addUmountCommand(command: CommandFactory): void {
  command("umount")
    .alias("unmount")
    .description("unmount one or more targets")
    .argument("<target...>", "mount points")
    .option("-l, --lazy", "detach now, clean up when no longer busy")
    .option("-f, --force", "force (overlay has no forced unmount: a busy overlay stays busy)")
    .option("-R, --recursive", "first unmount everything mounted below each target, deepest first")
    .option("-v, --verbose", "say what was unmounted")
    .action(async (targets: string[], opts: UmountOptions) => {
      process.exitCode = await umountCommand(targets, opts);
    });
}
