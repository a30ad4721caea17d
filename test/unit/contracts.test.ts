import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { parseStaticAttributes } from '../../src/controller/static-volumes.js';
import { validateTarget } from '../../src/node/connectors/iscsi/types.js';
import { keyOf } from '../helpers/config-key.js';
import { encodeNodeId, parseNodeId } from '../../src/contracts/nodeid.js';
import { decodePublishContext, encodePublishContext, isLun, MAX_LUN } from '../../src/contracts/publish-context.js';

describe('node id (host;iqn;wwpns)', () => {
  it('round-trips the connector properties', () => {
    const id = encodeNodeId({ host: 'worker-1', iqn: 'iqn.1993-08.org.debian:01:abc', wwpns: ['0x21:00:00:24:FF:3A:1B:2C'] });
    expect(id).toBe('worker-1;iqn.1993-08.org.debian:01:abc;21000024ff3a1b2c');
    expect(parseNodeId(id)).toEqual({ host: 'worker-1', iqn: 'iqn.1993-08.org.debian:01:abc', wwpns: ['21000024ff3a1b2c'] });
  });

  it('keeps a host-only id compact', () => {
    expect(encodeNodeId({ host: 'n1', wwpns: [] })).toBe('n1;;');
    expect(parseNodeId('n1;;')).toEqual({ host: 'n1', iqn: undefined, wwpns: [] });
  });

  it.each(['some-fake-node-id', '', 'a;b', 'a;;;', 'bad host;;', 'h;not-an-iqn;', 'h;;123', `h;iqn.2020-01.x:${'a'.repeat(300)};`, 'h;;0011223344556677,zz'])(
    'rejects malformed id %j',
    (id) => {
      expect(parseNodeId(id)).toBeUndefined();
    },
  );

  it('refuses to build an id longer than 256 bytes', () => {
    expect(() => encodeNodeId({ host: 'h', iqn: `iqn.2020-01.io.example:${'x'.repeat(200)}`, wwpns: ['0011223344556677', '8899aabbccddeeff'] })).toThrow(/256/);
  });
});

describe('node id with an NVMe host NQN (host;iqn;wwpns;nqn)', () => {
  // The guest's /etc/nvme/hostnqn (Debian bookworm's nvme-cli 2.3 writes this uuid form at install).
  const hostNqn = 'nqn.2014-08.org.nvmexpress:uuid:1f895b65-8771-41e5-8943-40869203f363';

  it('carries the NQN as a fourth field, and leaves it out when the node has none (ids recorded before still compare equal)', () => {
    const id = encodeNodeId({ host: 'worker-1', iqn: 'iqn.1993-08.org.debian:01:abc', wwpns: [], nqn: hostNqn });
    expect(id).toBe(`worker-1;iqn.1993-08.org.debian:01:abc;;${hostNqn}`);
    expect(parseNodeId(id)).toEqual({ host: 'worker-1', iqn: 'iqn.1993-08.org.debian:01:abc', wwpns: [], nqn: hostNqn });
    expect(encodeNodeId({ host: 'worker-1', iqn: 'iqn.1993-08.org.debian:01:abc', wwpns: [] })).toBe('worker-1;iqn.1993-08.org.debian:01:abc;');
    expect(parseNodeId('worker-1;;')?.nqn).toBeUndefined();
  });

  it('fits a long host name, an IQN, two WWPNs and a host NQN in 256 bytes, and refuses to build more', () => {
    const id = encodeNodeId({ host: 'ip-10-0-12-34.eu-west-1.compute.internal', iqn: 'iqn.1993-08.org.debian:01:573a5b2d8368', wwpns: ['21000024ff3a1b2c', '21000024ff3a1b2d'], nqn: hostNqn });
    expect(Buffer.byteLength(id)).toBeLessThanOrEqual(256);
    expect(parseNodeId(id)?.nqn).toBe(hostNqn);
    expect(() => encodeNodeId({ host: 'h'.repeat(60), iqn: `iqn.2020-01.io.example:${'x'.repeat(140)}`, wwpns: [], nqn: hostNqn })).toThrow(/256/);
  });

  it.each([
    'h;;;',
    'h;;;not-an-nqn',
    'h;;;nqn.2014-08.org.nvmexpress.discovery',
    `h;;;nqn.2014-08.org.nvmexpress:${'u'.repeat(200)}`,
    'h;;;nqn.2014-08.org.nvmexpress:a b',
    'h;;;nqn.2014-08.org.nvmexpress:../../x',
    `h;;;${hostNqn};extra`,
  ])('rejects %j', (id) => {
    expect(parseNodeId(id)).toBeUndefined();
  });

  it('refuses to encode a malformed NQN', () => {
    expect(() => encodeNodeId({ host: 'h', wwpns: [], nqn: 'nqn.bad' })).toThrow(/NQN/);
  });
});

describe('publish_context', () => {
  it('nvmeof: nqn, portals (traddr:trsvcid, 4420 by default) and nsid, no secret', () => {
    const ctx = { transport: 'nvmeof' as const, nqn: 'nqn.2026-11.io.sinter:file-1b4e28ba-2fa1-11d2-883f-0016d3cca427', portals: ['127.0.0.1:4420', '[fd00::2]:4421'], nsid: 1 };
    const flat = encodePublishContext(ctx);
    expect(flat).toEqual({ transport: 'nvmeof', nqn: ctx.nqn, portals: '127.0.0.1:4420,[fd00::2]:4421', nsid: '1' });
    expect(decodePublishContext(flat)).toEqual(ctx);
    expect(decodePublishContext({ ...flat, portals: '10.0.0.5' })).toEqual({ ...ctx, portals: ['10.0.0.5:4420'] });
  });

  it.each([
    [{ transport: 'nvmeof', portals: '127.0.0.1:4420', nsid: '1' }, /nqn/],
    [{ transport: 'nvmeof', nqn: 'nqn.2014-08.org.nvmexpress.discovery', portals: '127.0.0.1:4420', nsid: '1' }, /nqn/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '', nsid: '1' }, /portals/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '127.0.0.1:99999', nsid: '1' }, /portals/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '-a 1', nsid: '1' }, /portals/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '127.0.0.1', nsid: '0' }, /nsid/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '127.0.0.1', nsid: '4294967295' }, /nsid/],
    [{ transport: 'nvmeof', nqn: 'nqn.2026-11.io.sinter:v', portals: '127.0.0.1' }, /nsid/],
  ])('nvmeof: names the bad key in %j', (ctx, re) => {
    expect(() => decodePublishContext(ctx as Record<string, string>)).toThrow(re);
  });

  it('encodes flat string keys per transport', () => {
    expect(encodePublishContext({ transport: 'iscsi', portals: ['127.0.0.1:3260', '127.0.0.2:3260'], iqn: 'iqn.2026-11.io.sinter:v1', lun: 1 })).toEqual({
      transport: 'iscsi',
      portals: '127.0.0.1:3260,127.0.0.2:3260',
      iqn: 'iqn.2026-11.io.sinter:v1',
      lun: '1',
    });
    expect(decodePublishContext({ transport: 'local', path: '/d/volumes/x.img' })).toEqual({ transport: 'local', path: '/d/volumes/x.img' });
  });

  it.each([
    [{}, /transport/],
    [{ transport: 'nvme' }, /transport/],
    [{ transport: 'local', path: 'relative' }, /path/],
    [{ transport: 'iscsi', portals: '', iqn: 'iqn.x', lun: '1' }, /portals/],
    [{ transport: 'iscsi', portals: 'a:1', iqn: 'iqn.x', lun: 'one' }, /lun/],
    [{ transport: 'fc', lun: '0' }, /wwns/],
  ])('names the bad key in %j', (ctx, re) => {
    expect(() => decodePublishContext(ctx as Record<string, string>)).toThrow(re);
  });
});

describe('one portal and LUN rule for configuration, static volumes and the node', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sinter-portal-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const configWithPortal = (portal: string) => {
    const file = join(dir, `${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, stringify({ backends: [{ name: 'b1', dataDir: join(dir, 'b1'), export: 'iscsi', iscsi: { portals: [portal] } }] }));
    return () => loadConfig('controller', ['--config', file]);
  };

  it('what the configuration accepts the node can log in to, and what the node refuses the configuration refuses', () => {
    for (const p of ['10.0.0.1:3260', 'storage-1.example:3261', '[fd00::2]:3260', '[::1]', 'host']) {
      expect(keyOf(configWithPortal(p)), p).toBeUndefined();
      expect(() => validateTarget({ portals: [p], iqn: 'iqn.2026-11.io.sinter:v', lun: 1 }), p).not.toThrow();
    }
    for (const p of ['-x:99999', 'host:0', 'host:65536', '1.2.3.4:99999', 'a b', '::1', '[host]:3260', 'x:y']) {
      expect(keyOf(configWithPortal(p)), p).toBe('backends[0].iscsi.portals[0]');
      expect(() => parseStaticAttributes({ transport: 'iscsi', portals: p, iqn: 'iqn.2026-11.io.x:y', lun: '0' }), p).toThrow(/volume_context.portals/);
      expect(() => validateTarget({ portals: [p], iqn: 'iqn.2026-11.io.sinter:v', lun: 1 }), p).toThrow();
    }
  });

  it('LUN 0 to 16383 everywhere', () => {
    expect(isLun(MAX_LUN)).toBe(true);
    expect(isLun(MAX_LUN + 1)).toBe(false);
    expect(() => decodePublishContext({ transport: 'iscsi', portals: 'h:3260', iqn: 'iqn.2026-11.io.x:y', lun: String(MAX_LUN + 1) })).toThrow(/0 to 16383/);
    expect(() => parseStaticAttributes({ transport: 'fc', wwns: '500a0981891b8dc5', lun: String(MAX_LUN + 1) })).toThrow(/0 to 16383/);
    expect(() => validateTarget({ portals: ['h'], iqn: 'iqn.2026-11.io.sinter:v', lun: MAX_LUN + 1 })).toThrow(/0 to 16383/);
  });
});
