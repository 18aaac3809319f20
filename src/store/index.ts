/** The snapshot store (containerd's snapshot model): store.ts does the directories, metadata.ts the SQLite rows. */
export { compileFilters, MAX_LAYERS, openStore, Store, StoreError, type ImageRecord, type SnapshotInfo, type SnapshotMounts, type Usage } from "./store.js";
export type { SnapshotKind } from "./metadata.js";
