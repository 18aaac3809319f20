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
