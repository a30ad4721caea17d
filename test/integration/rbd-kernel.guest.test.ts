import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstJsonValue } from '../../src/backends/rbd/blocklist.js';
import { csiClient, type CsiClient } from '../../src/csi/client.js';
import { startCephCluster, type CephCluster } from '../helpers/ceph-cluster.js';
import { rbdSinterConfig } from '../helpers/ceph-shared.js';
import { startGuestAgent, type GuestAgent } from '../helpers/guest-agent.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, codeOf, MAIN, MiB, mountCap, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';

/** The StorageClass parameter (and the volume_context CreateVolume hands on) asking for the kernel attach. */
const KERNEL_CLASS = { rbdAttach: 'kernel' };
const NODE_PORT = 50051;
const KUBELET = '/tmp/kubelet';
// Each run its own address, so two runs on one machine never share a cluster address.
const ADDRESS = `10.254.${(process.pid % 200) + 20}.2`;
// The guest sees the checkout at the same path (9p): the node's config and key go there.
const SHARED = join(new URL('../../.tmp/', import.meta.url).pathname, `rbd-kernel-guest-${process.pid}`);
/** Where SINTER_RECORD_KRBD=1 writes what the guest's rbd CLI and sysfs showed (test/unit/rbd-kernel.test.ts reads it). */
const FIXTURES = new URL('../fixtures/rbd/', import.meta.url).pathname;
const RECORD = process.env.SINTER_RECORD_KRBD === '1';

let t0 = performance.now();
const step = (what: string) => console.log(`krbd-guest ${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);

/**
 * Kernel RBD end to end on a real kernel, with only the node in the kernel that
 * has rbd.ko: a single-node Ceph cluster and `sinter controller` on this host,
 * `sinter node` in a VM guest (Debian's 6.1 kernel under qemu TCG, harness.mjs)
 * driven through test/vm/agent.mjs. The cluster binds a /32 this test adds to
 * the host's lo; the guest's one NIC (qemu user-mode networking) routes only
 * that address, so its kernel client meets the same daemons the host's CLI
 * does, and nothing else is reachable. What it proves, as the node sees it:
 * `rbd device map` with the node's own cephx key under a class's
 * `rbdAttach: kernel` (overriding the node's `attach: userspace`), /dev/rbdN
 * found on the rbd bus, a retried stage reusing it, growth seen by the kernel
 * after ControllerExpandVolume, a clone read back through its own mapping,
 * `rbd device unmap` on unstage; and the fence: a lost node's kernel client is
 * blocklisted at ControllerUnpublishVolume and its next write fails.
 */
describe('kernel rbd: sinter node in a VM guest (rbd.ko, 6.1) against a Ceph cluster and sinter controller on this host', () => {
  const t = tempDir('sinter-krbd-guest-');
  let c: CephCluster;
  let ctlProc: SinterProcess;
  let guest: GuestAgent | undefined;
  let node: CsiClient | undefined;
  let nodeId: string;
  let aliased = false;

  beforeAll(async () => {
    t0 = performance.now();
    await execa('ip', ['addr', 'add', `${ADDRESS}/32`, 'dev', 'lo']);
    aliased = true;
    // The guest boots (~20 s) while the cluster starts (~20 s).
    const booting = startGuestAgent({ routes: [ADDRESS], forwards: [NODE_PORT], timeoutMs: 20 * 60_000 }).then((g) => {
      guest = g;
      step(`guest agent up after ${g.bootMs()} ms`);
      return g;
    });
    const cluster = startCephCluster({ address: ADDRESS, osdBytes: 4 * 2 ** 30, sinterMonCaps: "allow command 'osd blocklist'" }).then((cc) => {
      c = cc;
      step(`ceph on ${ADDRESS}: HEALTH_OK after ${cc.startMs} ms`);
      return cc;
    });
    const [g] = await Promise.all([booting, cluster]);
    const nodeRbd = ['attach: userspace', 'mapOptions: [queue_depth=64]'];
    ctlProc = await startSinter({ role: 'controller', base: join(t.dir, 'controller'), args: ['--config', writeConfig(join(t.dir, 'controller.yaml'), c, join(t.dir, 'controller-state'))] });
    // The node's copy of the key and config, where the guest can read them.
    mkdirSync(SHARED, { recursive: true, mode: 0o700 });
    const keyFile = join(SHARED, 'sinter.key');
    writeFileSync(keyFile, c.key, { mode: 0o600 });
    const nodeCfg = writeConfig(join(SHARED, 'node.yaml'), { ...c, keyFile }, join(t.dir, 'unused-controller-state'), '/tmp/sinter-node-state', nodeRbd);
    await g.sh('modprobe rbd');
    await g.spawn('sinter-node', ['node', MAIN, 'node', '--endpoint', `tcp://10.0.2.15:${NODE_PORT}`, '--kubelet-root', KUBELET, '--node-name', 'guest-node', '--log-level', 'debug', '--config', nodeCfg]);
    node = csiClient(`127.0.0.1:${g.hostPort(NODE_PORT)}`);
    await waitFor(
      'sinter node in the guest to answer Probe ready',
      async () => {
        const r = await node!.identity.Probe({}).catch(() => undefined);
        return r?.ready?.value ? true : undefined;
      },
      5 * 60_000,
      500,
    ).catch(async (e: Error) => {
      throw new Error(`${e.message}; its log: ${(await g.logs('sinter-node')).slice(-3000)}`);
    });
    nodeId = (await node.node.NodeGetInfo({})).node_id!;
    step('sinter node in the guest ready');
  }, 15 * 60_000);

  afterAll(async () => {
    node?.close();
    if (guest) {
      const logs = await guest.logs('sinter-node').catch(() => '');
      // Where the node's time went under TCG: its slowest host commands and RPCs.
      const slow = logs
        .split('\n')
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as { msg?: string; cmd?: string; ms?: number; rpc?: string }];
          } catch {
            return [];
          }
        })
        .filter((l) => (l.msg === 'exec' || l.msg === 'rpc') && typeof l.ms === 'number')
        .sort((x, y) => y.ms! - x.ms!)
        .slice(0, 12);
      for (const l of slow) console.log(`krbd-guest timing: ${l.ms} ms ${l.msg} ${(l.cmd ?? l.rpc ?? '').slice(0, 90)}`);
      await guest.signal('sinter-node').catch(() => undefined);
      // Whatever a failed test left mapped or mounted in the guest goes with the guest (its root is a snapshot).
      await guest.stop();
    }
    await ctlProc?.cleanup();
    await c?.stop();
    if (aliased) await execa('ip', ['addr', 'del', `${ADDRESS}/32`, 'dev', 'lo'], { reject: false });
    rmSync(SHARED, { recursive: true, force: true });
    t.cleanup();
  }, 5 * 60_000);

  function writeConfig(file: string, cc: CephCluster, controllerStateDir: string, nodeStateDir?: string, nodeRbd?: string[]): string {
    // The client scan every 2 s (default 30): the partition case waits for it to record the reader.
    writeFileSync(file, rbdSinterConfig(cc, { controllerStateDir, nodeStateDir, nodeRbd, backend: ['clientScanSeconds: 2'] }));
    chmodSync(file, 0o600);
    return file;
  }
  /** The guest kernel's rbd mappings, from sysfs. */
  async function mappings(): Promise<{ id: string; pool: string; image: string; client: string; addr: string }[]> {
    const out = await guest!.sh('cd /sys/bus/rbd/devices 2>/dev/null || exit 0; for d in *; do [ -e "$d/name" ] && echo "$d $(cat $d/pool) $(cat $d/name) $(cat $d/client_id) $(cat $d/client_addr)"; done; true');
    return out
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [id, pool, image, client, addr] = l.split(' ');
        return { id, pool, image, client, addr };
      });
  }
  const watchers = async (image: string) => (JSON.parse(await c.rbd(['status', '--format', 'json', `${c.pool}/${image}`])) as { watchers: { address: string }[] }).watchers.map((w) => w.address);
  const blocklisted = async () => (JSON.parse(firstJsonValue(await c.ceph(['osd', 'blocklist', 'ls', '--format', 'json']))) as { addr: string }[]).map((e) => e.addr);
  const paths = async (id: string) => {
    const staging = `${KUBELET}/staging/${id}`;
    const target = `${KUBELET}/pods/${id}/dev`;
    await guest!.sh(`mkdir -p ${staging} ${KUBELET}/pods/${id}`);
    return { staging, target };
  };
  const sizeOf = async (dev: string) => Number((await guest!.sh(`blockdev --getsize64 ${dev}`)).trim());
  const dfSize = async (dir: string) => Number((await guest!.sh(`df -B1 --output=size ${dir}`)).split('\n')[1]);

  /** What the guest's rbd CLI (its ceph-common) and kernel showed, for the host's unit tests. */
  async function record(image: string, dev: string): Promise<void> {
    const g = guest!;
    mkdirSync(FIXTURES, { recursive: true });
    const version = (await g.sh('rbd --version')).trim();
    const kernel = (await g.sh('uname -r')).trim();
    const id = dev.replace('/dev/rbd', '');
    const attrs = ['pool', 'pool_id', 'pool_ns', 'name', 'image_id', 'current_snap', 'snap_id', 'client_id', 'client_addr', 'cluster_fsid', 'size', 'major', 'minor', 'features', 'config_info'];
    const lines = [`# /sys/bus/rbd/devices/${id} with ${image} mapped by sinter (node.rbd.attach: kernel); ${version}; Linux ${kernel}`, `# recorded by SINTER_RECORD_KRBD=1 test/integration/rbd-kernel.guest.test.ts`];
    // Pool and image names as POOL and IMAGE (the cephx user, also "sinter" here, stays in config_info's name= and key=).
    const anon = (a: string, v: string) =>
      a === 'pool' ? 'POOL' : a === 'name' ? 'IMAGE' : a === 'config_info' ? v.split(' ').map((w, i, all) => (i === all.length - 3 ? 'POOL' : i === all.length - 2 ? 'IMAGE' : w)).join(' ') : v;
    for (const a of attrs) lines.push(`${a}\t${anon(a, (await g.sh(`cat /sys/bus/rbd/devices/${id}/${a}`)).trim())}`);
    writeFileSync(join(FIXTURES, 'krbd-sysfs.txt'), lines.join('\n') + '\n');
    const list = await g.sh('rbd device list --format json');
    writeFileSync(join(FIXTURES, 'device-list.json'), list.trim().replaceAll(c.pool, 'POOL').replaceAll(image, 'IMAGE') + '\n');
    const keyFile = join(SHARED, 'sinter.key');
    const common = ['--conf', '/dev/null', '--client_mount_timeout', '10', '--id', c.user, '--keyfile', keyFile, '-m', c.monitors, '-o', 'ms_mode=prefer-crc'];
    const missing = await g.run(['rbd', 'device', 'map', ...common, `${c.pool}/no-such-image`]);
    writeFileSync(join(FIXTURES, 'map-missing.err'), `# exit ${missing.exitCode}\n${missing.stderr.trim()}\n`);
    const badKey = join(SHARED, 'bad.key');
    writeFileSync(badKey, 'AQBzGFJnAAAAABAAXgw0rQEOj2y9dXgGyR7wYw==', { mode: 0o600 });
    // A key the monitors refuse: the CLI retries the auth until client_mount_timeout.
    const denied = await g.run(['rbd', 'device', 'map', ...common.map((a) => (a === keyFile ? badKey : a)), `${c.pool}/${image}`], { timeoutMs: 120_000 });
    writeFileSync(join(FIXTURES, 'map-denied.err'), `# exit ${denied.exitCode} (--client_mount_timeout 10)\n${denied.stderr.trim().replaceAll(`${c.pool}/`, 'POOL/').replaceAll(image, 'IMAGE')}\n`);
    const busy = await g.run(['rbd', 'device', 'unmap', '--conf', '/dev/null', dev]);
    writeFileSync(join(FIXTURES, 'unmap-busy.err'), `# exit ${busy.exitCode} (${dev} mounted)\n${busy.stderr.trim()}\n`);
    writeFileSync(join(FIXTURES, 'recorded-versions.txt'), `${version}\nLinux ${kernel}\n`);
  }

  it('ext4: stage maps /dev/rbdN (restage finds the same one), write and read back, grow online, snapshot → clone read back, unstage unmaps, nothing left', async () => {
    const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
    const ctl = ctlProc.client.controller;
    const n = node!.node;
    const vol = (await ctl.CreateVolume({ name: 'pvc-krbd-1', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS })).volume!;
    expect(vol.volume_context).toMatchObject(KERNEL_CLASS);
    const id = vol.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    expect(pub.publish_context).toEqual({ transport: 'rbd', pool: c.pool, image: id, monitors: c.monitors });
    const a = await paths(id);
    const before = (await mappings()).length;
    await n.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    const mine = (await mappings()).filter((m) => m.image === id);
    expect(mine).toHaveLength(1);
    const dev = `/dev/rbd${mine[0].id}`;
    // The staging mount is on the kernel's rbd device, not a loop device over a user-space chain.
    expect((await guest!.sh(`findmnt -n -o SOURCE ${a.staging}`)).trim()).toBe(dev);
    expect(await watchers(id)).toHaveLength(1);
    if (RECORD) await record(id, dev);
    step(`staged ext4 on ${dev}`);

    // A retried stage finds the mapping: no second /dev/rbd device.
    await n.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: vol.volume_context });
    expect(await mappings()).toHaveLength(before + 1);
    expect(await guest!.sh(`cat /sys/bus/rbd/devices/${mine[0].id}/config_info`)).toMatch(/,noshare/);

    await n.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
    await guest!.sh(`printf 'bytes that went through rbd.ko' > ${a.target}/hello.txt && sync -f ${a.target}/hello.txt`);
    const stats = await n.NodeGetVolumeStats({ volume_id: id, volume_path: a.target });
    expect(stats.volume_condition).toMatchObject({ abnormal: false });
    step('published, written, stats');

    // Online growth: the kernel sees the resize on its own, NodeExpandVolume grows the filesystem.
    await ctl.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    await waitFor('the kernel to see the new size of ' + dev, async () => ((await sizeOf(dev)) >= 128 * MiB ? true : undefined), 60_000, 500);
    const fsBefore = await dfSize(a.target);
    const grown = await n.NodeExpandVolume({ volume_id: id, volume_path: a.target, staging_target_path: a.staging, capacity_range: { required_bytes: 128 * MiB }, volume_capability: cap });
    expect(Number(grown.capacity_bytes)).toBe(128 * MiB);
    expect(await dfSize(a.target)).toBeGreaterThan(fsBefore + 50 * MiB);
    expect(await guest!.sh(`cat ${a.target}/hello.txt`)).toBe('bytes that went through rbd.ko');
    step('grown online');

    // Snapshot while published, a clone of it staged through its own mapping.
    const snap = (await ctl.CreateSnapshot({ name: 'snap-krbd-1', source_volume_id: id })).snapshot!;
    expect(snap.ready_to_use).toBe(true);
    const clone = (
      await ctl.CreateVolume({ name: 'pvc-krbd-clone', capacity_range: { required_bytes: 128 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS, volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } })
    ).volume!.volume_id!;
    const cpub = await ctl.ControllerPublishVolume({ volume_id: clone, node_id: nodeId, volume_capability: cap });
    const b = await paths(clone);
    await n.NodeStageVolume({ volume_id: clone, staging_target_path: b.staging, volume_capability: cap, publish_context: cpub.publish_context, volume_context: KERNEL_CLASS });
    expect(await guest!.sh(`cat ${b.staging}/hello.txt`)).toBe('bytes that went through rbd.ko');
    await n.NodeUnstageVolume({ volume_id: clone, staging_target_path: b.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: clone, node_id: nodeId });
    step('clone staged, read, unstaged');

    await n.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
    await n.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    // Unmapped: no mapping of either image, no /dev/rbdN of theirs, no watcher.
    expect((await mappings()).filter((m) => m.image === id || m.image === clone)).toEqual([]);
    expect((await guest!.run(['test', '-e', dev])).exitCode).not.toBe(0);
    expect(await watchers(id)).toEqual([]);
    expect(await watchers(clone)).toEqual([]);
    step('unstaged, unmapped');
    // A retried unstage is a no-op.
    await n.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    // The node marked both images closed after unmapping them: the clean detaches fenced nothing.
    expect(await blocklisted()).toEqual([]);

    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(await codeOf(ctl.DeleteVolume({ volume_id: clone }))).toBe('OK');
    expect(await codeOf(ctl.DeleteSnapshot({ snapshot_id: snap.snapshot_id }))).toBe('OK');
    expect(await mappings()).toEqual([]);
    expect(await guest!.logs('sinter-node')).not.toContain(c.key);
    expect(ctlProc.logs()).not.toContain(c.key);
  }, 10 * 60_000);

  it('block: the lost node\'s kernel client is fenced (blocklisted, its writes fail) when the volume is taken away without unstage; unstage unmaps it, nothing left', async () => {
    const cap = blockCap('SINGLE_NODE_WRITER');
    const ctl = ctlProc.client.controller;
    const n = node!.node;
    const id = (await ctl.CreateVolume({ name: 'pvc-krbd-block', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS })).volume!.volume_id!;
    const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    const a = await paths(id);
    await n.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: KERNEL_CLASS });
    await n.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
    const write = (byte: number) =>
      guest!.run(['sh', '-c', `head -c 4096 /dev/zero | tr '\\0' '\\${byte.toString(8).padStart(3, '0')}' | timeout 60 dd of=${a.target} bs=4096 count=1 oflag=direct,sync status=none`]);
    const head = async () => (await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${id}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout.subarray(0, 4096);
    expect((await write(0xa1)).exitCode).toBe(0);
    expect((await head()).every((x) => x === 0xa1)).toBe(true);
    // The kernel client's own address (the controller's transient opens of the image watch it too, briefly).
    const client = (await mappings()).find((m) => m.image === id)!.addr;
    expect(await watchers(id)).toContain(client);
    // The guest's kernel client, as the cluster sees it through qemu's NAT: this host's cluster address.
    expect(client).toMatch(new RegExp(`^${ADDRESS.replaceAll('.', '\\.')}:\\d+/\\d+$`));

    // The node is "lost": its publish goes (the attacher's force-detach) while its kernel client keeps the image mapped.
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await blocklisted()).toContain(client);
    step('fence: unpublished, client blocklisted');
    const late = await write(0xa2);
    expect(late.exitCode).not.toBe(0);
    expect((await head()).every((x) => x === 0xa1)).toBe(true);
    step("fence: the fenced kernel client's write failed");

    // The old node's kubelet comes back and unstages: the fenced mapping goes.
    await n.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
    await n.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
    expect((await mappings()).filter((m) => m.image === id)).toEqual([]);
    step('fence: unstaged, unmapped');
    // Published here again: the fence is lifted.
    await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
    expect(await blocklisted()).not.toContain(client);
    await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(await mappings()).toEqual([]);
  }, 10 * 60_000);

  it('block, a client cut off by a partition before its first I/O (no exclusive lock, its watch lapses) while its publish is taken away → blocklisted, since its node never marked the image closed; its first write after the partition heals fails', async () => {
    const cap = blockCap('SINGLE_NODE_WRITER');
    const ctl = ctlProc.client.controller;
    const n = node!.node;
    // The OSDs drop a silent client's watch after osd_client_watch_timeout (30 s); 5 s here, for watches made from now on.
    await c.ceph(['config', 'set', 'osd', 'osd_client_watch_timeout', '5']);
    let cut = false;
    try {
      const id = (await ctl.CreateVolume({ name: 'pvc-krbd-idle', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: KERNEL_CLASS })).volume!.volume_id!;
      const pub = await ctl.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: cap });
      const a = await paths(id);
      await n.NodeStageVolume({ volume_id: id, staging_target_path: a.staging, volume_capability: cap, publish_context: pub.publish_context, volume_context: KERNEL_CLASS });
      await n.NodePublishVolume({ volume_id: id, staging_target_path: a.staging, target_path: a.target, volume_capability: cap, publish_context: pub.publish_context });
      // The kernel client's own address (the controller's transient opens of the image watch it too, briefly).
      const client = (await mappings()).find((m) => m.image === id)!.addr;
      expect(await watchers(id)).toContain(client);
      expect(client).toBeDefined();
      // What makes this the hard case: krbd takes the exclusive lock at its first I/O (object-map images: reads too), so
      // a client mapped but idle holds none, and the lock cannot tell it from a client that left. A read since the
      // map (the kernel's partition scan, udev's probe) may have taken it already (seen under load: cookie
      // "auto 0xffff000000000001", libceph's first linger id): once udev is done, a metadata write from here asks
      // krbd for the lock, krbd hands it over, and the CLI's close frees it; the client is then idle and lockless.
      await guest!.sh('udevadm settle --timeout=60');
      await c.rbd(['image-meta', 'set', `${c.pool}/${id}`, 'test.take-lock', '1']);
      expect(JSON.parse(await c.rbd(['lock', 'ls', '--format', 'json', `${c.pool}/${id}`]))).toEqual([]);
      // The controller's scan attributes the watcher to this node's publish (its record of clients).
      await waitFor('the scan to record the guest node\'s client', async () => {
        const meta = JSON.parse(await c.rbd(['image-meta', 'list', '--format', 'json', `${c.pool}/${id}`])) as Record<string, string>;
        const rec = JSON.parse(meta['sinter.volume'] ?? '{}') as { rbd?: { clients?: { address: string }[] } };
        return rec.rbd?.clients?.some((x) => x.address === client) ? true : undefined;
      }, 150_000, 1000).catch((e: Error) => {
        throw new Error(`${e.message}; the controller's log: ${ctlProc.logs().split('\n').filter((l) => /exports|"level":[456]0/.test(l)).slice(-15).join('\n')}`);
      });

      // The partition: the guest loses its route to the cluster; the OSD drops the silent watch.
      await guest!.sh(`ip route del ${ADDRESS}/32`);
      cut = true;
      await waitFor('the cut-off reader\'s watch to lapse', async () => ((await watchers(id)).length === 0 ? true : undefined), 90_000, 1000);
      await ctl.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
      expect(await blocklisted()).toContain(client);
      step('partitioned idle client: unpublished, client blocklisted');

      await guest!.sh(`ip route add ${ADDRESS}/32 via 10.0.2.2`);
      cut = false;
      const late = await guest!.run(['sh', '-c', `head -c 4096 /dev/zero | tr '\\0' '\\343' | timeout 60 dd of=${a.target} bs=4096 count=1 oflag=direct,sync status=none`]);
      expect(late.exitCode).not.toBe(0);
      const head = (await execa('rbd', ['-c', c.conf, 'export', '--no-progress', `${c.pool}/${id}`, '-'], { encoding: 'buffer', stripFinalNewline: false })).stdout.subarray(0, 4096);
      expect(head.every((x) => x === 0)).toBe(true);
      step("partitioned idle client: its write after the partition healed failed");

      await n.NodeUnpublishVolume({ volume_id: id, target_path: a.target });
      await n.NodeUnstageVolume({ volume_id: id, staging_target_path: a.staging });
      expect((await mappings()).filter((m) => m.image === id)).toEqual([]);
      await c.ceph(['osd', 'blocklist', 'rm', client]);
      expect(await codeOf(ctl.DeleteVolume({ volume_id: id }))).toBe('OK');
    } finally {
      if (cut) await guest!.sh(`ip route add ${ADDRESS}/32 via 10.0.2.2`).catch(() => undefined);
      await c.ceph(['config', 'rm', 'osd', 'osd_client_watch_timeout']);
    }
  }, 10 * 60_000);
});
