import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cephForFile, rbdSinterConfig, type FileCeph } from '../helpers/ceph-shared.js';
import { stringMatching } from '../helpers/matchers.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, codeOf, MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools } from '../helpers/tgtd.js';
import { markOwner, sweepAbandonedTestDirs, teardownTestDir } from '../helpers/userspace-cleanup.js';

// The StorageClass parameter rbdAttach against `sinter all` with an rbd
// backend on the run's shared Ceph cluster (a pool of this file's). The node
// config says `node.rbd.attach: kernel`; the class's `userspace` overrides it,
// so the volume is attached by qemu-nbd's librbd behind nbdfuse and a loop
// device. A class asking for `kernel` is refused at NodeStageVolume, naming
// the parameter, on a host without the rbd module (this machine); where the
// module is there, the kernel maps it.

const PREFIX = 'sinter-rbd-attach-class-';
const userspaceDir = (dir: string) => join(dir, 'node-state', 'rbd-userspace');

describe('StorageClass rbdAttach: the class picks the attach mode, the node honours it or says why not', () => {
  const t = tempDir(PREFIX);
  let c: FileCeph;
  let s: SinterProcess;
  let nodeId: string;

  beforeAll(async () => {
    requireIscsiTools(); // qemu-nbd, nbdfuse, fusermount3, losetup
    await sweepAbandonedTestDirs(PREFIX, (d) => [userspaceDir(d)]);
    markOwner(t.dir);
    c = await cephForFile('rbd-attach');
    const cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(
      cfg,
      rbdSinterConfig(c, {
        controllerStateDir: join(t.dir, 'controller-state'),
        nodeStateDir: join(t.dir, 'node-state'),
        // The node's own choice; the class below asks for the other one.
        nodeRbd: ['attach: kernel'],
      }),
    );
    s = await startSinter({ base: join(t.dir, 'sinter'), args: ['--config', cfg] });
    nodeId = (await s.client.node.NodeGetInfo({})).node_id as string;
  }, 180_000);

  afterAll(async () => {
    await s?.cleanup();
    await teardownTestDir(t.dir, [userspaceDir(t.dir)]);
    await c?.stop();
  });

  const watchers = async (image: string) => (JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${image}`])) as { watchers: unknown[] }).watchers;
  const staging = (id: string) => {
    const p = join(s.kubeletRoot, 'staging', id);
    mkdirSync(p, { recursive: true });
    return p;
  };
  const cap = blockCap('SINGLE_NODE_WRITER');
  /** The device major of a staged block file (loop: 7). */
  const majorOf = async (file: string) => parseInt((await execa('stat', ['-c', '%t', file])).stdout.trim(), 16);

  it('CreateVolume refuses a value that is not kernel, userspace or auto, naming the parameter', async () => {
    const r = s.client.controller.CreateVolume({ name: 'pvc-bad-attach', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: { rbdAttach: 'nbd' } });
    await expect(r).rejects.toMatchObject({ code: 3, details: stringMatching(/parameters\.rbdAttach must be one of kernel, userspace, auto/) });
    expect((await c.rbd(['ls', c.pool])).trim()).toBe('');
  });

  it('rbdAttach: userspace on a node configured for kernel → attached in user space (qemu-nbd, nbdfuse, loop); the recorded connection detaches it', async () => {
    const ctl = s.client.controller;
    const node = s.client.node;
    const vol = (await ctl.CreateVolume({ name: 'pvc-userspace', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: { rbdAttach: 'userspace' } })).volume!;
    expect(vol.volume_context).toMatchObject({ rbdAttach: 'userspace' });
    const id = vol.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap, volume_context: vol.volume_context });
    const st = staging(id);
    await node.NodeStageVolume({ volume_id: id, staging_target_path: st, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    // qemu-nbd's librbd has the image open; its attachment dir is the user-space connector's.
    expect(await watchers(id)).toHaveLength(1);
    const dirs = readdirSync(userspaceDir(t.dir));
    expect(dirs).toHaveLength(1);
    expect(JSON.parse(readFileSync(join(userspaceDir(t.dir), dirs[0], 'attachment.json'), 'utf8'))).toMatchObject({ pool: c.pool, image: id });
    // The staged block file is a loop device (major 7) over the FUSE file.
    expect(await majorOf(join(st, id))).toBe(7);
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: st });
    expect(await watchers(id)).toHaveLength(0);
    expect((await execa('pgrep', ['-f', userspaceDir(t.dir)], { reject: false })).stdout).toBe('');
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
  }, 120_000);

  it('rbdAttach: kernel → FAILED_PRECONDITION naming the parameter on a node without the rbd module (where the module is there: a /dev/rbd mapping)', async () => {
    const ctl = s.client.controller;
    const node = s.client.node;
    const vol = (await ctl.CreateVolume({ name: 'pvc-kernel', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: { rbdAttach: 'kernel' } })).volume!;
    expect(vol.volume_context).toMatchObject({ rbdAttach: 'kernel' });
    const id = vol.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap, volume_context: vol.volume_context });
    const st = staging(id);
    // A bad value sent straight to the node is the request's mistake.
    await expect(node.NodeStageVolume({ volume_id: id, staging_target_path: st, volume_capability: cap, publish_context: pub.publish_context, volume_context: { rbdAttach: 'nbd' } })).rejects.toMatchObject({
      code: 3,
      details: stringMatching(/volume_context\.rbdAttach must be one of kernel, userspace, auto/),
    });
    const hostKrbd = existsSync('/sys/bus/rbd') || (await execa('modprobe', ['-n', 'rbd'], { reject: false })).exitCode === 0;
    const stage = node.NodeStageVolume({ volume_id: id, staging_target_path: st, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    if (!hostKrbd) {
      await expect(stage).rejects.toMatchObject({ code: 9, details: stringMatching(/StorageClass parameter rbdAttach .*asks for the kernel rbd attach, but this node has no rbd kernel module/) });
      expect(await watchers(id)).toHaveLength(0);
    } else {
      await stage;
      expect(await majorOf(join(st, id))).not.toBe(7);
      expect(readdirSync('/sys/bus/rbd/devices').length).toBeGreaterThan(0);
      expect(await watchers(id)).toHaveLength(1);
    }
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: st });
    expect(await watchers(id)).toHaveLength(0);
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
  }, 120_000);
});
