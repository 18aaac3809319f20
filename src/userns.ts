/** Whether this process runs in a user namespace other than the initial one (a rootless mount). */
import { readFile } from "node:fs/promises";

let cached: Promise<boolean> | undefined;

/**
 * The initial user namespace maps every id to itself (`0 0 4294967295`); any other uid_map means a
 * user namespace, where overlay must keep its xattrs in `user.overlay.*` (`userxattr`).
 */
export function inUserNamespace(): Promise<boolean> {
  cached ??= readFile("/proc/self/uid_map", "utf8").then(
    (map) => map.trim().split(/\s+/).join(" ") !== "0 0 4294967295",
    () => false,
  );
  return cached;
}
