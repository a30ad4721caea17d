import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMountInfo } from '../../src/node/mount.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { codeOf, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { TestTgtd } from '../helpers/tgtd.js';
import { initiatorName, Iscsid, kernelSessions, requireGuest } from './guest.js';

/**
 * dm-multipath for real: tgt exports one LUN on two portals (127.0.0.1 and
 * 127.0.0.2, the guest's loopback), the node service (kernel initiator) logs
 * in on both, multipathd (user_friendly_names no, find_multipaths yes: a map
 * once two paths share a WWID, named by the WWID) builds one map, and stage
 * mounts the map. The node plugin runs as deployed: `sinter node` (initiator:
 * kernel) in its own process, driven over its CSI unix socket.
 */
const IQN = 'iqn.2026-11.io.sinter:mpath-vm-1';
const MULTIPATH_CONF = 'defaults {\n\tuser_friendly_names no\n\tfind_multipaths yes\n}\n';

const dmDevices = () => readdirSync('/sys/block').filter((d) => d.startsWith('dm-'));
const sdDevices = () => readdirSync('/sys/block').filter((d) => /^sd[a-z]+$/.test(d));
const multipathLl = async () => (await execa('multipath', ['-ll'], { reject: false })).stdout.trim();

describe('multipath on a real kernel: one LUN, two portals, one dm-multipath map by WWID', () => {
  requireGuest();
  const t = tempDir('sinter-vm-mpath-');
  let node: SinterProcess;
  let iscsid: Iscsid;
  let tgtd: TestTgtd;
  let multipathd: ResultPromise | undefined;
  let portals: string[];
  const lunFile = '/tmp/sinter-mpath-lun.img';
  const nodeBase = join(t.dir, 'node');
  const nodeStateDir = join(nodeBase, 'state');
  const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
  const mountsUnder = (dir: string) => parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`));

  beforeAll(async () => {
    await execa('modprobe', ['dm_multipath']);
    mkdirSync('/etc/multipath', { recursive: true });
    writeFileSync('/etc/multipath.conf', MULTIPATH_CONF);
    multipathd = execa('multipathd', ['-d', '-s'], { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'ignore', cleanup: true });
    iscsid = await Iscsid.start();
    tgtd = await TestTgtd.start({ address: '0.0.0.0' });
    portals = [`127.0.0.1:${tgtd.iscsiPort}`, `127.0.0.2:${tgtd.iscsiPort}`];
    await execa('truncate', ['-s', String(256 * MiB), lunFile]);
    await tgtadm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', IQN);
    await tgtadm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lunFile);
    await tgtadm('--op', 'bind', '--mode', 'target', '--tid', '1', '--initiator-name', initiatorName());
    mkdirSync(nodeBase);
    const nodeYaml = join(t.dir, 'node.yaml');
    // multipathd under TCG takes seconds to build the map: the node's wait for it is raised from its 5 s default.
    writeFileSync(nodeYaml, ['node:', '  initiator: kernel', `  stateDir: ${nodeStateDir}`, '  iscsi:', '    deviceTimeoutSeconds: 120', '    multipathWaitSeconds: 60'].join('\n'));
    node = await startSinter({ role: 'node', base: nodeBase, nodeName: 'vm-node', args: ['--config', nodeYaml] });
  });

  afterAll(async () => {
    await node?.cleanup();
    for (const m of dmDevices()) await execa('multipath', ['-f', (await readFile(`/sys/block/${m}/dm/name`, 'utf8')).trim()], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '--logoutall=all'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-o', 'delete'], { reject: false });
    multipathd?.kill('SIGTERM');
    await multipathd;
    await tgtd?.stop();
    await iscsid?.stop();
    await execa('rm', ['-f', lunFile]);
    t.cleanup();
  });

  it('stage uses the map; I/O goes on with one path logged out; unstage refuses while the map is in use, then removes map, paths and sessions', async () => {
    const vol = 'san-mpath-1';
    const staging = join(node.kubeletRoot, 'staging', vol);
    mkdirSync(staging, { recursive: true });
    const req = {
      volume_id: vol,
      staging_target_path: staging,
      volume_capability: mountCap('SINGLE_NODE_WRITER', 'ext4'),
      publish_context: { transport: 'iscsi', portals: portals.join(','), iqn: IQN, lun: '1' },
    };
    await node.client.node.NodeStageVolume(req, { deadlineMs: 300_000 });

    // One map, two paths, both sessions; the staging mount is the map, not a path.
    expect(dmDevices()).toHaveLength(1);
    const dm = dmDevices()[0];
    const wwid = (await readFile(`/sys/block/${dm}/dm/uuid`, 'utf8')).trim().replace(/^mpath-/, '');
    expect((await readFile(`/sys/block/${dm}/dm/name`, 'utf8')).trim()).toBe(wwid);
    expect(readdirSync(`/sys/block/${dm}/slaves`).sort()).toEqual(sdDevices().sort());
    expect(sdDevices()).toHaveLength(2);
    expect(await kernelSessions()).toHaveLength(2);
    const rec = JSON.parse(await readFile(join(nodeStateDir, 'volumes', `${vol}.json`), 'utf8')) as { device: string };
    const devNum = (await readFile(`/sys/block/${dm}/dev`, 'utf8')).trim();
    const mount = mountsUnder(nodeBase).find((m) => m.mountPoint === req.staging_target_path);
    expect(mount?.majMin).toBe(devNum);
    expect(rec.device).toMatch(new RegExp(`/dev/(${dm}|mapper/${wwid})$`));
    expect(await multipathLl()).toContain(wwid);

    // One path logged out by hand: the map keeps working on the other.
    await execa('iscsiadm', ['-m', 'node', '-T', IQN, '-p', portals[1], '--logout']);
    const data = Buffer.alloc(4 * MiB, 7);
    await writeFile(join(req.staging_target_path, 'during-failover.bin'), data);
    await execa('sync');
    expect((await readFile(join(req.staging_target_path, 'during-failover.bin'))).equals(data)).toBe(true);
    expect(readdirSync(`/sys/block/${dm}/slaves`)).toHaveLength(1);

    // Someone else mounted the map: unstage refuses and removes nothing.
    const other = join(t.dir, 'by-hand');
    mkdirSync(other);
    await execa('mount', [`/dev/${dm}`, other]);
    const refused = node.client.node.NodeUnstageVolume({ volume_id: vol, staging_target_path: req.staging_target_path });
    expect(await codeOf(refused)).toBe('FAILED_PRECONDITION');
    expect(((await refused.catch((e: Error) => e)) as Error).message).toContain(other);
    expect(dmDevices()).toEqual([dm]);
    expect(await kernelSessions()).toHaveLength(1);
    await execa('umount', [other]);

    await node.client.node.NodeUnstageVolume({ volume_id: vol, staging_target_path: req.staging_target_path }, { deadlineMs: 300_000 });
    expect(await multipathLl()).toBe('');
    expect(dmDevices()).toEqual([]);
    expect(sdDevices()).toEqual([]);
    expect(await kernelSessions()).toEqual([]);
    expect(mountsUnder(t.dir)).toEqual([]);
  });
});
