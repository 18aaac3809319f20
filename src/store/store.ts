/**
 * The snapshot store: containerd's snapshot model (active, view and committed snapshots, each on a parent)
 * with layer directories on disk and metadata in SQLite (metadata.ts). The directory work is ordered around
 * each operation's one transaction so that a kill -9 anywhere leaves the before or the after state, plus at
 * most orphan directories that no row names, which `cleanup()` removes:
 *
 *   prepare/view  make `snapshots/new-PID-RAND/{fs,work}`; in one transaction insert the row and rename the
 *                 directory to `snapshots/ID`. Killed before the commit: the row is gone with the
 *                 transaction and `ID` is an orphan (a later prepare given the same id moves it aside).
 *   commit        one transaction: the row becomes committed under its new name (the directory stays).
 *   remove        one transaction deletes the row; then `ID` is renamed to `rm-ID-RAND` and deleted.
 *                 Killed between the two: `ID` is an orphan.
 *   cleanup       in one transaction (so no prepare is half-way), orphan `ID`s become `rm-*`; then every
 *                 `rm-*`, and every `new-*` of a process that is gone, is deleted.
 *
 *   root/metadata.db   root/snapshots/ID/fs (the layer)   root/snapshots/ID/work (an active one's workdir)
 */
import { lstat, readdir, rm } from "node:fs/promises";
import { mkdirSync, mkdtempSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { Metadata, type ImageRow, type SnapshotKind, type SnapshotRow } from "./metadata.js";

/** The kernel's limit on an overlay's layers: a chain deeper than this cannot be mounted. */
export const MAX_LAYERS = 500;

export class StoreError extends Error {
  readonly code: string;
  readonly key?: string;
  constructor(code: string, message: string, key?: string) {
    super(`${code}: ${message}`);
    this.name = "StoreError";
    this.code = code;
    if (key !== undefined) this.key = key;
  }
}

export interface SnapshotInfo {
  key: string;
  parent?: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  created: Date;
  updated: Date;
}

/** What mount() takes for a snapshot: lower layers top-most first, and an active one's upper and work. */
export interface SnapshotMounts {
  lower: string[];
  upper?: string;
  work?: string;
}

export interface Usage {
  /** Bytes the snapshot's own directory takes on disk (st_blocks × 512, as du counts). */
  size: number;
  inodes: number;
}

export interface ImageRecord {
  name: string;
  manifestDigest: string;
  configDigest: string;
  config: unknown;
  chainIds: string[];
  labels: Record<string, string>;
  created: Date;
}

const MAX_KEY = 4096;

function checkKey(key: unknown, what = "key"): string {
  if (typeof key !== "string" || key.length === 0) throw new StoreError("ERR_INVALID_ARG_VALUE", `${what} must be a non-empty string`);
  if (key.includes("\0")) throw new StoreError("ERR_INVALID_ARG_VALUE", `${what} contains a NUL byte`, key);
  if (Buffer.byteLength(key) > MAX_KEY) throw new StoreError("ERR_INVALID_ARG_VALUE", `${what} is longer than ${MAX_KEY} bytes`, key);
  return key;
}

function checkLabels(labels: unknown): Record<string, string> {
  if (labels === undefined) return {};
  if (typeof labels !== "object" || labels === null || Array.isArray(labels)) throw new StoreError("ERR_INVALID_ARG_VALUE", "labels must be an object of strings");
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== "string") throw new StoreError("ERR_INVALID_ARG_VALUE", `label '${k}' must be a string`);
  }
  return { ...(labels as Record<string, string>) };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

export class Store {
  readonly root: string;
  private readonly meta: Metadata;
  private readonly snapshots: string;

  private constructor(root: string, meta: Metadata) {
    this.root = root;
    this.meta = meta;
    this.snapshots = join(root, "snapshots");
  }

  /** Opens (with `create`, makes) the store at `root`. */
  static open(root: string, opts: { create?: boolean } = {}): Store {
    checkKey(root, "root");
    if (opts.create) mkdirSync(join(root, "snapshots"), { recursive: true, mode: 0o700 });
    try {
      if (!statSync(join(root, "snapshots")).isDirectory()) throw new Error("not a directory");
    } catch {
      throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `no snapshot store at ${root} (open it with { create: true } to make one)`);
    }
    return new Store(root, new Metadata(join(root, "metadata.db")));
  }

  close(): void {
    this.meta.close();
  }

  private row(key: string): SnapshotRow {
    const r = this.meta.byKey(checkKey(key));
    if (!r) throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `no snapshot '${key}'`, key);
    return r;
  }

  private dirOf(id: number): string {
    return join(this.snapshots, String(id));
  }

  private info(r: SnapshotRow): SnapshotInfo {
    const parent = r.parentId !== null ? this.meta.byId(r.parentId)?.key : undefined;
    return {
      key: r.key,
      ...(parent !== undefined ? { parent } : {}),
      kind: r.kind,
      labels: r.labels,
      created: new Date(r.created),
      updated: new Date(r.updated),
    };
  }

  /** An existing directory of a snapshot's layer; a row whose directory is gone is corruption, said so. */
  private fsOf(r: SnapshotRow): string {
    const fs = join(this.dirOf(r.id), "fs");
    try {
      statSync(fs);
    } catch {
      throw new StoreError("ERR_OVL_STORE_CORRUPT", `snapshot '${r.key}' has no directory (${fs} is missing)`, r.key);
    }
    return fs;
  }

  /** An empty directory of the store's: under a single layer, since a read-only overlay needs two. */
  private empty(): string {
    const dir = join(this.root, "empty");
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    return dir;
  }

  private create(kind: "active" | "view", key: string, parent: string | undefined, labels: Record<string, string>): SnapshotMounts {
    checkKey(key);
    if (parent !== undefined) checkKey(parent, "parent");
    const staging = mkdtempSync(join(this.snapshots, `new-${process.pid}-`));
    mkdirSync(join(staging, "fs"), { mode: 0o755 });
    if (kind === "active") mkdirSync(join(staging, "work"), { mode: 0o700 });
    let id: number;
    try {
      id = this.meta.tx(() => {
        if (this.meta.byKey(key)) throw new StoreError("ERR_OVL_STORE_EXISTS", `snapshot '${key}' exists already`, key);
        let parentId: number | null = null;
        if (parent !== undefined) {
          const p = this.meta.byKey(parent);
          if (!p) throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `parent '${parent}' does not exist`, parent);
          if (p.kind !== "committed") throw new StoreError("ERR_OVL_STORE_KIND", `parent '${parent}' is ${p.kind}: only a committed snapshot can be a parent`, parent);
          const depth = this.meta.chain(p.id, MAX_LAYERS + 1).length;
          if (depth > MAX_LAYERS) {
            throw new StoreError("ERR_OVL_STORE_DEPTH", `parent '${parent}' is more than ${MAX_LAYERS} layers deep: an overlay takes at most ${MAX_LAYERS} lower layers`, parent);
          }
          parentId = p.id;
        }
        const newId = this.meta.insert(key, parentId, kind, labels, Date.now());
        const dir = this.dirOf(newId);
        try {
          renameSync(staging, dir);
        } catch (e) {
          // An orphan of a prepare killed before its commit, given the same id: no row owns it (this
          // transaction holds the write lock), so it is moved aside for cleanup.
          const code = (e as NodeJS.ErrnoException).code;
          if (code !== "EEXIST" && code !== "ENOTEMPTY") throw e;
          renameSync(dir, join(this.snapshots, `rm-${newId}-${process.pid}-${Date.now()}`));
          renameSync(staging, dir);
        }
        return newId;
      });
    } catch (e) {
      void rm(staging, { recursive: true, force: true });
      throw e;
    }
    return this.mountsOf(this.meta.byId(id)!);
  }

  private mountsOf(r: SnapshotRow): SnapshotMounts {
    const parents = r.parentId !== null ? this.meta.chain(r.parentId, MAX_LAYERS + 1) : [];
    const lower = parents.map((p) => this.fsOf(p));
    if (r.kind === "active") {
      const fs = this.fsOf(r);
      // No parent: overlay still needs a lower layer; the store's empty directory is it.
      return { lower: lower.length > 0 ? lower : [this.empty()], upper: fs, work: join(this.dirOf(r.id), "work") };
    }
    if (r.kind === "view") {
      if (lower.length === 0) lower.push(this.fsOf(r));
      if (lower.length === 1) lower.push(this.empty());
      return { lower };
    }
    throw new StoreError("ERR_OVL_STORE_KIND", `snapshot '${r.key}' is committed: mount a view or an active snapshot of it`, r.key);
  }

  async prepare(key: string, parent?: string, opts: { labels?: Record<string, string> } = {}): Promise<SnapshotMounts> {
    return this.create("active", key, parent, checkLabels(opts.labels));
  }

  async view(key: string, parent?: string, opts: { labels?: Record<string, string> } = {}): Promise<SnapshotMounts> {
    return this.create("view", key, parent, checkLabels(opts.labels));
  }

  async mounts(key: string): Promise<SnapshotMounts> {
    return this.mountsOf(this.row(key));
  }

  /** The directory of a snapshot's own layer: an active one's upper, where a layer is applied before commit. */
  async dir(key: string): Promise<string> {
    return this.fsOf(this.row(key));
  }

  async commit(name: string, key: string, opts: { labels?: Record<string, string> } = {}): Promise<void> {
    checkKey(name, "name");
    const r = this.row(key);
    if (r.kind !== "active") throw new StoreError("ERR_OVL_STORE_KIND", `snapshot '${key}' is ${r.kind}: only an active snapshot can be committed`, key);
    // Measured before the transaction (a walk is long); the layer is not written to once it is committed.
    const usage = await measure(this.fsOf(r));
    const labels = opts.labels !== undefined ? checkLabels(opts.labels) : r.labels;
    this.meta.tx(() => {
      const now = this.meta.byKey(key);
      if (!now || now.id !== r.id || now.kind !== "active") throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `snapshot '${key}' was removed or committed meanwhile`, key);
      if (this.meta.byKey(name)) throw new StoreError("ERR_OVL_STORE_EXISTS", `snapshot '${name}' exists already`, name);
      this.meta.commit(r.id, name, labels, usage.size, usage.inodes, Date.now());
    });
  }

  async remove(key: string): Promise<void> {
    const id = this.meta.tx(() => {
      const r = this.row(key);
      const n = this.meta.children(r.id);
      if (n > 0) throw new StoreError("ERR_OVL_STORE_IN_USE", `snapshot '${key}' has ${n} ${n === 1 ? "child" : "children"}: remove ${n === 1 ? "it" : "them"} first`, key);
      this.meta.delete(r.id);
      return r.id;
    });
    const gone = join(this.snapshots, `rm-${id}-${process.pid}-${Date.now()}`);
    try {
      renameSync(this.dirOf(id), gone);
    } catch {
      return; // already gone (a store repaired by hand): nothing to delete
    }
    await rm(gone, { recursive: true, force: true });
  }

  async stat(key: string): Promise<SnapshotInfo> {
    return this.info(this.row(key));
  }

  /**
   * Changes labels, as containerd's Update: without `fieldpaths` the labels are replaced; with them only
   * `labels` (all) or `labels.NAME` (one: set, or removed when `info.labels` lacks it) change.
   */
  async update(info: { key: string; labels?: Record<string, string> }, fieldpaths?: string[]): Promise<SnapshotInfo> {
    const labels = checkLabels(info.labels);
    return this.meta.tx(() => {
      const r = this.row(info.key);
      let next: Record<string, string>;
      if (!fieldpaths || fieldpaths.length === 0) next = labels;
      else {
        next = { ...r.labels };
        for (const f of fieldpaths) {
          if (f === "labels") next = { ...labels };
          else if (f.startsWith("labels.")) {
            const k = f.slice(7);
            if (k in labels) next[k] = labels[k]!;
            else delete next[k];
          } else throw new StoreError("ERR_INVALID_ARG_VALUE", `field '${f}' cannot be updated (only labels and labels.NAME)`, info.key);
        }
      }
      this.meta.setLabels(r.id, next, Date.now());
      return this.info(this.meta.byId(r.id)!);
    });
  }

  /** Snapshots matching any of the filters (containerd's syntax: `kind==committed,labels.a==b`, `parent==X`, `labels.a`). */
  async list(filters?: string[]): Promise<SnapshotInfo[]> {
    const match = compileFilters(filters ?? []);
    return this.meta.all().map((r) => this.info(r)).filter(match);
  }

  async walk(fn: (info: SnapshotInfo) => void | Promise<void>, filters?: string[]): Promise<void> {
    for (const info of await this.list(filters)) await fn(info);
  }

  async usage(key: string): Promise<Usage> {
    const r = this.row(key);
    if (r.kind === "committed" && r.size !== null && r.inodes !== null) return { size: r.size, inodes: r.inodes };
    return measure(this.fsOf(r));
  }

  /** Removes what crashes left: directories no row names, and half-made or half-removed ones. */
  async cleanup(): Promise<{ removed: string[] }> {
    const names = await readdir(this.snapshots);
    const doomed = this.meta.tx(() => {
      const ids = new Set(this.meta.all().map((r) => String(r.id)));
      const out: string[] = [];
      for (const n of names) {
        if (/^\d+$/.test(n) && !ids.has(n)) {
          const to = `rm-${n}-${process.pid}-${Date.now()}`;
          try {
            renameSync(join(this.snapshots, n), join(this.snapshots, to));
            out.push(to);
          } catch {
            // made and named meanwhile? not with the write lock held; gone already: fine
          }
        } else if (n.startsWith("rm-")) out.push(n);
        else if (n.startsWith("new-")) {
          const pid = Number(n.split("-")[1]);
          if (!alive(pid) || pid === process.pid) out.push(n);
        }
      }
      return out;
    });
    for (const n of doomed) await rm(join(this.snapshots, n), { recursive: true, force: true });
    return { removed: doomed };
  }

  /** Rows whose directory is missing (corruption: nothing ovl does makes one). */
  async check(): Promise<string[]> {
    return this.meta.all().filter((r) => {
      try {
        statSync(join(this.dirOf(r.id), "fs"));
        return false;
      } catch {
        return true;
      }
    }).map((r) => r.key);
  }

  async putImage(name: string, image: { manifestDigest: string; configDigest: string; config: unknown; chainIds: string[]; labels?: Record<string, string> }): Promise<void> {
    checkKey(name, "name");
    const row: ImageRow = { name, manifestDigest: image.manifestDigest, configDigest: image.configDigest, config: image.config, chainIds: image.chainIds, labels: checkLabels(image.labels), created: Date.now() };
    this.meta.tx(() => {
      for (const id of image.chainIds) {
        const s = this.meta.byKey(id);
        if (!s || s.kind !== "committed") throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `image '${name}': layer snapshot '${id}' is not committed in the store`, id);
      }
      this.meta.putImage(row);
    });
  }

  async getImage(name: string): Promise<ImageRecord | undefined> {
    const r = this.meta.image(name);
    return r ? { ...r, created: new Date(r.created) } : undefined;
  }

  async listImages(): Promise<ImageRecord[]> {
    return this.meta.images().map((r) => ({ ...r, created: new Date(r.created) }));
  }

  async removeImage(name: string): Promise<boolean> {
    return this.meta.tx(() => this.meta.deleteImage(name));
  }
}

/** du of a directory: bytes on disk (st_blocks × 512) and inodes, hard links counted once, nothing followed. */
async function measure(dir: string): Promise<Usage> {
  const seen = new Set<bigint>();
  let size = 0;
  const visit = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    if (!seen.has(st.ino)) {
      seen.add(st.ino);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) for (const n of await readdir(p)) await visit(join(p, n));
  };
  await visit(dir);
  return { size, inodes: seen.size };
}

/** containerd's filter syntax, the subset snapshots use: FIELD, FIELD==V, FIELD!=V, FIELD~=REGEX; `,` is and. */
export function compileFilters(filters: string[]): (info: SnapshotInfo) => boolean {
  if (filters.length === 0) return () => true;
  const alternatives = filters.map((f) =>
    splitTerms(f).map((term) => {
      const m = /^(labels\."[^"]*"|[A-Za-z0-9_.]+)\s*(==|!=|~=)?\s*(.*)$/.exec(term);
      if (!m) throw new StoreError("ERR_INVALID_ARG_VALUE", `filter '${f}': cannot read '${term}'`);
      const field = m[1]!.replace(/^labels\."(.*)"$/, "labels.$1");
      const op = m[2];
      const value = (m[3] ?? "").replace(/^"(.*)"$/, "$1");
      const re = op === "~=" ? new RegExp(value) : undefined;
      const get = (i: SnapshotInfo): string | undefined =>
        field === "kind" ? i.kind : field === "name" || field === "key" ? i.key : field === "parent" ? i.parent : field.startsWith("labels.") ? i.labels[field.slice(7)] : undefined;
      if (!["kind", "name", "key", "parent"].includes(field) && !field.startsWith("labels.")) throw new StoreError("ERR_INVALID_ARG_VALUE", `filter '${f}': no field '${field}'`);
      return (i: SnapshotInfo) => {
        const v = get(i);
        if (op === undefined) return v !== undefined;
        if (op === "==") return v === value;
        if (op === "!=") return v !== value;
        return v !== undefined && re!.test(v);
      };
    }),
  );
  return (info) => alternatives.some((terms) => terms.every((t) => t(info)));
}

function splitTerms(f: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  for (const c of f) {
    if (c === '"') quoted = !quoted;
    if (c === "," && !quoted) {
      out.push(cur.trim());
      cur = "";
    } else cur += c;
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

export async function openStore(root: string, opts: { create?: boolean } = {}): Promise<Store> {
  return Store.open(root, opts);
}
