import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { IscsiConnector } from '../../src/node/connectors/iscsi-connector.js';
import { NodeService } from '../../src/node/service.js';
import { csiError, MiB, mountCap, NodeEnv } from '../helpers/node-env.js';
import { TestTgtd } from '../helpers/tgtd.js';
import { initiatorName, Iscsid, kernelSessions, requireGuest } from './guest.js';

/**
 * dm-multipath for real: tgt exports one LUN on two portals (127.0.0.1 and
 * 127.0.0.2, the guest's loopback), the node service (kernel initiator) logs
 * in on both, multipathd (user_friendly_names no, find_multipaths yes: a map
 * once two paths share a WWID, named by the WWID) builds one map, and stage
 * mounts the map.
 */
const IQN = 'iqn.2026-11.io.sinter:mpath-vm-1';
const MULTIPATH_CONF = 'defaults {\n\tuser_friendly_names no\n\tfind_multipaths yes\n}\n';

const dmDevices = () => readdirSync('/sys/block').filter((d) => d.startsWith('dm-'));
const sdDevices = () => readdirSync('/sys/block').filter((d) => /^sd[a-z]+$/.test(d));
const multipathLl = async () => (await execa('multipath', ['-ll'], { reject: false })).stdout.trim();

describe('multipath on a real kernel: one LUN, two portals, one dm-multipath map by WWID', () => {
  requireGuest();
  let env: NodeEnv;
  let iscsid: Iscsid;
  let tgtd: TestTgtd;
  let multipathd: ResultPromise | undefined;
  let portals: string[];
  const lunFile = '/tmp/sinter-mpath-lun.img';
  const tgtadm = (...args: string[]) => execa('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);

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
    env = await NodeEnv.create();
    const log = pino({ level: 'silent' });
    env.use(
      new NodeService({
        config: env.config,
        exec: env.exec,
        log,
        connectors: [
          new IscsiConnector(
            { mode: 'kernel', initiatorName: initiatorName(), stateDir: join(env.stateDir, 'iscsi-userspace'), kernel: { multipathWaitMs: 60_000, deviceTimeoutMs: 120_000 } },
            env.exec,
            log,
          ),
        ],
      }),
    );
    await env.svc.start();
  });

  afterAll(async () => {
    await env?.cleanup();
    for (const m of dmDevices()) await execa('multipath', ['-f', (await readFile(`/sys/block/${m}/dm/name`, 'utf8')).trim()], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '--logoutall=all'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-o', 'delete'], { reject: false });
    multipathd?.kill('SIGTERM');
    await multipathd;
    await tgtd?.stop();
    await iscsid?.stop();
    await execa('rm', ['-f', lunFile]);
  });

  it('stage uses the map; I/O goes on with one path logged out; unstage refuses while the map is in use, then removes map, paths and sessions', async () => {
    const vol = 'san-mpath-1';
    const req = env.stageReq(vol, '', mountCap('ext4'), { publish_context: { transport: 'iscsi', portals: portals.join(','), iqn: IQN, lun: '1' } });
    await env.h.NodeStageVolume(req);

    // One map, two paths, both sessions; the staging mount is the map, not a path.
    expect(dmDevices()).toHaveLength(1);
    const dm = dmDevices()[0];
    const wwid = (await readFile(`/sys/block/${dm}/dm/uuid`, 'utf8')).trim().replace(/^mpath-/, '');
    expect((await readFile(`/sys/block/${dm}/dm/name`, 'utf8')).trim()).toBe(wwid);
    expect(readdirSync(`/sys/block/${dm}/slaves`).sort()).toEqual(sdDevices().sort());
    expect(sdDevices()).toHaveLength(2);
    expect(await kernelSessions()).toHaveLength(2);
    const rec = JSON.parse(await readFile(join(env.stateDir, 'volumes', `${vol}.json`), 'utf8')) as { device: string };
    const devNum = (await readFile(`/sys/block/${dm}/dev`, 'utf8')).trim();
    const mount = (await env.mountsUnder()).find((m) => m.mountPoint === req.staging_target_path);
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
    const other = join(env.dir, 'by-hand');
    mkdirSync(other);
    await execa('mount', [`/dev/${dm}`, other]);
    const err = await csiError(env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: req.staging_target_path }));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(other);
    expect(dmDevices()).toEqual([dm]);
    expect(await kernelSessions()).toHaveLength(1);
    await execa('umount', [other]);

    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: req.staging_target_path });
    expect(await multipathLl()).toBe('');
    expect(dmDevices()).toEqual([]);
    expect(sdDevices()).toEqual([]);
    expect(await kernelSessions()).toEqual([]);
    expect(await env.mountsUnder()).toEqual([]);
  });
});
