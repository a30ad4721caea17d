import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cephForFile, rbdSinterConfig, type FileCeph } from '../helpers/ceph-shared.js';
import { stringMatching } from '../helpers/matchers.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { codeOf, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools } from '../helpers/tgtd.js';
import { markOwner, sweepAbandonedTestDirs, teardownTestDir } from '../helpers/userspace-cleanup.js';

// The CSI lifecycle over gRPC against `sinter all` with an rbd backend on a
// real single-node Ceph (the run's shared cluster, a pool of this file's), the node half attaching in
// user space: qemu-nbd's rbd driver → nbdfuse → loop device (no rbd.ko here).

const PREFIX = 'sinter-rbd-csi-';
const userspaceDir = (dir: string) => join(dir, 'node-state', 'rbd-userspace');

describe('rbd over CSI: sinter all, user-space attach (qemu-nbd rbd driver, nbdfuse, loop)', () => {
  const t = tempDir(PREFIX);
  let c: FileCeph;
  let s: SinterProcess;
  let nodeId: string;

  beforeAll(async () => {
    requireIscsiTools(); // qemu-nbd, nbdfuse, fusermount3, losetup: the same user-space chain
    // Earlier runs of this file killed before their afterAll (their test process gone): their attachments.
    await sweepAbandonedTestDirs(PREFIX, (d) => [userspaceDir(d)]);
    markOwner(t.dir);
    c = await cephForFile('rbd-csi');
    const cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(cfg, rbdSinterConfig(c, { controllerStateDir: join(t.dir, 'controller-state'), nodeStateDir: join(t.dir, 'node-state') }));
    s = await startSinter({ base: join(t.dir, 'sinter'), args: ['--config', cfg] });
    nodeId = (await s.client.node.NodeGetInfo({})).node_id as string;
  }, 180_000);

  afterAll(async () => {
    await s?.cleanup();
    // Whatever a failed test left attached under this file's dir: mounts, the loop devices backed by its
    // FUSE files (node-state is outside the sinter base that s.cleanup scrubs), qemu-nbd and nbdfuse.
    await teardownTestDir(t.dir, [userspaceDir(t.dir)]);
    await c?.stop();
  });

  const watchers = async (image: string) => (JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${image}`])) as { watchers: unknown[] }).watchers;
  const paths = (id: string) => {
    const staging = join(s.kubeletRoot, 'staging', id);
    const target = join(s.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };

  it('create → publish → stage → write → snapshot → clone read back → expand says stage again → unstage → delete, nothing left in the pool or on the node', async () => {
    const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
    const ctl = s.client.controller;
    const node = s.client.node;
    const id = (await ctl.CreateVolume({ name: 'pvc-rbd-1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [cap], parameters: {} })).volume!.volume_id!;
    expect(id).toMatch(/^ceph-[0-9a-f-]{36}$/);
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    expect(pub.publish_context).toEqual({ transport: 'rbd', pool: c.pool, image: id, monitors: c.monitors });
    const a = paths(id);
    await node.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context });
    await node.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
    writeFileSync(join(a.target, 'hello.txt'), 'bytes that went through librbd');
    // While attached, the image has a watcher: qemu-nbd's librbd client.
    expect(await watchers(id)).toHaveLength(1);

    // The user-space chain cannot show growth: NodeExpandVolume says to stage again.
    await ctl.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 96 * MiB }, volume_capability: cap });
    const grow = node.NodeExpandVolume({ volume_id: id, volume_path: a.target, staging_target_path: a.staging, capacity_range: { required_bytes: 96 * MiB }, volume_capability: cap });
    await expect(grow).rejects.toMatchObject({ code: 9, details: stringMatching(/stage the volume again/) });

    // Snapshot while published (fsfreeze is the CO's business; sync makes the file reach the image).
    await execa('sync', ['-f', join(a.target, 'hello.txt')]);
    const snap = (await ctl.CreateSnapshot({ name: 'snap-rbd-1', source_volume_id: id })).snapshot!;
    expect(snap.ready_to_use).toBe(true);
    const clone = (
      await ctl.CreateVolume({ name: 'pvc-rbd-clone', capacity_range: { required_bytes: 96 * MiB }, volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } })
    ).volume!.volume_id!;
    await node.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await watchers(id)).toHaveLength(0);

    const cpub = await ctl.ControllerPublishVolume({ volume_id: clone, node_id: nodeId, volume_capability: cap });
    const b = paths(clone);
    await node.NodeStageVolume({ volume_id: clone, staging_target_path: b.staging, volume_capability: cap, publish_context: cpub.publish_context });
    await node.NodePublishVolume({ volume_id: clone, staging_target_path: b.staging, target_path: b.target, volume_capability: cap, publish_context: cpub.publish_context });
    expect(readFileSync(join(b.target, 'hello.txt'), 'utf8')).toBe('bytes that went through librbd');
    await node.NodeUnpublishVolume({ volume_id: clone, target_path: b.target });
    await node.NodeUnstageVolume({ volume_id: clone, staging_target_path: b.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: clone, node_id: nodeId });

    // The source goes first (its snapshot keeps it in the trash), then the clone and the snapshot.
    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(await codeOf(ctl.DeleteVolume({ volume_id: clone }))).toBe('OK');
    expect(await codeOf(ctl.DeleteSnapshot({ snapshot_id: snap.snapshot_id }))).toBe('OK');
    expect((await c.rbd(['ls', c.pool])).trim()).toBe('');
    expect(JSON.parse((await c.rbd(['trash', 'ls', '--all', '--format', 'json', c.pool])) || '[]')).toEqual([]);
    // No daemon of the chain left, and the key never in a log line.
    expect((await execa('pgrep', ['-f', join(t.dir, 'node-state')], { reject: false })).stdout).toBe('');
    expect(s.logs()).not.toContain(c.key);
  });
});
