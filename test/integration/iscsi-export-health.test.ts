import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBackend } from '../../src/backends/file/backend.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { encodeNodeId } from '../../src/contracts/nodeid.js';
import { HostExecutor } from '../../src/exec/run.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { fileBackendConfig, iscsiExport } from '../helpers/backend-config.js';
import { stringContaining, stringMatching } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);
const PREFIX = 'iqn.2025-01.io.sinter.health:';
const node = { host: 'health-node', iqn: 'iqn.2025-01.io.test:health-node', wwpns: [] };
const noLock = <T>(_id: string, fn: () => Promise<T>) => fn();

/**
 * ControllerGetVolume's volume_condition and ListVolumes' published nodes
 * come from the backend: for `export: iscsi` the condition is read from the
 * real tgtd, so an export someone (or a tgtd restart) took away shows up,
 * and reconcile puts it back.
 */
describe('the volume condition of an iSCSI-exported volume reflects the real tgtd exports (real tgtd)', () => {
  const t = tempDir('sinter-iscsi-health-');
  let tgtd: TestTgtd;
  let helper: TgtTargetHelper;
  let b: FileBackend;
  let id: string;

  const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
  const target = async () => (await helper.listTargets()).find((x) => x.volumeId === id);

  beforeAll(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start();
    const cfg = fileBackendConfig('health', join(t.dir, 'data'), iscsiExport(tgtd, PREFIX));
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec, log);
    b = new FileBackend(cfg, exec, log);
    await b.start();
    id = newVolumeId('health');
    await b.createVolume({ id, name: 'health-1', sizeBytes: 32 * MiB, parameters: {}, capabilities: [{ accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' }] });
  });

  afterAll(async () => {
    try {
      await tgtd?.stop();
    } finally {
      t.cleanup();
    }
  });

  it('healthy once published; a removed ACL, a removed target, and an unreachable tgtd each make it abnormal with the reason; reconcile restores the export', async () => {
    // Not published: no export is expected, nothing is missing.
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });
    await b.exportVolume(id, node, false, {});
    await b.setAttachments(id, [{ nodeId: encodeNodeId(node), readonly: false, accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4', at: new Date().toISOString() }]);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });
    expect((await target())!.acls).toEqual([node.iqn]);

    // Someone unbinds the node's initiator by hand.
    await tgtadm('--op', 'unbind', '--mode', 'target', '--tid', String((await target())!.tid), '--initiator-name', node.iqn);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: true, message: stringContaining(`initiator ${node.iqn} is not in the target's ACL`) });
    await b.reconcileExports(noLock);
    expect((await target())!.acls).toEqual([node.iqn]);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });

    // The whole target goes (what a tgtd restart does to every target).
    await tgtadm('--op', 'delete', '--mode', 'target', '--force', '--tid', String((await target())!.tid));
    expect(await target()).toBeUndefined();
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: true, message: stringMatching(/published, but its iSCSI target \S+ is missing/) });
    await b.reconcileExports(noLock);
    expect((await target())!.luns.find((l) => l.lun === 1)?.backingPath).toBe(b.imagePath(id));
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });

    // tgtd down: the condition says the daemon cannot be read, not that all is well.
    await tgtd.kill();
    try {
      expect(await b.volumeHealth(id)).toMatchObject({ abnormal: true, message: stringContaining('cannot read the iSCSI target daemon') });
    } finally {
      await tgtd.startAgain();
    }
    await b.reconcileExports(noLock);
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });

    // Unpublished and unexported: the target goes, and no export is expected any more.
    await b.unexportVolume(id, node);
    await b.setAttachments(id, []);
    expect(await target()).toBeUndefined();
    expect(await b.volumeHealth(id)).toMatchObject({ abnormal: false });
  });
});
