import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
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
