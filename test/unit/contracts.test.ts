import { describe, expect, it } from 'vitest';
import { encodeNodeId, parseNodeId } from '../../src/contracts/nodeid.js';
import { decodePublishContext, encodePublishContext } from '../../src/contracts/publish-context.js';

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

describe('publish_context', () => {
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
