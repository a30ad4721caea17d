import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// src/csi and dist/csi are both two levels below the package root.
export const CSI_PROTO_PATH = fileURLToPath(new URL('../../proto/csi.proto', import.meta.url));
/**
 * csi.proto as proto-loader parses it with LOADER_OPTIONS, in protobufjs JSON
 * (written by scripts/csi-proto-json.mjs). Loading it skips the parse of the
 * .proto text at start-up; the .proto stays the source of truth, and
 * test/unit/csi-proto-cache.test.ts checks that this file matches it and that
 * both give the same package definition.
 */
export const CSI_JSON_PATH = fileURLToPath(new URL('../../proto/csi.json', import.meta.url));

/** Field conversions every sinter service and test client relies on. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: false,
  arrays: true,
  objects: true,
  oneofs: true,
};

export interface CsiPackage {
  Identity: grpc.ServiceClientConstructor;
  Controller: grpc.ServiceClientConstructor;
  Node: grpc.ServiceClientConstructor;
  GroupController: grpc.ServiceClientConstructor;
}

let cached: CsiPackage | undefined;

export function loadCsi(): CsiPackage {
  if (cached) return cached;
  const def = protoLoader.fromJSON(JSON.parse(readFileSync(CSI_JSON_PATH, 'utf8')) as Parameters<typeof protoLoader.fromJSON>[0], LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { csi: { v1: CsiPackage } };
  cached = pkg.csi.v1;
  return cached;
}
