/** `ovl mount`: mounts one overlay, from ovl's layer flags or mount(8)'s `-o lowerdir=...` form. */
import { Option } from "commander";
import { type CommandFactory, collect } from "../command.js";
import { EXIT, UsageError } from "../errors.js";
import type { MountCliOptions } from "../mount-spec.js";
import { printable, style } from "../output.js";

async function mountCommand(args: string[], opts: MountCliOptions): Promise<number> {
  // mount(8)'s `mount -t overlay SOURCE TARGET` form: with two arguments the first is the source.
  if (args.length > 2) throw new UsageError(`too many arguments: ${args.map((a) => `'${a}'`).join(" ")}`, "ovl mount [options] [SOURCE] TARGET");
  const [source, target] = args.length === 2 ? [args[0], args[1]!] : [undefined, args[0]!];
  // A command line refuses an upper/work directory in use by another overlay up front (the library's opt-in).
  const { mountOverlay } = await import("../../mounting/mount.js"); // loaded when the command runs, as every command's own work
  const { mountSpecFromCli } = await import("../mount-spec.js");
  const m = await mountOverlay({ ...mountSpecFromCli(source, target, opts), refuseInUse: true });
  // What the kernel said of a mount that succeeded (a fallback, a layer feature): diagnostics, on stderr.
  for (const w of m.warnings) console.error(`ovl: mount ${printable(m.target)}: kernel: ${w.replace(/^overlay(fs)?: /, "")}`);
  if (process.stdout.isTTY) {
    const layers = `${m.lower.length} lower layer${m.lower.length === 1 ? "" : "s"}`;
    console.log(`${style("green", "mounted")} overlay on ${printable(m.target)} (${layers}${m.upper ? `, upper ${printable(m.upper)}` : ", read-only"})`);
  }
  return EXIT.OK;
}

/** Registers `mount` with `command(name)`, the CLI's factory for subcommands. */
export function addMountCommand(command: CommandFactory): void {
  command("mount")
    .description("mount an overlay")
    .usage("[options] [SOURCE] TARGET")
    .argument("<target...>", "the mount point (an existing directory); with two arguments, as mount(8): SOURCE TARGET, SOURCE naming the mount (default 'overlay')")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--upper <dir>", "upper (writable) layer")
    .option("--work <dir>", "work directory: empty, on the same mount as --upper")
    .addOption(new Option("--data <dir>", "data-only lower layer (repeatable)").argParser(collect))
    .option("-r, --read-only", "mount read-only")
    .option(
      "--idmap <map>",
      "idmap the lower layers (detached, never attached), as mount(8)'s X-mount.idmap: inside:outside:count for uids and gids " +
        "(0:100000:65536), 'u:... g:...' entries, or a user namespace file (/proc/PID/ns/user)",
    )
    .addOption(
      new Option(
        "-o, --options <list>",
        "mount(8) options: lowerdir=A:B,upperdir=U,workdir=W, overlay features (redirect_dir=, index=, xino=, " +
          "metacopy=, volatile, userxattr, uuid=, verity=, nfs_export=, default_permissions), flags (ro, nosuid, " +
          "nodev, noexec, noatime, ...) and X-mount.idmap= (as --idmap); `\\` escapes `:` `,` `\\` in paths",
      ).argParser(collect),
    )
    .addOption(new Option("-t, --types <type>", "filesystem type, as mount(8); only 'overlay'").hideHelp())
    .action(async (args: string[], opts: MountCliOptions & { types?: string }) => {
      process.exitCode = await mountCommand(args, { ...opts, ...(opts.types !== undefined ? { type: opts.types } : {}) });
    });
}
