import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { startSinter, type SinterProcess, type StartOptions } from './sinter-process.js';
import { TestTgtd } from './tgtd.js';

/**
 * Which transport the conformance suite (test/conformance/) drives, from
 * SINTER_CONFORMANCE_TRANSPORT:
 * - `local` (default, the host run): the file backend's loop-device export.
 * - `iscsi-kernel` (the VM stage, set by the `vm` vitest project): the file
 *   backend exports each volume through a tgtd of its own on the guest's
 *   loopback, and the node half logs in with open-iscsi's kernel initiator.
 */
export type ConformanceTransport = 'local' | 'iscsi-kernel';
export const CONFORMANCE_TRANSPORT = (process.env.SINTER_CONFORMANCE_TRANSPORT ?? 'local') as ConformanceTransport;
if (!['local', 'iscsi-kernel'].includes(CONFORMANCE_TRANSPORT)) throw new Error(`SINTER_CONFORMANCE_TRANSPORT must be local or iscsi-kernel, not ${CONFORMANCE_TRANSPORT}`);

const IQN_PREFIX = 'iqn.2026-11.io.sinter.conformance:';
const tgtds = new Map<string, TestTgtd>();

/** iscsid for the node half; one per test file (files run one at a time), started on first use. */
let iscsid: { stop(): Promise<void> } | undefined;
async function ensureIscsid(): Promise<void> {
  if (iscsid) return;
  const { Iscsid } = await import('../vm/guest.js');
  iscsid = await Iscsid.start();
}

/** startSinter with the conformance transport: the same process, its backend exporting over it. */
export async function startConformanceSinter(opts: StartOptions = {}): Promise<SinterProcess> {
  if (CONFORMANCE_TRANSPORT === 'local') return startSinter(opts);
  if (process.env.SINTER_IN_VM !== '1') throw new Error('SINTER_CONFORMANCE_TRANSPORT=iscsi-kernel runs only in the VM guest (node test/vm/run.mjs --vitest)');
  const ownBase = opts.base === undefined;
  const base = opts.base ?? mkdtempSync(join(tmpdir(), 'sinter-conf-'));
  const config = join(base, 'conformance.yaml');
  let tgtd = tgtds.get(base);
  if (!tgtd) {
    tgtd = await TestTgtd.start();
    tgtds.set(base, tgtd);
    writeFileSync(
      config,
      [
        'backends:',
        '  - name: default',
        '    driver: file',
        `    dataDir: ${join(base, 'data')}`,
        '    export: iscsi',
        '    iscsi:',
        `      portals: ["${tgtd.portal}"]`,
        `      controlPort: ${tgtd.controlPort}`,
        `      iqnPrefix: "${IQN_PREFIX}"`,
        'node:',
        '  initiator: kernel',
      ].join('\n'),
    );
  }
  if ((opts.role ?? 'all') !== 'controller') await ensureIscsid();
  const s = await startSinter({ ...opts, base, args: ['--config', config, ...(opts.args ?? [])] });
  return {
    ...s,
    async cleanup() {
      await s.cleanup();
      // Sessions a failed test left to this process's targets, then the target daemon.
      for (const line of await kernelSessionsTo(IQN_PREFIX)) {
        const [portal, iqn] = line.split(' ');
        await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '--logout'], { reject: false });
        await execa('iscsiadm', ['-m', 'node', '-T', iqn, '-p', portal.replace(/,\d+$/, ''), '-o', 'delete'], { reject: false });
      }
      await tgtds.get(base)?.stop();
      tgtds.get(base)?.cleanupLogs();
      tgtds.delete(base);
      if (tgtds.size === 0) {
        await iscsid?.stop();
        iscsid = undefined;
      }
      if (ownBase) rmSync(base, { recursive: true, force: true });
    },
  };
}

/** The publish_context the controller hands out for a volume of this sinter, for the transport in use. */
export function expectedPublishContext(s: SinterProcess, volumeId: string): Record<string, string> {
  if (CONFORMANCE_TRANSPORT === 'local') return { transport: 'local', path: `${s.dataDir}/volumes/${volumeId}.img` };
  const tgtd = tgtds.get(s.base);
  if (!tgtd) throw new Error(`no tgtd for ${s.base}: start it with startConformanceSinter`);
  return { transport: 'iscsi', portals: tgtd.portal, iqn: `${IQN_PREFIX}${volumeId}`, lun: '1' };
}

/** Kernel iSCSI sessions to targets under prefix ("portal,tpgt iqn"); [] on the local transport. */
export async function kernelSessionsTo(prefix = IQN_PREFIX): Promise<string[]> {
  if (CONFORMANCE_TRANSPORT === 'local') return [];
  const r = await execa('iscsiadm', ['-m', 'session'], { reject: false });
  if (r.exitCode === 21) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.replace(/^tcp: \[\d+\] /, '').replace(/ \(non-flash\)$/, ''))
    .filter((l) => l.split(' ')[1]?.startsWith(prefix));
}
