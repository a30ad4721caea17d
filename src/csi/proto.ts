import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// src/csi and dist/csi are both two levels below the package root.
export const CSI_PROTO_PATH = fileURLToPath(new URL('../../proto/csi.proto', import.meta.url));

/**
 * Field conversions every sinter service and test client relies on: field
 * names as written in csi.proto (a parse option), then protobufjs toObject
 * options for decoded messages. The same meaning as @grpc/proto-loader's
 * options of the same names.
 */
export const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: false,
  arrays: true,
  objects: true,
  oneofs: true,
} as const;

const { keepCase, ...CONVERSION } = LOADER_OPTIONS;

export interface CsiPackage {
  Identity: grpc.ServiceClientConstructor;
  Controller: grpc.ServiceClientConstructor;
  Node: grpc.ServiceClientConstructor;
  GroupController?: grpc.ServiceClientConstructor;
}

let cached: CsiPackage | undefined;

function serializer(type: protobuf.Type): (value: unknown) => Buffer {
  return (value) => {
    if (Array.isArray(value)) throw new Error(`Failed to serialize message: expected object with ${type.name} structure, got array instead`);
    return Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish());
  };
}

function deserializer(type: protobuf.Type): (buf: Buffer) => unknown {
  return (buf) => type.toObject(type.decode(buf), CONVERSION);
}

function serviceDefinition(service: protobuf.Service, fullName: string): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methodsArray) {
    const req = m.resolvedRequestType;
    const res = m.resolvedResponseType;
    if (!req || !res) throw new Error(`csi.proto: ${fullName}.${m.name} has unresolved message types`);
    def[m.name] = {
      path: `/${fullName}/${m.name}`,
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
      requestSerialize: serializer(req),
      requestDeserialize: deserializer(req),
      responseSerialize: serializer(res),
      responseDeserialize: deserializer(res),
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
    };
  }
  return def;
}

/**
 * Loads csi.proto with protobufjs and builds the grpc-js service definitions
 * straight from it: what @grpc/proto-loader does, minus the reflection
 * descriptors it builds and encodes for every message (grpc-js never reads
 * them), which was most of the plugin's proto start-up time.
 */
export function loadCsi(): CsiPackage {
  if (cached) return cached;
  // csi.proto imports google/protobuf/descriptor.proto for its field options;
  // protobufjs ships it as JSON but does not register it as a common file.
  const require = createRequire(import.meta.url);
  protobuf.common('descriptor', (require('protobufjs/google/protobuf/descriptor.json') as { nested: { google: { nested: { protobuf: { nested: protobuf.INamespace['nested'] } } } } }).nested.google.nested.protobuf.nested as never);
  const root = new protobuf.Root().loadSync(CSI_PROTO_PATH, { keepCase });
  root.resolveAll();
  const ns = root.lookup('csi.v1');
  if (!(ns instanceof protobuf.Namespace)) throw new Error('csi.proto: package csi.v1 not found');
  const out: Record<string, grpc.ServiceClientConstructor> = {};
  for (const obj of ns.nestedArray) {
    if (obj instanceof protobuf.Service) out[obj.name] = grpc.makeClientConstructor(serviceDefinition(obj, `csi.v1.${obj.name}`), obj.name);
  }
  if (!out.Identity || !out.Controller || !out.Node) throw new Error('csi.proto: the Identity, Controller and Node services are missing');
  cached = out as unknown as CsiPackage;
  return cached;
}
