import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { CSI_JSON_PATH, CSI_PROTO_PATH, LOADER_OPTIONS, loadCsi } from '../../src/csi/proto.js';

// proto/csi.json is a start-up cache of proto/csi.proto (see src/csi/proto.ts);
// the .proto is the source of truth. Regenerate with: node scripts/csi-proto-json.mjs
const generator = (await import(new URL('../../scripts/csi-proto-json.mjs', import.meta.url).href)) as { csiProtoJson: (o: protoLoader.Options) => string };

/** A package definition without its functions (each function kept as a marker, so a missing one still differs). */
const shape = (d: unknown): unknown => JSON.parse(JSON.stringify(d, (_k, v: unknown) => (typeof v === 'function' ? `function ${(v as { name: string }).name}` : v)));

describe('proto/csi.json (start-up cache of proto/csi.proto)', () => {
  it('is what proto-loader parses from proto/csi.proto with sinter’s loader options', () => {
    expect(readFileSync(CSI_JSON_PATH, 'utf8'), 'proto/csi.json is out of date: run node scripts/csi-proto-json.mjs').toBe(generator.csiProtoJson(LOADER_OPTIONS));
  });

  it('gives the same package definition as loading proto/csi.proto', () => {
    const fromProto = protoLoader.loadSync(CSI_PROTO_PATH, LOADER_OPTIONS);
    const fromCache = protoLoader.fromJSON(JSON.parse(readFileSync(CSI_JSON_PATH, 'utf8')) as Parameters<typeof protoLoader.fromJSON>[0], LOADER_OPTIONS);
    expect(Object.keys(fromCache).sort()).toEqual(Object.keys(fromProto).sort());
    expect(shape(fromCache)).toEqual(shape(fromProto));
  });

  it('serializes and deserializes messages byte for byte as the .proto does', () => {
    const fromProto = protoLoader.loadSync(CSI_PROTO_PATH, LOADER_OPTIONS);
    const csi = loadCsi();
    const req = {
      name: 'pvc-1',
      capacity_range: { required_bytes: 1024 ** 3, limit_bytes: 2 * 1024 ** 3 },
      volume_capabilities: [{ mount: { fs_type: 'ext4', mount_flags: ['noatime'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }],
      parameters: { backend: 'default' },
      secrets: { password: 's3cret' },
      volume_content_source: { snapshot: { snapshot_id: 'default-snap' } },
      accessibility_requirements: { requisite: [{ segments: { 'topology.sinter.csi.io/node': 'n1' } }] },
    };
    const cached = csi.Controller.service.CreateVolume;
    const parsed = (fromProto['csi.v1.Controller'] as protoLoader.ServiceDefinition).CreateVolume;
    const bytes = cached.requestSerialize(req);
    expect(bytes.equals(parsed.requestSerialize(req))).toBe(true);
    expect(cached.requestDeserialize(bytes)).toEqual(parsed.requestDeserialize(bytes));
    const probe = { ready: { value: false } };
    expect(csi.Identity.service.Probe.responseSerialize(probe).equals((fromProto['csi.v1.Identity'] as protoLoader.ServiceDefinition).Probe.responseSerialize(probe))).toBe(true);
  });
});

// loadCsi builds the service definitions itself, without the reflection descriptors proto-loader adds (see
// serviceDefinitions in src/csi/proto.ts). Held here to proto-loader 0.8.1's own fromJSON definitions, method by
// method: same path, streaming flags and name, and the same bytes and objects both ways for a message that sets
// every field of its type (each oneof's first member, maps, repeated fields, enums, wrappers, Timestamp).
describe('loadCsi service definitions against proto-loader’s', () => {
  const loaderDef = protoLoader.fromJSON(JSON.parse(readFileSync(CSI_JSON_PATH, 'utf8')) as Parameters<typeof protoLoader.fromJSON>[0], LOADER_OPTIONS);
  const csi = loadCsi() as unknown as Record<string, { service: Record<string, protoLoader.MethodDefinition<object, object>> }>;
  // proto-loader's own protobufjs, for the reflected types the samples are made from.
  const protobuf = createRequire(createRequire(import.meta.url).resolve('@grpc/proto-loader'))('protobufjs') as typeof import('protobufjs');
  const root = protobuf.Root.fromJSON(JSON.parse(readFileSync(CSI_JSON_PATH, 'utf8')) as import('protobufjs').INamespace);
  root.resolveAll();

  type Field = { name: string; type: string; repeated?: boolean; map?: boolean; keyType?: string; resolvedType?: unknown; partOf?: { oneof: string[] } };
  type Reflected = { fieldsArray?: Field[]; values?: Record<string, number> };
  /** A message of `type` with every field set (to depth 4, so recursive types end). */
  function sample(type: Reflected, depth = 0): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const f of type.fieldsArray ?? []) {
      if (f.partOf && f.partOf.oneof[0] !== f.name) continue;
      const one = (): unknown => {
        const r = f.resolvedType as Reflected | undefined;
        if (r?.values) return Object.keys(r.values).at(-1);
        if (r) return depth < 4 ? sample(r, depth + 1) : {};
        switch (f.type) {
          case 'string':
            return `${f.name}-é☃`;
          case 'bool':
            return true;
          case 'bytes':
            return Buffer.from([0, 1, 2, 255]);
          case 'double':
          case 'float':
            return 1.5;
          default:
            return f.type.includes('64') ? 2 ** 40 + 7 : 123;
        }
      };
      if (f.map) out[f.name] = { k1: one(), k2: one() };
      else if (f.repeated) out[f.name] = [one(), one()];
      else out[f.name] = one();
    }
    return out;
  }

  const cases = Object.entries(loaderDef)
    .filter(([name]) => /^csi\.v1\.(Identity|Controller|Node|GroupController)$/.test(name))
    .flatMap(([name, svc]) => Object.entries(svc as protoLoader.ServiceDefinition).map(([method, m]) => ({ service: name.split('.').at(-1)!, method, m })));

  it('covers all four services and every one of their methods', () => {
    expect(new Set(cases.map((c) => c.service))).toEqual(new Set(['Identity', 'Controller', 'Node', 'GroupController']));
    for (const s of ['Identity', 'Controller', 'Node', 'GroupController'])
      expect(Object.keys(csi[s].service).sort()).toEqual(cases.filter((c) => c.service === s).map((c) => c.method).sort());
    expect(cases.length).toBe(['Identity', 'Controller', 'Node', 'GroupController'].reduce((n, s) => n + root.lookupService(`csi.v1.${s}`).methodsArray.length, 0));
  });

  it.each(cases.map((c) => [`${c.service}.${c.method}`, c] as const))('%s: same path, name, bytes and objects', (_name, { service, method, m }) => {
    const ours = csi[service].service[method];
    expect({ path: ours.path, requestStream: ours.requestStream, responseStream: ours.responseStream, originalName: ours.originalName }).toEqual({
      path: m.path,
      requestStream: m.requestStream,
      responseStream: m.responseStream,
      originalName: m.originalName,
    });
    const reflected = root.lookupService(`csi.v1.${service}`).methods[method];
    for (const side of ['request', 'response'] as const) {
      const msg = sample((side === 'request' ? reflected.resolvedRequestType : reflected.resolvedResponseType) as unknown as Reflected);
      const theirs = side === 'request' ? m.requestSerialize(msg) : m.responseSerialize(msg);
      const mine = side === 'request' ? ours.requestSerialize(msg) : ours.responseSerialize(msg);
      expect(Buffer.isBuffer(mine), `${side} is a Buffer`).toBe(true);
      expect(mine.equals(theirs), `${side} bytes`).toBe(true);
      const back = side === 'request' ? ours.requestDeserialize(theirs) : ours.responseDeserialize(theirs);
      expect(back, `${side} object`).toEqual(side === 'request' ? m.requestDeserialize(theirs) : m.responseDeserialize(theirs));
    }
  });
});
