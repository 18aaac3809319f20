/**
 * `ovl snapshotter`: the snapshots service on a unix socket, one instance per store. The store keeps all
 * state (containerd and this process may each restart); overlays ovl mounted itself outlive the process
 * and are found again.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname, join, resolve } from "node:path";
import { openStore } from "../store/store.js";
import { loadSqlite } from "../store/metadata.js";
import { loadGrpc } from "./grpc.js";
import { snapshotsService } from "./service.js";

export interface SnapshotterOptions {
  /** The unix socket to serve on (made; a stale one left by a killed instance is replaced). */
  address: string;
  /** The store (made if missing). */
  root: string;
  /** Failed calls, and what the service does on its own. */
  log?: (line: string) => void;
  /** `userxattr` on the overlays (a snapshotter in a user namespace); default: when not in the initial one. */
  userxattr?: boolean;
}

export interface Snapshotter {
  readonly address: string;
  readonly root: string;
  /**
   * Whether remapped snapshots (containerd's `remap-ids` capability, its uidmapping/gidmapping labels) work
   * here: idmapped layers probed on the store's filesystem at start.
   */
  readonly remapIds: { supported: true } | { supported: false; error: Error };
  /** Stops taking calls, lets those under way finish, closes the store, removes the socket. */
  close(): Promise<void>;
}

/**
 * The store's lock: an exclusive SQLite lock on `ROOT/snapshotter.lock`, held while the process lives and
 * let go by the kernel however it ends (no stale pid file to trust). Taken, it says who has it.
 */
function lockRoot(root: string): { release(): void } {
  const Database = loadSqlite();
  const file = join(root, "snapshotter.lock");
  const db = new Database(file, { timeout: 0 });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("CREATE TABLE IF NOT EXISTS holder (pid INTEGER)");
    db.exec("BEGIN EXCLUSIVE");
    db.exec(`DELETE FROM holder; INSERT INTO holder VALUES (${process.pid})`);
  } catch (e) {
    db.close();
    if ((e as { code?: string }).code !== "SQLITE_BUSY" && (e as { code?: string }).code !== "SQLITE_LOCKED") throw e;
    let who = "";
    try {
      who = ` (pid ${readFileSync(join(root, "snapshotter.pid"), "utf8").trim()})`;
    } catch {
      // not written yet
    }
    throw Object.assign(new Error(`another ovl snapshotter${who} already serves this store`), { code: "EBUSY", path: root });
  }
  writeFileSync(join(root, "snapshotter.pid"), `${process.pid}\n`);
  return {
    release() {
      try {
        unlinkSync(join(root, "snapshotter.pid"));
      } catch {
        // removed by hand
      }
      try {
        db.exec("ROLLBACK");
      } finally {
        db.close();
      }
    },
  };
}

/** Removes a socket file nobody listens on (a killed instance's); refuses one that answers. */
async function clearStaleSocket(address: string): Promise<void> {
  let st;
  try {
    st = lstatSync(address);
  } catch {
    return;
  }
  if (!st.isSocket()) throw Object.assign(new Error("is there and is not a socket"), { code: "EEXIST", path: address });
  const answers = await new Promise<boolean>((done) => {
    const c = connect(address);
    c.once("connect", () => {
      c.destroy();
      done(true);
    });
    c.once("error", () => done(false));
  });
  if (answers) throw Object.assign(new Error("another process serves on this socket"), { code: "EADDRINUSE", path: address });
  unlinkSync(address);
}

/** Whether this process is in a user namespace other than the initial one (a rootless snapshotter). */
function inUserNamespace(): boolean {
  try {
    return !/^\s*0\s+0\s+4294967295\s*$/.test(readFileSync("/proc/self/uid_map", "utf8"));
  } catch {
    return false;
  }
}

/** Serves the snapshots API of the store at `root` on `address` until close(). */
export async function serveSnapshotter(opts: SnapshotterOptions): Promise<Snapshotter> {
  const root = resolve(opts.root);
  const address = resolve(opts.address);
  const { grpc, service } = loadGrpc();
  const store = await openStore(root);
  let lock: { release(): void } | undefined;
  try {
    lock = lockRoot(root);
    mkdirSync(dirname(address), { recursive: true, mode: 0o755 });
    await clearStaleSocket(address);
    const { probeIdmap } = await import("../mounting/idmap-probe.js");
    const remapIds = await probeIdmap(root);
    const server = new grpc.Server({ "grpc.max_receive_message_length": 16 << 20 });
    server.addService(
      service,
      snapshotsService(store, join(root, "mounts"), {
        indexOff: existsSync("/sys/module/overlay/parameters/index"),
        userxattr: opts.userxattr ?? inUserNamespace(),
        idmapSupport: async () => remapIds,
        ...(opts.log ? { log: opts.log } : {}),
      }) as never,
    );
    await new Promise<void>((done, fail) =>
      server.bindAsync(`unix://${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? fail(Object.assign(err, { path: address })) : done())),
    );
    const held = lock;
    let closing: Promise<void> | undefined;
    return {
      address,
      root,
      remapIds,
      close() {
        closing ??= (async () => {
          // Calls under way may finish (a commit's usage walk, a big List); after 10 s they are cut off.
          await new Promise<void>((done) => {
            const force = setTimeout(() => server.forceShutdown(), 10_000);
            server.tryShutdown(() => {
              clearTimeout(force);
              done();
            });
          });
          store.close();
          held.release();
          try {
            unlinkSync(address);
          } catch {
            // gone already
          }
        })();
        return closing;
      },
    };
  } catch (e) {
    lock?.release();
    store.close();
    throw e;
  }
}
