/**
 * gRPC for the snapshotter: @grpc/grpc-js and @grpc/proto-loader, loaded on first use (the rest of ovl does
 * not need them; they are optional peer dependencies, as better-sqlite3 is for the store), and the snapshots
 * service read from ovl's own proto/snapshots.proto.
 */
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type * as GrpcJs from "@grpc/grpc-js";
import type * as ProtoLoader from "@grpc/proto-loader";

export type Grpc = typeof GrpcJs;

/** The proto file, from src/snapshotter/ or dist/snapshotter/: `proto/` at the package's root. */
export const PROTO_FILE = join(resolve(dirname(fileURLToPath(import.meta.url)), "..", ".."), "proto", "snapshots.proto");

/** The service's full name, as containerd calls it. */
export const SERVICE = "containerd.services.snapshots.v1.Snapshots";

let loaded: { grpc: Grpc; service: GrpcJs.ServiceDefinition } | undefined;

/** grpc-js and the snapshots service definition; a clear error (ERR_OVL_SNAPSHOTTER_GRPC_MISSING) when not installed. */
export function loadGrpc(): { grpc: Grpc; service: GrpcJs.ServiceDefinition } {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  let grpc: Grpc;
  let protoLoader: typeof ProtoLoader;
  try {
    grpc = require("@grpc/grpc-js") as Grpc;
    protoLoader = require("@grpc/proto-loader") as typeof ProtoLoader;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND") throw e;
    throw Object.assign(new Error("ovl snapshotter needs @grpc/grpc-js 1.x and @grpc/proto-loader: npm install @grpc/grpc-js@1 @grpc/proto-loader"), {
      code: "ERR_OVL_SNAPSHOTTER_GRPC_MISSING",
    });
  }
  const definition = protoLoader.loadSync(PROTO_FILE, {
    keepCase: true, // field names as on the wire (created_at), not camelCased
    longs: Number, // sizes and inode counts fit a double
    enums: String,
    defaults: true, // absent fields as their zero value: proto3 cannot tell them from it anyway
  });
  loaded = { grpc, service: definition[SERVICE] as GrpcJs.ServiceDefinition };
  return loaded;
}
