/**
 * Race suite (issue 10): a swapper process flips a name between a real directory and a symlink with
 * renameat2(RENAME_EXCHANGE) as fast as the kernel allows, while ovl mounts, unmounts, diffs or answers
 * `which` through that name. Every case
 * - makes at least 200 attempts against the running swapper,
 * - judges escapes on its own (the mount table read straight from /proc/self/mountinfo, sentinel files,
 *   which files still exist), never through what ovl reports about itself,
 * - asserts zero escapes, and that the swap really raced: both outcomes (the real directory seen, the
 *   symlink seen) were counted, so a run that never raced cannot pass.
 * Each case prints one `race:` line with its figures, and failures carry the same line.
 *
 * An escape is what the issue calls one: a mount on, a byte removed from, or anything read from a
 * directory other than the one that was checked. A "mismatch" is a refusal that did not come from ovl's
 * own check of what it saw, but from the kernel seeing something else (a second lookup): no harm was
 * done, but it proves the check and the mount looked at different directories. (With `string` and `legacy`
 * the table shows layers as /proc/self/fd/N, so there escapes are judged by the sentinels and surviving files.)
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as overlay from "../src/index.js";
import type { MountSpec, MountStrategy, MountedOverlay } from "../src/index.js";
import { killChild, mountsUnder, rawMounts, requirePrivateMountNamespace, scratch, type RawMount, type Scratch } from "./helpers.js";

const SWAPPER_SOURCE = fileURLToPath(new URL("./swap/exchange.c", import.meta.url));
let swapperBin: string;
let binDir: string | undefined;

let s: Scratch;
const children = new Set<ChildProcess>();

beforeAll(() => {
  requirePrivateMountNamespace();
  binDir = mkdtempSync("/tmp/race-bin-");
  swapperBin = join(binDir, "exchange");
  execFileSync("cc", ["-O2", "-Wall", "-o", swapperBin, SWAPPER_SOURCE], { stdio: ["ignore", "inherit", "inherit"] });
});
afterAll(() => {
  if (binDir) rmSync(binDir, { recursive: true, force: true });
});
beforeEach(() => {
  s = scratch("race-");
});
afterEach(async () => {
  // The swapper first: it would otherwise keep renaming inside the directory being removed.
  for (const c of children) await killChild(c);
  children.clear();
  s.cleanup();
});

// --- the swapper -------------------------------------------------------------------------------------

class Swapper {
  private stderr = "";
  private constructor(readonly child: ChildProcess & { pid: number }) {
    child.stderr!.on("data", (d: Buffer) => (this.stderr += d.toString()));
  }

  /** Starts swapping the names `a` and `b`; resolves once the loop runs. */
  static async start(a: string, b: string): Promise<Swapper> {
    const c = spawn(swapperBin, [a, b], { stdio: ["ignore", "pipe", "pipe"] });
    children.add(c);
    const sw = new Swapper(c as ChildProcess & { pid: number });
    await new Promise<void>((resolve, reject) => {
      c.stdout!.once("data", () => resolve());
      c.once("exit", (code) => reject(new Error(`the swapper exited (${code}) before it started: ${sw.stderr}`)));
      c.once("error", reject);
    });
    return sw;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Why it is not running, for failure messages. */
  get status(): string {
    return this.alive ? "running" : `exited (${this.child.exitCode ?? this.child.signalCode}): ${this.stderr.trim()}`;
  }

  private state(): string {
    const stat = readFileSync(`/proc/${this.child.pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  }

  /** Stops it (SIGSTOP) and waits until it is stopped: the names then stay as they are. */
  async pause(): Promise<void> {
    if (!this.alive) throw new Error(`the swapper is not running: ${this.status}`);
    this.child.kill("SIGSTOP");
    for (let i = 0; i < 10_000; i++) {
      if (/[Tt]/.test(this.state())) return;
      if (i > 100) await sleep(1);
    }
    throw new Error("the swapper did not stop");
  }

  resume(): void {
    this.child.kill("SIGCONT");
  }

  /** Pauses it with `path` a real directory (not the symlink). */
  async pauseWithDirAt(path: string): Promise<void> {
    for (let i = 0; i < 1000; i++) {
      await this.pause();
      if (lstatSync(path).isDirectory()) return;
      this.resume();
      await sleep(0);
    }
    throw new Error(`'${path}' never was the directory while the swapper was paused`);
  }

  async stop(): Promise<void> {
    this.resume();
    await killChild(this.child);
    children.delete(this.child);
  }
}

// --- the figures -------------------------------------------------------------------------------------

/** Per case: how many attempts had each outcome, and which attempts escaped (an attempt counts once). */
class Tally {
  attempts = 0;
  readonly counts = new Map<string, number>();
  private readonly escaped = new Map<number, string>();
  private readonly mismatched = new Map<number, string>();
  constructor(readonly name: string) {}

  count(outcome: string): void {
    this.counts.set(outcome, (this.counts.get(outcome) ?? 0) + 1);
  }
  /** Attempts whose outcome is `outcome`, or starts with `outcome (`. */
  n(outcome: string): number {
    let sum = 0;
    for (const [k, v] of this.counts) if (k === outcome || k.startsWith(`${outcome} (`)) sum += v;
    return sum;
  }
  escape(attempt: number, note: string): void {
    const had = this.escaped.get(attempt);
    this.escaped.set(attempt, had ? `${had}; ${note}` : `attempt ${attempt}: ${note}`);
  }
  mismatch(attempt: number, note: string): void {
    this.mismatched.set(attempt, `attempt ${attempt}: ${note}`);
  }
  get escapes(): number {
    return this.escaped.size;
  }
  get mismatches(): number {
    return this.mismatched.size;
  }
  summary(swapper?: Swapper): string {
    const outcomes = [...this.counts].map(([k, v]) => `${k} ${v}`).join(", ");
    return (
      `race: ${this.name}: ${this.attempts} attempts; ${outcomes}; ` +
      `escapes ${this.escapes}/${this.attempts}${kinds(this.escaped)}; mismatches ${this.mismatches}/${this.attempts}${kinds(this.mismatched)}` +
      (swapper && !swapper.alive ? `; swapper ${swapper.status}` : "")
    );
  }
}

/** Notes grouped by kind (scratch paths and numbers blanked out), the commonest first, each with an example. */
function kinds(notes: Map<number, string>): string {
  if (notes.size === 0) return "";
  const groups = new Map<string, { n: number; example: string }>();
  for (const note of notes.values()) {
    const kind = note.replace(/^attempt \d+: /, "").replace(/\/tmp\/race-[^/ ',)]+/g, "S").replace(/\bplink\//g, "p/").replace(/\d+/g, "N");
    const g = groups.get(kind) ?? { n: 0, example: note };
    g.n++;
    groups.set(kind, g);
  }
  const top = [...groups.values()].sort((a, b) => b.n - a.n).slice(0, 4);
  const cut = (t: string) => (t.length > 300 ? `${t.slice(0, 300)}...` : t);
  return ` [${top.map((g) => `${g.n}x ${cut(g.example)}`).join(" | ")}${groups.size > 4 ? ` | ${groups.size - 4} more kinds` : ""}]`;
}

/** Prints the figures, then asserts zero escapes, zero mismatches, and that each given outcome happened. */
function verdict(t: Tally, sw: Swapper | undefined, raced: string[]): void {
  const line = t.summary(sw);
  console.log(line);
  if (sw) expect(sw.alive, line).toBe(true);
  expect(t.escapes, line).toBe(0);
  expect(t.mismatches, line).toBe(0);
  for (const outcome of raced) expect(t.n(outcome), `${line}: no attempt had the outcome '${outcome}'`).toBeGreaterThan(0);
}

/**
 * A refusal by ovl's own check (before any syscall, so the kernel wrote nothing), with the rule's code and
 * words; the kernel's ELOOP carries a hint that also says "inside", hence the quote before "is inside".
 */
function isCheckRefusal(e: unknown, code: string, words: RegExp): boolean {
  return e instanceof overlay.OverlayError && e.code === code && e.kernelMessages.length === 0 && words.test(e.message);
}

/** Whether every refusal must be ovl's own check (the fd strategy: nothing is looked up twice). */
const strict = (strategy: MountStrategy | undefined) => strategy === undefined || strategy === "auto" || strategy === "fd";

/**
 * Unmounts through the handle, as a caller would. An escape if that fails or leaves the mount; a handle that
 * claims a target outside the scratch dir (legacy once described `/`) is not unmounted through, but counted.
 */
async function unmountThrough(t: Tally, i: number, m: MountedOverlay, sw?: Swapper): Promise<void> {
  if (!m.target.startsWith(`${s.dir}/`)) {
    t.escape(i, `the handle of mount ${m.id} says its target is '${m.target}'; not unmounting through it`);
    return;
  }
  const before = rawMounts().filter((r) => r.id !== m.id).map((r) => r.id);
  let refused: unknown;
  try {
    await m.unmount();
  } catch (e) {
    refused = e;
  }
  const after = new Set(rawMounts().map((r) => r.id));
  for (const id of before) if (!after.has(id)) t.escape(i, `unmount() of mount ${m.id} took down mount ${id}`);
  if (refused === undefined) {
    if (after.has(m.id)) t.escape(i, `mount ${m.id} is still there after unmount() succeeded`);
    return;
  }
  // A handle may refuse while its path is being swapped (issue 10: "or refuses with a clear error"), but only
  // cleanly: its own mount intact, and unmountable through the handle once the names hold still.
  t.count(`unmount refused while swapping (${err(refused).code})`);
  if (!(refused instanceof overlay.OverlayError) || !after.has(m.id)) {
    t.escape(i, `unmount() failed uncleanly: ${describeError(refused)}; own mount ${after.has(m.id) ? "left" : "gone"}`);
    return;
  }
  if (sw?.alive) await sw.pause();
  try {
    await m.unmount();
  } catch (e) {
    t.escape(i, `the handle could not unmount its own overlay with the names still: ${describeError(e)}`);
  } finally {
    if (sw?.alive) sw.resume();
  }
  if (rawMounts().some((r) => r.id === m.id)) t.escape(i, `mount ${m.id} is still there after unmount()`);
}

// --- judging, independently of ovl -------------------------------------------------------------------

/** A mount's super options, split on the raw commas (our paths hold no commas or escapes). */
const superOptions = (m: RawMount) => m.superOptions.split(",");

/** Overlays (anywhere in this namespace) whose super options name `dir` for `key` (`upperdir`, `workdir`, `lowerdir+`...). */
function overlaysUsing(key: string, dir: string): RawMount[] {
  return rawMounts().filter(
    (m) =>
      m.fstype === "overlay" &&
      superOptions(m).some((o) => o === `${key}=${dir}` || (key === "lowerdir" && o.startsWith("lowerdir=") && o.slice(9).split(":").includes(dir))),
  );
}

/** Takes down whatever is mounted below the scratch dir except `keep` (ids), with the swapper paused. */
async function unmountLeftovers(sw: Swapper | undefined, keep: number[] = []): Promise<RawMount[]> {
  const left = mountsUnder(s.dir).filter((m) => !keep.includes(m.id));
  if (left.length === 0) return [];
  if (sw?.alive) await sw.pause();
  try {
    for (const m of mountsUnder(s.dir).filter((x) => !keep.includes(x.id)).sort((a, b) => b.target.length - a.target.length)) {
      execFileSync("umount", ["-l", m.target]);
    }
  } finally {
    if (sw?.alive) sw.resume();
  }
  return left;
}

const err = (e: unknown) => e as overlay.OverlayError;
const describeError = (e: unknown) => `${err(e).code ?? "?"}: ${err(e).message}`;

function withStrategy(spec: MountSpec, strategy: MountStrategy | undefined): MountSpec {
  return strategy ? { ...spec, strategy } : spec;
}

// --- the cases ---------------------------------------------------------------------------------------

/**
 * Case 1. `w` flips with a symlink to a non-empty victim holding `work/keep`: a mount that used the victim as
 * its work directory has the kernel wipe `victim/work/*`, which the ENOTEMPTY rule exists to prevent.
 */
async function raceWork(strategy: MountStrategy | undefined, attempts: number): Promise<{ t: Tally; sw: Swapper }> {
  const [l1, upper, , merged] = s.dirs("l1", "upper", "w", "merged") as [string, string, string, string];
  const victim = s.path("victim");
  const sentinels: Record<string, string> = { "work/keep": "keep me", notes: "victim's notes", "sub/deep": "deep" };
  const plant = () => {
    for (const [f, c] of Object.entries(sentinels)) s.file(`victim/${f}`, c);
  };
  plant();
  symlinkSync(victim, s.path("wlink"));
  const t = new Tally(`work dir [${strategy ?? "auto"}]`);
  const sw = await Swapper.start(s.path("w"), s.path("wlink"));
  for (let i = 0; i < attempts && sw.alive; i++) {
    t.attempts++;
    let m: MountedOverlay | undefined;
    let failure: unknown;
    try {
      m = await overlay.mount(withStrategy({ lower: [l1], upper, work: s.path("w"), target: merged }, strategy));
    } catch (e) {
      failure = e;
    }
    const lost = Object.entries(sentinels)
      .filter(([f, c]) => {
        try {
          return readFileSync(`${victim}/${f}`, "utf8") !== c;
        } catch {
          return true;
        }
      })
      .map(([f]) => f);
    const onVictim = overlaysUsing("workdir", victim);
    if (lost.length || onVictim.length) {
      t.escape(i, `(${m ? "mounted" : `refused ${err(failure).code}`}): victim lost [${lost.join(", ")}]` +
        `${onVictim.length ? `, an overlay has workdir=${victim}` : ""}`);
    }
    if (m) {
      t.count("mounted");
      await unmountThrough(t, i, m);
    } else {
      t.count(`refused (${err(failure).code})`);
      // With fds, the only refusal is the check's own; string/legacy may also take a mismatched mount down.
      if (strict(strategy) && !isCheckRefusal(failure, "ENOTEMPTY", /is not empty/)) t.mismatch(i, describeError(failure));
    }
    const left = await unmountLeftovers(sw);
    if (left.length) t.escape(i, `left mounted: ${left.map((x) => x.target).join(", ")}`);
    if (lost.length) {
      rmSync(`${victim}/work`, { recursive: true, force: true });
      rmSync(`${victim}/index`, { recursive: true, force: true });
      plant();
    }
  }
  return { t, sw };
}

interface LayerRace {
  name: string;
  /** Builds the layers; `a` is the name the spec uses, `b` the symlink to the victim it flips with. */
  build(): {
    spec: MountSpec;
    a: string;
    b: string;
    victim: string;
    /** A file only the real layer shows at the merged root. */
    realMark: string;
    /** A file only the victim shows at the merged root (when mounted as that layer). */
    victimMark: string;
    /** The mountinfo key that would name the victim. */
    key: "upperdir" | "lowerdir+";
    keep?: number[];
  };
  /** What ovl's own check says when it sees the victim. */
  refusal: { code: string; message: RegExp };
}

/** Cases 2 and 3: an upper or lower layer flips with a symlink to a victim directory. */
async function raceLayer(race: LayerRace, strategy: MountStrategy | undefined, attempts: number): Promise<{ t: Tally; sw: Swapper }> {
  const b = race.build();
  const t = new Tally(`${race.name} [${strategy ?? "auto"}]`);
  const sw = await Swapper.start(b.a, b.b);
  const target = b.spec.target;
  for (let i = 0; i < attempts && sw.alive; i++) {
    t.attempts++;
    let m: MountedOverlay | undefined;
    let failure: unknown;
    try {
      m = await overlay.mount(withStrategy(b.spec, strategy));
    } catch (e) {
      failure = e;
    }
    const named = [...overlaysUsing(b.key, b.victim), ...(b.key === "lowerdir+" ? overlaysUsing("lowerdir", b.victim) : [])];
    if (named.length) t.escape(i, `an overlay has ${b.key}=${b.victim}`);
    if (m) {
      t.count("mounted");
      const real = existsSync(`${target}/${b.realMark}`);
      const vict = existsSync(`${target}/${b.victimMark}`);
      if (vict || !real) t.escape(i, `mounted, and the merged dir shows ${vict ? "the victim's" : "not the real layer's"} marker`);
      await unmountThrough(t, i, m);
    } else {
      t.count(`refused (${err(failure).code})`);
      if (strict(strategy) && !isCheckRefusal(failure, race.refusal.code, race.refusal.message)) t.mismatch(i, describeError(failure));
    }
    const left = await unmountLeftovers(sw, b.keep);
    if (left.length) t.escape(i, `left mounted: ${left.map((x) => x.target).join(", ")}`);
  }
  return { t, sw };
}

/** Case 2, as the issue states it: the victim is on another mount (a tmpfs), so a check that sees it refuses with EXDEV. */
const upperOnOtherMount: LayerRace = {
  name: "upper, victim on another mount",
  build() {
    const [l1, , work, merged, vt] = s.dirs("l1", "u", "work", "merged", "vt") as [string, string, string, string, string];
    s.file("u/REAL_UPPER_MARK", "real upper");
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "race-victim", vt]);
    const keep = mountsUnder(vt).map((m) => m.id);
    mkdirSync(`${vt}/up`);
    writeFileSync(`${vt}/up/VICTIM_UPPER_MARK`, "victim");
    symlinkSync(`${vt}/up`, s.path("ulink"));
    return {
      spec: { lower: [l1], upper: s.path("u"), work, target: merged },
      a: s.path("u"),
      b: s.path("ulink"),
      victim: `${vt}/up`,
      realMark: "REAL_UPPER_MARK",
      victimMark: "VICTIM_UPPER_MARK",
      key: "upperdir",
      keep,
    };
  },
  refusal: { code: "EXDEV", message: /different mounts/ },
};

/**
 * Case 2, a victim the kernel itself would take: a directory inside the lower layer. ovl refuses an upper
 * inside a lower (ELOOP); the kernel only checks lower layers against the others, so it mounts it.
 */
const upperInsideLower: LayerRace = {
  name: "upper, victim inside the lower layer",
  build() {
    const [l1, , work, merged] = s.dirs("l1", "u", "work", "merged") as [string, string, string, string];
    s.file("u/REAL_UPPER_MARK", "real upper");
    s.file("l1/vu/VICTIM_UPPER_MARK", "victim");
    symlinkSync(`${l1}/vu`, s.path("ulink"));
    return {
      spec: { lower: [l1], upper: s.path("u"), work, target: merged },
      a: s.path("u"),
      b: s.path("ulink"),
      victim: `${l1}/vu`,
      realMark: "REAL_UPPER_MARK",
      victimMark: "VICTIM_UPPER_MARK",
      key: "upperdir",
    };
  },
  refusal: { code: "ELOOP", message: /inside/ },
};

/** Case 3, as the issue states it: the victim is nested inside the upper layer (ovl: ELOOP, "inside"). */
const lowerInsideUpper: LayerRace = {
  name: "lower, victim inside the upper layer",
  build() {
    const [, upper, work, merged] = s.dirs("lo", "u", "work", "merged") as [string, string, string, string];
    s.file("lo/REAL_LOWER_MARK", "real lower");
    s.file("u/inner/VICTIM_LOWER_MARK", "victim");
    symlinkSync(`${upper}/inner`, s.path("lolink"));
    return {
      spec: { lower: [s.path("lo")], upper, work, target: merged },
      a: s.path("lo"),
      b: s.path("lolink"),
      victim: `${upper}/inner`,
      realMark: "REAL_LOWER_MARK",
      victimMark: "VICTIM_LOWER_MARK",
      key: "lowerdir+",
    };
  },
  refusal: { code: "ELOOP", message: /inside/ },
};

/**
 * Case 3, a victim the kernel itself would take: a directory that holds the upper and work directories.
 * ovl refuses an upper inside a lower (ELOOP); the kernel mounts it.
 */
const lowerHoldingUpper: LayerRace = {
  name: "lower, victim holding upper and work",
  build() {
    const [, upper, work, merged] = s.dirs("lo", "vroot/u", "vroot/w", "merged") as [string, string, string, string];
    s.file("lo/REAL_LOWER_MARK", "real lower");
    s.file("vroot/VICTIM_LOWER_MARK", "victim");
    symlinkSync(s.path("vroot"), s.path("lolink"));
    return {
      spec: { lower: [s.path("lo")], upper, work, target: merged },
      a: s.path("lo"),
      b: s.path("lolink"),
      victim: s.path("vroot"),
      realMark: "REAL_LOWER_MARK",
      victimMark: "VICTIM_LOWER_MARK",
      key: "lowerdir+",
    };
  },
  refusal: { code: "ELOOP", message: /inside/ },
};

/**
 * Case 4. The target is `p/t`; `p` flips with a symlink to `q`, and `q/t` exists too. Either is a legitimate
 * place (whichever the one lookup saw); the handle must say where the overlay really is, and unmount it.
 * The real `p` directory is named `p` or `plink` at any moment, so its `t` shows as either in the table.
 */
async function raceTargetParent(strategy: MountStrategy | undefined, attempts: number): Promise<{ t: Tally; sw: Swapper }> {
  const [l1, upper, work] = s.dirs("l1", "upper", "work", "p/t", "q/t") as [string, string, string];
  s.file("l1/LOWER_MARK", "lower");
  symlinkSync(s.path("q"), s.path("plink"));
  const where = (path: string | undefined) =>
    path === s.path("q/t") ? "q/t" : path === s.path("p/t") || path === s.path("plink/t") ? "p/t" : `elsewhere (${path})`;
  const t = new Tally(`target parent [${strategy ?? "auto"}]`);
  const sw = await Swapper.start(s.path("p"), s.path("plink"));
  for (let i = 0; i < attempts && sw.alive; i++) {
    t.attempts++;
    let m: MountedOverlay | undefined;
    try {
      m = await overlay.mount(withStrategy({ lower: [l1], upper, work, target: s.path("p/t") }, strategy));
    } catch (e) {
      t.count(`refused (${err(e).code})`);
      if (strict(strategy)) t.mismatch(i, describeError(e));
    }
    if (m) {
      const said = where(m.target);
      const entry = rawMounts().find((r) => r.id === m!.id);
      const is = entry ? where(entry.target) : "not mounted";
      t.count(`mounted at ${said}`);
      if (said !== is) t.escape(i, `the handle says ${m.target}, the table has mount ${m.id} at ${entry?.target ?? "nowhere"}`);
      await unmountThrough(t, i, m, sw);
    }
    const left = await unmountLeftovers(sw);
    if (left.length) t.escape(i, `left mounted: ${left.map((x) => x.target).join(", ")}`);
  }
  return { t, sw };
}

describe("race: mount() with a swapped work directory (case 1)", () => {
  it("never uses the non-empty victim as work dir: mounts on the real one or refuses with ENOTEMPTY", async () => {
    const { t, sw } = await raceWork(undefined, 300);
    verdict(t, sw, ["mounted", "refused (ENOTEMPTY)"]);
    await sw.stop();
  });
});

describe("race: mount() with a swapped upper layer (case 2)", () => {
  it("victim on another mount: mounts the real upper or refuses with EXDEV, never the kernel's own refusal", async () => {
    const { t, sw } = await raceLayer(upperOnOtherMount, undefined, 300);
    verdict(t, sw, ["mounted", "refused (EXDEV)"]);
    await sw.stop();
  });

  it("victim inside the lower layer (which the kernel would mount): never mounted as upper", async () => {
    const { t, sw } = await raceLayer(upperInsideLower, undefined, 300);
    verdict(t, sw, ["mounted", "refused (ELOOP)"]);
    await sw.stop();
  });
});

describe("race: mount() with a swapped lower layer (case 3)", () => {
  it("victim inside the upper layer: mounts the real lower or refuses with ELOOP, never the kernel's own refusal", async () => {
    const { t, sw } = await raceLayer(lowerInsideUpper, undefined, 300);
    verdict(t, sw, ["mounted", "refused (ELOOP)"]);
    await sw.stop();
  });

  it("victim holding upper and work (which the kernel would mount): never mounted as lower", async () => {
    const { t, sw } = await raceLayer(lowerHoldingUpper, undefined, 300);
    verdict(t, sw, ["mounted", "refused (ELOOP)"]);
    await sw.stop();
  });
});

describe("race: the target's parent swapped (case 4)", () => {
  it("the overlay is where its handle says (p/t or q/t, whichever the lookup saw), and the handle unmounts it", async () => {
    const { t, sw } = await raceTargetParent(undefined, 300);
    verdict(t, sw, ["mounted at p/t", "mounted at q/t"]);
    await sw.stop();
  });

  it("a handle unmounts its own overlay or refuses, and never the tmpfs that the swapped path leads to", async () => {
    const [l1, upper, work] = s.dirs("l1", "upper", "work", "p/t", "q/t") as [string, string, string];
    symlinkSync(s.path("q"), s.path("plink"));
    const qt = s.path("q/t");
    const mountTmpfs = () => {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "race-bystander", qt]);
      writeFileSync(`${qt}/BYSTANDER_MARK`, "tmpfs");
      return mountsUnder(qt).find((m) => m.target === qt)!.id;
    };
    let tmpfsId = mountTmpfs();
    const t = new Tally("target parent, unmount through the handle [auto]");
    const sw = await Swapper.start(s.path("p"), s.path("plink"));
    for (let i = 0; i < 300 && sw.alive; i++) {
      t.attempts++;
      // Mount with the names held still, `p` the real directory: the overlay is at the real p/t.
      await sw.pauseWithDirAt(s.path("p"));
      let m: MountedOverlay;
      try {
        m = await overlay.mount({ lower: [l1], upper, work, target: s.path("p/t") });
        const at = rawMounts().find((r) => r.id === m.id)?.target;
        if (at !== s.path("p/t")) throw new Error(`the premise failed: mount ${m.id} is at ${at}, not on the real p/t`);
      } finally {
        sw.resume();
      }
      // Then unmount it while `p` flips: by unmount() or by `await using`'s disposal, alternately.
      const how = i % 2 === 0 ? "unmount()" : "asyncDispose";
      const probe = () => t.count(`probe: p seen as ${lstatSync(s.path("p")).isDirectory() ? "dir" : "symlink"}`);
      probe();
      let failure: unknown;
      try {
        await (how === "unmount()" ? m.unmount() : m[Symbol.asyncDispose]());
      } catch (e) {
        failure = e;
      }
      probe();
      const table = rawMounts();
      const ownLeft = table.some((r) => r.id === m.id);
      const tmpfsLeft = table.some((r) => r.id === tmpfsId);
      if (!tmpfsLeft) {
        t.count(`unmounted the tmpfs (${how})`);
        t.escape(i, `(${how}): the tmpfs at q/t was unmounted${failure ? "" : " and the call succeeded"}`);
      }
      if (failure === undefined && ownLeft) t.escape(i, `(${how}): succeeded but its overlay is still mounted`);
      if (failure !== undefined && !ownLeft) t.escape(i, `(${how}): failed (${describeError(failure)}) yet its overlay is gone`);
      if (failure === undefined && !ownLeft) t.count(`unmounted own (${how})`);
      if (failure !== undefined && ownLeft) {
        t.count(`refused (${how}, ${err(failure).code})`);
        if (!(failure instanceof overlay.OverlayError)) t.escape(i, `not an OverlayError: ${String(failure)}`);
      }
      if (!tmpfsLeft || ownLeft) {
        await sw.pause();
        try {
          for (const r of mountsUnder(s.dir).filter((x) => x.id !== tmpfsId).sort((a, b) => b.target.length - a.target.length)) {
            execFileSync("umount", ["-l", r.target]);
          }
          if (!rawMounts().some((r) => r.id === tmpfsId)) tmpfsId = mountTmpfs();
        } finally {
          sw.resume();
        }
      }
    }
    const line = t.summary(sw);
    console.log(line);
    expect(sw.alive, line).toBe(true);
    expect(t.escapes, line).toBe(0);
    // Racing: the loop saw `p` both ways around the unmount calls, and both kinds of call unmounted their own overlay.
    expect(t.n("probe: p seen as dir"), line).toBeGreaterThan(0);
    expect(t.n("probe: p seen as symlink"), line).toBeGreaterThan(0);
    expect(t.n("unmounted own (unmount())"), line).toBeGreaterThan(0);
    expect(t.n("unmounted own (asyncDispose)"), line).toBeGreaterThan(0);
    await sw.stop();
  });
});

describe("a symlinked target (case 5, not a race)", () => {
  it.each(["fd", "string", "legacy"] as const)("strategy %s: mounts on the directory the symlink leads to", async (strategy) => {
    const [l1, upper, work, td] = s.dirs("l1", "upper", "work", "td") as [string, string, string, string];
    s.file("l1/LOWER_MARK", "lower");
    const tl = s.path("tl");
    symlinkSync(td, tl);
    const m = await overlay.mount({ lower: [l1], upper, work, target: tl, strategy });
    try {
      expect(m.target).toBe(td);
      expect(mountsUnder(s.dir).map((r) => [r.id, r.target])).toEqual([[m.id, td]]);
      expect(lstatSync(tl).isSymbolicLink()).toBe(true);
      expect(readFileSync(`${td}/LOWER_MARK`, "utf8")).toBe("lower");
    } finally {
      await m.unmount().catch(() => undefined);
    }
    expect(mountsUnder(s.dir)).toEqual([]);
  });

  it.each(["fd", "string", "legacy"] as const)("strategy %s: a layer given as 'lnk/..' is resolved as the kernel does", async (strategy) => {
    // lnk -> deep/a/b, so the kernel's lnk/.. is deep/a; as text it would be the scratch dir itself.
    const [, upper, work, merged] = s.dirs("deep/a/b", "upper", "work", "merged") as [string, string, string, string];
    s.file("deep/a/A_MARK", "a");
    symlinkSync(s.path("deep/a/b"), s.path("lnk"));
    // Concatenated, not path.join(): join would normalise 'lnk/..' away as text, the very thing under test.
    const m = await overlay.mount({ lower: [`${s.dir}/lnk/..`], upper, work, target: merged, strategy });
    try {
      expect(readFileSync(`${merged}/A_MARK`, "utf8")).toBe("a");
      expect(m.lower).toEqual([s.path("deep/a")]);
      expect(statSync(`${merged}/b`).isDirectory()).toBe(true);
    } finally {
      await m.unmount().catch(() => undefined);
    }
    expect(mountsUnder(s.dir)).toEqual([]);
  });
});

describe("race: diff() and which() walking a swapped directory (case 6)", () => {
  it("diff() of unmounted layers never reports an entry of the victim the directory flips to", async () => {
    const [lower, upper] = s.dirs("lower", "upper") as [string, string];
    s.file("upper/d/alpha", "a");
    s.file("upper/d/beta/gamma", "g");
    const victim = s.path("victim");
    s.file("victim/VICTIM_passwd", "root:x:0:0");
    s.file("victim/VICTIM_shadow", "root:*:");
    s.file("victim/beta/VICTIM_nested", "nested");
    symlinkSync(victim, s.path("dswap"));
    const t = new Tally("diff walk [unmounted layers]");
    const sw = await Swapper.start(`${upper}/d`, s.path("dswap"));
    for (let i = 0; i < 300 && sw.alive; i++) {
      t.attempts++;
      let changes: overlay.Change[];
      try {
        changes = await overlay.diff({ upper, lower: [lower] });
      } catch (e) {
        t.count(`error (${err(e).code})`);
        if (/VICTIM|\/victim/.test(err(e).message)) t.escape(i, `the error names the victim: ${err(e).message}`);
        continue;
      }
      const leaked = changes.filter((c) => /VICTIM|\/victim/.test(c.path) || /VICTIM|\/victim/.test(c.renamedFrom ?? ""));
      if (leaked.length) t.escape(i, `reported ${leaked.map((c) => `${c.change} ${c.path}`).join(", ")}`);
      const paths = changes.map((c) => c.path);
      const children = paths.filter((p) => p.startsWith("/d/"));
      if (paths.includes("/d/alpha") && paths.includes("/d/beta/gamma")) t.count("saw d's entries");
      else if (paths.includes("/d") && children.length === 0) t.count("saw d as a symlink");
      else t.count(`other: ${paths.join(" ")}`);
    }
    verdict(t, sw, ["saw d's entries", "saw d as a symlink"]);
    await sw.stop();
  });

  it("which() on a mounted overlay never answers from the victim the upper directory flips to", async () => {
    const [work, merged] = s.dirs("lower/d", "upper/d", "work", "merged").slice(2) as [string, string];
    const [lower, upper] = [s.path("lower"), s.path("upper")];
    s.file("lower/d/lf", "lower file");
    s.file("upper/d/g", "upper file");
    // The victim has `g` as a whiteout: an answer read through the symlink says g was deleted.
    const victim = s.path("victim");
    mkdirSync(victim);
    execFileSync("mknod", [`${victim}/g`, "c", "0", "0"]);
    s.file("victim/VICTIM_which", "victim");
    symlinkSync(victim, s.path("dswap"));
    const m = await overlay.mount({ lower: [lower], upper, work, target: merged });
    // Pin the overlay's dentry for d, so that the overlay's own view stays the real directory throughout.
    const pin = openSync(`${merged}/d`, "r");
    try {
      expect(readFileSync(`${merged}/d/g`, "utf8")).toBe("upper file");
      const t = new Tally("which() [mounted overlay]");
      const sw = await Swapper.start(`${upper}/d`, s.path("dswap"));
      for (let i = 0; i < 300 && sw.alive; i++) {
        t.attempts++;
        try {
          const r = await overlay.which(`${merged}/d/g`);
          if (r.kind === "upper" && r.type === "file" && r.realPath === `${upper}/d/g`) t.count("answered upper");
          else t.escape(i, `answered ${JSON.stringify(r)}`);
        } catch (e) {
          const msg = err(e).message;
          if (/whiteout|deleted|VICTIM|\/victim/.test(msg)) t.escape(i, `${describeError(e)}`);
          else t.count(`refused (${err(e).code})`);
        }
        // The test's own premise: the overlay kept showing the real file.
        if (!lstatSync(`${merged}/d/g`).isFile()) throw new Error("the overlay's own view of d/g changed: the test is not meaningful");
      }
      const refused = [...t.counts.keys()].filter((k) => k.startsWith("refused"));
      const line = t.summary(sw);
      console.log(line);
      expect(sw.alive, line).toBe(true);
      expect(t.escapes, line).toBe(0);
      expect(t.n("answered upper"), line).toBeGreaterThan(0);
      expect(refused.length, `${line}: no attempt saw d as the symlink`).toBeGreaterThan(0);
      await sw.stop();
    } finally {
      closeSync(pin);
      await m.unmount().catch(() => undefined);
    }
  });
});

describe("race, light: the string and legacy strategies (layers handed over as magic links)", () => {
  for (const strategy of ["string", "legacy"] as const) {
    it(`strategy ${strategy}: work dir`, async () => {
      const { t, sw } = await raceWork(strategy, 200);
      verdict(t, sw, ["mounted", "refused"]);
      await sw.stop();
    });
    it(`strategy ${strategy}: upper inside the lower layer`, async () => {
      const { t, sw } = await raceLayer(upperInsideLower, strategy, 200);
      verdict(t, sw, ["mounted", "refused"]);
      await sw.stop();
    });
    it(`strategy ${strategy}: lower holding upper and work`, async () => {
      const { t, sw } = await raceLayer(lowerHoldingUpper, strategy, 200);
      verdict(t, sw, ["mounted", "refused"]);
      await sw.stop();
    });
    it(`strategy ${strategy}: target parent`, async () => {
      const { t, sw } = await raceTargetParent(strategy, 200);
      verdict(t, sw, ["mounted at p/t", "mounted at q/t"]);
      await sw.stop();
    });
  }
});
