import { backendRefusal } from '../helpers/config-key.js';
import { describe, expect, it } from 'vitest';
import { backendSchema, parseConfig } from '../../src/config/schema.js';
import { decodePublishContext, encodePublishContext } from '../../src/contracts/publish-context.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { classifyImage, snapshotImage } from '../../src/backends/rbd/names.js';
import { monitorHostPort } from '../../src/node/connectors/rbd.js';

const rbd = { name: 'ceph', driver: 'rbd', pool: 'kube', monitors: ['10.0.0.1:3300'], user: 'sinter', keyFile: '/etc/sinter/ceph.key' };
const refusal = backendRefusal;

describe('rbd backend config', () => {
  it('takes an rbd backend with the default image features and ceph-csi depth limits', () => {
    const b = parseConfig(backendSchema, rbd);
    expect(b).toMatchObject({ driver: 'rbd', imageFeatures: ['layering', 'exclusive-lock', 'object-map', 'fast-diff', 'deep-flatten'], cloneDepthSoftLimit: 4, cloneDepthHardLimit: 8 });
  });
  it('names the key at fault', () => {
    expect(refusal({ ...rbd, driver: 'zfs' })).toMatch(/^backends\[0\]\.driver: must be one of file, lvm, rbd$/);
    expect(refusal({ ...rbd, pool: 'a/b' })).toMatch(/^backends\[0\]\.pool: "a\/b" is not a pool name/);
    expect(refusal({ ...rbd, monitors: [] })).toMatch(/^backends\[0\]\.monitors: must list at least one monitor/);
    expect(refusal({ ...rbd, dataDirectory: '/x' })).toMatch(/^backends\[0\]\.dataDirectory: unknown key/);
    expect(refusal({ ...rbd, dataDir: 'x' })).toMatch(/^backends\[0\]\.dataDir: "x" must be an absolute path/);
    expect(refusal({ ...rbd, export: 'iscsi' })).toMatch(/^backends\[0\]\.export: export: iscsi needs an iscsi section/);
    expect(refusal({ ...rbd, agent: 'yes' })).toMatch(/^backends\[0\]\.agent: /);
    expect(refusal({ ...rbd, cloneDepthSoftLimit: 9 })).toMatch(/^backends\[0\]\.cloneDepthSoftLimit: must not exceed cloneDepthHardLimit/);
    // A file backend is still what it was.
    expect(refusal({ name: 'f', dataDir: 'rel' })).toMatch(/^backends\[0\]\.dataDir: "rel" must be an absolute path/);
  });
});

describe('rbd publish_context', () => {
  it('round-trips pool, image and monitors, and refuses names that would change an image spec or a qemu option', () => {
    const ctx = { transport: 'rbd' as const, pool: 'kube', image: 'ceph-0b0e1c3a-7d4f-4a43-9a9c-2f1f8a0f6f11', monitors: ['10.0.0.1:3300', '[fd00::1]:3300'] };
    expect(decodePublishContext(encodePublishContext(ctx))).toEqual(ctx);
    expect(() => decodePublishContext({ transport: 'rbd', pool: 'kube', image: 'x,driver=file', monitors: '1.2.3.4' })).toThrow(/publish_context.image/);
    expect(() => decodePublishContext({ transport: 'rbd', pool: 'kube', image: 'x', monitors: '' })).toThrow(/publish_context.monitors/);
  });
  it('gives qemu host and port: msgr2 by default, v1 at 6789', () => {
    expect(monitorHostPort('127.0.0.1:45333')).toEqual({ host: '127.0.0.1', port: 45333 });
    expect(monitorHostPort('v1:10.0.0.1')).toEqual({ host: '10.0.0.1', port: 6789 });
    expect(monitorHostPort('mon.example')).toEqual({ host: 'mon.example', port: 3300 });
    expect(monitorHostPort('[fd00::1]:3300')).toEqual({ host: 'fd00::1', port: 3300 });
  });
});

describe('rbdAttach: the StorageClass parameter, and attach in the node\'s recorded connection', () => {
  it('CreateVolume takes kernel, userspace and auto (auto: the node decides) and refuses anything else, naming it', () => {
    expect(parseParameters({ rbdAttach: 'kernel' })).toMatchObject({ rbdAttach: 'kernel', own: { rbdAttach: 'kernel' } });
    expect(parseParameters({ rbdAttach: 'userspace' }).rbdAttach).toBe('userspace');
    expect(parseParameters({ rbdAttach: 'auto' }).rbdAttach).toBeUndefined();
    expect(() => parseParameters({ rbdAttach: 'nbd' })).toThrow(/^parameters\.rbdAttach must be one of kernel, userspace, auto, not "nbd"$/);
    expect(() => parseParameters({ rbdAttach: 'Kernel' })).toThrow(/parameters\.rbdAttach/);
  });
  it('round-trips attach in an rbd connection and refuses an unknown one', () => {
    const ctx = { transport: 'rbd' as const, pool: 'kube', image: 'img', monitors: ['10.0.0.1:3300'], attach: 'userspace' as const };
    expect(encodePublishContext(ctx)).toMatchObject({ attach: 'userspace' });
    expect(decodePublishContext(encodePublishContext(ctx))).toEqual(ctx);
    expect(encodePublishContext({ ...ctx, attach: undefined })).not.toHaveProperty('attach');
    expect(() => decodePublishContext({ ...encodePublishContext(ctx), attach: 'nbd' })).toThrow(/publish_context\.attach must be one of/);
  });
});

describe('rbd image names', () => {
  it('tells this backend’s volumes and snapshots from anything else in the pool', () => {
    const u = '0b0e1c3a-7d4f-4a43-9a9c-2f1f8a0f6f11';
    expect(classifyImage(`ceph-${u}`, 'ceph')).toEqual({ kind: 'volume', id: `ceph-${u}` });
    expect(snapshotImage(`ceph@${u}`)).toBe(`ceph.snap.${u}`);
    expect(classifyImage(`ceph.snap.${u}`, 'ceph')).toEqual({ kind: 'snapshot', id: `ceph@${u}` });
    expect(classifyImage(`other-${u}`, 'ceph')).toBeUndefined();
    expect(classifyImage(`ceph-${u}`, 'ceph-2')).toBeUndefined();
    expect(classifyImage('csi-vol-123', 'ceph')).toBeUndefined();
  });
});
