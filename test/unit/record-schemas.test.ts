import { describe, expect, it } from 'vitest';
import { newSnapshotId } from '../../src/backends/ids.js';
import { isSnapshotRecord, isVolumeRecord } from '../../src/backends/file/records.js';
import { parseRecord } from '../../src/node/stage-state.js';

const VOL = 'default-00000000-0000-4000-8000-000000000000';
const volume = { id: VOL, name: 'pvc-1', backend: 'default', sizeBytes: 1, state: 'available', parameters: {}, capabilities: [], attachments: [], createdAt: 't', updatedAt: 't' };
const stage = {
  version: 1,
  volumeId: 'vol-1',
  stagingPath: '/var/lib/kubelet/x',
  createdStagingDir: true,
  access: 'mount',
  mountFlags: [],
  accessMode: 'SINGLE_NODE_WRITER',
  publishContext: { transport: 'local', path: '/x' },
  phase: 'staged',
  publishes: [{ targetPath: '/t', readonly: false, created: 'dir' }],
  updatedAt: 't',
};

describe('records read from disk, checked by their schemas', () => {
  it('a volume record loads with a field another version wrote; one missing what start-up reads does not', () => {
    expect(isVolumeRecord(volume)).toBe(true);
    expect(isVolumeRecord({ ...volume, futureField: { x: 1 } })).toBe(true);
    expect(isVolumeRecord({ ...volume, attachments: undefined })).toBe(false);
    expect(isVolumeRecord({ ...volume, id: '../../etc' })).toBe(false);
    expect(isVolumeRecord({ ...volume, sizeBytes: '1' })).toBe(false);
    expect(isVolumeRecord(null)).toBe(false);
    expect(isVolumeRecord([volume])).toBe(false);
  });

  it('a snapshot record needs its id, name, source and state', () => {
    const snap = { id: newSnapshotId('default'), name: 's', backend: 'default', sourceVolumeId: VOL, sizeBytes: 1, state: 'available', createdAt: 't', updatedAt: 't' };
    expect(isSnapshotRecord(snap)).toBe(true);
    expect(isSnapshotRecord({ ...snap, futureField: 1 })).toBe(true);
    expect(isSnapshotRecord({ ...snap, state: undefined })).toBe(false);
    expect(isSnapshotRecord({ ...snap, sourceVolumeId: 7 })).toBe(false);
    expect(isSnapshotRecord({ ...snap, id: VOL + '/..' })).toBe(false);
  });

  it('a stage record: defaults for what older records lack, a field since dropped is kept, and a reason naming the key when corrupt', () => {
    const { mountFlags: _m, publishes: _p, publishContext: _c, ...old } = stage;
    expect(parseRecord(JSON.stringify(old), 'vol-1')).toMatchObject({ mountFlags: [], publishes: [], publishContext: {} });
    expect(parseRecord(JSON.stringify({ ...stage, formatted: true }), 'vol-1')).toMatchObject({ volumeId: 'vol-1', formatted: true });
    const why = (r: unknown) => {
      try {
        parseRecord(typeof r === 'string' ? r : JSON.stringify(r), 'vol-1');
      } catch (e) {
        return (e as Error).message;
      }
      return 'parsed';
    };
    expect(why({ ...stage, version: 2 })).toBe('version: not a version 1 stage record');
    expect(why(null)).toBe('not a version 1 stage record');
    expect(why([stage])).toBe('not a version 1 stage record');
    expect(why({ ...stage, volumeId: 'vol-2' })).toBe('record names volume "vol-2", file is for "vol-1"');
    expect(why({ ...stage, access: 'bogus' })).toBe('access: record lacks stagingPath or access');
    expect(why({ ...stage, stagingPath: undefined })).toBe('stagingPath: record lacks stagingPath or access');
    expect(why({ ...stage, publishes: [{ readonly: true }] })).toMatch(/^publishes\[0\]\.targetPath: /);
    expect(why({ ...stage, publishContext: { lun: 1 } })).toMatch(/^publishContext\.lun: /);
    expect(why('{"version": 1,')).toMatch(/JSON/);
  });
});
