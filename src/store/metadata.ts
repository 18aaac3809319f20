/**
 * The snapshot store's metadata: one SQLite database (`root/metadata.db`), shared by every process that opens
 * the store. This layer knows rows, not directories (containerd's `snapshots/storage` beside its
 * `snapshots/overlay`): src/store/store.ts does the filesystem work, inside the transactions this file opens.
 *
 * Every public store operation is **one** transaction: `read()` (a deferred transaction: a consistent
 * snapshot of the database, never blocked by writers in WAL mode) or `write()` (`BEGIN IMMEDIATE`: takes
 * the database's single write lock at once, so a transaction never starts as a reader and then fails to
 * upgrade with SQLITE_BUSY half-way). Another process sees all of an operation or none of it.
 *
 * Settings, and why:
 * - `journal_mode=WAL`: readers and the one writer do not block each other; a writer killed mid-transaction
 *   leaves frames without a commit record in the WAL, which the next opener ignores (rolls back).
 * - `synchronous=FULL`: every COMMIT fsyncs the WAL before it returns. With NORMAL a commit survives the
 *   process being killed but not a power cut, and the store then acts on a commit that may be undone: remove
 *   deletes the directory right after its COMMIT, so a lost COMMIT would leave a row whose directory is gone.
 *   An fsync per operation is cheap beside the filesystem work a snapshot operation does.
 * - `busy_timeout` (default 30 s): a writer waits for the lock instead of failing; the store's write
 *   transactions hold it for a few renames and an fsync, never for a directory walk. SQLITE_BUSY that
 *   SQLite returns without waiting (recovery of a crashed writer's WAL, say) is retried by `retryBusy()`.
 * - `foreign_keys=ON`: a parent row cannot be deleted while a child points at it, whatever the code does.
 * - Ids are `INTEGER PRIMARY KEY AUTOINCREMENT`: a committed id is never handed out again, so a directory
 *   left behind by a removal can never be taken for a newer snapshot's. (An insert that was rolled back
 *   does give its id out again; store.ts moves such an orphan directory aside, under the write lock.)
 */
import { createRequire } from "node:module";
import type Database from "better-sqlite3";

/**
 * better-sqlite3, loaded on the first openStore() rather than on `import "ovl"`: the rest of ovl does not
 * pay for (or depend on a working build of) SQLite's addon.
 */
let sqlite: typeof Database | undefined;
export function loadSqlite(): typeof Database {
  try {
    sqlite ??= createRequire(import.meta.url)("better-sqlite3") as typeof Database;
  } catch (e) {
    // An optional peer dependency: mounting, layers and the rest of ovl work without it.
    if ((e as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND") throw e;
    throw Object.assign(new Error("ovl's snapshot store (images, ovl image, ovl run --image) needs better-sqlite3 12.x: npm install better-sqlite3@12"), {
      code: "ERR_OVL_STORE_SQLITE_MISSING",
    });
  }
  return sqlite;
}

import type { SnapshotKind } from "./store.js";
export type { SnapshotKind };

/** The kernel's limit on lower layers in one overlay (src/mounting/validate.ts has the same number). */
export const MAX_CHAIN = 500;

export const SCHEMA_VERSION = 1;

/** A snapshot row, as this layer returns it. */
export interface SnapshotRow {
  id: number;
  key: string;
  parentId: number | null;
  /** The parent's key (committed snapshots' keys never change). */
  parent: string | null;
  kind: SnapshotKind;
  labels: Record<string, string>;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
  /** Layers in its chain, itself included: 1 for a snapshot without parent. */
  depth: number;
}

export interface ImageRow {
  name: string;
  manifestDigest: string;
  configDigest: string;
  config: unknown;
  chainIds: string[];
  labels: Record<string, string>;
  created: number;
  updated: number;
}

/** What a metadata rule broke; store.ts turns these into StoreErrors. */
export class MetaError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly key?: string,
  ) {
    super(message);
    this.name = "MetaError";
  }
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS snapshots (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  key       TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
  kind      TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
  labels    TEXT NOT NULL DEFAULT '{}',
  created   INTEGER NOT NULL,
  updated   INTEGER NOT NULL,
  size      INTEGER,
  inodes    INTEGER,
  depth     INTEGER NOT NULL CHECK (depth >= 1)
) STRICT;
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS images (
  name            TEXT PRIMARY KEY,
  manifest_digest TEXT NOT NULL,
  config_digest   TEXT NOT NULL,
  config          TEXT NOT NULL,
  chain_ids       TEXT NOT NULL,
  labels          TEXT NOT NULL DEFAULT '{}',
  created         INTEGER NOT NULL,
  updated         INTEGER NOT NULL
) STRICT;
`;

interface RawSnapshot {
  id: number;
  key: string;
  parent_id: number | null;
  parent: string | null;
  kind: string;
  labels: string;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
  depth: number;
}

interface RawImage {
  name: string;
  manifest_digest: string;
  config_digest: string;
  config: string;
  chain_ids: string;
  labels: string;
  created: number;
  updated: number;
}

const SELECT = `SELECT s.id, s.key, s.parent_id, p.key AS parent, s.kind, s.labels, s.created, s.updated, s.size, s.inodes, s.depth
  FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new MetaError("ERR_OVL_STORE_CORRUPT", `metadata: ${what} is not valid JSON`);
  }
}

function toRow(r: RawSnapshot): SnapshotRow {
  if (r.kind !== "active" && r.kind !== "view" && r.kind !== "committed") {
    throw new MetaError("ERR_OVL_STORE_CORRUPT", `metadata: snapshot '${r.key}' has unknown kind '${r.kind}'`, r.key);
  }
  return {
    id: r.id,
    key: r.key,
    parentId: r.parent_id,
    parent: r.parent,
    kind: r.kind,
    labels: parseJson<Record<string, string>>(r.labels, `the labels of snapshot '${r.key}'`),
    created: r.created,
    updated: r.updated,
    size: r.size,
    inodes: r.inodes,
    depth: r.depth,
  };
}

function toImage(r: RawImage): ImageRow {
  return {
    name: r.name,
    manifestDigest: r.manifest_digest,
    configDigest: r.config_digest,
    config: parseJson<unknown>(r.config, `the config of image '${r.name}'`),
    chainIds: parseJson<string[]>(r.chain_ids, `the chain ids of image '${r.name}'`),
    labels: parseJson<Record<string, string>>(r.labels, `the labels of image '${r.name}'`),
    created: r.created,
    updated: r.updated,
  };
}

/** Labels as stored: keys sorted, so that the same labels are always the same text. */
function labelText(labels: Record<string, string>): string {
  const sorted: Record<string, string> = {};
  for (const k of Object.keys(labels).sort()) sorted[k] = labels[k]!;
  return JSON.stringify(sorted);
}

/** Milliseconds, strictly increasing within this process (two operations in one ms still order). */
let lastNow = 0;
function now(): number {
  lastNow = Math.max(Date.now(), lastNow + 1);
  return lastNow;
}

/**
 * The statements of one transaction. Only valid inside the `read()`/`write()` callback that received it;
 * the mutating methods throw when called from a `read()`.
 */
export class Tx {
  constructor(
    private readonly db: Database.Database,
    private readonly writable: boolean,
  ) {}

  private mustWrite(what: string): void {
    if (!this.writable) throw new Error(`metadata: ${what} needs a write transaction`);
  }

  /** The row for `key`, or undefined. */
  get(key: string): SnapshotRow | undefined {
    const r = this.db.prepare(`${SELECT} WHERE s.key = ?`).get(key) as RawSnapshot | undefined;
    return r && toRow(r);
  }

  /** The row for `key`; NOT_FOUND when there is none. */
  mustGet(key: string, role = "snapshot"): SnapshotRow {
    const row = this.get(key);
    if (!row) throw new MetaError("ERR_OVL_STORE_NOT_FOUND", `${role} '${key}' does not exist`, key);
    return row;
  }

  byId(id: number): SnapshotRow | undefined {
    const r = this.db.prepare(`${SELECT} WHERE s.id = ?`).get(id) as RawSnapshot | undefined;
    return r && toRow(r);
  }

  /** The ids of a snapshot's parent chain, top-most (its parent) first: the lower layers of its mount. */
  parentIds(row: SnapshotRow): number[] {
    if (row.parentId === null) return [];
    const ids = this.db
      .prepare(
        `WITH RECURSIVE chain(id, parent_id, n) AS (
           SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
           UNION ALL
           SELECT s.id, s.parent_id, chain.n + 1 FROM snapshots s JOIN chain ON s.id = chain.parent_id
           WHERE chain.n < ?
         ) SELECT id FROM chain ORDER BY n`,
      )
      .pluck()
      .all(row.parentId, row.depth + 1) as number[];
    if (ids.length !== row.depth - 1) {
      throw new MetaError(
        "ERR_OVL_STORE_CORRUPT",
        `metadata: snapshot '${row.key}' records a chain of ${row.depth} layers but ${ids.length + 1} were found`,
        row.key,
      );
    }
    return ids;
  }

  /** Keys of the snapshots whose parent is `id`. */
  children(id: number): string[] {
    return this.db.prepare(`SELECT key FROM snapshots WHERE parent_id = ? ORDER BY key`).pluck().all(id) as string[];
  }

  all(): SnapshotRow[] {
    return (this.db.prepare(`${SELECT} ORDER BY s.id`).all() as RawSnapshot[]).map(toRow);
  }

  ids(): Set<number> {
    return new Set(this.db.prepare(`SELECT id FROM snapshots`).pluck().all() as number[]);
  }

  /**
   * Inserts an active or view snapshot. Rules: the key is new; the parent, if any, exists and is committed,
   * and its chain leaves room for it under the kernel's layer limit.
   */
  create(kind: "active" | "view", key: string, parent: string | undefined, labels: Record<string, string>): SnapshotRow {
    this.mustWrite("create");
    const existing = this.get(key);
    if (existing) throw new MetaError("ERR_OVL_STORE_EXISTS", `snapshot '${key}' already exists (${existing.kind})`, key);
    let depth = 1;
    let parentId: number | null = null;
    if (parent !== undefined) {
      const p = this.mustGet(parent, "parent snapshot");
      if (p.kind !== "committed") {
        throw new MetaError(
          "ERR_OVL_STORE_KIND",
          `parent '${parent}' is ${p.kind === "active" ? "an active" : "a view"} snapshot: only a committed snapshot can be a parent` +
            (p.kind === "active" ? "; commit it first" : ""),
          parent,
        );
      }
      if (p.depth > MAX_CHAIN) {
        throw new MetaError(
          "ERR_OVL_STORE_DEPTH",
          `parent '${parent}' is a chain of ${p.depth} layers: the kernel mounts at most ${MAX_CHAIN} lower layers, so it cannot be a parent`,
          parent,
        );
      }
      depth = p.depth + 1;
      parentId = p.id;
    }
    const t = now();
    const info = this.db
      .prepare(`INSERT INTO snapshots (key, parent_id, kind, labels, created, updated, depth) VALUES (?, ?, ?, ?, ?, ?, ?)`)
      .run(key, parentId, kind, labelText(labels), t, t, depth);
    return this.byId(Number(info.lastInsertRowid))!;
  }

  /**
   * Active `key` becomes committed `name`, same id (containerd's CommitActive: labels replaced, not
   * inherited; created and updated are now). One UPDATE.
   */
  /** The active row `key`, when it may be committed as `name` (KIND, EXISTS, NOT_FOUND otherwise). */
  committable(key: string, name: string): SnapshotRow {
    const row = this.mustGet(key);
    if (row.kind !== "active") {
      throw new MetaError(
        "ERR_OVL_STORE_KIND",
        `snapshot '${key}' is ${row.kind === "view" ? "a view" : "already committed"}: only an active snapshot can be committed`,
        key,
      );
    }
    const taken = this.get(name);
    if (taken) throw new MetaError("ERR_OVL_STORE_EXISTS", `cannot commit '${key}' as '${name}': snapshot '${name}' already exists (${taken.kind})`, name);
    return row;
  }

  commit(key: string, name: string, expectId: number, labels: Record<string, string>, usage: { size: number; inodes: number }): SnapshotRow {
    this.mustWrite("commit");
    const row = this.committable(key, name);
    if (row.id !== expectId) {
      throw new MetaError("ERR_OVL_STORE_CHANGED", `snapshot '${key}' was removed and made again while it was being committed`, key);
    }
    const t = now();
    this.db
      .prepare(`UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?, updated = ?, size = ?, inodes = ? WHERE id = ?`)
      .run(name, labelText(labels), t, t, usage.size, usage.inodes, row.id);
    return this.byId(row.id)!;
  }

  /** Deletes `key`; IN_USE while it has children. Returns the deleted row. */
  remove(key: string): SnapshotRow {
    this.mustWrite("remove");
    const row = this.mustGet(key);
    const kids = this.children(row.id);
    if (kids.length > 0) {
      const shown = kids.slice(0, 5).map((k) => `'${k}'`).join(", ") + (kids.length > 5 ? `, and ${kids.length - 5} more` : "");
      throw new MetaError(
        "ERR_OVL_STORE_IN_USE",
        `snapshot '${key}' has ${kids.length} ${kids.length === 1 ? "child" : "children"} (${shown}): remove them first`,
        key,
      );
    }
    this.db.prepare(`DELETE FROM snapshots WHERE id = ?`).run(row.id);
    return row;
  }

  /** Writes new labels (and the updated time). */
  setLabels(id: number, labels: Record<string, string>): SnapshotRow {
    this.mustWrite("setLabels");
    this.db.prepare(`UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?`).run(labelText(labels), now(), id);
    return this.byId(id)!;
  }

  // Images: a name -> manifest/config/chain record, for the image commands.

  getImage(name: string): ImageRow | undefined {
    const r = this.db.prepare(`SELECT * FROM images WHERE name = ?`).get(name) as RawImage | undefined;
    return r && toImage(r);
  }

  listImages(): ImageRow[] {
    return (this.db.prepare(`SELECT * FROM images ORDER BY name`).all() as RawImage[]).map(toImage);
  }

  /** Inserts or replaces (keeping the first `created`). */
  putImage(image: Omit<ImageRow, "created" | "updated">): ImageRow {
    this.mustWrite("putImage");
    const t = now();
    this.db
      .prepare(
        `INSERT INTO images (name, manifest_digest, config_digest, config, chain_ids, labels, created, updated)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET manifest_digest = excluded.manifest_digest, config_digest = excluded.config_digest,
           config = excluded.config, chain_ids = excluded.chain_ids, labels = excluded.labels, updated = excluded.updated`,
      )
      .run(
        image.name,
        image.manifestDigest,
        image.configDigest,
        JSON.stringify(image.config ?? null),
        JSON.stringify(image.chainIds),
        labelText(image.labels),
        t,
        t,
      );
    return this.getImage(image.name)!;
  }

  removeImage(name: string): boolean {
    this.mustWrite("removeImage");
    return this.db.prepare(`DELETE FROM images WHERE name = ?`).run(name).changes > 0;
  }
}

export interface MetaStoreOptions {
  /** How long a writer waits for another process's write lock, in ms (busy_timeout). Default 30 000. */
  busyTimeout?: number;
}

const isBusy = (e: unknown) => typeof (e as { code?: unknown })?.code === "string" && /^SQLITE_(BUSY|LOCKED)/.test((e as { code: string }).code);

/** Sleeps the thread (the database calls are synchronous anyway), for retries of SQLITE_BUSY. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Runs `fn`, again on SQLITE_BUSY/SQLITE_LOCKED that SQLite gave up on (after busy_timeout, or at once for
 * a WAL being recovered). `fn` must have no effect when it throws: each transaction's callers undo their
 * filesystem work on error.
 */
export function retryBusy<T>(fn: () => T, deadlineMs: number): T {
  const until = Date.now() + deadlineMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return fn();
    } catch (e) {
      if (!isBusy(e) || Date.now() > until) throw e;
      sleepSync(Math.min(100, 2 + attempt * 5) + Math.random() * 10);
    }
  }
}

export class MetaStore {
  readonly db: Database.Database;
  private readonly busy: number;

  private constructor(db: Database.Database, busy: number) {
    this.db = db;
    this.busy = busy;
  }

  /** Opens (creating when `create`) the database at `file`, and its schema, in one write transaction. */
  static open(file: string, opts: MetaStoreOptions & { create: boolean }): MetaStore {
    const busy = opts.busyTimeout ?? 30_000;
    return retryBusy(() => {
      const Sqlite = loadSqlite();
      const db = new Sqlite(file, { fileMustExist: !opts.create, timeout: busy });
      try {
        // journal_mode=WAL is persistent; setting it on a database already in WAL mode changes nothing.
        const mode = db.pragma("journal_mode = WAL", { simple: true });
        if (String(mode).toLowerCase() !== "wal") throw new Error(`metadata: could not switch ${file} to WAL (journal_mode is ${mode})`);
        db.pragma("synchronous = FULL");
        db.pragma("foreign_keys = ON");
        const ms = new MetaStore(db, busy);
        ms.write(() => {
          const hasMeta = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'`).get();
          if (hasMeta) {
            const v = db.prepare(`SELECT value FROM meta WHERE name = 'schema'`).pluck().get() as string | undefined;
            if (v !== undefined && Number(v) > SCHEMA_VERSION) {
              throw new MetaError(
                "ERR_OVL_STORE_CORRUPT",
                `metadata: ${file} has schema version ${v}, newer than this ovl's ${SCHEMA_VERSION}; use a newer ovl`,
              );
            }
          }
          db.exec(SCHEMA);
          db.prepare(`INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)`).run(String(SCHEMA_VERSION));
        });
        return ms;
      } catch (e) {
        db.close();
        throw e;
      }
    }, busy);
  }

  /** One read transaction (a consistent view; never waits for writers). */
  read<T>(fn: (tx: Tx) => T): T {
    const tx = new Tx(this.db, false);
    return retryBusy(() => this.db.transaction(() => fn(tx)).deferred(), this.busy);
  }

  /**
   * One write transaction (BEGIN IMMEDIATE: the write lock from the start). `fn` may do filesystem work that
   * must be atomic with the rows (a rename); when it throws, it must undo that work before it does.
   */
  write<T>(fn: (tx: Tx) => T): T {
    const tx = new Tx(this.db, true);
    return retryBusy(() => this.db.transaction(() => fn(tx)).immediate(), this.busy);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
