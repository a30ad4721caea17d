import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstJsonValue } from '../../src/backends/rbd/blocklist.js';
import { startCephCluster, type CephCluster } from '../helpers/ceph-cluster.js';
import { rbdSinterConfig } from '../helpers/ceph-shared.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, codeOf, MiB, mountCap, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { requireGuest, scratchDisks } from './guest.js';

/** The kernel's rbd mappings, as sysfs shows them: id → pool/image. */
function mappings(): { id: string; pool: string; image: string; client: string }[] {
  const base = '/sys/bus/rbd/devices';
  if (!existsSync(base)) return [];
  const cat = (id: string, a: string) => readFileSync(join(base, id, a), 'utf8').trim();
  return readdirSync(base)
    .sort()
    .map((id) => ({ id, pool: cat(id, 'pool'), image: cat(id, 'name'), client: cat(id, 'client_id') }));
}
/** The StorageClass parameter (and the volume_context CreateVolume hands on) asking for the kernel attach. */
const KERNEL_CLASS = { rbdAttach: 'kernel' };
const rbdDevices = () => readdirSync('/dev').filter((d) => /^rbd\d+$/.test(d));
const sizeOf = async (dev: string) => Number((await execa('blockdev', ['--getsize64', dev])).stdout.trim());

/** Where SINTER_RECORD_KRBD=1 writes what the real rbd CLI and sysfs showed (test/unit/rbd-kernel.test.ts reads it). */
const FIXTURES = new URL('../fixtures/rbd/', import.meta.url).pathname;
const RECORD = process.env.SINTER_RECORD_KRBD === '1';
let t0 = performance.now();
/** Elapsed seconds per step in the log: where the guest's time goes. */
const step = (what: string) => {
  const avail = /MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1];
  console.log(`krbd ${((performance.now() - t0) / 1000).toFixed(1)} s: ${what} (MemAvailable ${Math.round(Number(avail) / 1024)} MiB)`);
};

/**
 * Kernel RBD end to end on a real kernel: a single-node Ceph cluster inside the
 * guest (test/helpers/ceph-cluster.ts on 127.0.0.1, its OSD file on a scratch
 * disk: the guest's /tmp is RAM) and `sinter all` with an rbd backend and
 * the StorageClass parameter `rbdAttach: kernel` (overriding the node's
 * `node.rbd.attach: userspace`): `rbd device map` with the node's own cephx key,
 * /dev/rbdN found on the rbd bus, growth seen by the kernel after a resize,
 * `rbd device unmap` on unstage, and the blocklist fence of the kernel client.
 */
describe('kernel rbd in the VM: sinter all (rbd backend) + the node mapping images with rbd.ko from a Ceph cluster in the guest', () => {
  requireGuest();
  const t = tempDir('sinter-vm-rbd-');
  const cephParent = '/mnt/sinter-vm-ceph';
  let disk: string;
  let c: CephCluster;
  let s: SinterProcess;
  let nodeId: string;

  beforeAll(async () => {
    t0 = performance.now();
    await execa('modprobe', ['rbd']);
    disk = scratchDisks()[0]!;
    mkdirSync(cephParent, { recursive: true });
    await execa('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=1', disk]);
    await execa('mount', [disk, cephParent]);
    c = await startCephCluster({ parentDir: cephParent, osdBytes: 4 * 2 ** 30, sinterMonCaps: "allow command 'osd blocklist'",
      // Under TCG the mgr takes minutes to load its Python modules (the rbd backend's `ceph df` needs it).
      healthTimeoutMs: 400_000,
      onStep: (what, ms) => console.log(`ceph start ${(ms / 1000).toFixed(1)} s: ${what}`) });
    step(`ceph cluster in the guest: HEALTH_OK after ${c.startMs} ms`);
    const cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(
      cfg,
      rbdSinterConfig(c, {
        controllerStateDir: join(t.dir, 'controller-state'),
        nodeStateDir: join(t.dir, 'node-state'),
        // The node's own default is user space: every volume here comes from a class with rbdAttach: kernel,
        // so the kernel mappings below also prove the StorageClass parameter overrides the node's setting.
        nodeRbd: ['attach: userspace', 'mapOptions: [queue_depth=64]'],
        // Each host command's time (exec lines), for the timing summary afterAll prints.
        extra: ['logLevel: debug'],
      }),
    );
    s = await startSinter({ base: join(t.dir, 'sinter'), args: ['--config', cfg] });
    nodeId = (await s.client.node.NodeGetInfo({})).node_id!;
    step('sinter all ready');
  }, 600_000);

  afterAll(async () => {
    // Where sinter's time went under TCG: the slowest host commands and RPCs.
    if (s) {
      const lines = s.logs().split('\n').flatMap((l) => {
        try {
          return [JSON.parse(l) as { msg?: string; cmd?: string; ms?: number; rpc?: string }];
        } catch {
          return [];
        }
      });
      const slow = lines.filter((l) => (l.msg === 'exec' || l.msg === 'rpc') && typeof l.ms === 'number').sort((x, y) => y.ms! - x.ms!).slice(0, 20);
      for (const l of slow) console.log(`krbd timing: ${l.ms} ms ${l.msg} ${(l.cmd ?? l.rpc ?? '').slice(0, 90)}`);
    }
    await s?.cleanup();
    // Whatever a failed test left mapped (this cluster's pool only), then the cluster and its disk.
    for (const m of mappings()) if (c && m.pool === c.pool) await execa('rbd', ['device', 'unmap', '-o', 'force', `/dev/rbd${m.id}`], { reject: false });
    await c?.stop();
    await execa('umount', [cephParent], { reject: false });
    if (disk) await execa('wipefs', ['-a', '-q', disk], { reject: false });
    t.cleanup();
  });

  const watchers = async (image: string) => (JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${image}`])) as { watchers: { address: string }[] }).watchers.map((w) => w.address);
  const blocklisted = async () => (JSON.parse(firstJsonValue(await c.ceph(['osd', 'blocklist', 'ls', '--format', 'json']))) as { addr: string }[]).map((e) => e.addr);
  const paths = (id: string) => {
    const staging = join(s.kubeletRoot, 'staging', id);
    const target = join(s.kubeletRoot, 'pods', id, 'dev');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };

  it('ext4: stage maps /dev/rbdN (restage finds the same one), write and read back, grow online, snapshot → clone read back, unstage unmaps, nothing left', async () => {
    const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
    const ctl = s.client.controller;
    const node = s.client.node;
    const vol = (await ctl.CreateVolume({ name: 'pvc-krbd-1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS })).volume!;
    expect(vol.volume_context).toMatchObject(KERNEL_CLASS);
    const id = vol.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    expect(pub.publish_context).toEqual({ transport: 'rbd', pool: c.pool, image: id, monitors: c.monitors });
    const a = paths(id);
    const before = mappings().length;
    await node.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    const mine = mappings().filter((m) => m.image === id);
    expect(mine).toHaveLength(1);
    const dev = `/dev/rbd${mine[0].id}`;
    // The staging mount is on the kernel's rbd device, not a loop device over a user-space chain.
    expect((await execa('findmnt', ['-n', '-o', 'SOURCE', a.staging])).stdout.trim()).toBe(dev);
    expect(await watchers(id)).toHaveLength(1);
    if (RECORD) await record(id, dev);
    step('staged ext4 on ' + dev + '');

    // A retried stage finds the mapping: no second /dev/rbd device.
    await node.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    expect(mappings()).toHaveLength(before + 1);
    expect(readFileSync(`/sys/bus/rbd/devices/${mine[0].id}/config_info`, 'utf8')).toMatch(/,noshare/);

    await node.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
    writeFileSync(join(a.target, 'hello.txt'), 'bytes that went through rbd.ko');
    await execa('sync', ['-f', join(a.target, 'hello.txt')]);
    const stats = await node.NodeGetVolumeStats({ volume_id: id, volume_path: a.target });
    expect(stats.volume_condition).toMatchObject({ abnormal: false });
    step('published, written, stats');

    // Online growth: the kernel sees the resize on its own, NodeExpandVolume grows the filesystem.
    await ctl.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    await waitFor('the kernel to see the new size of ' + dev, async () => ((await sizeOf(dev)) >= 128 * MiB ? true : undefined), 60_000, 200);
    const fsBefore = Number((await execa('df', ['-B1', '--output=size', a.target])).stdout.split('\n')[1]);
    const grown = await node.NodeExpandVolume({ volume_id: id, volume_path: a.target, staging_target_path: a.staging, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    expect(Number(grown.capacity_bytes)).toBe(128 * MiB);
    const fsAfter = Number((await execa('df', ['-B1', '--output=size', a.target])).stdout.split('\n')[1]);
    expect(fsAfter).toBeGreaterThan(fsBefore + 50 * MiB);
    expect(readFileSync(join(a.target, 'hello.txt'), 'utf8')).toBe('bytes that went through rbd.ko');
    step('grown online');

    // Snapshot while published, a clone of it staged through its own mapping.
    const snap = (await ctl.CreateSnapshot({ name: 'snap-krbd-1', source_volume_id: id })).snapshot!;
    expect(snap.ready_to_use).toBe(true);
    const clone = (
      await ctl.CreateVolume({ name: 'pvc-krbd-clone', capacity_range: { required_bytes: 128 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS, volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } })
    ).volume!.volume_id!;
    const cpub = await ctl.ControllerPublishVolume({ volume_id: clone, node_id: nodeId, volume_capability: cap });
    const b = paths(clone);
    await node.NodeStageVolume({ volume_id: clone, staging_target_path: b.staging, volume_capability: cap, publish_context: cpub.publish_context, volume_context: KERNEL_CLASS });
    expect(readFileSync(join(b.staging, 'hello.txt'), 'utf8')).toBe('bytes that went through rbd.ko');
    await node.NodeUnstageVolume({ volume_id: clone, staging_target_path: b.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: clone, node_id: nodeId });
    step('clone staged, read, unstaged');

    await node.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    // Unmapped: no mapping of either image, no /dev/rbdN of theirs, no watcher.
    expect(mappings().filter((m) => m.image === id || m.image === clone)).toEqual([]);
    expect(rbdDevices()).not.toContain(dev.slice(5));
    expect(await watchers(id)).toEqual([]);
    expect(await watchers(clone)).toEqual([]);
    step('unstaged, unmapped');
    // A retried unstage is a no-op.
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });

    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(await codeOf(ctl.DeleteVolume({ volume_id: clone }))).toBe('OK');
    expect(await codeOf(ctl.DeleteSnapshot({ snapshot_id: snap.snapshot_id }))).toBe('OK');
    // The backend's fence at ControllerUnpublish also blocklists the clients its scan recorded for the node while
    // staged, gone or not (a dead kernel client instance here: noshare gives each mapping its own), so a clean
    // departure may leave an entry; what matters is that it names no client still mapping anything.
    const live = new Set(mappings().map((m) => m.client));
    expect(live.size).toBe(0);
    expect(s.logs()).not.toContain(c.key);
  }, 600_000);

  it('block: the old kernel client is fenced (blocklisted, its writes fail) when the volume is taken away without unstage; unstage unmaps it, nothing left', async () => {
    const cap = blockCap('SINGLE_NODE_WRITER');
    const ctl = s.client.controller;
    const node = s.client.node;
    const id = (await ctl.CreateVolume({ name: 'pvc-krbd-block', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS })).volume!.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    const a = paths(id);
    await node.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: KERNEL_CLASS });
    await node.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
    const write = (byte: number) =>
      execa('bash', ['-c', `head -c 4096 /dev/zero | tr '\\0' '\\${byte.toString(8).padStart(3, '0')}' | timeout 60 dd of=${a.target} bs=4096 count=1 oflag=direct,sync status=none`], { reject: false });
    const head = async () => (await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${id}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout.subarray(0, 4096);
    expect((await write(0xa1)).exitCode).toBe(0);
    expect((await head()).every((x) => x === 0xa1)).toBe(true);
    const [client] = await watchers(id);
    expect(client).toMatch(/^127\.0\.0\.1:\d+\/\d+$/);

    // The node is "lost": its publish goes (the attacher's force-detach) while its kernel client keeps the image mapped.
    // (`sinter all` knows only its own node id, so no other node is published here: rbd-fence.test.ts does that in user space.)
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await blocklisted()).toContain(client);
    step('fence: unpublished, client blocklisted');
    const late = await write(0xa2);
    expect(late.exitCode).not.toBe(0);
    expect((await head()).every((x) => x === 0xa1)).toBe(true);
    step('fence: the fenced kernel client\'s write failed');

    // The old node's kubelet comes back and unstages: the fenced mapping goes.
    await node.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
    await node.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    expect(mappings().filter((m) => m.image === id)).toEqual([]);
    step('fence: unstaged, unmapped');
    // Published here again: the fence is lifted.
    await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    expect(await blocklisted()).not.toContain(client);
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(mappings().filter((m) => m.pool === c.pool)).toEqual([]);
  }, 600_000);

  /** What the real rbd CLI (this guest's ceph) and the kernel showed, for the host's unit tests. */
  async function record(image: string, dev: string): Promise<void> {
    mkdirSync(FIXTURES, { recursive: true });
    const version = (await execa('rbd', ['--version'])).stdout.trim();
    const kernel = (await execa('uname', ['-r'])).stdout.trim();
    const id = dev.replace('/dev/rbd', '');
    const attrs = ['pool', 'pool_id', 'pool_ns', 'name', 'image_id', 'current_snap', 'snap_id', 'client_id', 'client_addr', 'cluster_fsid', 'size', 'major', 'minor', 'features', 'config_info'];
    const lines = [`# /sys/bus/rbd/devices/${id} with ${image} mapped by sinter (node.rbd.attach: kernel); ${version}; Linux ${kernel}`, `# recorded by SINTER_RECORD_KRBD=1 test/vm/rbd-kernel.vm.test.ts`];
    // Pool and image names as POOL and IMAGE (the cephx user, also "sinter" here, stays in config_info's name= and key=).
    const anon = (a: string, v: string) =>
      a === 'pool' ? 'POOL' : a === 'name' ? 'IMAGE' : a === 'config_info' ? v.split(' ').map((w, i, all) => (i === all.length - 3 ? 'POOL' : i === all.length - 2 ? 'IMAGE' : w)).join(' ') : v;
    for (const a of attrs) lines.push(`${a}\t${anon(a, readFileSync(`/sys/bus/rbd/devices/${id}/${a}`, 'utf8').trim())}`);
    writeFileSync(join(FIXTURES, 'krbd-sysfs.txt'), lines.join('\n') + '\n');
    const list = (await execa('rbd', ['device', 'list', '--format', 'json'])).stdout;
    writeFileSync(join(FIXTURES, 'device-list.json'), list.replaceAll(c.pool, 'POOL').replaceAll(image, 'IMAGE') + '\n');
    const common = ['--conf', '/dev/null', '--client_mount_timeout', '10', '--id', c.user, '--keyfile', c.keyFile, '-m', c.monitors, '-o', 'ms_mode=prefer-crc'];
    const missing = await execa('rbd', ['device', 'map', ...common, `${c.pool}/no-such-image`], { reject: false });
    writeFileSync(join(FIXTURES, 'map-missing.err'), `# exit ${missing.exitCode}\n${missing.stderr}\n`);
    const badKey = join(t.dir, 'bad.key');
    writeFileSync(badKey, 'AQBzGFJnAAAAABAAXgw0rQEOj2y9dXgGyR7wYw==', { mode: 0o600 });
    // A key the monitors refuse: the CLI retries the auth until client_mount_timeout.
    const denied = await execa('rbd', ['device', 'map', ...common.map((a) => (a === c.keyFile ? badKey : a)), `${c.pool}/${image}`], { reject: false, timeout: 120_000 });
    writeFileSync(join(FIXTURES, 'map-denied.err'), `# exit ${denied.exitCode} (--client_mount_timeout 10)\n${denied.stderr.replaceAll(`${c.pool}/`, 'POOL/').replaceAll(image, 'IMAGE')}\n`);
    const busy = await execa('rbd', ['device', 'unmap', '--conf', '/dev/null', dev], { reject: false });
    writeFileSync(join(FIXTURES, 'unmap-busy.err'), `# exit ${busy.exitCode} (${dev} mounted)\n${busy.stderr}\n`);
    writeFileSync(join(FIXTURES, 'recorded-versions.txt'), `${version}\nLinux ${kernel}\n`);
  }
});
