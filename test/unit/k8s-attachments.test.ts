import { describe, expect, it } from 'vitest';
import { KubeNodeRegistry } from '../../src/controller/kube-node-registry.js';
import { holds, type AttachmentView } from '../../src/controller/reconcile.js';
import { describeError, isGone } from '../../src/k8s/reflector.js';
import { projectCsiNode, projectPersistentVolume, projectVolumeAttachment } from '../../src/k8s/resources.js';

const D = 'sinter.csi.io';
const VOL = 'b1-00000000-0000-4000-8000-000000000001';
const OTHER = 'b1-00000000-0000-4000-8000-000000000002';
const N1 = 'node-1;iqn.2004-10.com.ubuntu:01:a;';
const va = (o: Partial<AttachmentView> = {}): AttachmentView => ({ name: 'va', volumeId: VOL, nodeName: 'node-1', nodeId: N1, attached: true, deleting: false, ...o });

describe('what "holds" a publish (reconciliation)', () => {
  it('an attaching or attached VolumeAttachment for the same volume and node id holds it', () => {
    expect(holds(va(), VOL, N1)).toBe(true);
    expect(holds(va({ attached: false }), VOL, N1)).toBe(true);
  });
  it('one being deleted holds nothing', () => expect(holds(va({ deleting: true }), VOL, N1)).toBe(false));
  it('another volume, or another node id on the same host (re-registered initiator), does not hold it', () => {
    expect(holds(va({ volumeId: OTHER }), VOL, N1)).toBe(false);
    expect(holds(va({ nodeId: 'node-1;iqn.2004-10.com.ubuntu:01:b;' }), VOL, N1)).toBe(false);
    expect(holds(va({ nodeName: 'node-2', nodeId: 'node-2;;' }), VOL, N1)).toBe(false);
  });
  it('without a CSINode entry for the node, the host part of the node id must match spec.nodeName', () => {
    expect(holds(va({ nodeId: undefined }), VOL, N1)).toBe(true);
    expect(holds(va({ nodeId: undefined, nodeName: 'node-2' }), VOL, N1)).toBe(false);
    expect(holds(va({ nodeId: undefined, nodeName: '' }), VOL, N1)).toBe(false);
  });
  it('with its PV unknown, it holds every publish on its node (cannot be ruled out)', () => {
    expect(holds(va({ volumeId: undefined }), OTHER, N1)).toBe(true);
    expect(holds(va({ volumeId: undefined }), OTHER, 'node-2;;')).toBe(false);
  });
});

describe('projections of API objects (list results carry Dates, watch events strings)', () => {
  const raw = {
    metadata: { name: 'csi-abc', resourceVersion: '7' },
    spec: { attacher: D, nodeName: 'node-1', source: { persistentVolumeName: 'pv-1' } },
    status: { attached: true },
  };
  it('keeps our VolumeAttachments only', () => {
    expect(projectVolumeAttachment(D, raw)).toEqual({ name: 'csi-abc', nodeName: 'node-1', pvName: 'pv-1', inlineVolumeHandle: undefined, attached: true, deleting: false });
    expect(projectVolumeAttachment('other.csi.io', raw)).toBeUndefined();
    expect(projectVolumeAttachment(D, { metadata: {} })).toBeUndefined();
    expect(projectVolumeAttachment(D, null)).toBeUndefined();
  });
  it('sees deletionTimestamp as a string or a Date', () => {
    expect(projectVolumeAttachment(D, { ...raw, metadata: { ...raw.metadata, deletionTimestamp: '2025-01-01T00:00:00Z' } })?.deleting).toBe(true);
    expect(projectVolumeAttachment(D, { ...raw, metadata: { ...raw.metadata, deletionTimestamp: new Date() } })?.deleting).toBe(true);
  });
  it('reads inline volume specs', () => {
    const inline = { ...raw, spec: { ...raw.spec, source: { inlineVolumeSpec: { csi: { driver: D, volumeHandle: VOL } } } } };
    expect(projectVolumeAttachment(D, inline)?.inlineVolumeHandle).toBe(VOL);
  });
  it('takes our driver entry of a CSINode and our PersistentVolumes', () => {
    expect(projectCsiNode(D, { metadata: { name: 'n' }, spec: { drivers: [{ name: 'x', nodeID: 'x' }, { name: D, nodeID: 'n;;' }] } })).toEqual({ nodeName: 'n', nodeId: 'n;;', topologyKeys: [] });
    expect(projectCsiNode(D, { metadata: { name: 'n' }, spec: { drivers: [{ name: 'x', nodeID: 'x' }] } })).toBeUndefined();
    expect(projectCsiNode(D, { metadata: { name: 'n' }, spec: {} })).toBeUndefined();
    expect(projectPersistentVolume(D, { metadata: { name: 'pv' }, spec: { csi: { driver: D, volumeHandle: VOL } } })).toEqual({ name: 'pv', volumeHandle: VOL });
    expect(projectPersistentVolume(D, { metadata: { name: 'pv' }, spec: { csi: { driver: 'x', volumeHandle: VOL } } })).toBeUndefined();
    expect(projectPersistentVolume(D, { metadata: { name: 'pv' }, spec: { hostPath: { path: '/x' } } })).toBeUndefined();
  });
});

describe('KubeNodeRegistry', () => {
  it('accepts any well-formed id until CSINodes have been listed, then only ids a CSINode carries', () => {
    const dir = { synced: false, ids: new Set<string>(), hasNodeId(id: string) { return this.ids.has(id); } };
    const reg = new KubeNodeRegistry(dir);
    expect(reg.lookup(N1)).toEqual({ host: 'node-1', iqn: 'iqn.2004-10.com.ubuntu:01:a', wwpns: [] });
    expect(reg.lookup('not;an;id;')).toBeUndefined();
    dir.synced = true;
    expect(reg.lookup(N1)).toBeUndefined();
    dir.ids.add(N1);
    expect(reg.lookup(N1)?.host).toBe('node-1');
  });
});

describe('API error helpers', () => {
  it('recognises 410 Gone in its several shapes', () => {
    expect(isGone({ code: 410 })).toBe(true);
    expect(isGone({ statusCode: 410 })).toBe(true);
    expect(isGone({ code: 500, body: JSON.stringify({ kind: 'Status', code: 410 }) })).toBe(true);
    expect(isGone({ code: 503 })).toBe(false);
    expect(isGone(new Error('x'))).toBe(false);
  });
  it('describes errors briefly', () => {
    expect(describeError({ code: 403, message: 'HTTP-Code: 403\nMessage: Unknown API Status Code!\nBody: {...}' })).toBe('HTTP 403');
    expect(describeError({ code: 403, body: JSON.stringify({ kind: 'Status', code: 403, message: 'volumeattachments.storage.k8s.io is forbidden' }) })).toBe('HTTP 403: volumeattachments.storage.k8s.io is forbidden');
    expect(describeError(Object.assign(new Error('Forbidden'), { statusCode: 403 }))).toBe('HTTP 403: Forbidden');
    expect(describeError(Object.assign(new Error('request to http://x failed'), { cause: { code: 'ECONNREFUSED' } }))).toMatch(/ECONNREFUSED/);
  });
});
