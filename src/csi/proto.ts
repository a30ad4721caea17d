import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

// src/csi and dist/csi are both two levels below the package root.
export const CSI_PROTO_PATH = fileURLToPath(new URL('../../proto/csi.proto', import.meta.url));

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
  GroupController?: grpc.ServiceClientConstructor;
}

let cached: CsiPackage | undefined;

export function loadCsi(): CsiPackage {
  if (cached) return cached;
  const def = protoLoader.loadSync(CSI_PROTO_PATH, LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { csi: { v1: CsiPackage } };
  cached = pkg.csi.v1;
  return cached;
}
