/** What the commands on ovl's snapshot store share: the --store option, and removing several things by name. */
import type { Command } from "commander";
import { EXIT, reportError } from "./errors.js";

export function storeOption(cmd: Command, flag = "--store"): Command {
  return cmd.option(`${flag} <dir>`, "the snapshot store (default $OVL_STORE, /var/lib/ovl as root, else ~/.local/share/ovl)");
}

/**
 * Runs `each` for every name inside `open` (which opens the store around it), reporting each failure as
 * `command`'s; the exit code is 0 when all went, 1 when none did, 64 when some did (util-linux's rule).
 */
export async function forEachName(
  command: string,
  names: string[],
  open: (fn: () => Promise<void>) => Promise<void>,
  each: (name: string) => Promise<void>,
): Promise<number> {
  let failed = 0;
  await open(async () => {
    for (const n of names) {
      try {
        await each(n);
      } catch (err) {
        failed++;
        reportError(command, err);
      }
    }
  }).catch((err) => {
    failed = names.length;
    reportError(command, err);
  });
  return failed === 0 ? EXIT.OK : failed === names.length ? EXIT.USAGE : EXIT.SOME_FAILED;
}
