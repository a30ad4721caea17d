import { mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { newVolumeId } from '../../src/backends/ids.js';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import type { FsckReport } from '../../src/fsck/check.js';
import { HostExecutor } from '../../src/exec/run.js';
import { UserspaceIscsiInitiator, type UserspaceAttachmentInfo } from '../../src/node/connectors/iscsi/userspace.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { MAIN, MiB, mountCap, scrub, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { metricsAddressIn, parseExposition, scrape } from '../helpers/metrics.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import { objectContaining, stringMatching } from '../helpers/matchers.js';

const NODE_IQN = 'iqn.2026-11.io.sinter.test:orphan-node';
const TEARDOWN = 'tore down a device no record of this node explains and nothing used';

/**
 * node.orphanSessions with the user-space initiator against a real tgtd on
 * 127.0.0.1: a `sinter node` process stages volumes over real iSCSI sessions
 * (qemu-nbd → nbdfuse → loop), is SIGKILLed, and its stage record is deleted
 * (a lost record); the next start reports or tears down what is left.
 */
describe('orphan iSCSI sessions at node start-up (user-space initiator, real tgtd sessions)', () => {
  const t = tempDir('sinter-iscsi-orphans-');
  const base = join(t.dir, 'node');
  const stateDir = join(base, 'state');
  const usDir = join(stateDir, 'iscsi-userspace');
  const yaml = join(t.dir, 'node.yaml');
  const log = pino({ level: 'silent' });
  const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);
  let tgtd: TestTgtd | undefined;
  let helper: TgtTargetHelper;
  let node: SinterProcess | undefined;
  const volumes: string[] = [];

  beforeAll(async () => {
    requireIscsiTools();
    mkdirSync(base, { recursive: true });
    writeFileSync(
      yaml,
      ['node:', `  iscsiInitiatorName: ${NODE_IQN}`, '  initiator: userspace', `  stateDir: ${stateDir}`, '  orphanTargetPrefixes: ["iqn.2026-11.io.sinter.test:"]'].join('\n'),
    );
    tgtd = await TestTgtd.start();
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2026-11.io.sinter.test:' }, exec, log);
  });

  // Whatever a test did or failed to do: no sinter, mount, loop device, FUSE mount, qemu-nbd, nbdfuse or target survives it.
  afterEach(async () => {
    try {
      node?.client.close();
      await node?.cleanup();
    } finally {
      node = undefined;
      // Mounts under the node's directories even when no plugin runs (a test that failed between a kill and a start).
      await scrub(base);
      await forceCleanupUserspace(usDir);
      for (const id of volumes.splice(0)) await helper.removeTarget(id).catch(() => undefined);
      rmSync(join(stateDir, 'volumes'), { recursive: true, force: true });
    }
  });

  afterAll(async () => {
    await tgtd?.stop();
    t.cleanup();
  });

  const start = async (orphanSessions?: 'report' | 'clean') => {
    node = await startSinter({
      role: 'node',
      base,
      nodeName: 'orphan-node',
      args: ['--config', yaml, '--metrics-address', '127.0.0.1:0', ...(orphanSessions ? ['--orphan-sessions', orphanSessions] : [])],
    });
    return node;
  };

  /** The node's /metrics, parsed. */
  const metricsOf = async (s: SinterProcess) => parseExposition((await scrape((await waitFor('the metrics endpoint', () => metricsAddressIn(s.logs()))))).text);

  /** A tgt target for a new volume, its ACL allowing this node, and the publish_context the controller would hand out. */
  const exported = async () => {
    const id = newVolumeId('san');
    volumes.push(id);
    const image = join(t.dir, `${id}.img`);
    writeFileSync(image, '');
    truncateSync(image, 64 * MiB);
    const ref = await helper.ensureTarget(id, image);
    await helper.allowInitiator(id, NODE_IQN);
    return { id, ctx: { transport: 'iscsi', portals: tgtd!.portal, iqn: ref.iqn, lun: String(ref.lun) } };
  };

  const staging = (id: string) => {
    const p = join(base, 'kubelet', 'staging', id);
    mkdirSync(p, { recursive: true });
    return p;
  };

  const stage = async (v: { id: string; ctx: Record<string, string> }) =>
    node!.client.node.NodeStageVolume({ volume_id: v.id, staging_target_path: staging(v.id), volume_capability: mountCap(), publish_context: v.ctx });

  /** The user-space attachment of a target, as its state directory and the host show it. */
  const attachmentOf = async (iqn: string): Promise<UserspaceAttachmentInfo | undefined> =>
    (await new UserspaceIscsiInitiator({ stateDir: usDir }, exec, log).list()).find((a) => a.iqn === iqn);

  /** Loop devices, mounts and qemu-nbd/nbdfuse processes of an attachment directory, as the host shows them. */
  const chain = async (dir: string): Promise<string[]> => {
    const out: string[] = [];
    for (const l of (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout.split('\n')) if (l.includes(dir)) out.push(`loop ${l.trim()}`);
    for (const l of readFileSync('/proc/mounts', 'utf8').split('\n')) if (l.includes(dir)) out.push(`mount ${l.split(' ')[1]}`);
    for (const l of (await execa('ps', ['-eo', 'pid,args'])).stdout.split('\n')) if (l.includes(dir) && /qemu-nbd|nbdfuse/.test(l)) out.push(`process ${l.trim().split(/\s+/)[1]}`);
    return out.sort();
  };

  const sessionsOf = async (id: string) => (await helper.listTargets()).find((x) => x.volumeId === id)?.sessions.map((s) => s.initiator) ?? [];

  /** A crash of the node plugin that also lost the volume's stage record. */
  const crashAndLoseRecord = async (id: string) => {
    await node!.stop('SIGKILL');
    node!.client.close();
    node = undefined;
    rmSync(join(stateDir, 'volumes', `${id}.json`));
  };

  const fsck = async (extra: string[] = []): Promise<FsckReport> => {
    const r = await execa('node', [MAIN, 'fsck', 'node', '--config', yaml, '--kubelet-root', join(base, 'kubelet'), '--json', ...extra], { reject: false });
    return JSON.parse(r.stdout) as FsckReport;
  };

  const teardownLines = (p: SinterProcess) =>
    p
      .logs()
      .split('\n')
      .filter((l) => l.includes(TEARDOWN))
      .map((l) => JSON.parse(l) as { level: number; device: string; source: string; transport: string });

  it('report (the default) leaves an unused orphan chain and reports it; a restart with clean tears it down, leaving a staged volume alone', async () => {
    const orphan = await exported();
    const kept = await exported();
    await start();
    await stage(orphan);
    await stage(kept);
    const a = (await attachmentOf(orphan.ctx.iqn))!;
    expect(a.devicePath).toMatch(/^\/dev\/loop\d+$/);
    const before = await chain(a.dir);
    expect(before.filter((x) => x.startsWith('loop')).length).toBe(1);
    expect(before.filter((x) => x.startsWith('mount')).length).toBe(1);
    expect(before.filter((x) => x.startsWith('process')).length).toBe(2);
    expect(await sessionsOf(orphan.id)).toEqual([NODE_IQN]);
    const first = await metricsOf(node!);
    expect(first.value('sinter_node_staged_volumes', { transport: 'iscsi' })).toBe(2);
    expect(first.value('sinter_node_attach_duration_seconds_count', { transport: 'iscsi', operation: 'stage' })).toBe(2);

    // SIGKILL, the record lost, the staging mount gone (as after an unstage that got no further than its unmount).
    await crashAndLoseRecord(orphan.id);
    await execa('umount', [staging(orphan.id)]);

    // report: the whole chain stays, the session too; the report and fsck say what would clean it.
    const reporting = await start();
    expect(await chain(a.dir)).toEqual(before);
    expect(await sessionsOf(orphan.id)).toEqual([NODE_IQN]);
    expect(teardownLines(reporting)).toEqual([]);
    // The operator sees the orphan session on the node's /metrics, and the one volume still staged.
    const reportingMetrics = await metricsOf(reporting);
    expect(reportingMetrics.value('sinter_node_orphan_sessions', { transport: 'iscsi' })).toBe(1);
    expect(reportingMetrics.value('sinter_node_staged_volumes', { transport: 'iscsi' })).toBe(1);
    const reported = (await fsck()).findings.filter((f) => f.kind === 'untracked-device');
    expect(reported).toEqual([
      objectContaining({ subject: a.devicePath, remedy: 'operator', detail: stringMatching(/node\.orphanSessions: report.*set node\.orphanSessions: clean/) }),
    ]);
    // Under clean, the same check says a start repairs it.
    expect((await fsck(['--orphan-sessions', 'clean'])).findings.filter((f) => f.kind === 'untracked-device')).toEqual([
      objectContaining({ subject: a.devicePath, remedy: 'restart', detail: stringMatching(/a start tears it down/) }),
    ]);
    await reporting.stop('SIGKILL');
    reporting.client.close();
    node = undefined;

    // clean: loop device, FUSE mount, nbdfuse and qemu-nbd are gone, and tgtd has no session from us.
    const cleaning = await start('clean');
    expect(await chain(a.dir)).toEqual([]);
    await waitFor('tgtd to drop the orphan session', async () => ((await sessionsOf(orphan.id)).length === 0 ? true : undefined), 10_000);
    expect(teardownLines(cleaning)).toEqual([objectContaining({ level: 40, device: a.devicePath, transport: 'iscsi', source: `${orphan.ctx.iqn} lun 1 via ${tgtd!.portal}` })]);
    expect((await fsck(['--orphan-sessions', 'clean'])).findings).toEqual([]);
    expect((await metricsOf(cleaning)).value('sinter_node_orphan_sessions', { transport: 'iscsi' })).toBe(0);

    // The volume whose record survived is untouched and still serves.
    const k = (await attachmentOf(kept.ctx.iqn))!;
    expect(k.mounted).toBe(true);
    expect(await sessionsOf(kept.id)).toEqual([NODE_IQN]);
    writeFileSync(join(staging(kept.id), 'after-clean.txt'), 'still writable');
    const stats = await cleaning.client.node.NodeGetVolumeStats({ volume_id: kept.id, volume_path: staging(kept.id) });
    expect(stats.volume_condition?.abnormal ?? false).toBe(false);
    await cleaning.client.node.NodeUnstageVolume({ volume_id: kept.id, staging_target_path: staging(kept.id) });
    expect(await chain(k.dir)).toEqual([]);
    const unstaged = await metricsOf(cleaning);
    expect(unstaged.value('sinter_node_staged_volumes', { transport: 'iscsi' })).toBe(0);
    expect(unstaged.value('sinter_node_attach_duration_seconds_count', { transport: 'iscsi', operation: 'unstage' })).toBe(1);
  });

  it('with clean, an orphan chain that is mounted is left alone and reported', async () => {
    const v = await exported();
    await start();
    await stage(v);
    const a = (await attachmentOf(v.ctx.iqn))!;
    const before = await chain(a.dir);
    expect(before).toHaveLength(4);
    await crashAndLoseRecord(v.id);

    const p = await start('clean');
    expect(await chain(a.dir)).toEqual(before);
    expect(await sessionsOf(v.id)).toEqual([NODE_IQN]);
    expect(teardownLines(p)).toEqual([]);
    const findings = (await fsck(['--orphan-sessions', 'clean'])).findings.map((f) => `${f.kind} ${f.subject} ${f.remedy}`);
    expect(findings.sort()).toEqual([`untracked-device ${a.devicePath} operator`, `untracked-mount ${staging(v.id)} operator`].sort());
    // The mount still works: the data path was never cut.
    writeFileSync(join(staging(v.id), 'still-here.txt'), 'x');
    expect(readFileSync(join(staging(v.id), 'still-here.txt'), 'utf8')).toBe('x');
  });
});
