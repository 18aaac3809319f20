/**
 * Watching the mount table, the way `findmnt --poll` does: an open mountinfo file reports POLLPRI once per
 * change (the addon polls on the libuv thread pool, never on the main thread), then the table is re-read and
 * diffed against the last one. Only lines that changed are parsed again.
 *
 * The kernel remembers the table's event counter per open file, at open and at each poll that reported, so
 * a change made while nobody is polling (the consumer is busy with an event) is reported by the next poll.
 * Changes that cancel out between two reads (a mount made and removed again) are not seen, as with findmnt.
 */
import { readlink } from "node:fs/promises";
import { constants } from "node:os";
import { OverlayError, fromNative, invalidArgType } from "../kernel/errors.js";
import { type PathEncoding, checkEncoding, decodeBytes } from "../kernel/bytes.js";
import { MountInfoParseError, mountInfoOut, parseMountInfoLine, type MountInfoIssue } from "./mountinfo.js";
import { native, type NativeFailure, type NativeMountWatcher } from "../kernel/native.js";
import { toOverlayMount } from "../mounting/overlay-options.js";
import { OVERLAY_PATHS, checkTableOptions, isOverlay, settleUpperWork } from "./table.js";
import type { MountInfo, OverlayMount } from "../types.js";

export interface WatchOptions {
  /** Every mount, not only overlays. */
  all?: boolean;
  /**
   * Watch another process's mount namespace (/proc/PID/mountinfo). The iteration ends when that process
   * exits or moves to another mount namespace.
   */
  pid?: number;
  /** Aborting ends the iteration (like `break`; no AbortError) and closes the table. */
  signal?: AbortSignal;
  /** Throw (end the iteration with a MountInfoParseError) on a malformed mountinfo line instead of skipping it. */
  strict?: boolean;
  /** Called once with each malformed line that was skipped, when it first appears in the table. */
  onIssue?: (issue: MountInfoIssue) => void;
  /** Path fields of the events' mounts as strings (`"utf8"`, the default) or Buffers (`"buffer"`), as list() has. */
  encoding?: PathEncoding;
}

/** One change to the mount table. */
export interface MountEvent<T extends MountInfo = MountInfo | OverlayMount> {
  /**
   * `mount`: a new mount. `umount`: a mount is gone (`mount` is how it last looked). `change`: a mount kept
   * its id, target and device but something else changed (options after a remount, propagation).
   */
  type: "mount" | "umount" | "change";
  mount: T;
  /** For `change`: the mount as it was before. */
  previous?: T;
}

/** What `watch()` returns: an async iterator of events that closes the table when the consumer stops. */
export interface MountWatch<T extends MountInfo = MountInfo | OverlayMount>
  extends AsyncIterableIterator<MountEvent<T>>,
    AsyncDisposable {
  /**
   * Settles once the table has been opened and read: changes made after this are reported. Rejects like
   * the first `next()` would (ESRCH for a missing `pid`, ...).
   */
  readonly ready: Promise<void>;
  /** Stops watching; resolves once the file is closed (at most one poll interval). Idempotent. */
  close(): Promise<void>;
}

/** How long one poll may block a thread-pool thread; bounds how long closing waits. */
const POLL_MS = 250;

/** A line of the table, parsed, with the public view of it made on first use. */
interface Entry {
  mount: MountInfo;
  /** The mount as events show it (an OverlayMount for overlays); null when filtered out. */
  view?: MountInfo | OverlayMount | null;
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

class MountTableWatch implements MountWatch {
  readonly ready: Promise<void>;
  readonly #all: boolean;
  readonly #encoding: PathEncoding;
  readonly #pid: number | undefined;
  readonly #path: string;
  readonly #strict: boolean;
  readonly #onIssue: ((issue: MountInfoIssue) => void) | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => void this.close();
  #native: NativeMountWatcher | undefined;
  /** The native call in flight, if any: the file is closed only once it returns. */
  #inflight: Promise<string | null> | undefined;
  #closed = false;
  /** The consumer stopped (close, return, abort): the iteration ends quietly, without a pending error. */
  #stopped = false;
  /** A failed start is thrown by one next() only. */
  #startErrorDelivered = false;
  /** The last table, line text to entry: an unchanged line is neither parsed nor compared field by field. */
  #table = new Map<string, Entry>();
  /** Malformed lines in the last table, so each is reported once. */
  #badLines = new Set<string>();
  /** Events not yet handed out: #queue[#head] onwards. */
  #queue: MountEvent[] = [];
  #head = 0;
  /** next() calls run one after another. */
  #chain: Promise<unknown> = Promise.resolve();
  /** The watched process's mount namespace (readlink of /proc/PID/ns/mnt) when the table was opened. */
  #namespace: string | undefined;

  constructor(o: WatchOptions) {
    this.#all = o.all === true;
    this.#encoding = checkEncoding(o.encoding);
    this.#pid = o.pid;
    this.#path = o.pid === undefined ? "/proc/self/mountinfo" : `/proc/${o.pid}/mountinfo`;
    this.#strict = o.strict === true;
    this.#onIssue = o.onIssue;
    this.#signal = o.signal;
    if (o.signal?.aborted) {
      this.#closed = this.#stopped = true;
      this.ready = Promise.resolve();
      return;
    }
    this.#native = new (native().MountWatcher)(this.#path);
    o.signal?.addEventListener("abort", this.#onAbort, { once: true });
    // Open and read now, so that changes made after watch() returns (once `ready` settles) are seen.
    this.ready = this.#start();
    this.ready.catch(() => undefined); // delivered by next(); not an unhandled rejection if nobody awaits `ready`
  }

  async #start(): Promise<void> {
    try {
      if (this.#pid !== undefined) this.#namespace = await readlink(`/proc/${this.#pid}/ns/mnt`).catch(() => undefined);
      if (this.#closed) return;
      const text = await this.#poll(0);
      if (text !== null) await this.#diff(text, true);
    } catch (e) {
      await this.#shutdown();
      throw e;
    }
  }

  /** One native next(): the first opens and reads the table, later ones wait up to `timeoutMs` for a change. */
  async #poll(timeoutMs: number): Promise<string | null> {
    const call = this.#native!.next(timeoutMs);
    this.#inflight = call;
    try {
      return await call;
    } catch (e) {
      const f = e as NativeFailure;
      if (this.#pid !== undefined && f.errno === constants.errno.ENOENT && f.syscall === "open") {
        throw new OverlayError("ESRCH", `no process with pid ${this.#pid}`, { syscall: "open", path: this.#path });
      }
      throw fromNative(f, { path: this.#path, what: `watching '${this.#path}'` });
    } finally {
      this.#inflight = undefined;
    }
  }

  next(): Promise<IteratorResult<MountEvent>> {
    const run = this.#chain.then(() => this.#nextEvent());
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #nextEvent(): Promise<IteratorResult<MountEvent>> {
    try {
      await this.ready;
    } catch (e) {
      if (this.#stopped || this.#startErrorDelivered) return DONE;
      this.#startErrorDelivered = true;
      throw e;
    }
    try {
      for (;;) {
        if (this.#head < this.#queue.length) {
          const event = this.#queue[this.#head++]!;
          if (this.#head === this.#queue.length) {
            this.#queue = []; // refilled only once drained
            this.#head = 0;
          }
          return { done: false, value: event };
        }
        if (this.#closed) return DONE;
        const text = await this.#poll(POLL_MS);
        if (this.#closed) return DONE;
        if (text !== null) await this.#diff(text, false);
        else if (await this.#processGone()) {
          await this.#shutdown();
          return DONE;
        }
      }
    } catch (e) {
      if (this.#closed) return DONE; // stopped while the failing call ran: end quietly
      await this.#shutdown();
      throw e;
    }
  }

  /** With `pid`: true once the process is gone or lives in another mount namespace. */
  async #processGone(): Promise<boolean> {
    if (this.#pid === undefined) return false;
    try {
      const now = await readlink(`/proc/${this.#pid}/ns/mnt`);
      return this.#namespace !== undefined && now !== this.#namespace;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return code === "ENOENT" || code === "ESRCH"; // gone (a zombie has no namespaces left)
    }
  }

  /** Compares a new table with the last one and queues the events, unmounts first. */
  async #diff(text: string, baseline: boolean): Promise<void> {
    const table = new Map<string, Entry>();
    const badLines = new Set<string>();
    const added: Entry[] = [];
    const n = text.length;
    let pos = 0;
    let lineNo = 0;
    while (pos < n) {
      lineNo++;
      let end = text.indexOf("\n", pos);
      if (end === -1) end = n;
      if (end > pos) {
        const line = text.slice(pos, end);
        let entry = this.#table.get(line);
        if (entry === undefined) {
          // A line sliced from the text keeps the whole text alive, and so would every field parsed from
          // it: after the first read, parse a copy so that a long watch holds one table, not one per change.
          // (The text is a byte string, one character per byte: latin1 copies it as it is.)
          const parsed = parseMountInfoLine(baseline ? line : Buffer.from(line, "latin1").toString("latin1"));
          if (typeof parsed === "string") {
            const issue: MountInfoIssue = { line: lineNo, text: decodeBytes(line), reason: parsed };
            if (this.#strict) throw new MountInfoParseError(issue);
            if (!this.#badLines.has(line)) this.#onIssue?.(issue);
            badLines.add(line);
          } else {
            entry = { mount: parsed };
            added.push(entry);
          }
        }
        if (entry !== undefined) table.set(line, entry);
      }
      pos = end + 1;
    }
    const previous = this.#table;
    this.#table = table;
    this.#badLines = badLines;
    if (baseline || (added.length === 0 && table.size === previous.size)) return;

    const addedById = new Map<number, Entry>();
    for (const e of added) addedById.set(e.mount.id, e);
    const removed: Entry[] = [];
    for (const [line, e] of previous) if (!table.has(line)) removed.push(e);

    const umounts: Entry[] = [];
    const changes: Array<[before: Entry, after: Entry]> = [];
    const paired = new Set<Entry>();
    for (const before of removed) {
      const after = addedById.get(before.mount.id);
      if (after !== undefined && sameMount(before.mount, after.mount)) {
        changes.push([before, after]);
        paired.add(after);
      } else {
        umounts.push(before);
      }
    }
    // Children are listed after their parents: report their unmounts first.
    umounts.reverse();
    const events: MountEvent[] = [];
    for (const e of umounts) {
      const mount = await this.#view(e);
      if (mount) events.push({ type: "umount", mount });
    }
    for (const [before, after] of changes) {
      const mount = await this.#view(after);
      const prev = await this.#view(before);
      if (mount && prev) events.push({ type: "change", mount, previous: prev });
    }
    for (const e of added) {
      if (paired.has(e)) continue;
      const mount = await this.#view(e);
      if (mount) events.push({ type: "mount", mount });
    }
    if (!this.#closed) for (const e of events) this.#queue.push(e);
  }

  /** The mount as events show it, made once per entry (an unmount event carries the mount event's object). */
  async #view(e: Entry): Promise<MountInfo | OverlayMount | null> {
    if (e.view === undefined) {
      if (isOverlay(e.mount)) {
        const root = this.#pid === undefined ? "" : `/proc/${this.#pid}/root`;
        e.view = mountInfoOut(await settleUpperWork(toOverlayMount(e.mount), root), this.#encoding, OVERLAY_PATHS);
      } else {
        e.view = this.#all ? mountInfoOut(e.mount, this.#encoding) : null;
      }
    }
    return e.view;
  }

  async return(): Promise<IteratorResult<MountEvent>> {
    await this.close();
    return DONE;
  }

  close(): Promise<void> {
    this.#stopped = true;
    return this.#shutdown();
  }

  async #shutdown(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#queue = [];
      this.#head = 0;
      this.#signal?.removeEventListener("abort", this.#onAbort);
      this.#native?.close(); // deferred by the addon until a pending poll returns
    }
    // The file is closed when the call in flight returns (within POLL_MS).
    await this.#inflight?.catch(() => undefined);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The same mount, as far as the table can tell: same id, mount point and device (an id can be reused). */
function sameMount(a: MountInfo, b: MountInfo): boolean {
  return a.id === b.id && a.target === b.target && a.major === b.major && a.minor === b.minor;
}

function checkWatchOptions(opts: unknown): WatchOptions {
  const o = checkTableOptions<WatchOptions>(opts);
  const signal = o.signal as unknown;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgType("options.signal", "an instance of AbortSignal", signal);
  }
  return o;
}

/**
 * Yields mount, unmount and change events of overlays (or of every mount with `all`) in this mount namespace,
 * or in another process's with `pid`, as they happen. The table is opened at once; `ready` settles when it
 * has been read. Stop with `break` (or `return()`), `close()`, the `signal`, or an `await using` scope: each
 * closes the file, waiting at most one poll interval (250 ms) for the poll in flight.
 *
 *   for await (const e of overlay.watch()) console.log(e.type, e.mount.target);
 */
export function watch(opts?: WatchOptions & { all?: false }): MountWatch<OverlayMount>;
export function watch(opts: WatchOptions): MountWatch<MountInfo | OverlayMount>;
export function watch(opts?: WatchOptions): MountWatch<MountInfo | OverlayMount> {
  return new MountTableWatch(checkWatchOptions(opts));
}
