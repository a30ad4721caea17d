import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IscsiConnector } from '../../src/node/connectors/iscsi-connector.js';
import { mapperName, PASSPHRASE_KEY } from '../../src/node/encryption.js';
import { NodeService } from '../../src/node/service.js';
import { Code } from '../../src/errors/domain-error.js';
import { csiError, MiB, mountCap, NodeEnv } from '../helpers/node-env.js';
import { startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { TestTgtd } from '../helpers/tgtd.js';
import { initiatorName, Iscsid, kernelSessions, requireGuest, scsiDisks } from './guest.js';

/**
 * LUKS over kernel iSCSI on a real kernel (the disk under the mapping is a SCSI disk of an iSCSI session, held by
 * dm-crypt: the connector must still see it as the LUN's device, or unstage leaves the mount and cannot close): `sinter controller` (file backend,
 * tgt export on the guest's loopback) provisions, publishes and grows the
 * volume; the node service (kernel initiator, dm-crypt) stages it encrypted.
 * The grow is the whole chain: ControllerExpandVolume grows image and LUN,
 * NodeExpandVolume rescans the SCSI disk, resizes the LUKS mapping, then the
 * filesystem.
 */
const PASS = 'vm-luks-iscsi-passphrase-0123456789';
const MARKER = 'sinter-luks-iscsi-plaintext-marker-4c21';
const PREFIX = 'iqn.2026-11.io.sinter.vm:';

async function mapping(volumeId: string): Promise<{ active: boolean; device?: string; size?: number }> {
  const r = await execa('cryptsetup', ['status', mapperName(volumeId)], { reject: false });
  if (r.exitCode === 4) return { active: false };
  expect(r.exitCode, r.stderr).toBe(0);
  const size = Number((await execa('blockdev', ['--getsize64', `/dev/mapper/${mapperName(volumeId)}`])).stdout.trim());
  return { active: true, device: /^\s*device:\s*(\S+)/m.exec(r.stdout)?.[1], size };
}

const dfSize = async (path: string) => Number((await execa('df', ['-B1', '--output=size', path])).stdout.split('\n')[1].trim());

describe('LUKS over kernel iSCSI (sinter controller + tgt, node with the kernel initiator and dm-crypt in the VM guest)', () => {
  requireGuest();
  let iscsid: Iscsid;
  let tgtd: TestTgtd;
  let ctl: SinterProcess;
  let env: NodeEnv;
  let nodeId: string;
  let dataDir: string;
  let volumeId: string | undefined;

  beforeAll(async () => {
    await execa('modprobe', ['dm_crypt']);
    iscsid = await Iscsid.start();
    tgtd = await TestTgtd.start();
    env = await NodeEnv.create({ luksPbkdf: { iterTimeMs: 50, memoryKiB: 32 * 1024 } });
    nodeId = `node-a;${initiatorName()};`;
    env.config = { ...env.config, nodeId };
    const log = pino({ level: 'silent' });
    env.use(
      new NodeService({
        config: env.config,
        exec: env.exec,
        log,
        connectors: [new IscsiConnector({ mode: 'kernel', initiatorName: initiatorName(), stateDir: join(env.stateDir, 'iscsi-userspace'), kernel: { deviceTimeoutMs: 120_000 } }, env.exec, log)],
      }),
    );
    await env.svc.start();

    const base = join(env.dir, 'ctl');
    mkdirSync(base);
    dataDir = join(base, 'volumes-data');
    writeFileSync(
      join(base, 'controller.yaml'),
      [
        'backends:',
        '  - name: san',
        '    driver: file',
        `    dataDir: ${dataDir}`,
        '    export: iscsi',
        '    iscsi:',
        `      portals: ["${tgtd.portal}"]`,
        `      controlPort: ${tgtd.controlPort}`,
        `      iqnPrefix: "${PREFIX}"`,
      ].join('\n'),
    );
    ctl = await startSinter({ role: 'controller', base, args: ['--config', join(base, 'controller.yaml')] });
  });

  afterAll(async () => {
    for (let i = 0; i < 5 && env; i++) for (const m of (await env.mountsUnder()).reverse()) await execa('umount', ['-l', m.mountPoint], { reject: false });
    if (volumeId) await execa('cryptsetup', ['close', mapperName(volumeId)], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '--logoutall=all'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-o', 'delete'], { reject: false });
    await env?.cleanup();
    await ctl?.cleanup();
    await tgtd?.stop();
    await iscsid?.stop();
  });

  it('stage formats LUKS2 + ext4 over the LUN; the image holds ciphertext; restage reads the data; online grow: LUN, rescan, cryptsetup resize, filesystem; nothing left after unstage', async () => {
    const created = (
      await ctl.client.controller.CreateVolume({ name: 'enc-iscsi', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [mountCap('ext4')], parameters: { encrypted: 'true' } })
    ).volume!;
    const id = created.volume_id!;
    volumeId = id;
    expect(created.volume_context).toMatchObject({ encrypted: 'true' });
    const pub = await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: mountCap('ext4'), volume_context: created.volume_context });
    expect(pub.publish_context).toMatchObject({ transport: 'iscsi', portals: tgtd.portal, iqn: `${PREFIX}${id}`, lun: '1' });
    const stageReq = {
      volume_id: id,
      staging_target_path: join(env.kubelet, 'staging', id),
      volume_capability: mountCap('ext4'),
      publish_context: pub.publish_context,
      volume_context: created.volume_context,
      secrets: { [PASSPHRASE_KEY]: PASS },
    };
    const target = env.target(id);
    const image = join(dataDir, 'volumes', `${id}.img`);

    await env.h.NodeStageVolume(stageReq);
    // dm-crypt sits on the iSCSI disk: the mapping's device is a SCSI disk of the session.
    const m = await mapping(id);
    expect(m.active).toBe(true);
    expect(scsiDisks().map((d) => `/dev/${d}`)).toContain(m.device);
    expect(m.size).toBe(48 * MiB);
    expect(await kernelSessions()).toEqual([`${tgtd.portal},1 ${PREFIX}${id}`]);
    // A repeated stage (kubelet after a restart) meets the disk held by the volume's own mapping: still this LUN's
    // device, the same mapping, nothing reopened or reformatted.
    await env.h.NodeStageVolume(stageReq);
    expect(await mapping(id)).toEqual(m);
    await env.h.NodePublishVolume({ volume_id: id, staging_target_path: stageReq.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    await writeFile(join(target, 'secret.txt'), MARKER.repeat(64));
    await execa('sync');
    await execa('blockdev', ['--flushbufs', `/dev/mapper/${mapperName(id)}`]);
    expect(readFileSync(image).includes(Buffer.from(MARKER))).toBe(false);

    // Unstage closes the mapping and logs out; a restage opens the same header and finds the file.
    await env.h.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await env.h.NodeUnstageVolume({ volume_id: id, staging_target_path: stageReq.staging_target_path });
    expect((await mapping(id)).active).toBe(false);
    expect(await kernelSessions()).toEqual([]);
    const header = readFileSync(image).subarray(0, 16 * MiB);
    await env.h.NodeStageVolume(stageReq);
    await env.h.NodePublishVolume({ volume_id: id, staging_target_path: stageReq.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    expect(await readFile(join(target, 'secret.txt'), 'utf8')).toBe(MARKER.repeat(64));
    expect(readFileSync(image).subarray(0, 16 * MiB).equals(header)).toBe(true);

    // Online grow, with the filesystem mounted and the session live.
    const before = await dfSize(target);
    const grown = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 128 * MiB }, volume_capability: mountCap('ext4') });
    expect(grown).toMatchObject({ node_expansion_required: true });
    const res = (await env.h.NodeExpandVolume({
      volume_id: id,
      volume_path: target,
      staging_target_path: stageReq.staging_target_path,
      capacity_range: { required_bytes: 128 * MiB },
      volume_capability: mountCap('ext4'),
    })) as { capacity_bytes: number };
    expect(res.capacity_bytes).toBe(128 * MiB);
    expect((await mapping(id)).size).toBe(112 * MiB);
    expect((await dfSize(target)) - before).toBeGreaterThan(50 * MiB);
    expect(await readFile(join(target, 'secret.txt'), 'utf8')).toBe(MARKER.repeat(64));
    await writeFile(join(target, 'after-grow.bin'), Buffer.alloc(60 * MiB, 3));
    await execa('sync');

    // Unstage refuses while the mapping is still mounted elsewhere, and takes nothing away.
    const err = await csiError(env.h.NodeUnstageVolume({ volume_id: id, staging_target_path: stageReq.staging_target_path }));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(target);
    expect((await mapping(id)).active).toBe(true);
    expect(await kernelSessions()).toHaveLength(1);
    await env.h.NodeUnpublishVolume({ volume_id: id, target_path: target });
    // What a node plugin killed right after the staging umount leaves: the mapping open over the disk, the session
    // up, the record still 'staged'. The retried unstage closes the mapping, then logs out.
    await execa('umount', [stageReq.staging_target_path]);
    await env.h.NodeUnstageVolume({ volume_id: id, staging_target_path: stageReq.staging_target_path });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect((await mapping(id)).active).toBe(false);
    expect(await kernelSessions()).toEqual([]);
    expect(scsiDisks()).toEqual([]);
    expect(await env.mountsUnder()).toEqual([]);
    expect(readFileSync(image).includes(Buffer.from(MARKER))).toBe(false);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });
});
