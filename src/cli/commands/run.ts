/**
 * `ovl run`: a command inside a throwaway overlay, in private namespaces. The layers and options are read as
 * `ovl mount` reads them (mount-spec.ts); the run's code (src/sandbox/run.ts) loads when it runs.
 */
import { Option } from "commander";
import type { RunSpec } from "../../sandbox/run.js";
import { type CommandFactory, collect } from "../command.js";
import { reportError, UsageError } from "../errors.js";
import type { MountCliOptions } from "../mount-spec.js";
import { printable } from "../output.js";

/** Said after commander's `unknown option`: without `--`, the command's own options look like ovl's. */
const DASH_DASH_HINT = "ovl: hint: put -- before the command, so that its options are not taken for ovl's: ovl run --lower DIR ... -- COMMAND [ARGS...]\n";

/** `ovl mount`'s layer and option flags (read the same way), plus the run's own scratch space. */
interface RunCliOptions extends Omit<MountCliOptions, "type"> {
  tmp?: boolean;
  tmpfs?: string;
  image?: string;
  store?: string;
}

/**
 * The run's spec from its flags: the layers, `-o`, `-r` and `--data` read exactly as `ovl mount` reads
 * them (mountSpecFromCli), plus `--tmp` / `--tmpfs SIZE`.
 */
async function runSpecFromCli(opts: RunCliOptions, checkRunSpec: (spec: RunSpec) => void, command: string[]): Promise<{ spec: RunSpec; command: string[] }> {
  if (opts.image !== undefined) return imageRunSpec(opts, checkRunSpec, command);
  if (command.length === 0) throw new UsageError("no command to run", "ovl run --lower DIR ... -- COMMAND [ARGS...], or ovl run --image NAME [-- COMMAND]");
  const { mountSpecFromCli } = await import("../mount-spec.js");
  // The target is the run's own, chosen inside its namespace: none is given here.
  const { target: _target, ...spec } = mountSpecFromCli(undefined, "", {
    ...(opts.lower ? { lower: opts.lower } : {}),
    ...(opts.upper !== undefined ? { upper: opts.upper } : {}),
    ...(opts.work !== undefined ? { work: opts.work } : {}),
    ...(opts.data ? { data: opts.data } : {}),
    ...(opts.readOnly ? { readOnly: true } : {}),
    ...(opts.options ? { options: opts.options } : {}),
    ...(opts.idmap !== undefined ? { idmap: opts.idmap } : {}),
  });
  void _target;
  if (spec.idmap && "usernsPath" in spec.idmap) throw runIdmapPathError();
  const run: RunSpec = {
    ...spec,
    ...(opts.tmp || opts.tmpfs !== undefined ? { tmp: true } : {}),
    ...(opts.tmpfs !== undefined ? { tmpfsSize: opts.tmpfs } : {}),
  };
  checkRunSpec(run);
  return { spec: run, command };
}

/** The run mounts inside its own pid namespace, whose /proc has none of the host's processes. */
const runIdmapPathError = () =>
  new UsageError(
    "ovl run --idmap takes maps, not a user namespace file: the run mounts inside its own pid namespace, where /proc/PID of a host process does not exist",
    "ovl run --idmap 0:100000:65536 (or 'u:... g:...'); for an existing user namespace, ovl mount --idmap /proc/PID/ns/user",
  );

/** `--image NAME`: its layers as the lower ones, a throwaway upper (unless --upper), its config's command. */
async function imageRunSpec(opts: RunCliOptions, checkRunSpec: (spec: RunSpec) => void, command: string[]): Promise<{ spec: RunSpec; command: string[] }> {
  if (opts.lower || opts.data || opts.options) throw new UsageError("--image gives the layers: --lower, --data and -o cannot be added", "ovl run --image NAME [--upper DIR --work DIR] [-- COMMAND]");
  const { openStore } = await import("../../store/index.js");
  const { imageLayers, getImage, runDefaults } = await import("../../images/images.js");
  const { defaultStoreRoot } = await import("../../images/location.js");
  const store = await openStore(opts.store ?? defaultStoreRoot());
  try {
    const image = await getImage(store as never, opts.image!);
    const lower = await imageLayers(store as never, opts.image!);
    const defaults = runDefaults(image.config);
    const cmd = command.length > 0 ? command : defaults.command;
    if (cmd.length === 0) throw new UsageError(`image '${opts.image}' names no command (Entrypoint/Cmd): give one`, `ovl run --image ${opts.image} -- COMMAND`);
    const writable = opts.upper !== undefined || opts.work !== undefined;
    const { idmapFromCli } = await import("../mount-spec.js");
    const idmap = opts.idmap !== undefined ? idmapFromCli(opts.idmap) : undefined;
    if (idmap && "usernsPath" in idmap) throw runIdmapPathError();
    const spec: RunSpec = {
      lower,
      ...(opts.upper !== undefined ? { upper: opts.upper } : {}),
      ...(opts.work !== undefined ? { work: opts.work } : {}),
      ...(opts.readOnly ? { readOnly: true } : {}),
      ...(idmap ? { idmap } : {}),
      ...(!writable ? { tmp: true } : {}),
      ...(opts.tmpfs !== undefined ? { tmpfsSize: opts.tmpfs } : {}),
      rootfs: { env: defaults.env, workingDir: defaults.workingDir },
    };
    checkRunSpec(spec);
    return { spec, command: cmd };
  } finally {
    store.close();
  }
}

/** Registers `run` with `command(name)`, the CLI's factory for subcommands (error format and help hint). */
export function addRunCommand(command: CommandFactory): void {
  const run = command("run");
  const { outputError } = run.configureOutput();
  run.configureOutput({
    outputError: (str, write) => {
      outputError!(str, write);
      if (str.includes("unknown option")) write(DASH_DASH_HINT);
    },
  });
  run
    .description(
      "run a command inside a throwaway overlay, in private namespaces (rootless when not root); it and all it " +
        "started end with ovl, and nothing of the run is left",
    )
    .usage("--lower DIR [--lower DIR ...] [--upper DIR --work DIR | --tmp | --tmpfs SIZE] [-o OPTS] -- COMMAND [ARGS...]")
    .addOption(new Option("--lower <dir>", "lower layer, top-most first (repeat for more)").argParser(collect))
    .option("--upper <dir>", "upper (writable) layer: the changes are kept there")
    .option("--work <dir>", "work directory: empty, on the same mount as --upper")
    .addOption(new Option("--data <dir>", "data-only lower layer (repeatable), as on ovl mount").argParser(collect))
    .option("-r, --read-only", "mount read-only")
    .addOption(new Option("-o, --options <list>", "mount(8) options, as on ovl mount (lowerdir=, upperdir=, overlay features, flags, X-mount.idmap=)").argParser(collect))
    .option("--idmap <map>", "idmap the lower layers, as on ovl mount: inside:outside:count (0:100000:65536) or 'u:... g:...' entries")
    .option("--tmp", "upper and work on a tmpfs that ends with the run: the changes are thrown away")
    .option("--tmpfs <size>", "--tmp, with a tmpfs of at most SIZE (bytes, or with k, m, g: 64m; or a share of RAM: 10%)")
    .option("--image <name>", "an image of the store (ovl image import) as the layers and the root directory; its Entrypoint/Cmd, Env and WorkingDir when no command is given; a throwaway upper unless --upper")
    .option("--store <dir>", "the snapshot store, for --image (default as ovl image)")
    .argument("[command...]", "the command and its arguments (after --)")
    .action(async (command: string[], opts: RunCliOptions) => {
      // Loaded when the command runs, as every command's own work (ovl ls does not load the mount code).
      const { checkRunSpec, CommandNotStartedError, RUN_NAMESPACE_ENV, reexecInNamespace, runInOverlay } = await import("../../sandbox/run.js");
      try {
        const { spec, command: toRun } = await runSpecFromCli(opts, checkRunSpec, command);
        if (!process.env[RUN_NAMESPACE_ENV]) {
          // Re-run this same command line inside fresh namespaces; the inner run does the work.
          process.exitCode = await reexecInNamespace([process.execPath, ...process.execArgv, ...process.argv.slice(1)]);
          return;
        }
        process.exitCode = await runInOverlay(spec, toRun);
      } catch (err) {
        if (err instanceof CommandNotStartedError) {
          // As a shell says it, and with its exit status: 127 not found, 126 not executable.
          console.error(`ovl: run ${printable(err.command)}: ${err.message}${err.code === "EACCES" ? " (EACCES)" : ""}`);
          process.exitCode = err.status;
          return;
        }
        process.exitCode = reportError("run", err);
      }
    });
}
