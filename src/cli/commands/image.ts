/**
 * `ovl image import|ls|rm|mount`, `ovl commit` and `ovl layer export`: images in ovl's snapshot store
 * (src/store, src/images). The store is `--store DIR`, else $OVL_STORE, else /var/lib/ovl for root and
 * $XDG_DATA_HOME/ovl (~/.local/share/ovl) for anyone else.
 */
import { join } from "node:path";
import { Option } from "commander";
import { type CommandFactory, collect } from "../command.js";
import { EXIT, reportError, UsageError } from "../errors.js";
import { formatTable, printable, style, writeJson } from "../output.js";
import { forEachName, storeOption } from "../store.js";
import type { ImageStore } from "../../images/images.js";
import { defaultStoreRoot } from "../../images/location.js";


async function withStore<T>(opts: { store?: string }, fn: (store: ImageStore & { close(): void }) => Promise<T>): Promise<T> {
  const { openStore } = await import("../../store/index.js");
  const store = (await openStore(opts.store ?? defaultStoreRoot(), { create: true })) as unknown as ImageStore & { close(): void };
  try {
    return await fn(store);
  } finally {
    store.close();
  }
}

/** A progress line on a terminal (rewritten in place), nothing when stderr is not one. */
export function progressLine(): { show(text: string): void; done(): void } {
  const tty = !!process.stderr.isTTY;
  let last = 0;
  let shown = false;
  return {
    show(text) {
      if (!tty) return;
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      shown = true;
      process.stderr.write(`\r\x1b[2K${text}`);
    },
    done() {
      if (shown) process.stderr.write("\r\x1b[2K");
    },
  };
}

const mb = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`);
const short = (d: string) => d.replace(/^sha256:/, "").slice(0, 12);


/** Registers `image`, `commit` and `layer` with `command(name)`, the CLI's factory for subcommands. */
export function addImageCommands(command: CommandFactory): void {
  const image = command("image").description("images in ovl's snapshot store: import, list, remove, mount");

  storeOption(
    image
      .command("import")
      .description("import an OCI image layout directory, an OCI archive (skopeo ... oci-archive:) or a Docker archive (docker save); digests are checked, layers shared by chain id")
      .argument("<source>", "directory or archive file")
      .argument("[name]", "the name to keep it under (default: the name the source gives)")
      .option("--pick <name>", "which image of a source that holds several"),
  ).action(async (source: string, name: string | undefined, opts: { store?: string; pick?: string }) => {
    try {
      const { importImage } = await import("../../images/images.js");
      const progress = progressLine();
      const r = await withStore(opts, (store) =>
        importImage(store, source, {
          ...(name !== undefined ? { name } : {}),
          ...(opts.pick !== undefined ? { pick: opts.pick } : {}),
          onProgress: (p) => progress.show(`ovl: image import: layer ${p.layer}/${p.layers}${p.reused ? " (in the store already)" : `: ${p.entries} entries, ${mb(p.bytes)}`}`),
        }),
      );
      progress.done();
      console.log(`${style("green", "imported")} ${printable(r.name)} ${short(r.manifestDigest)} (${r.chainIds.length} layers: ${r.applied} applied, ${r.reused} shared)`);
      process.exitCode = EXIT.OK;
    } catch (err) {
      process.exitCode = reportError("image import", err);
    }
  });

  storeOption(image.command("ls").description("list the images in the store").option("-J, --json", "JSON output for scripts")).action(
    async (opts: { store?: string; json?: boolean }) => {
      try {
        const rows = await withStore(opts, async (store) => {
          const images = await store.listImages();
          const out = [];
          for (const i of images) {
            let size = 0;
            for (const id of i.chainIds) size += (await store.usage(id)).size;
            out.push({ name: i.name, manifest: i.manifestDigest, config: i.configDigest, layers: i.chainIds.length, size });
          }
          return out;
        });
        if (opts.json) writeJson(rows);
        else if (rows.length > 0) {
          process.stdout.write(formatTable(["NAME", "ID", "LAYERS", "SIZE"], rows.map((r) => [printable(r.name), short(r.manifest), String(r.layers), mb(r.size)])));
        } else if (process.stdout.isTTY) console.error("ovl: image ls: no images in the store");
        process.exitCode = rows.length > 0 || opts.json ? EXIT.OK : EXIT.USAGE;
      } catch (err) {
        process.exitCode = reportError("image ls", err);
      }
    },
  );

  storeOption(image.command("rm").description("remove images, and their layers that nothing else uses").argument("<name...>")).action(
    async (names: string[], opts: { store?: string }) => {
      const { removeImage } = await import("../../images/images.js");
      let store: (ImageStore & { close(): void }) | undefined;
      process.exitCode = await forEachName("image rm", names, (fn) => withStore(opts, (s) => ((store = s), fn())), async (n) => {
        const removed = await removeImage(store!, n);
        console.log(`${style("red", "removed")} ${printable(n)} (${removed.length} layer${removed.length === 1 ? "" : "s"} freed)`);
      });
    },
  );

  storeOption(
    image
      .command("mount")
      .description("mount an image: its layers as lower layers, read-only, or writable with --upper and --work")
      .argument("<name>")
      .argument("<target>", "the mount point (an existing directory)")
      .option("--upper <dir>", "upper (writable) layer: the changes are kept there (ovl commit makes an image of them)")
      .option("--work <dir>", "work directory: empty, on the same mount as --upper"),
  ).action(async (name: string, target: string, opts: { store?: string; upper?: string; work?: string }) => {
    try {
      if ((opts.upper === undefined) !== (opts.work === undefined)) throw new UsageError("--upper and --work go together", "ovl image mount NAME TARGET [--upper DIR --work DIR]");
      const { imageLayers } = await import("../../images/images.js");
      const { mountOverlay } = await import("../../mounting/mount.js");
      const lower = await withStore(opts, async (store) => {
        const dirs = await imageLayers(store, name);
        // A read-only overlay needs two lower layers: a one-layer image gets the store's empty one under it.
        if (dirs.length === 1 && opts.upper === undefined) {
          const { mkdirSync } = await import("node:fs");
          const empty = join(store.root, "empty");
          mkdirSync(empty, { recursive: true, mode: 0o755 });
          dirs.push(empty);
        }
        return dirs;
      });
      const m = await mountOverlay({ lower, ...(opts.upper !== undefined ? { upper: opts.upper, work: opts.work! } : {}), target, source: `ovl:${name}`, refuseInUse: true });
      for (const w of m.warnings) console.error(`ovl: image mount ${printable(m.target)}: kernel: ${w}`);
      if (process.stdout.isTTY) console.log(`${style("green", "mounted")} ${printable(name)} on ${printable(m.target)} (${m.lower.length} layers${m.upper ? "" : ", read-only"})`);
      process.exitCode = EXIT.OK;
    } catch (err) {
      process.exitCode = reportError("image mount", err);
    }
  });

  storeOption(
    command("commit")
      .description("make a new image of a mounted overlay's changes: its upper layer, exported and stored as a layer on top of the image it was mounted from (ovl image mount --upper)")
      .argument("<target>", "the overlay's mount point")
      .argument("<name>", "the new image's name"),
  ).action(async (target: string, name: string, opts: { store?: string }) => {
    try {
      const { commitOverlay } = await import("../../images/commit.js");
      const r = await withStore(opts, (store) => commitOverlay(store, target, name));
      console.log(`${style("green", "committed")} ${printable(target)} as ${printable(name)} ${short(r.manifestDigest)} (layer ${short(r.diffId)}, ${mb(r.size)})`);
      process.exitCode = EXIT.OK;
    } catch (err) {
      process.exitCode = reportError("commit", err);
    }
  });

  const layer = command("layer").description("image layers as files");
  layer
    .command("export")
    .description("write an upper layer's changes (or a mounted overlay's) as an OCI layer tar: deterministic bytes, whiteouts as .wh. files")
    .argument("<upper>", "an upper directory, or the mount point of an overlay")
    .addOption(new Option("--lower <dir>", "lower layer under the upper, top-most first (repeatable): for renamed directories and metacopy files").argParser(collect))
    .requiredOption("-o, --output <file>", "the layer file to write ('-' for stdout)")
    .option("-z, --gzip", "compress with gzip")
    .option("-J, --json", "print the digests as JSON")
    .action(async (upper: string, opts: { lower?: string[]; output: string; gzip?: boolean; json?: boolean }) => {
      try {
        if (opts.output === "-" && process.stdout.isTTY) throw new UsageError("refusing to write a layer to a terminal", "give -o FILE, or pipe the output");
        const { exportLayerTo } = await import("../../layers/export.js");
        const r = await exportLayerTo(upper, opts.output === "-" ? process.stdout : opts.output, { ...(opts.lower ? { lower: opts.lower } : {}), ...(opts.gzip ? { gzip: true } : {}) });
        if (opts.json) writeJson(r, process.stderr);
        else if (opts.output !== "-") console.log(`${r.digest} ${mb(r.size)} (diff id ${r.diffId}, ${r.entries} entries)`);
        process.exitCode = EXIT.OK;
      } catch (err) {
        process.exitCode = reportError("layer export", err);
      }
    });
}
