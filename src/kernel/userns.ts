/** Whether this process runs in a user namespace other than the initial one (a rootless mount). */
import { readFileSync } from "node:fs";

let cached: boolean | undefined;

/**
 * The initial user namespace maps every id to itself (`0 0 4294967295`); any other uid_map means a user
 * namespace, where overlay must keep its xattrs in `user.overlay.*` (`userxattr`) and `trusted.*` xattrs
 * are out of reach. Without /proc, the initial namespace is assumed. Read once: a process cannot change it.
 */
export function inUserNamespace(): boolean {
  if (cached === undefined) {
    try {
      cached = readFileSync("/proc/self/uid_map", "utf8").trim().split(/\s+/).join(" ") !== "0 0 4294967295";
    } catch {
      cached = false;
    }
  }
  return cached;
}

let overflow: { uid: number; gid: number } | undefined;

/**
 * The ids an unmapped owner shows as in a user namespace (/proc/sys/kernel/overflow{u,g}id, 65534 by default).
 */
export function overflowIds(): { uid: number; gid: number } {
  if (overflow === undefined) {
    const read = (name: string) => {
      try {
        return Number(readFileSync(`/proc/sys/kernel/${name}`, "utf8").trim()) || 65534;
      } catch {
        return 65534;
      }
    };
    overflow = { uid: read("overflowuid"), gid: read("overflowgid") };
  }
  return overflow;
}
