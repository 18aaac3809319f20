/** `ovl fuser`: the processes that keep a mount busy, and how (cwd, root, executable, open files, maps), like fuser -vm. */
import type { CommandFactory } from "../command.js";
import { EXIT } from "../errors.js";
import { formatTable, printable, writeJson } from "../output.js";

async function fuserCommand(target: string, opts: { json?: boolean }): Promise<number> {
  const { holdersOtherThanOvl, uninspectedNote, userName } = await import("../holders.js"); // loaded when the command runs
  const holders = await holdersOtherThanOvl(target);
  if (opts.json) {
    writeJson(holders);
  } else if (holders.length > 0) {
    const rows: string[][] = [];
    for (const h of holders) {
      h.files.forEach((f, i) => {
        const use = f.use === "open" ? `open (fd ${f.fd})` : f.use;
        rows.push(i === 0 ? [String(h.pid), userName(h.uid), printable(h.command), use, printable(f.path)] : ["", "", "", use, printable(f.path)]);
      });
    }
    process.stdout.write(formatTable(["PID", "USER", "COMMAND", "USE", "PATH"], rows));
  }
  if (holders.length === 0) {
    console.error(`ovl: fuser ${printable(holders.mount.target)}: no process holds this mount${uninspectedNote(holders.uninspected)}`);
  } else if (holders.uninspected.length > 0) {
    console.error(`ovl: fuser ${printable(holders.mount.target)}: not complete${uninspectedNote(holders.uninspected)}`);
  }
  // As fuser(1): non-zero when nothing holds it.
  return holders.length > 0 ? EXIT.OK : EXIT.USAGE;
}

/** Registers `fuser` with `command(name)`, the CLI's factory for subcommands. */
export function addFuserCommand(command: CommandFactory): void {
  command("fuser")
    .description("show the processes that keep a mount busy (like fuser -vm): cwd, root, executable, open files, memory maps")
    .argument("<target>", "a mount point, or any path on the mount")
    .option("-J, --json", "JSON output for scripts")
    .action(async (target: string, opts: { json?: boolean }) => {
      process.exitCode = await fuserCommand(target, opts);
    });
}
