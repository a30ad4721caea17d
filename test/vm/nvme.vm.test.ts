import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/scratch-fs.js';
import { blockCap, MiB, mountCap, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { requireGuest } from './guest.js';

const PREFIX = 'nqn.2026-11.io.sinter.vm:';
const PORTALS = ['127.0.0.1:4420', '127.0.0.2:4420'];
const NVMET = '/sys/kernel/config/nvmet';
const sub = (nqn: string) => join(NVMET, 'subsystems', nqn);
const ls = (p: string) => (existsSync(p) ? readdirSync(p).sort() : []);
const cat = (p: string) => readFileSync(p, 'utf8').trim();

/** The kernel's NVMe/TCP controllers of one subsystem: name, address, state (sysfs, as the connector reads it). */
function controllersOf(nqn: string): { name: string; address: string; state: string }[] {
  return ls('/sys/class/nvme')
    .filter((c) => cat(`/sys/class/nvme/${c}/subsysnqn`) === nqn)
    .map((c) => ({ name: c, address: cat(`/sys/class/nvme/${c}/address`), state: cat(`/sys/class/nvme/${c}/state`) }));
}

/** Every subsystem, port and host entry in nvmet's configfs (a test leaves none of its own). */
function nvmetLeft(): string[] {
  return [...ls(join(NVMET, 'subsystems')).filter((s) => s.startsWith(PREFIX)), ...ls('/sys/class/nvme').filter((c) => cat(`/sys/class/nvme/${c}/subsysnqn`).startsWith(PREFIX))];
}

/**
 * NVMe over TCP on a real kernel: `sinter controller` (file backend,
 * `export: nvmeof`: the nvmet helper writing the guest's configfs, two ports
 * on 127.0.0.1 and 127.0.0.2) and `sinter node` (the nvme connector: nvme-cli
 * 2.3, nvme-tcp, native NVMe multipath) as two processes.
 */
describe('NVMe/TCP end to end in the VM: sinter controller (nvmet) + sinter node (nvme-tcp, native multipath)', () => {
  requireGuest();
  const t = tempDir('sinter-vm-nvme-');
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let hostNqn: string;
  const dataDir = join(t.dir, 'data');
  const ctlYaml = join(t.dir, 'controller.yaml');
  const nodeYaml = join(t.dir, 'node.yaml');

  beforeAll(async () => {
    await execa('sh', ['-c', 'modprobe nvmet && modprobe nvmet-tcp && modprobe nvme-tcp && (mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config)']);
    hostNqn = cat('/etc/nvme/hostnqn');
    writeFileSync(
      ctlYaml,
      [
        'backends:',
        '  - name: san',
        '    driver: file',
        `    dataDir: ${dataDir}`,
        '    export: nvmeof',
        '    nvmeof:',
        `      portals: ${JSON.stringify(PORTALS)}`,
        `      nqnPrefix: "${PREFIX}"`,
        '      reconcileSeconds: 1',
      ].join('\n'),
    );
    writeFileSync(nodeYaml, ['node:', `  stateDir: ${join(t.dir, 'node', 'state')}`, `  orphanNqnPrefixes: ["${PREFIX}"]`].join('\n'));
    mkdirSync(join(t.dir, 'ctl'));
    mkdirSync(join(t.dir, 'node'));
    // One after the other: two node start-ups at once under TCG on a loaded host outran the Probe wait.
    ctl = await startSinter({ role: 'controller', base: join(t.dir, 'ctl'), args: ['--config', ctlYaml] });
    node = await startSinter({ role: 'node', base: join(t.dir, 'node'), nodeName: 'vm-node', args: ['--config', nodeYaml] });
    nodeId = (await node.client.node.NodeGetInfo({})).node_id!;
  });

  afterAll(async () => {
    await node?.cleanup();
    await ctl?.cleanup();
    // Whatever a failed test left: controllers, subsystems (and the ports and hosts they used).
    for (const nqn of new Set(ls('/sys/class/nvme').map((c) => cat(`/sys/class/nvme/${c}/subsysnqn`)).filter((n) => n.startsWith(PREFIX))))
      await execa('nvme', ['disconnect', '-n', nqn], { reject: false });
    for (const nqn of ls(join(NVMET, 'subsystems')).filter((s) => s.startsWith(PREFIX))) wipeSubsystem(nqn);
    for (const port of ls(join(NVMET, 'ports'))) if (ls(join(NVMET, 'ports', port, 'subsystems')).length === 0) rmdir(join(NVMET, 'ports', port));
    rmdir(join(NVMET, 'hosts', hostNqn));
    t.cleanup();
  });

  afterEach(() => {
    expect(nvmetLeft()).toEqual([]);
  });

  /** configfs directories go with rmdir(2) (their default groups with them), never recursively. */
  function rmdir(p: string) {
    try {
      rmdirSync(p);
    } catch {
      /* gone, or still in use */
    }
  }

  /** What a reboot does to nvmet: the subsystem gone from configfs (ports and host entries are left; they grant nothing alone). */
  function wipeSubsystem(nqn: string) {
    for (const port of ls(join(NVMET, 'ports'))) rmSync(join(NVMET, 'ports', port, 'subsystems', nqn), { force: true });
    for (const h of ls(join(sub(nqn), 'allowed_hosts'))) rmSync(join(sub(nqn), 'allowed_hosts', h), { force: true });
    for (const ns of ls(join(sub(nqn), 'namespaces'))) {
      writeFileSync(join(sub(nqn), 'namespaces', ns, 'enable'), '0');
      rmdirSync(join(sub(nqn), 'namespaces', ns));
    }
    rmdirSync(sub(nqn));
  }

  const provision = async (name: string, mib = 64, cap: object = mountCap()) =>
    (await ctl.client.controller.CreateVolume({ name, capacity_range: { required_bytes: mib * MiB }, volume_capabilities: [cap] })).volume!.volume_id!;
  const publish = async (id: string, to = nodeId, cap: object = mountCap()) =>
    (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: to, volume_capability: cap })).publish_context as Record<string, string>;
  const paths = (id: string) => {
    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    return { staging, target };
  };
  const handConnect = (nqn: string, portal = PORTALS[0]) => {
    const [a, s] = portal.split(':') as [string, string];
    return execa('nvme', ['connect', '-t', 'tcp', '-a', a, '-s', s, '-n', nqn, '--hostnqn', hostNqn], { reject: false });
  };

  it("carries the guest's host NQN (from /etc/nvme/hostnqn) in the node id", () => {
    expect(nodeId).toMatch(/^vm-node;[^;]*;;nqn\./);
    expect(nodeId.split(';')[3]).toBe(hostNqn);
  });

  it('publish → stage (mount) over two portals, one native-multipath device → write → grow online → unstage → unpublish removes the subsystem', async () => {
    const id = await provision('n-life');
    const ctx = await publish(id);
    const nqn = `${PREFIX}${id}`;
    expect(ctx).toEqual({ transport: 'nvmeof', nqn, portals: PORTALS.join(','), nsid: '1' });
    // The export: exactly this host allowed, any-host off, namespace 1 = the image, linked into both ports.
    expect(cat(join(sub(nqn), 'attr_allow_any_host'))).toBe('0');
    expect(ls(join(sub(nqn), 'allowed_hosts'))).toEqual([hostNqn]);
    expect(cat(join(sub(nqn), 'namespaces/1/device_path'))).toBe(join(dataDir, 'volumes', `${id}.img`));
    expect(cat(join(sub(nqn), 'namespaces/1/device_uuid'))).toBe(id.slice(-36));
    expect(ls(join(NVMET, 'ports')).filter((p) => ls(join(NVMET, 'ports', p, 'subsystems')).includes(nqn))).toHaveLength(2);

    const { staging, target } = paths(id);
    const stage = { volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx };
    await node.client.node.NodeStageVolume(stage);
    await node.client.node.NodeStageVolume(stage); // idempotent: the controllers are reused
    const ctrls = controllersOf(nqn);
    expect(ctrls.map((c) => c.address.split(',').slice(0, 2).join(',')).sort()).toEqual(['traddr=127.0.0.1,trsvcid=4420', 'traddr=127.0.0.2,trsvcid=4420']);
    expect(ctrls.every((c) => c.state === 'live')).toBe(true);
    const dev = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === staging)!.split(' ')[0];
    expect(dev).toMatch(/^\/dev\/nvme\d+n1$/);
    if (cat('/sys/module/nvme_core/parameters/multipath') === 'Y') {
      // One block device over both controllers: the multipath head lives under the subsystem.
      expect(readlinkSync(`/sys/block/${dev.slice(5)}`)).toMatch(/nvme-subsystem\/nvme-subsys\d+\//);
      expect(ls('/sys/block').filter((b) => /^nvme\d+n\d+$/.test(b) && cat(`/sys/block/${b}/uuid`) === id.slice(-36))).toEqual([dev.slice(5)]);
    }
    await node.client.node.NodePublishVolume({ ...stage, target_path: target });
    writeFileSync(join(target, 'over-nvme.txt'), 'bytes that crossed NVMe/TCP');

    // Grow online: the controller revalidates the namespace, the node sees the new size.
    const total = () => statfsSync(target).blocks * statfsSync(target).bsize;
    const before = total();
    const r = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 128 * MiB }, volume_capability: mountCap() });
    expect(r).toMatchObject({ capacity_bytes: 128 * MiB, node_expansion_required: true });
    const grown = await node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 128 * MiB }, volume_capability: mountCap() });
    expect(Number(grown.capacity_bytes)).toBe(128 * MiB);
    expect(Number((await execa('blockdev', ['--getsize64', dev])).stdout)).toBe(128 * MiB);
    expect(total()).toBeGreaterThan(before + 40 * MiB);
    expect(readFileSync(join(target, 'over-nvme.txt'), 'utf8')).toBe('bytes that crossed NVMe/TCP');

    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    expect(controllersOf(nqn)).toEqual([]);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(existsSync(sub(nqn))).toBe(false);
    expect(readFileSync(join(dataDir, 'volumes', `${id}.img`)).includes(Buffer.from('bytes that crossed NVMe/TCP'))).toBe(true);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('a volume connected by hand under the subsystem number the node plugin last saw as another volume\'s: stage hears "already connected" from nvme-cli, uses that controller, adds the other portal, and unstage removes both', async () => {
    const [a, b] = [await provision('n-hidden-a', 16), await provision('n-hidden-b', 16)];
    const [nqnA, nqnB] = [`${PREFIX}${a}`, `${PREFIX}${b}`];
    await publish(b);
    const subsysOf = (nqn: string) => ls('/sys/class/nvme-subsystem').find((s) => cat(`/sys/class/nvme-subsystem/${s}/subsysnqn`) === nqn);
    const pa = paths(a);
    await node.client.node.NodeStageVolume({ volume_id: a, publish_context: await publish(a), staging_target_path: pa.staging, volume_capability: mountCap() });
    const numberOfA = subsysOf(nqnA);
    expect(numberOfA).toBeDefined();
    await node.client.node.NodeUnstageVolume({ volume_id: a, staging_target_path: pa.staging });
    expect(controllersOf(nqnA)).toEqual([]);
    // Outside sinter, before the node plugin looks again: B by hand at the first portal, on A's old numbers.
    expect((await handConnect(nqnB)).exitCode).toBe(0);
    await waitFor('the hand-made controller to be live', () => controllersOf(nqnB).some((c) => c.state === 'live') || undefined, 20_000);
    expect(subsysOf(nqnB)).toBe(numberOfA);

    const pb = paths(b);
    const logFrom = node.logs().length;
    await node.client.node.NodeStageVolume({ volume_id: b, publish_context: await publish(b), staging_target_path: pb.staging, volume_capability: mountCap() });
    const lines = node.logs().slice(logFrom);
    expect(lines).toMatch(/already there \(made outside this call\)/);
    // One controller per portal: the hand-made one, and the one stage made at the second.
    expect(controllersOf(nqnB).map((c) => c.address.split(',')[0]).sort()).toEqual(['traddr=127.0.0.1', 'traddr=127.0.0.2']);
    await node.client.node.NodePublishVolume({ volume_id: b, staging_target_path: pb.staging, target_path: pb.target, volume_capability: mountCap() });
    writeFileSync(join(pb.target, 'hidden.txt'), 'found all the same');
    await node.client.node.NodeUnpublishVolume({ volume_id: b, target_path: pb.target });
    await node.client.node.NodeUnstageVolume({ volume_id: b, staging_target_path: pb.staging });
    expect(controllersOf(nqnB)).toEqual([]);
    for (const id of [a, b]) {
      await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
      await ctl.client.controller.DeleteVolume({ volume_id: id });
    }
  });

  it('the fence: unpublish drops the live controller of the revoked host (other hosts keep the subsystem), and its reconnect is refused', async () => {
    // Two writers are allowed only with block access (the controller refuses a shared mount).
    const shared = blockCap('MULTI_NODE_MULTI_WRITER');
    const id = await provision('n-fence', 16, shared);
    const nqn = `${PREFIX}${id}`;
    // A second node keeps the subsystem alive after this node's unpublish.
    const other = 'vm-other;;;nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000b2';
    await publish(id, other, shared);
    await publish(id, nodeId, shared);
    expect((await handConnect(nqn)).exitCode).toBe(0);
    await waitFor('a live controller of the hand-made connect', () => controllersOf(nqn).some((c) => c.state === 'live') || undefined, 20_000);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(ls(join(sub(nqn), 'allowed_hosts'))).toEqual(['nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000b2']);
    // nvmet dropped the controller (the port relink): the kernel is trying to reconnect, and is refused.
    await waitFor('the revoked host\'s controllers to drop', () => controllersOf(nqn).every((c) => c.state !== 'live') || undefined, 20_000);
    // The dropped controllers stay (reconnecting) until ctrl_loss_tmo, and while they exist nvme-cli
    // answers a new connect "already connected": remove them, then a fresh connect is refused.
    await execa('nvme', ['disconnect', '-n', nqn]);
    const again = await handConnect(nqn);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toMatch(/Input\/output error/);
    await execa('nvme', ['disconnect', '-n', nqn], { reject: false });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: other });
    expect(existsSync(sub(nqn))).toBe(false);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('reconcile: a wiped configfs (a reboot) is rebuilt from the records, and a stray subsystem with our prefix is removed', async () => {
    const id = await provision('n-reconcile', 16);
    const nqn = `${PREFIX}${id}`;
    await publish(id);
    const uuid = cat(join(sub(nqn), 'namespaces/1/device_uuid'));
    wipeSubsystem(nqn);
    // A stray: this backend's volume id pattern, no record.
    const stray = `${PREFIX}san-00000000-0000-4000-8000-000000000001`;
    mkdirSync(sub(stray));
    await waitFor('reconcile to rebuild the subsystem and remove the stray', () => (existsSync(join(sub(nqn), 'namespaces/1/enable')) && cat(join(sub(nqn), 'namespaces/1/enable')) === '1' && !existsSync(sub(stray))) || undefined, 30_000);
    await waitFor('reconcile to allow the host again', () => ls(join(sub(nqn), 'allowed_hosts')).includes(hostNqn) || undefined, 10_000);
    expect(cat(join(sub(nqn), 'namespaces/1/device_uuid'))).toBe(uuid);
    expect((await handConnect(nqn)).exitCode).toBe(0);
    await execa('nvme', ['disconnect', '-n', nqn]);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });
});
