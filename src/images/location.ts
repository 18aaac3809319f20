/** Where the snapshot store is when nobody says: $OVL_STORE, /var/lib/ovl for root, else the user's data directory. */
import { homedir } from "node:os";
import { join } from "node:path";

export function defaultStoreRoot(): string {
  if (process.env.OVL_STORE) return process.env.OVL_STORE;
  if (process.geteuid?.() === 0) return "/var/lib/ovl";
  return join(process.env.XDG_DATA_HOME || join(homedir(), ".local", "share"), "ovl");
}
