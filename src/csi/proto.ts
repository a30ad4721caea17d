import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
// The light build: decoding JSON needs no .proto parser. The same copy proto-loader depends on (npm dedupes the range).
import protobuf from 'protobufjs/light.js';
import type * as Protobuf from 'protobufjs';

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

const SERVICES = ['Identity', 'Controller', 'Node', 'GroupController'] as const;

let cached: CsiPackage | undefined;

/**
 * The four CSI services as grpc-js service definitions, built the way
 * proto-loader's fromJSON builds them (@grpc/proto-loader 0.8.1,
 * build/src/index.js: createMethodDefinition, createSerializer,
 * createDeserializer) but without what only gRPC reflection reads: a
 * descriptor of the whole file, encoded, and one of every request and
 * response type. Those cost 45 ms of a ~420 ms start-up and nothing here
 * serves reflection. test/unit/csi-proto-cache.test.ts holds these to
 * proto-loader's own definitions: same paths and names, same bytes both ways.
 */
function serviceDefinitions(root: Protobuf.Root): Parameters<typeof grpc.loadPackageDefinition>[0] {
  const def: Record<string, Record<string, grpc.MethodDefinition<object, object>>> = {};
  const options = LOADER_OPTIONS as Protobuf.IConversionOptions;
  const serializer = (type: Protobuf.Type) => (arg: object) => {
    if (Array.isArray(arg)) throw new Error(`Failed to serialize message: expected object with ${type.name} structure, got array instead`);
    // protobufjs writes into a Buffer under Node (its BufferWriter), as proto-loader hands it on.
    return type.encode(type.fromObject(arg)).finish() as Buffer;
  };
  const deserializer = (type: Protobuf.Type) => (buf: Buffer) => type.toObject(type.decode(buf), options);
  for (const name of SERVICES) {
    const service = root.lookupService(`csi.v1.${name}`);
    const methods: Record<string, grpc.MethodDefinition<object, object>> = {};
    for (const m of service.methodsArray) {
      const req = m.resolvedRequestType!;
      const res = m.resolvedResponseType!;
      methods[m.name] = {
        path: `/csi.v1.${name}/${m.name}`,
        requestStream: !!m.requestStream,
        responseStream: !!m.responseStream,
        requestSerialize: serializer(req),
        requestDeserialize: deserializer(req),
        responseSerialize: serializer(res),
        responseDeserialize: deserializer(res),
        // proto-loader's camelCase (lodash) of a CSI method name: every one is plain PascalCase.
        originalName: m.name[0]!.toLowerCase() + m.name.slice(1),
      };
    }
    def[`csi.v1.${name}`] = methods;
  }
  return def;
}

export function loadCsi(): CsiPackage {
  if (cached) return cached;
  const root = protobuf.Root.fromJSON(JSON.parse(readFileSync(CSI_JSON_PATH, 'utf8')) as Protobuf.INamespace);
  root.resolveAll();
  const pkg = grpc.loadPackageDefinition(serviceDefinitions(root)) as unknown as { csi: { v1: CsiPackage } };
  cached = pkg.csi.v1;
  return cached;
}
