/**
 * The store's metadata: snapshots and images in SQLite (better-sqlite3), one transaction per operation, as
 * containerd's snapshots/storage does with bolt. WAL mode and BEGIN IMMEDIATE transactions let several
 * processes share one store: writers queue on the database lock (busy_timeout), readers never block.
 * Nothing here touches the snapshot directories; store.ts does that, around these transactions.
 */
import Database from "better-sqlite3";

export type SnapshotKind = "active" | "view" | "committed";

export interface SnapshotRow {
  id: number;
  key: string;
  parentId: number | null;
  kind: SnapshotKind;
  labels: Record<string, string>;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
}

export interface ImageRow {
  name: string;
  manifestDigest: string;
  configDigest: string;
  config: unknown;
  chainIds: string[];
  labels: Record<string, string>;
  created: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES snapshots(id),
  kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
  labels TEXT NOT NULL DEFAULT '{}',
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  size INTEGER,
  inodes INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS images (
  name TEXT PRIMARY KEY,
  manifest_digest TEXT NOT NULL,
  config_digest TEXT NOT NULL,
  config TEXT NOT NULL,
  chain_ids TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  created INTEGER NOT NULL
);
`;

interface RawSnapshot {
  id: number;
  key: string;
  parent_id: number | null;
  kind: SnapshotKind;
  labels: string;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
}

const toRow = (r: RawSnapshot): SnapshotRow => ({
  id: r.id,
  key: r.key,
  parentId: r.parent_id,
  kind: r.kind,
  labels: JSON.parse(r.labels) as Record<string, string>,
  created: r.created,
  updated: r.updated,
  size: r.size,
  inodes: r.inodes,
});

export class Metadata {
  readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file, { timeout: 30_000 });
    // WAL: readers and one writer at once, across processes. synchronous=FULL: a transaction that returned is
    // on disk (NORMAL could lose the last ones on power loss, and with them a layer's row whose directory
    // stayed: an orphan, but also an image that said it was imported).
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.db.close();
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction (the write lock taken up front: no deadlock on upgrade). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  byKey(key: string): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE key = ?").get(key) as RawSnapshot | undefined;
    return r ? toRow(r) : undefined;
  }

  byId(id: number): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE id = ?").get(id) as RawSnapshot | undefined;
    return r ? toRow(r) : undefined;
  }

  all(): SnapshotRow[] {
    return (this.db.prepare("SELECT * FROM snapshots ORDER BY id").all() as RawSnapshot[]).map(toRow);
  }

  children(id: number): number {
    return (this.db.prepare("SELECT count(*) AS n FROM snapshots WHERE parent_id = ?").get(id) as { n: number }).n;
  }

  /** The chain from `id` down to its root: the snapshot first, its parent next, ... */
  chain(id: number, limit: number): SnapshotRow[] {
    const rows = this.db
      .prepare(
        `WITH RECURSIVE c(id, depth) AS (SELECT ?, 0 UNION ALL SELECT s.parent_id, c.depth + 1 FROM snapshots s JOIN c ON s.id = c.id WHERE s.parent_id IS NOT NULL AND c.depth < ?)
         SELECT s.* FROM c JOIN snapshots s ON s.id = c.id ORDER BY c.depth`,
      )
      .all(id, limit) as RawSnapshot[];
    return rows.map(toRow);
  }

  insert(key: string, parentId: number | null, kind: SnapshotKind, labels: Record<string, string>, now: number): number {
    const r = this.db
      .prepare("INSERT INTO snapshots (key, parent_id, kind, labels, created, updated) VALUES (?, ?, ?, ?, ?, ?)")
      .run(key, parentId, kind, JSON.stringify(labels), now, now);
    return Number(r.lastInsertRowid);
  }

  commit(id: number, name: string, labels: Record<string, string>, size: number, inodes: number, now: number): void {
    this.db
      .prepare("UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, size = ?, inodes = ?, updated = ? WHERE id = ?")
      .run(name, JSON.stringify(labels), size, inodes, now, id);
  }

  setLabels(id: number, labels: Record<string, string>, now: number): void {
    this.db.prepare("UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?").run(JSON.stringify(labels), now, id);
  }

  delete(id: number): void {
    this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }

  putImage(img: ImageRow): void {
    this.db
      .prepare(
        "INSERT INTO images (name, manifest_digest, config_digest, config, chain_ids, labels, created) VALUES (?, ?, ?, ?, ?, ?, ?) " +
          "ON CONFLICT(name) DO UPDATE SET manifest_digest = excluded.manifest_digest, config_digest = excluded.config_digest, config = excluded.config, chain_ids = excluded.chain_ids, labels = excluded.labels",
      )
      .run(img.name, img.manifestDigest, img.configDigest, JSON.stringify(img.config), JSON.stringify(img.chainIds), JSON.stringify(img.labels), img.created);
  }

  image(name: string): ImageRow | undefined {
    const r = this.db.prepare("SELECT * FROM images WHERE name = ?").get(name) as Record<string, string | number> | undefined;
    return r ? imageRow(r) : undefined;
  }

  images(): ImageRow[] {
    return (this.db.prepare("SELECT * FROM images ORDER BY name").all() as Array<Record<string, string | number>>).map(imageRow);
  }

  deleteImage(name: string): boolean {
    return this.db.prepare("DELETE FROM images WHERE name = ?").run(name).changes > 0;
  }
}

function imageRow(r: Record<string, string | number>): ImageRow {
  return {
    name: String(r.name),
    manifestDigest: String(r.manifest_digest),
    configDigest: String(r.config_digest),
    config: JSON.parse(String(r.config)),
    chainIds: JSON.parse(String(r.chain_ids)) as string[],
    labels: JSON.parse(String(r.labels)) as Record<string, string>,
    created: Number(r.created),
  };
}
