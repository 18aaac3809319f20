/**
 * `ovl snapshotter`: ovl's store as a containerd proxy snapshotter (src/snapshotter), in the foreground
 * until SIGTERM or SIGINT; and `ovl snapshot ls|info|usage|rm`: the store's snapshots as ovl sees them, to
 * set beside `ctr snapshots --snapshotter ovl ...`.
 */
import type { CommandFactory } from "../command.js";
import { EXIT, reportError } from "../errors.js";
import { formatTable, printable, writeJson } from "../output.js";
import { forEachName, storeOption } from "../store.js";
import { defaultStoreRoot } from "../../images/location.js";
import type { SnapshotInfo, Store } from "../../store/store.js";


async function withStore<T>(opts: { store?: string }, fn: (store: Store) => Promise<T>): Promise<T> {
  const { openStore } = await import("../../store/store.js");
  const store = await openStore(opts.store ?? defaultStoreRoot(), { create: false });
  try {
    return await fn(store);
  } finally {
    store.close();
  }
}

const asJson = (i: SnapshotInfo) => ({ key: i.key, ...(i.parent !== undefined ? { parent: i.parent } : {}), kind: i.kind, labels: i.labels, created: i.created.toISOString(), updated: i.updated.toISOString() });

/** Registers `snapshotter` (the service) and `snapshot` (the store's snapshots). */
export function addSnapshotterCommands(command: CommandFactory): void {
  storeOption(command("snapshotter"), "--root")
    .description("serve the store to containerd as a proxy snapshotter (its snapshots gRPC API) until SIGTERM")
    .requiredOption("--address <socket>", "the unix socket to serve on (containerd's proxy_plugins address)")
    .action(async (opts: { address: string; root?: string }) => {
      try {
        const { serveSnapshotter } = await import("../../snapshotter/server.js");
        const s = await serveSnapshotter({
          address: opts.address,
          root: opts.root ?? defaultStoreRoot(),
          log: (line) => console.error(`ovl: snapshotter: ${printable(line, { keepNewlines: false })}`),
        });
        console.error(
          s.remapIds.supported
            ? "ovl: snapshotter: idmapped layers work here: remapped snapshots (containerd's capabilities = [\"remap-ids\"]) are served"
            : `ovl: snapshotter: no remapped snapshots here (idmapped layers refused: ${printable(s.remapIds.error.message, { keepNewlines: false })})`,
        );
        console.error(`ovl: snapshotter: serving on ${s.address}`);
        await new Promise<void>((done) => {
          const stop = (sig: NodeJS.Signals) => {
            console.error(`ovl: snapshotter: ${sig}: stopping`);
            for (const x of ["SIGTERM", "SIGINT"] as const) process.off(x, stop);
            done();
          };
          for (const x of ["SIGTERM", "SIGINT"] as const) process.on(x, stop);
        });
        await s.close();
        process.exitCode = EXIT.OK;
      } catch (err) {
        process.exitCode = reportError("snapshotter", err);
      }
    });

  const snapshot = command("snapshot").description("the snapshots in ovl's store (what ovl snapshotter serves containerd)");
  storeOption(
    snapshot
      .command("ls")
      .description("list the snapshots")
      .option("-f, --filter <filter...>", "containerd's filter syntax (kind==committed, labels.\"containerd.io/gc.root\")")
      .option("-J, --json", "JSON output for scripts"),
  ).action(async (opts: { store?: string; filter?: string[]; json?: boolean }) => {
    try {
      const infos = await withStore(opts, (s) => s.list(opts.filter));
      if (opts.json) writeJson(infos.map(asJson));
      else if (infos.length > 0) {
        process.stdout.write(formatTable(["KEY", "PARENT", "KIND"], infos.map((i) => [printable(i.key), printable(i.parent ?? ""), i.kind])));
      }
      process.exitCode = infos.length > 0 || opts.json ? EXIT.OK : EXIT.USAGE;
    } catch (err) {
      process.exitCode = reportError("snapshot ls", err);
    }
  });
  storeOption(snapshot.command("info").description("one snapshot's facts and labels").argument("<key>").option("-J, --json", "JSON output")).action(
    async (key: string, opts: { store?: string; json?: boolean }) => {
      try {
        const i = asJson(await withStore(opts, (s) => s.stat(key)));
        if (opts.json) writeJson(i);
        else {
          const rows: string[][] = [["key", printable(i.key)], ["parent", printable(i.parent ?? "")], ["kind", i.kind], ["created", i.created], ["updated", i.updated]];
          for (const [k, v] of Object.entries(i.labels)) rows.push([`label ${printable(k)}`, printable(v)]);
          for (const [k, v] of rows) console.log(`${k}: ${v}`);
        }
        process.exitCode = EXIT.OK;
      } catch (err) {
        process.exitCode = reportError("snapshot info", err);
      }
    },
  );
  storeOption(snapshot.command("usage").description("bytes and inodes of snapshots' own layers (all without keys)").argument("[key...]").option("-J, --json", "JSON output")).action(
    async (keys: string[], opts: { store?: string; json?: boolean }) => {
      try {
        const rows = await withStore(opts, async (s) => {
          const ks = keys.length > 0 ? keys : (await s.list()).map((i) => i.key);
          const out: { key: string; size: number; inodes: number }[] = [];
          for (const k of ks) out.push({ key: k, ...(await s.usage(k)) });
          return out;
        });
        if (opts.json) writeJson(keys.length === 1 ? { size: rows[0]!.size, inodes: rows[0]!.inodes } : rows);
        else process.stdout.write(formatTable(["KEY", "SIZE", "INODES"], rows.map((r) => [printable(r.key), String(r.size), String(r.inodes)])));
        process.exitCode = EXIT.OK;
      } catch (err) {
        process.exitCode = reportError("snapshot usage", err);
      }
    },
  );
  storeOption(snapshot.command("rm").description("remove snapshots (without children)").argument("<key...>")).action(async (keys: string[], opts: { store?: string }) => {
    let store: Store | undefined;
    process.exitCode = await forEachName("snapshot rm", keys, (fn) => withStore(opts, (s) => ((store = s), fn())), (k) => store!.remove(k));
  });
}
