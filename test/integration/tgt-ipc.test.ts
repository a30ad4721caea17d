import { promises as fs } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newVolumeId } from '../../src/backends/ids.js';
import { tgtdShow } from '../../src/backends/targets/tgt-ipc.js';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { Code } from '../../src/errors/domain-error.js';
import { HostExecutor, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { requireTgt, TestTgtd } from '../helpers/tgtd.js';

const MiB = 1024 * 1024;
const host = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' }));
const PREFIX = 'iqn.2025-01.io.sinter:';
const A = 'iqn.2025-01.io.test:node-a';

/** The host executor in direct mode, recording every command; `socketAt` redirects where the helper opens tgtd's socket. */
class Recording implements Executor {
  readonly lines: string[] = [];
  constructor(private readonly socketAt?: (path: string) => string) {}
  async run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
    this.lines.push([cmd, ...args].join(' '));
    return host.run(cmd, args, opts);
  }
  hostPath(path: string): string | undefined {
    return this.socketAt ? this.socketAt(path) : host.hostPath(path);
  }
  shows(): number {
    return this.lines.filter((l) => l.includes('--op show')).length;
  }
  clear(): void {
    this.lines.length = 0;
  }
}

/** A unix socket at `path` that answers every request with `answer` (or never, with undefined). */
async function fakeDaemon(path: string, answer: Buffer | undefined): Promise<Server> {
  const s = createServer((c) => {
    c.once('data', () => {
      if (answer) c.end(answer);
    });
    c.on('error', () => undefined);
  });
  await new Promise<void>((r) => s.listen(path, r));
  return s;
}

describe("tgt helper's reads over tgtd's control socket (real tgtd 1.0.85, private control port)", () => {
  let tgtd: TestTgtd;
  let tmp: { dir: string; cleanup(): void };
  const img = (n: string) => join(tmp.dir, `${n}.img`);
  const tgtadm = (...args: string[]) => host.run('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);

  beforeAll(async () => {
    requireTgt();
    tmp = tempDir('sinter-tgt-ipc-');
    tgtd = await TestTgtd.start();
    for (const n of ['v1', 'v2']) await fs.writeFile(img(n), Buffer.alloc(0)).then(() => fs.truncate(img(n), 16 * MiB));
  });
  afterAll(async () => {
    await tgtd?.stop();
    tmp?.cleanup();
  });

  it('reads byte for byte what tgtadm --op show prints: LUNs, ACLs, accounts, several targets', async () => {
    const helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, new Recording());
    const ids = [newVolumeId('default'), newVolumeId('default')];
    await helper.ensureTarget(ids[0], img('v1'));
    await helper.ensureTarget(ids[1], img('v2'), { readonly: true });
    await helper.allowInitiator(ids[0], A, { user: 'sinter-ipc', password: 'S3cret-ipc-password' });
    const viaSocket = await tgtdShow(`/var/run/tgtd/socket.${tgtd.controlPort}`, 5_000);
    const viaTgtadm = (await tgtadm('--op', 'show', '--mode', 'target')).stdout;
    expect(viaTgtadm).toContain(`${PREFIX}${ids[1]}`);
    expect(viaSocket).toBe(viaTgtadm);
    for (const id of ids) await helper.removeTarget(id);
  });

  it('after one read checked against tgtadm, unpublish (removeTarget) runs one tgtadm process, the delete, and still deletes only its own target', async () => {
    const exec = new Recording();
    const helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec);
    await helper.listTargets();
    expect(exec.shows()).toBe(1); // the check: tgtadm's own answer, compared with the socket's
    const mine = newVolumeId('default');
    const other = newVolumeId('default');
    await helper.ensureTarget(mine, img('v1'));
    await helper.allowInitiator(mine, A);
    await helper.ensureTarget(other, img('v2'));
    exec.clear();
    await helper.removeTarget(mine);
    expect(exec.lines).toEqual([expect.stringMatching(/--op delete --mode target --tid \d+ --force$/)]);
    const left = await helper.listTargets();
    expect(left.map((t) => t.volumeId)).toEqual([other]);
    expect(exec.shows()).toBe(0);
    await helper.removeTarget(other);
  });

  it('checks the socket again after tgtd restarts, and a target id remembered from before is never deleted', async () => {
    const exec = new Recording();
    const helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec);
    const mine = newVolumeId('default');
    const { tid } = await helper.ensureTarget(mine, img('v1'));
    await helper.listTargets();
    await tgtd.kill();
    await tgtd.startAgain();
    // Another client's target takes the id sinter's target had before the restart.
    await tgtadm('--op', 'new', '--mode', 'target', '--tid', String(tid), '--targetname', 'iqn.2025-01.io.other:keep-me');
    exec.clear();
    await helper.removeTarget(mine);
    expect(exec.lines.filter((l) => l.includes('--op delete'))).toEqual([]);
    expect(exec.shows()).toBe(1); // a new socket: checked against tgtadm once
    exec.clear();
    expect((await helper.listTargets()).map((t) => t.iqn)).toEqual(['iqn.2025-01.io.other:keep-me']);
    expect(exec.shows()).toBe(0);
    await tgtadm('--op', 'delete', '--mode', 'target', '--tid', String(tid));
  });

  it('reads with tgtadm when the socket answers differently (another layout), and reports an unreachable tgtd as before', async () => {
    const fake = join(tmp.dir, 'fake.sock');
    // A well-formed answer with other text: the check against tgtadm fails, so tgtadm's text is what counts.
    const text = Buffer.from('Target 7: iqn.2025-01.io.sinter:default-00000000-0000-4000-8000-000000000000\n\0');
    const head = Buffer.alloc(8);
    head.writeUInt32LE(0, 0);
    head.writeUInt32LE(8 + text.length, 4);
    const server = await fakeDaemon(fake, Buffer.concat([head, text]));
    try {
      const exec = new Recording(() => fake);
      const helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX }, exec);
      for (let i = 0; i < 5; i++) expect(await helper.listTargets()).toEqual([]);
      // Three mismatches and that socket is left alone: no more socket reads, tgtadm each time.
      expect(exec.shows()).toBe(5);
    } finally {
      await new Promise((r) => server.close(r));
    }
    const gone = new TgtTargetHelper({ controlPort: 1, iqnPrefix: PREFIX }, new Recording());
    await expect(gone.listTargets()).rejects.toMatchObject({ code: Code.UNAVAILABLE });
  });

  it('a socket that never answers fails the read after the timeout, as a hung tgtadm would', async () => {
    const fake = join(tmp.dir, 'mute.sock');
    const server = await fakeDaemon(fake, undefined);
    try {
      const helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: PREFIX, timeoutMs: 300 }, new Recording(() => fake));
      await expect(helper.listTargets()).rejects.toThrow(/did not answer/);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
