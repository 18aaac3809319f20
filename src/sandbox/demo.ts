/**
 * `ovl demo`: the classic overlayfs walkthrough, live, in a temporary directory. Three lower layers and an
 * empty upper are mounted; the merged view is listed with the layer each name comes from; a new file lands
 * in upper; a deleted lower file leaves a whiteout (character device 0/0) in upper while the lower file stays.
 * Then it unmounts and removes everything, also when interrupted.
 *
 * It never touches the host: it always re-runs itself in a private mount namespace (a Node process cannot
 * enter new namespaces itself: it is multithreaded), `unshare -m` as root and `unshare -Urm` otherwise, where
 * it is root of a user namespace that owns the mount namespace and mounts with `userxattr`. There it mounts
 * a tmpfs on the temporary directory's parent and works in that: the overlay and every file it makes live
 * only in that namespace and end with it, even when the demo is killed (SIGKILL) or its output closed
 * (`ovl demo | head`) before it cleans up. The re-run is started by setpriv with the parent-death signal
 * SIGKILL, so that it also dies with the `ovl demo` the user started.
 */
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createInterface } from "node:readline";
import { mount } from "../index.js";
import { umount } from "../mounting/mount.js";
import { printable, style } from "../cli/output.js";
import { list } from "../table/table.js";
import { exitIfOrphaned, FORWARDED_SIGNALS, mountPseudoFs, PARENT_ENV, spawnInPrivateNamespaces } from "./run.js";
import { inUserNamespace } from "../kernel/userns.js";

/** Set in the environment of the re-run in its namespace ("root" or "user"), so that it cannot loop. */
const DEMO_NAMESPACE_ENV = "OVL_DEMO_NAMESPACE";

export interface DemoOptions {
  /** Writes one line of the walkthrough (stdout). */
  write: (line: string) => void;
  /** Mount with `userxattr` (needed inside a user namespace). */
  userxattr: boolean;
  /** Called once everything is shown and before unmounting; the demo waits for it. */
  pause?: (where: { dir: string; merged: string }) => Promise<void>;
  /** Aborting stops the walkthrough at the next step; it still unmounts and cleans up, then rejects. */
  signal?: AbortSignal;
  /** Parent of the demo's temporary directory (default `os.tmpdir()`). */
  tmp?: string;
  /** `tmp` is a tmpfs of this process's own mount namespace (says so). */
  privateTmpfs?: boolean;
}

/** `c--------- 0,0` as `ls -l` shows a device's type, permissions and numbers. */
function lsMode(mode: number): string {
  const types: Record<number, string> = { 0o140000: "s", 0o120000: "l", 0o100000: "-", 0o060000: "b", 0o040000: "d", 0o020000: "c", 0o010000: "p" };
  const type = types[mode & 0o170000] ?? "?";
  const rwx = ["r", "w", "x"];
  let perms = "";
  for (let i = 8; i >= 0; i--) perms += mode & (1 << i) ? rwx[(8 - i) % 3] : "-";
  return type + perms;
}

function devNumbers(rdev: number): string {
  // glibc's gnu_dev_major/gnu_dev_minor, on a number that fits in 53 bits.
  const big = BigInt(rdev);
  const major = ((big >> 8n) & 0xfffn) | ((big >> 32n) & ~0xfffn);
  const minor = (big & 0xffn) | ((big >> 12n) & ~0xffn);
  return `${major},${minor}`;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

async function isWhiteout(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => undefined);
  return !!st && st.isCharacterDevice() && st.rdev === 0;
}

/** Unmounts everything mounted at or below `dir` in this namespace, deepest first. */
async function unmountAllBelow(dir: string): Promise<string[]> {
  const below = (await list({ all: true }))
    .filter((m) => m.target === dir || m.target.startsWith(`${dir}/`))
    .sort((a, b) => b.target.length - a.target.length || b.id - a.id);
  const done: string[] = [];
  for (const m of below) {
    // Lazy when busy (a shell of the user's may sit in it): it is detached now and freed when left.
    await umount(m.target).catch(() => umount(m.target, { lazy: true }));
    done.push(m.target);
  }
  return done;
}

/** Runs the walkthrough. Rejects with the signal's reason when aborted, after cleaning up. */
export async function runDemo(opts: DemoOptions): Promise<void> {
  const { write, signal } = opts;
  const heading = (n: number, text: string) => write(`\n${style("bold", `Step ${n}.`)} ${style("bold", text)}`);
  const step = () => signal?.throwIfAborted();
  const q = (s: string) => JSON.stringify(s.replace(/\n$/, ""));

  const dir = await mkdtemp(join(opts.tmp ?? tmpdir(), "ovl-demo-"));
  const rel = (p: string) => printable(relative(dir, p) || ".");
  const layer = (name: string) => join(dir, name);
  const [lower1, lower2, lower3, upper, work, merged] = ["lower1", "lower2", "lower3", "upper", "work", "merged"].map(layer) as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  try {
    write(`${style("bold", "ovl demo")}: an overlay filesystem, live, in ${printable(dir)}`);
    write("An overlay shows several directories (layers) as one. Lower layers are read-only; every change");
    write("goes to the upper layer. Paths below are relative to that directory.");
    if (opts.privateTmpfs) {
      write("(All of it is in a mount namespace of the demo's own, on a tmpfs there: nothing is seen outside it, and");
      write("nothing outlives it.)");
    }

    heading(1, "Make three lower layers and an empty upper layer");
    const files: Array<[string, string]> = [
      ["lower1/motd", "hello from lower1, the top layer\n"],
      ["lower2/motd", "hello from lower2\n"],
      ["lower2/app.conf", "colour=blue\n"],
      ["lower3/motd", "hello from lower3, the bottom layer\n"],
      ["lower3/base.txt", "part of the base image\n"],
    ];
    for (const d of [lower1, lower2, lower3, upper, work, merged]) await mkdir(d);
    for (const [name, content] of files) {
      await writeFile(layer(name), content);
      write(`  ${name.padEnd(16)} ${q(content)}`);
    }
    write(`  ${"upper/".padEnd(16)} (empty: every change will land here)`);
    write(`  ${"work/".padEnd(16)} (empty: overlay's scratch space, on the same filesystem as upper)`);
    step();

    heading(2, "Mount them, top-most lower layer first, on merged/");
    write(`  $ mount -t overlay overlay -o lowerdir=lower1:lower2:lower3,upperdir=upper,workdir=work${opts.userxattr ? ",userxattr" : ""} merged`);
    write(`  $ ovl mount --lower lower1 --lower lower2 --lower lower3 --upper upper --work work${opts.userxattr ? " -o userxattr" : ""} merged`);
    if (opts.userxattr) {
      write("  (in a user namespace: `userxattr` makes overlay keep its own metadata in user.overlay.* xattrs)");
    }
    const m = await mount({
      lower: [lower1, lower2, lower3],
      upper,
      work,
      target: merged,
      ...(opts.userxattr ? { options: { userxattr: true } } : {}),
    });
    write(`  mounted: overlay on ${rel(m.target)} (mount id ${m.id})`);
    for (const w of m.warnings) process.stderr.write(`ovl: demo: ${w}\n`);
    step();

    heading(3, "The merged view: each name comes from the top-most layer that has it");
    const layers: Array<[string, string]> = [
      ["upper", upper],
      ["lower1", lower1],
      ["lower2", lower2],
      ["lower3", lower3],
    ];
    const showMerged = async () => {
      for (const name of (await readdir(merged)).sort()) {
        const holders: string[] = [];
        for (const [label, path] of layers) {
          if ((await exists(join(path, name))) && !(await isWhiteout(join(path, name)))) holders.push(label);
        }
        const from = holders[0] ?? "?";
        const hidden = holders.length > 1 ? `   (also in ${holders.slice(1).join(", ")}: hidden below)` : "";
        const content = await readFile(join(merged, name), "utf8");
        write(`  ${`merged/${name}`.padEnd(18)} from ${from.padEnd(7)} ${q(content)}${hidden}`);
      }
    };
    await showMerged();
    step();

    heading(4, "Write a new file through the overlay");
    write("  $ echo 'written through the overlay' > merged/notes.txt");
    await writeFile(join(merged, "notes.txt"), "written through the overlay\n");
    write(`  ${"upper/notes.txt".padEnd(18)} ${q(await readFile(join(upper, "notes.txt"), "utf8"))}   <- it landed in the upper layer`);
    const inLower = [];
    for (const [label, path] of layers.slice(1)) if (await exists(join(path, "notes.txt"))) inLower.push(label);
    write(`  the lower layers are unchanged: ${inLower.length === 0 ? "none of lower1, lower2, lower3 has notes.txt" : `found in ${inLower.join(", ")}!`}`);
    step();

    heading(5, "Delete a file that comes from a lower layer");
    write("  $ rm merged/base.txt");
    await unlink(join(merged, "base.txt"));
    const gone = !(await exists(join(merged, "base.txt")));
    write(`  ${"merged/base.txt".padEnd(18)} ${gone ? "gone from the merged view" : "still visible?!"}`);
    const wh = await lstat(join(upper, "base.txt"));
    const whiteout = wh.isCharacterDevice() && wh.rdev === 0;
    write(
      `  ${"upper/base.txt".padEnd(18)} ${lsMode(wh.mode)} ${wh.isCharacterDevice() || wh.isBlockDevice() ? devNumbers(wh.rdev) : wh.size}` +
        (whiteout ? "   a whiteout: a character device 0/0 that hides the lower file" : "   (not a 0/0 whiteout)"),
    );
    write(`  ${"lower3/base.txt".padEnd(18)} still there, untouched: ${q(await readFile(join(lower3, "base.txt"), "utf8"))}`);
    write("  the merged view now:");
    await showMerged();
    step();

    if (opts.pause) {
      await opts.pause({ dir, merged });
      step();
    }

    heading(6, "Unmount, then clean up");
    write("  $ umount merged");
    await m.unmount();
    const kept = (await readdir(upper)).sort();
    write(`  ${rel(merged)}/ is empty again; upper/ keeps the changes (${kept.join(", ")}): mounting the same layers brings them back`);
  } finally {
    // Whatever happened (an error, an interrupt): nothing stays mounted, nothing stays behind.
    const forced = await unmountAllBelow(dir).catch((e: Error) => {
      write(`  could not unmount below ${printable(dir)}: ${e.message}`);
      return [];
    });
    for (const t of forced) write(`  unmounted ${rel(t)}`);
    await rm(dir, { recursive: true, force: true });
    write(`  removed ${printable(dir)}`);
  }
}

/**
 * Re-runs this command in a private mount namespace (and a user namespace when not root) and waits for it,
 * passing signals on. Resolves with the exit code, or with the signal that ended it.
 */
function rerunInNamespace(warn: (line: string) => void): Promise<number | NodeJS.Signals> {
  const root = process.geteuid?.() === 0;
  if (!root) {
    warn(
      "ovl: demo: not running as root: re-running inside a new user namespace (unshare -Urm), where you are " +
        "root of a private mount namespace and may mount overlays; nothing mounted there is seen outside it",
    );
  }
  const script = process.argv[1]!;
  const child = spawnInPrivateNamespaces([process.execPath, ...process.execArgv, script, ...process.argv.slice(2)], {
    pidNamespace: false,
    env: { ...process.env, [DEMO_NAMESPACE_ENV]: root ? "root" : "user" },
  });
  // Like a shell: the child cleans up on a signal; this process passes it on and waits.
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  for (const s of FORWARDED_SIGNALS) process.on(s, forward);
  return new Promise((resolvePromise, reject) => {
    child.on("error", (err: NodeJS.ErrnoException) => {
      for (const s of FORWARDED_SIGNALS) process.off(s, forward);
      if (err.code === "ENOENT") {
        reject(Object.assign(new Error("'setpriv' and 'unshare' (util-linux) are needed to run the demo in a namespace of its own"), { code: "ENOENT" }));
      } else reject(err);
    });
    child.on("exit", (code, sig) => {
      for (const s of FORWARDED_SIGNALS) process.off(s, forward);
      resolvePromise(sig ?? code ?? 1);
    });
  });
}

/** Waits for Enter on stdin (or its end), or for the signal. */
function waitForEnter(signal: AbortSignal): Promise<void> {
  return new Promise((resolvePromise) => {
    const rl = createInterface({ input: process.stdin });
    const done = () => {
      signal.removeEventListener("abort", done);
      rl.close();
      process.stdin.destroy(); // read no more: an open stdin would keep the process alive
      resolvePromise();
    };
    rl.once("line", done);
    rl.once("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * The `ovl demo` command. Resolves with an exit code, or with the signal that interrupted it after the
 * cleanup (the caller re-raises it, so that the shell sees the interrupt).
 */
export async function demoCommand(opts: { pause?: boolean }): Promise<number | NodeJS.Signals> {
  const warn = (line: string) => process.stderr.write(`${line}\n`);
  if (!process.env[DEMO_NAMESPACE_ENV]) return rerunInNamespace(warn);
  if (process.geteuid?.() !== 0) throw new Error("not root even inside the user namespace made by unshare -Urm");
  exitIfOrphaned();
  for (const name of [DEMO_NAMESPACE_ENV, PARENT_ENV]) delete process.env[name];
  // This namespace's own tmpfs on the temporary directory: all the demo makes lives there, and only here.
  const tmp = tmpdir();
  mountPseudoFs("tmpfs", tmp, { mode: "0755", size: "8m" });
  const userxattr = inUserNamespace();
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (received) return;
    received = sig;
    warn(`ovl: demo: ${sig}: stopping and cleaning up`);
    controller.abort(new Error(`interrupted by ${sig}`));
  };
  for (const s of FORWARDED_SIGNALS) process.on(s, onSignal);
  try {
    await runDemo({
      write: (line) => process.stdout.write(`${line}\n`),
      userxattr,
      tmp,
      privateTmpfs: true,
      signal: controller.signal,
      ...(opts.pause
        ? {
            pause: async ({ merged }) => {
              process.stdout.write(
                `\n${style("bold", "Paused.")} The overlay stays mounted on ${printable(merged)}, inside this demo's ` +
                  `namespace (enter it with: nsenter -t ${process.pid} ${userxattr ? "-U -m --preserve-credentials" : "-m"}). ` +
                  "Look around in another shell; press Enter to go on (Ctrl-C also cleans up).\n",
              );
              await waitForEnter(controller.signal);
            },
          }
        : {}),
    });
  } catch (err) {
    if (received) return received;
    throw err;
  } finally {
    for (const s of FORWARDED_SIGNALS) process.off(s, onSignal);
  }
  return received ?? 0;
}
