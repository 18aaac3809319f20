/**
 * Command-line arguments as the bytes given. Node decodes `process.argv` as UTF-8, turning every byte that
 * is not UTF-8 into U+FFFD, so a name like `t\xff` could not be named from a shell. /proc/self/cmdline has
 * the bytes: the last arguments there are the program's own (Node's options and the script come first).
 */
import { readFileSync } from "node:fs";
import { bytesOf, decodeBytes, toBuffer } from "../kernel/bytes.js";

/**
 * `argv` with the program's arguments re-read from /proc/self/cmdline in ovl's string view (undecodable
 * bytes as U+DC80-U+DCFF, which ovl turns back into the same bytes). Falls back to `argv` as it is when the
 * kernel's list does not end with the same arguments (Node changed them, or /proc is not there).
 */
export function exactArgv(argv: string[]): string[] {
  let raw: string;
  try {
    raw = bytesOf(readFileSync("/proc/self/cmdline"));
  } catch {
    return argv;
  }
  const all = raw.endsWith("\0") ? raw.slice(0, -1).split("\0") : raw.split("\0");
  const own = argv.length - 2;
  if (own <= 0 || all.length < own) return argv;
  const bytes = all.slice(all.length - own);
  // The same arguments, as Node decoded them: otherwise these are not ours.
  if (!bytes.every((b, i) => toBuffer(b).toString("utf8") === argv[i + 2])) return argv;
  return [...argv.slice(0, 2), ...bytes.map(decodeBytes)];
}
