/**
 * The snapshot store: containerd's snapshot model (active, view and committed snapshots in parent chains)
 * on overlay directories, with its metadata in SQLite (src/store/metadata.ts). Layout, as containerd's
 * overlay snapshotter:
 *
 *   root/metadata.db            rows: snapshots (and images); shared by every process that opens the store
 *   root/snapshots/<id>/fs      a snapshot's own layer: an active snapshot's upper, a committed one's lower
 *   root/snapshots/<id>/work    an active snapshot's overlay work directory
 *   root/empty                  an empty directory: the bottom layer of overlays that have too few layers
 *
 * Crash safety: a directory becomes a snapshot's only by a rename done inside the write transaction that
 * inserts its row (under SQLite's write lock, before COMMIT), and stops being one when the row is deleted.
 * So after a kill at any instant, every row has its directory, and a directory without a row is an orphan
 * that `cleanup()` reclaims:
 *
 * - prepare/view: BEGIN IMMEDIATE; check the rules; INSERT; make `snapshots/new-XXXXXX/{fs,work}`; rename it
 *   to `snapshots/<id>`; fsync `snapshots/`; COMMIT. Killed before COMMIT: the row is rolled back and
 *   `new-XXXXXX` or `<id>` is an orphan.
 * - commit: the usage walk runs first, outside any lock; then one UPDATE (key, kind, usage) in one
 *   transaction. The directory does not move. Killed: still active, or committed.
 * - remove: BEGIN IMMEDIATE; check it has no children; DELETE; COMMIT; then rename `<id>` to
 *   `snapshots/rm-<id>-XXXXXX` and delete that tree. The rename comes after COMMIT (not before, inside the
 *   transaction): a kill between a rename and a COMMIT that never happened would leave a row whose
 *   directory has moved; this way the row and its directory stay together until the row is gone, and what
 *   a kill leaves after COMMIT is an orphan, `<id>` or `rm-*`.
 * - cleanup: BEGIN IMMEDIATE (so no prepare is between its rename and its COMMIT); every entry of
 *   `snapshots/` that is not the directory of a row (`new-*`, `rm-*`, `<id>` without a row) is renamed to
 *   `rm-*`; release the lock; delete those trees.
 *
 * A committed id is never reused (AUTOINCREMENT). A rolled-back insert's id is: a prepare that finds a
 * directory already at its new id moves that orphan aside, under the write lock, before renaming its own.
 */
import { randomBytes } from "node:crypto";
import {
  chownSync,
  closeSync,
  existsSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { lstat, readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { invalidArgType, invalidArgValue } from "../kernel/errors.js";
import { checkIdmapSpec, type IdmapSpec } from "../mounting/idmap.js";
import { parseMountInfo } from "../table/mountinfo.js";
import { MAX_CHAIN, MetaError, MetaStore, type ImageRow, type SnapshotRow, type Tx } from "./metadata.js";

/** containerd's kinds of snapshot. (Defined here, so that the public declarations never reach metadata.ts's, which name better-sqlite3's types.) */
export type SnapshotKind = "active" | "view" | "committed";

export interface SnapshotInfo {
  key: string;
  /** The parent's key; absent for a snapshot without parent. */
  parent?: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  created: Date;
  updated: Date;
}

/**
 * What `mount()` takes, but the target: `mount({ ...await store.mounts(key), target })`. Lower layers
 * top-most first. An active snapshot has `upper` and `work`; a view has neither (a read-only overlay).
 *
 * Overlay needs one lower layer under an upper and two without one. Where a snapshot's chain has fewer,
 * the store's own empty directory (`root/empty`) fills in at the bottom: an active snapshot without parent
 * is `lower: [empty]` + its upper, a view of one layer is `[layer, empty]`, a view without parent is
 * `[its own empty fs, empty]`. containerd returns a bind mount in those cases instead, which ovl's mount()
 * does not do; an empty bottom layer shows exactly the same tree, and every spec is then one overlay
 * mount. (Checked: the kernel writes no opaque or other xattr into new directories of an upper whose
 * only lower is empty, only the usual `trusted.overlay.uuid` on the upper's root, so a base layer
 * committed this way holds what was written and nothing else.)
 */
export interface SnapshotMounts {
  lower: string[];
  upper?: string;
  work?: string;
  /** With `mounts(key, { idmap })`: the lower layers idmapped (see `mount()`'s `idmap`). */
  idmap?: IdmapSpec;
}

/** Disk use of a snapshot's own layer: `du`-like, st_blocks × 512 per inode, hard links counted once. */
export interface Usage {
  size: number;
  inodes: number;
}

export interface ImageRecord {
  name: string;
  manifestDigest: string;
  configDigest: string;
  config: unknown;
  /** Snapshot keys of the image's layers, bottom-most first (not checked against the snapshots). */
  chainIds: string[];
  labels: Record<string, string>;
  created: Date;
  updated: Date;
}

export interface StoreCheck {
  /** Rows whose directory (or part of it) is missing: using them gives ERR_OVL_STORE_CORRUPT. */
  missing: { key: string; id: number; path: string }[];
  /** Entries of `snapshots/` with no row: what `cleanup()` removes. */
  orphans: string[];
  /** What is wrong with `root/empty`, the filler layer, if anything. */
  empty?: string;
}

export interface Store {
  readonly root: string;
  /** An active snapshot on `parent` (committed), with a fresh empty upper (`fs`) and work directory. */
  prepare(key: string, parent?: string, opts?: { labels?: Record<string, string> }): Promise<SnapshotMounts>;
  /** A read-only snapshot of `parent` (committed). */
  view(key: string, parent?: string, opts?: { labels?: Record<string, string> }): Promise<SnapshotMounts>;
  /**
   * The mount spec of an active snapshot or a view (again). With `idmap`, the spec says to idmap the layers
   * (checked here, done by `mount()`: each layer a detached idmapped clone, nothing else attached).
   */
  mounts(key: string, opts?: { idmap?: IdmapSpec }): Promise<SnapshotMounts>;
  /** The directory of a snapshot's own layer (an active one's upper): where a layer is applied before commit. */
  dir(key: string): Promise<string>;
  /**
   * Active `key` becomes committed `name` (labels replaced by `opts.labels`, as containerd does); its usage
   * is measured now and stored. The directory stays where it is. Committing a snapshot that is still
   * mounted is not refused (containerd leaves that to the caller too): unmount it first, or what is
   * written after the usage walk is in the layer but not in its usage.
   */
  commit(name: string, key: string, opts?: { labels?: Record<string, string> }): Promise<void>;
  /**
   * Removes a snapshot without children (ERR_OVL_STORE_IN_USE otherwise), then its directory. An active
   * snapshot or view that is mounted is not refused (as in containerd): its directory is deleted under the
   * mount. A tree with a mount point inside is not deleted; cleanup() deletes it once that is unmounted.
   */
  remove(key: string): Promise<void>;
  stat(key: string): Promise<SnapshotInfo>;
  /** containerd's Update: labels only; `fieldpaths` `labels` (all) or `labels.<key>` (one; absent or "" deletes). */
  update(info: { key: string; labels?: Record<string, string> }, fieldpaths?: string[]): Promise<SnapshotInfo>;
  /** Snapshots matching any of `filters` (containerd's syntax; see `parseFilters`), all without. */
  list(filters?: string[]): Promise<SnapshotInfo[]>;
  /** `fn` for each snapshot `list(filters)` gives (read in one transaction, then called, awaited in turn). */
  walk(fn: (info: SnapshotInfo) => void | Promise<void>, filters?: string[]): Promise<void>;
  /** Active (and view): measured now; committed: as measured at commit. */
  usage(key: string): Promise<Usage>;
  /** Deletes every entry of `snapshots/` without a row (what crashes and removals leave). */
  cleanup(): Promise<{ removed: string[] }>;
  /** Rows without their directory, and orphans, without changing anything. */
  check(): Promise<StoreCheck>;
  close(): void;
  putImage(
    name: string,
    image: { manifestDigest: string; configDigest: string; config: unknown; chainIds: string[]; labels?: Record<string, string> },
  ): Promise<void>;
  getImage(name: string): Promise<ImageRecord | undefined>;
  listImages(): Promise<ImageRecord[]>;
  removeImage(name: string): Promise<boolean>;
}

export type StoreErrorCode =
  | "ERR_OVL_STORE_NOT_FOUND"
  | "ERR_OVL_STORE_EXISTS"
  | "ERR_OVL_STORE_IN_USE"
  | "ERR_OVL_STORE_KIND"
  | "ERR_OVL_STORE_DEPTH"
  | "ERR_OVL_STORE_CORRUPT"
  | "ERR_OVL_STORE_CLOSED";

export class StoreError extends Error {
  readonly code: string;
  /** The snapshot (or image) the error is about. */
  readonly key?: string;

  constructor(code: string, message: string, key?: string) {
    super(message);
    this.name = "StoreError";
    this.code = code;
    if (key !== undefined) this.key = key;
  }
}

const KEY_MAX_BYTES = 4096;
/** containerd's label limit: key and value together. */
const LABEL_MAX_BYTES = 4096;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkKey(value: unknown, name: string): string {
  if (typeof value !== "string") throw invalidArgType(name, "of type string", value);
  if (value === "") throw invalidArgValue(name, value, "must be a non-empty string");
  if (value.includes("\0")) throw invalidArgValue(name, value, "must be a string without null bytes");
  if (LONE_SURROGATE.test(value)) throw invalidArgValue(name, value, "must be well-formed Unicode (it has a lone surrogate)");
  const n = Buffer.byteLength(value);
  if (n > KEY_MAX_BYTES) throw invalidArgValue(name, `<${n} bytes>`, `must be at most ${KEY_MAX_BYTES} bytes (UTF-8), got ${n}`);
  return value;
}

/** Labels as given, without those whose value is "" (containerd does not store empty labels). */
function checkLabels(value: unknown, name: string): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw invalidArgType(name, "of type object", value);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== "string") throw invalidArgType(`${name}.${k}`, "of type string", v);
    if (k === "") throw invalidArgValue(name, value, "has an empty label name");
    if (LONE_SURROGATE.test(k) || LONE_SURROGATE.test(v)) throw invalidArgValue(`${name}.${k}`, v, "must be well-formed Unicode");
    const n = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (n > LABEL_MAX_BYTES) throw invalidArgValue(`${name}.${k}`, `<${n} bytes>`, `is too long: a label's name and value together may have ${LABEL_MAX_BYTES} bytes`);
    if (v !== "") out[k] = v;
  }
  return out;
}

function checkOpts(value: unknown, name: string): { labels: Record<string, string> } {
  if (value === undefined) return { labels: {} };
  if (typeof value !== "object" || value === null) throw invalidArgType(name, "of type object", value);
  return { labels: checkLabels((value as { labels?: unknown }).labels, `${name}.labels`) };
}

// ---------------------------------------------------------------------------------------------------------
// Filters: a subset of containerd's filter syntax.

type Op = "==" | "!=" | "~=" | "exists";
interface Selector {
  field: string[];
  op: Op;
  value: string;
  re?: RegExp;
}

/**
 * Parses containerd-style filters: each string is selectors joined by `,` (all must match); a snapshot
 * matches the list when it matches any one string. A selector is `field`, `field==value`, `field!=value`
 * or `field~=regexp`. Fields: `kind`, `name` (also `key`), `parent`, `labels.<label>`. Quote a field part or
 * a value with `"` when it has other characters than letters, digits and `_-./:` (`labels."a,b"==x`, `name=="a,b"`);
 * `\"` and `\\` inside quotes. A bare `field` matches when it has a value (a label set, a parent there).
 */
export function parseFilters(filters: string[]): Selector[][] {
  return filters.map((f, i) => parseFilter(f, `filters[${i}]`));
}

function parseFilter(text: string, name: string): Selector[] {
  if (typeof text !== "string") throw invalidArgType(name, "of type string", text);
  let p = 0;
  const fail = (why: string): never => {
    throw invalidArgValue(name, text, `is not a filter: ${why} at offset ${p}`);
  };
  const ws = () => {
    while (p < text.length && /\s/.test(text[p]!)) p++;
  };
  const quoted = (): string => {
    p++; // opening quote
    let s = "";
    while (p < text.length && text[p] !== '"') {
      if (text[p] === "\\" && p + 1 < text.length) p++;
      s += text[p++];
    }
    if (text[p] !== '"') fail("an unterminated quote");
    p++;
    return s;
  };
  const word = /[A-Za-z0-9_\-/:]/;
  const out: Selector[] = [];
  for (;;) {
    ws();
    const field: string[] = [];
    for (;;) {
      if (text[p] === '"') field.push(quoted());
      else {
        const start = p;
        while (p < text.length && word.test(text[p]!)) p++;
        if (p === start) fail("a field name was expected");
        field.push(text.slice(start, p));
      }
      if (text[p] !== ".") break;
      p++;
    }
    ws();
    let op: Op = "exists";
    let value = "";
    const two = text.slice(p, p + 2);
    if (two === "==" || two === "!=" || two === "~=") {
      op = two;
      p += 2;
      ws();
      if (text[p] === '"') value = quoted();
      else {
        const start = p;
        while (p < text.length && text[p] !== ",") p++;
        value = text.slice(start, p).trim();
      }
    }
    const sel: Selector = { field, op, value };
    const head = field[0]!;
    if (head === "labels") {
      if (field.length < 2) fail("'labels' needs a label name (labels.NAME)");
      sel.field = ["labels", field.slice(1).join(".")];
    } else if (!["kind", "name", "key", "parent"].includes(head) || field.length !== 1) {
      fail(`unknown field '${field.join(".")}' (known: kind, name, key, parent, labels.NAME)`);
    }
    if (op === "~=") {
      try {
        sel.re = new RegExp(value);
      } catch (e) {
        fail(`bad regular expression ${JSON.stringify(value)} (${(e as Error).message})`);
      }
    }
    out.push(sel);
    ws();
    if (p >= text.length) return out;
    if (text[p] !== ",") fail("',' or the end was expected");
    p++;
  }
}

function fieldOf(info: SnapshotInfo, field: string[]): string | undefined {
  switch (field[0]) {
    case "kind":
      return info.kind;
    case "name":
    case "key":
      return info.key;
    case "parent":
      return info.parent;
    default:
      return Object.hasOwn(info.labels, field[1]!) ? info.labels[field[1]!] : undefined;
  }
}

function matches(info: SnapshotInfo, filter: Selector[][]): boolean {
  if (filter.length === 0) return true;
  return filter.some((all) =>
    all.every((s) => {
      const v = fieldOf(info, s.field);
      switch (s.op) {
        case "exists":
          return v !== undefined;
        case "==":
          return v === s.value;
        case "!=":
          return v !== s.value;
        case "~=":
          return v !== undefined && s.re!.test(v);
      }
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------
// Filesystem helpers.

const errCode = (e: unknown) => (e as NodeJS.ErrnoException)?.code;

/** fsync of a directory: makes the renames in it durable before the COMMIT that relies on them. */
function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

const suffix = () => randomBytes(6).toString("hex");

/** Mount points at or below `dir` in this mount namespace. */
function mountsBelow(dir: string): string[] {
  let text: Buffer;
  try {
    text = readFileSync("/proc/self/mountinfo");
  } catch {
    return [];
  }
  return parseMountInfo(text)
    .mounts.map((m) => m.target)
    .filter((t) => t === dir || t.startsWith(`${dir}/`));
}

/**
 * Deletes a tree this store owns (names as bytes: Node's rm reads directories as Buffers). Refuses one
 * with a mount point inside: deleting would go on into the mounted filesystem.
 */
async function removeTree(path: string): Promise<boolean> {
  const mounted = mountsBelow(path);
  if (mounted.length > 0) return false;
  for (let attempt = 0; ; attempt++) {
    try {
      await rm(path, { recursive: true, force: true, maxRetries: 3 });
      return true;
    } catch (e) {
      // Another process (a cleanup) deleting the same tree: entries vanish under us.
      if ((errCode(e) === "ENOENT" || errCode(e) === "ENOTEMPTY") && attempt < 5) continue;
      throw e;
    }
  }
}

/** `du` of a layer: st_blocks × 512 for each inode once (hard links), symlinks not followed, one filesystem. */
export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const top = await lstat(root, { bigint: true });
  const stack: Buffer[] = [Buffer.from(root)];
  const slash = Buffer.from("/");
  while (stack.length > 0) {
    const path = stack.pop()!;
    let st;
    try {
      st = await lstat(path, { bigint: true });
    } catch (e) {
      if (errCode(e) === "ENOENT") continue; // removed while we walked
      throw e;
    }
    if (st.dev !== top.dev) continue; // a mount point inside: not this layer's
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      inodes++;
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      let names: Buffer[];
      try {
        names = await readdir(path, { encoding: "buffer" });
      } catch (e) {
        if (errCode(e) === "ENOENT") continue;
        throw e;
      }
      for (const n of names) stack.push(Buffer.concat([path, slash, n]));
    }
  }
  return { size, inodes };
}

// ---------------------------------------------------------------------------------------------------------

function toInfo(row: SnapshotRow): SnapshotInfo {
  return {
    key: row.key,
    ...(row.parent !== null ? { parent: row.parent } : {}),
    kind: row.kind,
    labels: row.labels,
    created: new Date(row.created),
    updated: new Date(row.updated),
  };
}

function toImageRecord(r: ImageRow): ImageRecord {
  return { ...r, created: new Date(r.created), updated: new Date(r.updated) };
}

/** MetaErrors and SQLite's corruption errors as StoreErrors; anything else as it is. */
function storeError(e: unknown): unknown {
  if (e instanceof MetaError) return new StoreError(e.code, e.message, e.key);
  const code = errCode(e);
  if (code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB" || code?.startsWith("SQLITE_CORRUPT_")) {
    return new StoreError("ERR_OVL_STORE_CORRUPT", `metadata database is damaged: ${(e as Error).message}`);
  }
  return e;
}

class SnapshotStore implements Store {
  readonly root: string;
  private readonly snapshots: string;
  private readonly empty: string;
  private ms: MetaStore | undefined;

  constructor(root: string, ms: MetaStore) {
    this.root = root;
    this.snapshots = join(root, "snapshots");
    this.empty = join(root, "empty");
    this.ms = ms;
  }

  private meta(): MetaStore {
    if (!this.ms) throw new StoreError("ERR_OVL_STORE_CLOSED", `the store at '${this.root}' is closed`);
    return this.ms;
  }

  /**
   * Runs an operation, its errors as StoreErrors. With `recheck`, an operation that found a row's directory
   * missing (ERR_OVL_STORE_CORRUPT, or ENOENT while walking it) runs again: outside the write lock, another
   * process may have removed the snapshot since this one read its row. remove() deletes the row (COMMIT)
   * before it touches the directory, so a directory found missing means the deletion, if there is one, is
   * already committed, and the second run reads the row gone (NOT_FOUND). Missing again: really damaged.
   */
  private async op<T>(fn: () => T | Promise<T>, recheck = false): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        const se = storeError(e);
        const missing = errCode(e) === "ENOENT" || (se instanceof StoreError && se.code === "ERR_OVL_STORE_CORRUPT" && se.key !== undefined);
        if (recheck && missing && attempt < 2) continue;
        throw se;
      }
    }
  }

  private dirOf(id: number): string {
    return join(this.snapshots, String(id));
  }
  private fsOf(id: number): string {
    return join(this.snapshots, String(id), "fs");
  }
  private workOf(id: number): string {
    return join(this.snapshots, String(id), "work");
  }

  /** What is missing of a row's directory, or undefined when all is there. */
  private missingOf(row: SnapshotRow): string | undefined {
    const need = row.kind === "active" ? [this.fsOf(row.id), this.workOf(row.id)] : [this.fsOf(row.id)];
    for (const p of need) {
      let ok = false;
      try {
        ok = lstatSync(p).isDirectory();
      } catch {
        // missing
      }
      if (!ok) return p;
    }
    return undefined;
  }

  private mustBePresent(row: SnapshotRow, role = "snapshot"): void {
    const missing = this.missingOf(row);
    if (missing !== undefined) {
      throw new StoreError(
        "ERR_OVL_STORE_CORRUPT",
        `${role} '${row.key}' (id ${row.id}): its directory '${missing}' is missing; the store was changed by hand ` +
          "or damaged: remove the snapshot (and its children), or restore the directory",
        row.key,
      );
    }
  }

  private emptyProblem(): string | undefined {
    try {
      if (!lstatSync(this.empty).isDirectory()) return `'${this.empty}' is not a directory`;
      const n = readdirSync(this.empty).length;
      return n === 0 ? undefined : `'${this.empty}' is not empty (${n} entries); it is the empty bottom layer of short chains`;
    } catch (e) {
      return `'${this.empty}' cannot be read (${errCode(e) ?? (e as Error).message})`;
    }
  }

  /** The mount spec of an active snapshot or view, every layer checked to be there. */
  private mountsOf(tx: Tx, row: SnapshotRow): SnapshotMounts {
    if (row.kind === "committed") {
      throw new StoreError(
        "ERR_OVL_STORE_KIND",
        `snapshot '${row.key}' is committed: only active snapshots and views are mounted; make a view() of it`,
        row.key,
      );
    }
    const parents = tx.parentIds(row);
    if (parents.length > MAX_CHAIN) {
      throw new StoreError(
        "ERR_OVL_STORE_DEPTH",
        `snapshot '${row.key}' has ${parents.length} layers below it: the kernel mounts at most ${MAX_CHAIN} lower layers`,
        row.key,
      );
    }
    this.mustBePresent(row);
    for (const id of parents) {
      const p = tx.byId(id)!;
      this.mustBePresent(p, `layer '${p.key}' of snapshot '${row.key}', snapshot`);
    }
    const layers = parents.map((id) => this.fsOf(id));
    const needEmpty = row.kind === "active" ? layers.length === 0 : layers.length < 2;
    if (needEmpty) {
      const problem = this.emptyProblem();
      if (problem) throw new StoreError("ERR_OVL_STORE_CORRUPT", `store '${this.root}': ${problem}`, row.key);
    }
    if (row.kind === "active") {
      return { lower: layers.length > 0 ? layers : [this.empty], upper: this.fsOf(row.id), work: this.workOf(row.id) };
    }
    if (layers.length >= 2) return { lower: layers };
    return { lower: [layers[0] ?? this.fsOf(row.id), this.empty] };
  }

  /** Renames a new snapshot directory into place, moving aside an orphan that holds the name. Under the write lock. */
  private renameInto(from: string, to: string, id: number): void {
    try {
      renameSync(from, to);
    } catch (e) {
      if (errCode(e) !== "ENOTEMPTY" && errCode(e) !== "EEXIST") throw e;
      // A directory for an id no row has: a prepare killed between its rename and its COMMIT (the insert was
      // rolled back, so the id comes round again). Ours is the row now; that directory is an orphan.
      renameSync(to, join(this.snapshots, `rm-${id}-${suffix()}`));
      renameSync(from, to);
    }
  }

  private create(kind: "active" | "view", key: unknown, parent: unknown, opts: unknown): Promise<SnapshotMounts> {
    return this.op(() => {
      const k = checkKey(key, "key");
      const p = parent === undefined ? undefined : checkKey(parent, "parent");
      const { labels } = checkOpts(opts, "opts");
      return this.meta().write((tx) => {
        const row = tx.create(kind, k, p, labels);
        // Checks the parent chain (depth, directories) before making anything.
        const parents = tx.parentIds(row);
        for (const id of parents) {
          const pr = tx.byId(id)!;
          this.mustBePresent(pr, `layer '${pr.key}' of parent '${p}', snapshot`);
        }
        let made: string | undefined;
        try {
          const tmp = mkdtempSync(join(this.snapshots, "new-"));
          made = tmp;
          mkdirSync(join(tmp, "fs"), 0o755);
          if (kind === "active") mkdirSync(join(tmp, "work"), 0o711);
          if (parents.length > 0) {
            // Like containerd: the new upper belongs to whoever owns the layer below (a rootless image's root).
            const st = statSync(this.fsOf(parents[0]!));
            chownSync(join(tmp, "fs"), st.uid, st.gid);
          }
          const dest = this.dirOf(row.id);
          this.renameInto(tmp, dest, row.id);
          made = dest;
          fsyncDir(this.snapshots);
          return this.mountsOf(tx, row);
        } catch (e) {
          // Still under the write lock: nobody else can have taken this id's directory name yet.
          if (made !== undefined) rmSync(made, { recursive: true, force: true });
          throw e;
        }
      });
    });
  }

  prepare(key: string, parent?: string, opts?: { labels?: Record<string, string> }): Promise<SnapshotMounts> {
    return this.create("active", key, parent, opts);
  }

  view(key: string, parent?: string, opts?: { labels?: Record<string, string> }): Promise<SnapshotMounts> {
    return this.create("view", key, parent, opts);
  }

  mounts(key: string, opts?: { idmap?: IdmapSpec }): Promise<SnapshotMounts> {
    return this.op(() => {
      const k = checkKey(key, "key");
      if (opts !== undefined && (typeof opts !== "object" || opts === null)) throw invalidArgType("opts", "of type object", opts);
      const idmap = opts?.idmap;
      if (idmap !== undefined) checkIdmapSpec(idmap, "opts.idmap");
      const spec = this.meta().read((tx) => this.mountsOf(tx, tx.mustGet(k)));
      return idmap !== undefined ? { ...spec, idmap } : spec;
    }, true);
  }

  dir(key: string): Promise<string> {
    return this.op(() => {
      const k = checkKey(key, "key");
      const row = this.meta().read((tx) => tx.mustGet(k));
      this.mustBePresent(row);
      return this.fsOf(row.id);
    }, true);
  }

  commit(name: string, key: string, opts?: { labels?: Record<string, string> }): Promise<void> {
    return this.op(async () => {
      const n = checkKey(name, "name");
      const k = checkKey(key, "key");
      const { labels } = checkOpts(opts, "opts");
      for (let attempt = 0; ; attempt++) {
        // Early checks, so that a doomed commit does not walk the layer first.
        const row = this.meta().read((tx) => tx.committable(k, n));
        this.mustBePresent(row);
        // Outside any lock: a big layer takes a while to walk.
        let usage: Usage;
        try {
          usage = await diskUsage(this.fsOf(row.id));
        } catch (e) {
          // Removed (by another process) while we walked: look again, which says what happened.
          if (errCode(e) === "ENOENT" && attempt < 3) continue;
          throw e;
        }
        try {
          this.meta().write((tx) => tx.commit(k, n, row.id, labels, usage));
          return;
        } catch (e) {
          if (e instanceof MetaError && e.code === "ERR_OVL_STORE_CHANGED" && attempt < 3) continue;
          throw e;
        }
      }
    }, true);
  }

  remove(key: string): Promise<void> {
    return this.op(async () => {
      const k = checkKey(key, "key");
      const row = this.meta().write((tx) => tx.remove(k));
      // The row is gone (committed): its directory is an orphan from here on, ours to delete or cleanup()'s.
      await this.reclaim(String(row.id));
    });
  }

  /** Moves an entry of `snapshots/` out of the way (rm-*) and deletes it; false when it was not there. */
  private async reclaim(name: string): Promise<boolean> {
    const from = join(this.snapshots, name);
    const to = name.startsWith("rm-") ? from : join(this.snapshots, `rm-${name.startsWith("new-") ? "" : `${name}-`}${suffix()}`);
    if (to !== from) {
      try {
        renameSync(from, to);
      } catch (e) {
        if (errCode(e) === "ENOENT") return false; // a cleanup() elsewhere got there first
        throw e;
      }
    }
    await removeTree(to);
    return true;
  }

  stat(key: string): Promise<SnapshotInfo> {
    return this.op(() => {
      const k = checkKey(key, "key");
      return toInfo(this.meta().read((tx) => tx.mustGet(k)));
    });
  }

  update(info: { key: string; labels?: Record<string, string> }, fieldpaths?: string[]): Promise<SnapshotInfo> {
    return this.op(() => {
      if (typeof info !== "object" || info === null) throw invalidArgType("info", "of type object", info);
      const k = checkKey(info.key, "info.key");
      // All of the given labels, "" values included: "" in `labels.NAME` means delete.
      const given = info.labels === undefined ? {} : { ...checkLabels(info.labels, "info.labels") };
      if (info.labels !== undefined) {
        for (const [name, v] of Object.entries(info.labels)) if (v === "") given[name] = "";
      }
      const paths = fieldpaths ?? [];
      if (!Array.isArray(paths)) throw invalidArgType("fieldpaths", "an array of strings", fieldpaths);
      paths.forEach((path, i) => {
        if (typeof path !== "string") throw invalidArgType(`fieldpaths[${i}]`, "of type string", path);
        if (path !== "labels" && !(path.startsWith("labels.") && path.length > "labels.".length)) {
          throw invalidArgValue(
            `fieldpaths[${i}]`,
            path,
            `cannot be updated on snapshot '${k}': only "labels" and "labels.NAME" are mutable`,
          );
        }
      });
      const clean = (l: Record<string, string>) => Object.fromEntries(Object.entries(l).filter(([, v]) => v !== ""));
      return toInfo(
        this.meta().write((tx) => {
          const row = tx.mustGet(k);
          let next: Record<string, string>;
          if (paths.length === 0) next = clean(given);
          else {
            next = { ...row.labels };
            for (const path of paths) {
              if (path === "labels") next = clean(given);
              else {
                const name = path.slice("labels.".length);
                const v = Object.hasOwn(given, name) ? given[name]! : "";
                if (v === "") delete next[name];
                else next[name] = v;
              }
            }
          }
          return tx.setLabels(row.id, next);
        }),
      );
    });
  }

  list(filters?: string[]): Promise<SnapshotInfo[]> {
    return this.op(() => {
      if (filters !== undefined && !Array.isArray(filters)) throw invalidArgType("filters", "an array of strings", filters);
      const parsed = parseFilters(filters ?? []);
      return this.meta()
        .read((tx) => tx.all())
        .map(toInfo)
        .filter((i) => matches(i, parsed));
    });
  }

  walk(fn: (info: SnapshotInfo) => void | Promise<void>, filters?: string[]): Promise<void> {
    return this.op(async () => {
      if (typeof fn !== "function") throw invalidArgType("fn", "of type function", fn);
      for (const info of await this.list(filters)) await fn(info);
    });
  }

  usage(key: string): Promise<Usage> {
    return this.op(async () => {
      const k = checkKey(key, "key");
      const row = this.meta().read((tx) => tx.mustGet(k));
      if (row.kind === "committed" && row.size !== null && row.inodes !== null) return { size: row.size, inodes: row.inodes };
      this.mustBePresent(row);
      return diskUsage(this.fsOf(row.id));
    }, true);
  }

  cleanup(): Promise<{ removed: string[] }> {
    return this.op(async () => {
      // Under the write lock: no prepare is between its rename and its COMMIT, so every entry without a row
      // is garbage. Only renames happen under the lock; the deleting comes after.
      const victims = this.meta().write((tx) => {
        const ids = tx.ids();
        const out: { name: string; path: string }[] = [];
        for (const name of readdirSync(this.snapshots)) {
          if (/^[1-9][0-9]*$/.test(name) && ids.has(Number(name))) continue;
          const from = join(this.snapshots, name);
          if (name.startsWith("rm-")) {
            out.push({ name, path: from });
            continue;
          }
          const to = join(this.snapshots, `rm-${name.startsWith("new-") ? "" : `${name}-`}${suffix()}`);
          try {
            renameSync(from, to);
          } catch (e) {
            if (errCode(e) === "ENOENT") continue;
            throw e;
          }
          out.push({ name, path: to });
        }
        return out;
      });
      const removed: string[] = [];
      for (const v of victims) {
        try {
          if (await removeTree(v.path)) removed.push(v.name);
        } catch (e) {
          if (errCode(e) !== "ENOENT") throw e;
        }
      }
      return { removed };
    });
  }

  check(): Promise<StoreCheck> {
    return this.op(() =>
      // The write lock, for the same reason as cleanup(): a prepare's new directory is not an orphan yet.
      this.meta().write((tx) => {
        const rows = tx.all();
        const missing: StoreCheck["missing"] = [];
        const ids = new Set<number>();
        for (const row of rows) {
          ids.add(row.id);
          const m = this.missingOf(row);
          if (m !== undefined) missing.push({ key: row.key, id: row.id, path: m });
        }
        const orphans = readdirSync(this.snapshots).filter((name) => !(/^[1-9][0-9]*$/.test(name) && ids.has(Number(name))));
        const empty = this.emptyProblem();
        return { missing, orphans, ...(empty !== undefined ? { empty } : {}) };
      }),
    );
  }

  close(): void {
    this.ms?.close();
    this.ms = undefined;
  }

  putImage(
    name: string,
    image: { manifestDigest: string; configDigest: string; config: unknown; chainIds: string[]; labels?: Record<string, string> },
  ): Promise<void> {
    return this.op(() => {
      const n = checkKey(name, "name");
      if (typeof image !== "object" || image === null) throw invalidArgType("image", "of type object", image);
      const manifestDigest = checkKey(image.manifestDigest, "image.manifestDigest");
      const configDigest = checkKey(image.configDigest, "image.configDigest");
      if (!Array.isArray(image.chainIds)) throw invalidArgType("image.chainIds", "an array of strings", image.chainIds);
      const chainIds = image.chainIds.map((c, i) => checkKey(c, `image.chainIds[${i}]`));
      const labels = checkLabels(image.labels, "image.labels");
      if (image.config !== undefined) {
        try {
          JSON.stringify(image.config);
        } catch (e) {
          throw invalidArgValue("image.config", "<object>", `must be JSON-serialisable (${(e as Error).message})`);
        }
      }
      this.meta().write((tx) => tx.putImage({ name: n, manifestDigest, configDigest, config: image.config ?? null, chainIds, labels }));
    });
  }

  getImage(name: string): Promise<ImageRecord | undefined> {
    return this.op(() => {
      const n = checkKey(name, "name");
      const r = this.meta().read((tx) => tx.getImage(n));
      return r && toImageRecord(r);
    });
  }

  listImages(): Promise<ImageRecord[]> {
    return this.op(() => this.meta().read((tx) => tx.listImages()).map(toImageRecord));
  }

  removeImage(name: string): Promise<boolean> {
    return this.op(() => {
      const n = checkKey(name, "name");
      return this.meta().write((tx) => tx.removeImage(n));
    });
  }
}

export interface OpenStoreOptions {
  /** Make the store (directories and database) when it is not there. Default true. */
  create?: boolean;
  /** How long an operation waits for another process's write lock, ms. Default 30 000. */
  busyTimeout?: number;
}

/**
 * Opens the snapshot store at `root`, making it unless `create: false` (then ERR_OVL_STORE_NOT_FOUND when
 * there is none). Several processes may have one store open at once.
 */
export async function openStore(root: string, opts?: OpenStoreOptions): Promise<Store> {
  if (typeof root !== "string") throw invalidArgType("root", "of type string", root);
  if (root === "" || root.includes("\0")) throw invalidArgValue("root", root, "must be a non-empty path without null bytes");
  if (opts !== undefined && (typeof opts !== "object" || opts === null)) throw invalidArgType("opts", "of type object", opts);
  const create = opts?.create ?? true;
  const abs = resolve(root);
  const db = join(abs, "metadata.db");
  try {
    if (!create) {
      if (!existsSync(db)) throw new StoreError("ERR_OVL_STORE_NOT_FOUND", `no snapshot store at '${abs}' (no metadata.db there)`);
    } else {
      mkdirSync(abs, { recursive: true, mode: 0o700 });
    }
    for (const [name, mode] of [
      ["snapshots", 0o700],
      ["empty", 0o555],
    ] as const) {
      try {
        mkdirSync(join(abs, name), mode);
      } catch (e) {
        if (errCode(e) !== "EEXIST") throw e;
      }
    }
    const ms = MetaStore.open(db, { create, ...(opts?.busyTimeout !== undefined ? { busyTimeout: opts.busyTimeout } : {}) });
    return new SnapshotStore(abs, ms);
  } catch (e) {
    throw storeError(e);
  }
}
