/**
 * containerd's snapshots API on ovl's store: each call one store operation (one transaction), its errors as
 * the gRPC codes containerd branches on (errdefs: NotFound, AlreadyExists, FailedPrecondition,
 * InvalidArgument). Overlays containerd could not mount itself are mounted here, by fd, under
 * `ROOT/mounts/`, and containerd gets a bind of them (src/snapshotter/mounts.ts decides which).
 */
import { createHash } from "node:crypto";
import { chownSync, existsSync, mkdirSync, readdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import type * as GrpcJs from "@grpc/grpc-js";
import type { IdMapping, IdMaps } from "../mounting/idmap.js";
import type { SnapshotInfo, SnapshotMounts, Store } from "../store/store.js";
import { bindOf, type ContainerdMount, planMounts } from "./mounts.js";

/** gRPC status codes (grpc-js's `status`), by number: this module does not load grpc-js. */
export const CODE = {
  OK: 0,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
} as const;

/** The gRPC code of an error from the store or from ovl's argument checks. */
export function codeOf(err: unknown): number {
  const code = (err as { code?: unknown })?.code;
  switch (code) {
    case "ERR_OVL_STORE_NOT_FOUND":
      return CODE.NOT_FOUND;
    case "ERR_OVL_STORE_EXISTS":
      return CODE.ALREADY_EXISTS;
    case "ERR_OVL_STORE_IN_USE": // children, as containerd's "cannot remove snapshot with child"
    case "ERR_OVL_STORE_KIND": // commit of a view, a parent not committed, a committed one mounted
    case "ERR_OVL_STORE_DEPTH": // past the kernel's 500 layers
      return CODE.FAILED_PRECONDITION;
    case "ERR_OVL_STORE_CORRUPT":
      return CODE.DATA_LOSS;
    case "ERR_OVL_STORE_CLOSED":
      return CODE.UNAVAILABLE;
    case "ERR_INVALID_ARG_TYPE":
    case "ERR_INVALID_ARG_VALUE":
      return CODE.INVALID_ARGUMENT;
    default:
      return CODE.UNKNOWN;
  }
}

type Labels = Record<string, string>;
interface Timestamp {
  seconds: number;
  nanos: number;
}
/** Info as the proto has it (field names as on the wire; enums as their names). */
export interface WireInfo {
  name: string;
  parent: string;
  kind: "UNKNOWN" | "VIEW" | "ACTIVE" | "COMMITTED";
  created_at: Timestamp | null;
  updated_at: Timestamp | null;
  labels: Labels;
}

const KIND = { active: "ACTIVE", view: "VIEW", committed: "COMMITTED" } as const;

function timestamp(d: Date): Timestamp {
  const ms = d.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

export function wireInfo(i: SnapshotInfo): WireInfo {
  return { name: i.key, parent: i.parent ?? "", kind: KIND[i.kind], created_at: timestamp(i.created), updated_at: timestamp(i.updated), labels: i.labels };
}

/** containerd's labels asking for a remapped snapshot (its `remap-ids` capability): `CTR:HOST:LEN[,...]`. */
export const UID_MAPPING_LABEL = "containerd.io/snapshot/uidmapping";
export const GID_MAPPING_LABEL = "containerd.io/snapshot/gidmapping";

function invalid(message: string): TypeError {
  return Object.assign(new TypeError(message), { code: "ERR_INVALID_ARG_VALUE" });
}

function parseMapping(label: string, value: string): IdMapping[] {
  return value.split(",").map((part) => {
    const m = /^\s*(\d+):(\d+):(\d+)\s*$/.exec(part);
    if (!m || Number(m[3]) === 0) throw invalid(`label ${label}=${JSON.stringify(value)}: each range must be CONTAINER:HOST:LENGTH with a length above 0`);
    return [Number(m[1]), Number(m[2]), Number(m[3])] as IdMapping;
  });
}

/** The id maps containerd's remapping labels ask for, if any (both labels, or neither). */
export function idmapOfLabels(labels: Labels): IdMaps | undefined {
  const uid = labels[UID_MAPPING_LABEL];
  const gid = labels[GID_MAPPING_LABEL];
  if (uid === undefined && gid === undefined) return undefined;
  if (uid === undefined || gid === undefined) throw invalid(`labels ${UID_MAPPING_LABEL} and ${GID_MAPPING_LABEL} go together; only one was given`);
  return { uidMap: parseMapping(UID_MAPPING_LABEL, uid), gidMap: parseMapping(GID_MAPPING_LABEL, gid) };
}

/** The host id that id 0 of the container maps to, if it is mapped. */
function hostRoot(map: IdMapping[]): number | undefined {
  const r = map.find(([inside, , count]) => inside === 0 && count > 0);
  return r?.[1];
}

/** An empty `parent` on the wire is none. */
const parentOf = (p: string | undefined) => (p === undefined || p === "" ? undefined : p);

/** How many Info a List reply carries at most (containerd's own server sends them 100 at a time). */
const LIST_BATCH = 100;

export interface SnapshotServiceOptions {
  /** `index=off` in the overlays containerd mounts (as its overlay snapshotter, where the kernel has it). */
  indexOff?: boolean;
  /** `userxattr` in them (a snapshotter in a user namespace). */
  userxattr?: boolean;
  /** Failures that are not containerd's everyday NotFound / AlreadyExists, for the log. */
  log?: (line: string) => void;
  /**
   * Whether idmapped layers work on this store (src/mounting/idmap-probe.ts), asked once on the first
   * remapped snapshot; a refusal is that snapshot's FailedPrecondition, naming the reason.
   */
  idmapSupport?: () => Promise<{ supported: true } | { supported: false; error: Error }>;
}

/**
 * The overlays ovl mounted itself, one per snapshot at `ROOT/mounts/<hash of the key>`: made on the first
 * Mounts/Prepare/View that needs one, found again after a restart (the mount outlives the process), taken
 * down before the snapshot is committed or removed. One operation at a time per key.
 */
class SelfMounts {
  private readonly busy = new Map<string, Promise<unknown>>();
  constructor(private readonly dir: string) {}

  pathOf(key: string): string {
    return join(this.dir, createHash("sha256").update(key).digest("hex").slice(0, 32));
  }

  private serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.busy.get(key) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const settled = run.catch(() => undefined);
    this.busy.set(key, settled);
    void settled.then(() => {
      if (this.busy.get(key) === settled) this.busy.delete(key);
    });
    return run;
  }

  private static async mountedAt(dir: string): Promise<boolean> {
    const { list } = await import("../table/table.js");
    return (await list({ target: dir })).some((m) => m.target === dir);
  }

  /** The mount point of `key`'s overlay, mounted now if it is not already. */
  ensure(key: string, spec: SnapshotMounts, readonly: boolean): Promise<string> {
    return this.serial(key, async () => {
      const dir = this.pathOf(key);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (await SelfMounts.mountedAt(dir)) return dir;
      const { mountOverlay } = await import("../mounting/mount.js");
      await mountOverlay({
        lower: spec.lower,
        ...(spec.upper !== undefined ? { upper: spec.upper, work: spec.work! } : {}),
        ...(spec.idmap !== undefined ? { idmap: spec.idmap } : {}),
        target: dir,
        options: { index: false },
        ...(readonly ? { flags: { readonly: true } } : {}),
      });
      return dir;
    });
  }

  /** Unmounts `key`'s overlay if ovl mounted one (detached if containerd still has it busy), and its directory. */
  release(key: string): Promise<void> {
    return this.serial(key, async () => {
      const dir = this.pathOf(key);
      if (existsSync(dir)) await SelfMounts.takeDown(dir);
    });
  }

  /** Unmounts whatever ovl mounted at `dir` (detached, if containerd still has it busy), then removes it. */
  private static async takeDown(dir: string): Promise<void> {
    const { umount } = await import("../mounting/mount.js");
    while (await SelfMounts.mountedAt(dir)) await umount(dir, { lazy: true });
    rmdirSync(dir);
  }

  /** Releases every mount whose snapshot is gone (`keep` says which hashes still have one). */
  async sweep(keep: Set<string>): Promise<string[]> {
    if (!existsSync(this.dir)) return [];
    const removed: string[] = [];
    for (const name of readdirSync(this.dir)) {
      if (keep.has(name)) continue;
      await SelfMounts.takeDown(join(this.dir, name));
      removed.push(name);
    }
    return removed;
  }
}

type Handler = (call: { request: any }, callback: (err: Partial<GrpcJs.StatusObject> | null, reply?: unknown) => void) => void;

/** The handlers of the Snapshots service, on `store`; `mountsDir` is where ovl mounts what containerd cannot. */
export function snapshotsService(store: Store, mountsDir: string, opts: SnapshotServiceOptions = {}): Record<string, Handler | ((call: any) => void)> {
  const empty = join(store.root, "empty");
  const self = new SelfMounts(mountsDir);

  let idmapChecked: Promise<void> | undefined;
  /** Refuses remapped snapshots where the kernel or the filesystem cannot idmap (probed once). */
  function needIdmap(): Promise<void> {
    idmapChecked ??= (async () => {
      const r = opts.idmapSupport ? await opts.idmapSupport() : { supported: true as const };
      if (!r.supported) {
        throw Object.assign(new Error(`remapped snapshots need idmapped layers, which this store cannot have: ${r.error.message}`), { code: "ERR_OVL_STORE_KIND" });
      }
    })();
    return idmapChecked;
  }

  /** The wire mounts of a snapshot, given the store's spec of it and its labels (remapping). */
  async function mountsFor(key: string, base: SnapshotMounts, labels: Labels): Promise<ContainerdMount[]> {
    const idmap = idmapOfLabels(labels);
    if (idmap) await needIdmap();
    const spec = idmap ? { ...base, idmap } : base;
    const plan = planMounts(spec, { empty, indexOff: opts.indexOff ?? false, userxattr: opts.userxattr ?? false, idmapped: idmap !== undefined });
    if (plan.kind === "plain") return plan.mounts;
    return bindOf(await self.ensure(key, plan.spec, plan.readonly), plan.readonly);
  }

  const unary =
    (name: string, fn: (req: any) => Promise<unknown>): Handler =>
    (call, callback) => {
      fn(call.request).then(
        (reply) => callback(null, reply),
        (err: unknown) => {
          const code = codeOf(err);
          const message = err instanceof Error ? err.message : String(err);
          if (code !== CODE.NOT_FOUND && code !== CODE.ALREADY_EXISTS) opts.log?.(`${name} ${JSON.stringify(call.request?.key ?? call.request?.name ?? "")}: ${message}`);
          callback({ code, details: message });
        },
      );
    };

  const create = (kind: "prepare" | "view") => async (req: { key: string; parent: string; labels: Labels }) => {
    const idmap = idmapOfLabels(req.labels); // a bad label is refused before anything is made
    if (idmap) await needIdmap();
    const spec = await store[kind](req.key, parentOf(req.parent), { labels: req.labels });
    try {
      if (idmap && spec.upper !== undefined) {
        // As containerd's own remapping: the new upper's root belongs to the container's root on the host, so
        // the merged root shows as the container's own (the layers below show their owners through the map).
        const uid = hostRoot(idmap.uidMap);
        const gid = hostRoot(idmap.gidMap ?? idmap.uidMap);
        if (uid !== undefined && gid !== undefined) chownSync(spec.upper, uid, gid);
      }
      return { mounts: await mountsFor(req.key, spec, req.labels) };
    } catch (e) {
      // Nothing half-made: a snapshot containerd was not given mounts for is not kept.
      await store.remove(req.key).catch(() => undefined);
      throw e;
    }
  };

  return {
    Prepare: unary("Prepare", create("prepare")),
    View: unary("View", create("view")),
    Mounts: unary("Mounts", async (req: { key: string }) => {
      const spec = await store.mounts(req.key);
      return { mounts: await mountsFor(req.key, spec, (await store.stat(req.key)).labels) };
    }),
    Commit: unary("Commit", async (req: { name: string; key: string; labels: Labels }) => {
      // An overlay ovl mounted has the upper in use: it goes first (the layer must not change once committed).
      await self.release(req.key);
      await store.commit(req.name, req.key, { labels: req.labels });
      return {};
    }),
    Remove: unary("Remove", async (req: { key: string }) => {
      await store.stat(req.key); // NotFound before anything is unmounted
      await self.release(req.key);
      await store.remove(req.key);
      return {};
    }),
    Stat: unary("Stat", async (req: { key: string }) => ({ info: wireInfo(await store.stat(req.key)) })),
    Update: unary("Update", async (req: { info: WireInfo | null; update_mask: { paths: string[] } | null }) => {
      if (!req.info) throw Object.assign(new TypeError("Update needs info"), { code: "ERR_INVALID_ARG_VALUE" });
      const paths = req.update_mask?.paths ?? [];
      const bad = paths.find((p) => p !== "labels" && !p.startsWith("labels."));
      if (bad !== undefined) {
        throw Object.assign(new TypeError(`cannot update ${JSON.stringify(bad)} of snapshot ${JSON.stringify(req.info.name)}: only its labels change`), { code: "ERR_INVALID_ARG_VALUE" });
      }
      const info = await store.update({ key: req.info.name, labels: req.info.labels }, paths.length > 0 ? paths : undefined);
      return { info: wireInfo(info) };
    }),
    List: (call: GrpcJs.ServerWritableStream<{ filters: string[] }, unknown>) => {
      store.list(call.request.filters.length > 0 ? call.request.filters : undefined).then(
        (infos) => {
          for (let i = 0; i < infos.length; i += LIST_BATCH) call.write({ info: infos.slice(i, i + LIST_BATCH).map(wireInfo) });
          call.end();
        },
        // grpc-js ends a server stream with the status of an 'error' it emits.
        (err: unknown) => call.emit("error", { code: codeOf(err), details: err instanceof Error ? err.message : String(err) }),
      );
    },
    Usage: unary("Usage", async (req: { key: string }) => store.usage(req.key)),
    Cleanup: unary("Cleanup", async () => {
      const keep = new Set((await store.list()).filter((i) => i.kind !== "committed").map((i) => self.pathOf(i.key).slice(mountsDir.length + 1)));
      await self.sweep(keep);
      await store.cleanup();
      return {};
    }),
  };
}
