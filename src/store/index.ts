/** The snapshot store (containerd's snapshot model on overlay directories, metadata in SQLite). */
export {
  openStore,
  StoreError,
  type ImageRecord,
  type OpenStoreOptions,
  type SnapshotInfo,
  type SnapshotKind,
  type SnapshotMounts,
  type Store,
  type StoreCheck,
  type StoreErrorCode,
  type Usage,
} from "./store.js";
