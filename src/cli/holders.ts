/**
 * The processes that keep a mount busy, as people read them: for `ovl fuser`, and for the lines `ovl umount`
 * adds to a "target is busy" error. Both import it when they need it.
 */
import { readFileSync } from "node:fs";
import type { Holder, HolderList } from "../table/fuser.js";
import { printable } from "./output.js";

let userNames: Map<number, string> | undefined;

/** The user name for a uid, from /etc/passwd (Node has no getpwuid), else the number. */
export function userName(uid: number): string {
  if (!userNames) {
    userNames = new Map();
    try {
      for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
        const [name, , id] = line.split(":");
        if (name && id && !userNames.has(Number(id))) userNames.set(Number(id), name);
      }
    } catch {
      // no passwd file: numbers it is
    }
  }
  return userNames.get(uid) ?? String(uid);
}

function describeUse(f: Holder["files"][number]): string {
  if (f.use === "open") return `open file ${printable(f.path)} (fd ${f.fd})`;
  if (f.use === "map") return `memory map ${printable(f.path)}`;
  if (f.use === "exe") return `executable ${printable(f.path)}`;
  return `${f.use} ${printable(f.path)}`;
}

/** One line per holder: `pid 1234 (sleep): cwd /mnt/dir, open file /mnt/f (fd 3)`. */
export function holderLine(h: Holder): string {
  const shown = h.files.slice(0, 4).map(describeUse);
  if (h.files.length > 4) shown.push(`and ${h.files.length - 4} more`);
  return `pid ${h.pid} (${printable(h.command)}, ${userName(h.uid)}): ${shown.join(", ")}`;
}

/** ` (3 processes could not be inspected: ...)` when the scan was refused some /proc entries. */
export function uninspectedNote(pids: number[]): string {
  if (pids.length === 0) return "";
  const which = pids.length <= 3 ? `pid ${pids.join(", ")}` : `${pids.length} processes`;
  return ` (${which} could not be inspected: permission denied${process.geteuid?.() === 0 ? "" : "; run as root to see every process"})`;
}

/**
 * The holders of a mount but ovl itself: it inherits the shell's working directory, which may be on the
 * mount, but it is about to exit and is not what keeps the mount busy.
 */
export async function holdersOtherThanOvl(target: string): Promise<HolderList> {
  const { findHolders } = await import("../table/fuser.js");
  const all = await findHolders(target);
  const others = all.filter((h) => h.pid !== process.pid);
  return Object.assign(others, { uninspected: all.uninspected, mount: all.mount });
}
