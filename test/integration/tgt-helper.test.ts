import { Code } from '../../src/errors/domain-error.js';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { tgtShownMB } from '../../src/backends/targets/tgt-parse.js';
import { newSnapshotId, newVolumeId } from '../../src/backends/ids.js';
import { HostExecutor, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { any } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const host = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, pino({ level: 'silent' }));

/** The host executor, recording every command line as the Executor would log it. */
class RecordingExecutor implements Executor {
  readonly lines: string[] = [];
  async run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
    let shown = [cmd, ...args].join(' ');
    for (const s of opts?.secrets ?? []) shown = shown.split(s).join('***');
    this.lines.push(shown);
    return host.run(cmd, args, opts);
  }
}

describe('tgt target helper against a real tgtd (127.0.0.1, private ports)', () => {
  let tgtd: TestTgtd;
  let tmp: { dir: string; cleanup(): void };
  let exec: RecordingExecutor;
  let helper: TgtTargetHelper;
  const img = (n: string) => join(tmp.dir, `${n}.img`);
  const A = 'iqn.2025-01.io.test:node-a';
  const B = 'iqn.2025-01.io.test:node-b';

  beforeAll(async () => {
    requireIscsiTools();
    tmp = tempDir('sinter-tgt-');
    tgtd = await TestTgtd.start();
    exec = new RecordingExecutor();
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:' }, exec);
    for (const n of ['v1', 'v2', 'v3', 'other']) await fs.writeFile(img(n), Buffer.alloc(0)).then(() => fs.truncate(img(n), 32 * MiB));
  });
  afterAll(async () => {
    await tgtd?.stop();
    tmp?.cleanup();
  });

  it('creates one target per volume with the image as LUN 1, idempotently', async () => {
    const id = newVolumeId('default');
    const r1 = await helper.ensureTarget(id, img('v1'));
    const r2 = await helper.ensureTarget(id, img('v1'));
    const ref = ({ iqn, lun, tid }: typeof r1) => ({ iqn, lun, tid });
    expect(ref(r1)).toEqual(ref(r2));
    expect(ref(r1)).toEqual({ iqn: `iqn.2025-01.io.sinter:${id}`, lun: 1, tid: any(Number) });
    const t = (await helper.listTargets()).filter((x) => x.volumeId === id);
    expect(t).toHaveLength(1);
    expect(t[0].luns.find((l) => l.lun === 1)).toMatchObject({ backingPath: img('v1'), type: 'disk', blockSize: 512, readonly: false, scsiSerial: id.slice('default-'.length) });
    await helper.removeTarget(id);
  });

  it('gives snapshot ids an IQN and maps them back', async () => {
    const id = newSnapshotId('default');
    const r = await helper.ensureTarget(id, img('v2'), { readonly: true });
    expect(r.iqn).toBe(`iqn.2025-01.io.sinter:${id.replace('@', ':')}`);
    const t = (await helper.listTargets()).find((x) => x.iqn === r.iqn)!;
    expect(t.volumeId).toBe(id);
    expect(t.luns.find((l) => l.lun === 1)!.readonly).toBe(true);
    await helper.ensureTarget(id, img('v2'), { readonly: false });
    expect((await helper.listTargets()).find((x) => x.iqn === r.iqn)!.luns.find((l) => l.lun === 1)!.readonly).toBe(false);
    await helper.removeTarget(id);
  });

  it('binds ACLs by initiator name, revokes them, and all of it is idempotent', async () => {
    const id = newVolumeId('default');
    await helper.ensureTarget(id, img('v1'));
    await helper.allowInitiator(id, A);
    await helper.allowInitiator(id, A);
    await helper.allowInitiator(id, B);
    let t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.acls.sort()).toEqual([A, B]);
    expect(exec.lines.filter((l) => l.includes(`--initiator-name ${A}`) && l.includes('--op bind'))).toHaveLength(1);
    await helper.revokeInitiator(id, A);
    await helper.revokeInitiator(id, A);
    t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.acls).toEqual([B]);
    await helper.removeTarget(id);
    await helper.removeTarget(id);
    await helper.revokeInitiator(id, B);
    expect((await helper.listTargets()).find((x) => x.volumeId === id)).toBeUndefined();
  });

  it('refuses allowInitiator on a missing target and malformed names', async () => {
    await expect(helper.allowInitiator(newVolumeId('default'), A)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    const id = newVolumeId('default');
    await helper.ensureTarget(id, img('v1'));
    await expect(helper.allowInitiator(id, '10.0.0.1')).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT });
    await helper.removeTarget(id);
  });

  it('sets one-way and mutual CHAP through accounts, never showing a secret on a logged command line', async () => {
    const id = newVolumeId('default');
    await helper.ensureTarget(id, img('v3'));
    const chap = { user: 'sinter-chap', password: 'S3cret-one-way-pass' };
    await helper.allowInitiator(id, A, chap);
    let t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.accounts).toEqual([{ user: 'sinter-chap', outgoing: false }]);
    const mutual = { ...chap, mutualUser: 'sinter-target', mutualPassword: 'S3cret-mutual-pass' };
    await helper.allowInitiator(id, A, mutual);
    await helper.allowInitiator(id, A, mutual);
    t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.accounts.sort((a, b) => a.user.localeCompare(b.user))).toEqual([
      { user: 'sinter-chap', outgoing: false },
      { user: 'sinter-target', outgoing: true },
    ]);
    // Back to one-way: the outgoing account is unbound from this target.
    await helper.allowInitiator(id, A, chap);
    t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.accounts).toEqual([{ user: 'sinter-chap', outgoing: false }]);
    const all = exec.lines.join('\n');
    expect(all).not.toContain('S3cret');
    expect(all).toContain('--password ***');
    await helper.removeTarget(id);
    // Accounts no target uses any more are gone with the target.
    const accounts = await host.run('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'show', '--mode', 'account']);
    expect(accounts.stdout).not.toContain('sinter-chap');
  });

  it('applies the documented LUN settings: write cache off (caching mode page WCE=0) and 4096-byte blocks', async () => {
    const rec = new RecordingExecutor();
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:', writeCache: false, blockSize: 4096, bsoflags: 'direct' }, rec);
    const id = newVolumeId('default');
    await h.ensureTarget(id, img('v2'));
    const t = (await h.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.luns.find((l) => l.lun === 1)).toMatchObject({ blockSize: 4096, backingPath: img('v2') });
    expect(rec.lines.some((l) => l.includes('--blocksize 4096') && l.includes('--bsoflags direct'))).toBe(true);
    expect(rec.lines.some((l) => l.includes('mode_page=8:0:18:0x10:'))).toBe(true);
    await h.removeTarget(id);
    // The default keeps tgt's write-back cache (WCE=1).
    expect(exec.lines.some((l) => l.includes('mode_page=8:0:18:0x14:'))).toBe(true);
  });

  it('re-points LUN 1 when nothing is logged in and the image path changed', async () => {
    const id = newVolumeId('default');
    await helper.ensureTarget(id, img('v1'));
    await helper.ensureTarget(id, img('other'));
    const t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.luns.find((l) => l.lun === 1)!.backingPath).toBe(img('other'));
    await helper.removeTarget(id);
  });

  it('restores targets after tgtd is killed and started again (what reconcile does)', async () => {
    const id = newVolumeId('default');
    await helper.ensureTarget(id, img('v1'));
    await helper.allowInitiator(id, A, { user: 'sinter-chap2', password: 'S3cret-restart-pass' });
    await tgtd.kill();
    await expect(helper.listTargets()).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    await tgtd.startAgain();
    expect(await helper.listTargets()).toEqual([]);
    await helper.ensureTarget(id, img('v1'));
    await helper.allowInitiator(id, A, { user: 'sinter-chap2', password: 'S3cret-restart-pass' });
    const t = (await helper.listTargets()).find((x) => x.volumeId === id)!;
    expect(t.acls).toEqual([A]);
    expect(t.accounts).toEqual([{ user: 'sinter-chap2', outgoing: false }]);
    expect(t.luns.find((l) => l.lun === 1)!.backingPath).toBe(img('v1'));
    await helper.removeTarget(id);
  });

  it('refreshLunSize: absent without a target, current while the image is unchanged, refreshed after it grew; identity and settings kept', async () => {
    const id = newVolumeId('default');
    const file = img('grow1');
    await fs.writeFile(file, '');
    await fs.truncate(file, 32 * MiB);
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:', blockSize: 4096 }, exec);
    expect(await h.refreshLunSize(id, file)).toBe('absent');
    await h.ensureTarget(id, file, { readonly: true });
    const lun = async () => (await h.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!;
    const before = await lun();
    expect(await h.refreshLunSize(id, file)).toBe('current');
    const calls = exec.lines.length;
    expect(await h.refreshLunSize(id, file)).toBe('current');
    expect(exec.lines.slice(calls).every((l) => l.includes('--op show'))).toBe(true);
    await fs.truncate(file, 96 * MiB);
    expect(h.lunShowsSize(await lun(), 96 * MiB)).toBe(false);
    expect(await h.refreshLunSize(id, file)).toBe('refreshed');
    const after = await lun();
    expect(after.sizeMB).toBe(tgtShownMB(96 * MiB));
    expect(h.lunShowsSize(after, 96 * MiB)).toBe(true);
    // One update reopened the store in place: the LUN object, its serial, device id and settings are the ones it had.
    expect(after).toEqual({ ...before, sizeMB: after.sizeMB });
    expect(after).toMatchObject({ readonly: true, blockSize: 4096, online: true, scsiSerial: id.slice('default-'.length), scsiId: before.scsiId });
    expect(exec.lines.slice(calls).filter((l) => l.includes('--op delete') || l.includes('--op new'))).toEqual([]);
    expect(exec.lines.some((l) => l.includes(`--params online=0,path=${file}`))).toBe(true);
    // force reopens even when the shown size already matches.
    expect(await h.refreshLunSize(id, file, { force: true })).toBe('refreshed');
    await expect(h.refreshLunSize(id, img('other'))).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION });
    await h.removeTarget(id);
  });

  it("tgtShownMB is what tgtd shows, for sizes from 4 KiB to 2 TiB", async () => {
    const id = newVolumeId('default');
    const file = img('sizes');
    await fs.writeFile(file, '');
    await fs.truncate(file, 4096);
    await helper.ensureTarget(id, file);
    for (const bytes of [4096, MiB, 3 * MiB + 4096, 64 * MiB, 100_000_000, 1024 * MiB, 10 * 1024 * MiB + 512, 2 * 1024 * 1024 * MiB]) {
      await fs.truncate(file, bytes);
      await helper.refreshLunSize(id, file, { force: true });
      const l = (await helper.listTargets()).find((x) => x.volumeId === id)!.luns.find((x) => x.lun === 1)!;
      expect(l.sizeMB, String(bytes)).toBe(tgtShownMB(bytes));
    }
    await helper.removeTarget(id);
    await fs.rm(file);
  });

  it('a reopen tgt cannot complete leaves LUN 1 offline without its store; the next ensureTarget (reconcile) gives it back', async () => {
    const id = newVolumeId('default');
    const file = img('reopen');
    await fs.writeFile(file, '');
    await fs.truncate(file, 32 * MiB);
    await helper.ensureTarget(id, file);
    const serial = (await helper.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!.scsiSerial;
    // A directory where the image was: stat works, tgt's open(O_RDWR) fails after it closed the old file.
    await fs.rename(file, `${file}.away`);
    await fs.mkdir(file);
    await expect(helper.refreshLunSize(id, file, { force: true })).rejects.toThrow();
    // The target itself is back in service (the reopen took it offline): only the LUN waits for its file.
    expect((await helper.listTargets()).find((x) => x.volumeId === id)!.state).toBe('ready');
    let lun = (await helper.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!;
    expect(lun).toMatchObject({ online: false, scsiSerial: serial });
    expect(lun.backingPath).toBeUndefined();
    await fs.rmdir(file);
    await fs.rename(`${file}.away`, file);
    await helper.ensureTarget(id, file);
    lun = (await helper.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!;
    expect(lun).toMatchObject({ online: true, backingPath: file, scsiSerial: serial, sizeMB: tgtShownMB(32 * MiB) });
    await helper.removeTarget(id);
  });

  it('a target a crash left offline mid-reopen (tgt refuses its logins) is set ready by the next ensureTarget (publish, reconcile)', async () => {
    const id = newVolumeId('default');
    const file = img('left-offline');
    await fs.writeFile(file, '');
    await fs.truncate(file, 32 * MiB);
    const { tid } = await helper.ensureTarget(id, file);
    await host.run('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', '--op', 'update', '--mode', 'target', '--tid', String(tid), '--name', 'state', '--value', 'offline']);
    expect((await helper.listTargets()).find((x) => x.volumeId === id)!.state).toBe('offline');
    await helper.ensureTarget(id, file);
    expect((await helper.listTargets()).find((x) => x.volumeId === id)!.state).toBe('ready');
    await helper.removeTarget(id);
    await fs.rm(file);
  });

  it("the aio backing store is refreshed by re-adding the LUN while no session is logged in", async () => {
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:', backingStoreType: 'aio' }, exec);
    const id = newVolumeId('default');
    const file = img('aio');
    await fs.writeFile(file, '');
    await fs.truncate(file, 32 * MiB);
    await h.ensureTarget(id, file);
    const before = (await h.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!;
    expect(before.backingStoreType).toBe('aio');
    await fs.truncate(file, 48 * MiB);
    expect(await h.refreshLunSize(id, file)).toBe('refreshed');
    const after = (await h.listTargets()).find((x) => x.volumeId === id)!.luns.find((l) => l.lun === 1)!;
    expect(after).toMatchObject({ sizeMB: tgtShownMB(48 * MiB), backingStoreType: 'aio', scsiSerial: before.scsiSerial, scsiId: before.scsiId, online: true });
    await h.removeTarget(id);
  });

  it("a first publish changes tgtd with the floor's calls only, no read first; a republish reads; a taken id or an existing name sends it back to reading", async () => {
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:' }, exec);
    const tgtadm = (...args: string[]) => host.run('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
    const since = (mark: number) => exec.lines.slice(mark).map((l) => l.split(' ').slice(5, 9).join(' '));
    const before = await h.listTargets(); // what start-up (Probe, reconcile) does
    const id = newVolumeId('default');
    let mark = exec.lines.length;
    const r = await h.ensureTarget(id, img('v1'));
    await h.allowInitiator(id, A, { user: 'sinter-first', password: 'S3cret-first-pass' }, r.seen);
    expect(since(mark)).toEqual([
      '--op new --mode target',
      '--op new --mode logicalunit',
      '--op update --mode logicalunit',
      '--op update --mode logicalunit',
      '--op bind --mode target',
      '--op new --mode account',
      '--op bind --mode account',
    ]);
    let t = (await h.listTargets()).find((x) => x.volumeId === id)!;
    expect(t).toMatchObject({ tid: r.tid, acls: [A], accounts: [{ user: 'sinter-first', outgoing: false }] });
    expect(t.luns.find((l) => l.lun === 1)).toMatchObject({ backingPath: img('v1'), scsiSerial: id.slice('default-'.length) });

    // A republish (another node, a retry): the target is known to exist, so it is read, not made again.
    mark = exec.lines.length;
    const again = await h.ensureTarget(id, img('v1'));
    await h.allowInitiator(id, B, undefined, again.seen);
    expect(since(mark)).toEqual(['--op show --mode target', '--op bind --mode target']);
    expect(again.tid).toBe(r.tid);

    // Another client takes the id this helper would pick next: tgtd refuses, the helper reads and picks another.
    const listed = await h.listTargets();
    const next = listed.reduce((m, x) => Math.max(m, x.tid), 0) + 1;
    await tgtadm('--op', 'new', '--mode', 'target', '--tid', String(next), '--targetname', 'iqn.2025-01.io.other:squatter');
    const id2 = newVolumeId('default');
    const r2 = await h.ensureTarget(id2, img('v2'));
    expect(r2.tid).not.toBe(next);
    // Another client (or a replica) made this volume's target meanwhile: found, not duplicated.
    const id3 = newVolumeId('default');
    await tgtadm('--op', 'new', '--mode', 'target', '--tid', '7777', '--targetname', h.iqnFor(id3));
    const r3 = await h.ensureTarget(id3, img('v3'));
    expect(r3.tid).toBe(7777);
    const ts = await h.listTargets();
    expect(ts.filter((x) => x.iqn === h.iqnFor(id3))).toHaveLength(1);
    expect(ts.find((x) => x.tid === next)).toMatchObject({ iqn: 'iqn.2025-01.io.other:squatter', luns: [expect.objectContaining({ lun: 0 })], acls: [] });
    for (const v of [id, id2, id3]) await h.removeTarget(v);
    await tgtadm('--op', 'delete', '--mode', 'target', '--tid', String(next), '--force');
    expect((await h.listTargets()).map((x) => x.tid).sort()).toEqual(before.map((x) => x.tid).sort());
    t = (await h.listTargets()).find((x) => x.volumeId === id)!;
    expect(t).toBeUndefined();
  });

  it('an account tgtd already has, made elsewhere with an unknown password, is made again with ours and bound back where it was', async () => {
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:' }, exec);
    const tgtadm = (...args: string[]) => host.run('tgtadm', ['-C', String(tgtd.controlPort), '--lld', 'iscsi', ...args]);
    const [id, other] = [newVolumeId('default'), newVolumeId('default')];
    await h.ensureTarget(other, img('v2'));
    await tgtadm('--op', 'new', '--mode', 'account', '--user', 'sinter-shared', '--password', 'Old-unknown-pass1');
    const otherTid = (await h.listTargets()).find((x) => x.volumeId === other)!.tid;
    await tgtadm('--op', 'bind', '--mode', 'account', '--tid', String(otherTid), '--user', 'sinter-shared');
    const r = await h.ensureTarget(id, img('v1'));
    const mark = exec.lines.length;
    await h.allowInitiator(id, A, { user: 'sinter-shared', password: 'S3cret-new-pass1' }, r.seen);
    const ran = exec.lines.slice(mark).join('\n');
    expect(ran).toMatch(/--op delete --mode account --user sinter-shared/);
    expect(ran).not.toContain('S3cret');
    const ts = await h.listTargets();
    for (const v of [id, other]) expect(ts.find((x) => x.volumeId === v)!.accounts).toEqual([{ user: 'sinter-shared', outgoing: false }]);
    // Known now: the same credentials again change nothing.
    const mark2 = exec.lines.length;
    await h.allowInitiator(id, A, { user: 'sinter-shared', password: 'S3cret-new-pass1' });
    expect(exec.lines.slice(mark2).filter((l) => !l.includes('--op show') && !l.includes('--op new --mode account'))).toEqual([]);
    await h.removeTarget(id);
    await h.removeTarget(other);
  });

  it('serializes concurrent ensureTarget calls for many volumes without target id clashes', async () => {
    const ids = Array.from({ length: 6 }, () => newVolumeId('default'));
    const refs = await Promise.all(ids.flatMap((id) => [helper.ensureTarget(id, img('v1')), helper.ensureTarget(id, img('v1'))]));
    expect(new Set(refs.map((r) => r.tid)).size).toBe(6);
    const ts = await helper.listTargets();
    for (const id of ids) expect(ts.filter((t) => t.volumeId === id)).toHaveLength(1);
    await Promise.all(ids.map((id) => helper.removeTarget(id)));
    expect((await helper.listTargets()).filter((t) => ids.includes(t.volumeId ?? ''))).toEqual([]);
  });
});

describe('tgt listen portals (iscsi.openPortals) against a real tgtd started on a parking portal', () => {
  // A tgtd per test: the helpers a test makes are members of its tgtd's gate for the life of this process.
  let tgtd: TestTgtd;
  beforeEach(async () => {
    requireIscsiTools();
    tgtd = await TestTgtd.start({ portalClosed: true });
  });
  afterEach(async () => {
    await tgtd?.stop();
  });
  const helperFor = () => new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:', listenPortals: [tgtd.portal] }, host);

  it('the portal opens only after the last helper on that tgtd has restored, never during a restore, and a failed restore opens nothing', async () => {
    const a = helperFor();
    const b = helperFor();
    const during: boolean[] = [];
    const restore = async () => {
      during.push(await tgtd.portalAccepts());
      return 'done';
    };
    await expect(a.restoring(() => Promise.reject(new Error('listing failed')))).rejects.toThrow('listing failed');
    expect(await tgtd.portalAccepts()).toBe(false);
    expect(await a.restoring(restore)).toBe('done');
    // b has not restored since the portals closed: they stay closed.
    expect(await tgtd.portalAccepts()).toBe(false);
    expect(await b.restoring(restore)).toBe('done');
    expect(await tgtd.portalAccepts()).toBe(true);
    expect(during).toEqual([false, false]);
    // Open: a pass leaves it open and opens nothing twice.
    await a.restoring(restore);
    await b.restoring(restore);
    expect(await tgtd.portalAccepts()).toBe(true);
  });

  it('after a restart, two helpers restoring at once open the portal once, with no error', async () => {
    const a = helperFor();
    const b = helperFor();
    await tgtd.kill();
    await tgtd.startAgain({ portalClosed: true });
    await Promise.all([a.restoring(async () => undefined), b.restoring(async () => undefined)]);
    expect(await tgtd.portalAccepts()).toBe(true);
  });

  it('a pass that began before tgtd restarted does not count towards opening its portal', async () => {
    const a = helperFor();
    const b = helperFor();
    // Both see the portal open at the start of their pass; tgtd restarts during a's.
    await tgtd.openPortal();
    await a.restoring(async () => {
      await tgtd.kill();
      await tgtd.startAgain({ portalClosed: true });
    });
    await b.restoring(async () => undefined);
    expect(await tgtd.portalAccepts()).toBe(false);
    await a.restoring(async () => undefined);
    expect(await tgtd.portalAccepts()).toBe(true);
  });

  it('tgtd restarting again after one backend restored (a crash loop): the portal waits until that backend has restored into the new daemon', async () => {
    const tmp = tempDir('sinter-tgt-portals-');
    try {
      const image = join(tmp.dir, 'v.img');
      await fs.writeFile(image, Buffer.alloc(0)).then(() => fs.truncate(image, 8 * MiB));
      const a = helperFor();
      const b = helperFor();
      const id = newVolumeId('default');
      const restoreA = () => a.restoring(() => a.ensureTarget(id, image), () => [a.iqnFor(id)]);
      await restoreA();
      await tgtd.kill();
      await tgtd.startAgain({ portalClosed: true });
      await b.restoring(async () => undefined, () => []);
      // a's target went with the daemon it restored into: nothing opens.
      expect(await tgtd.portalAccepts()).toBe(false);
      await b.restoring(async () => undefined, () => []);
      expect(await tgtd.portalAccepts()).toBe(false);
      await restoreA();
      expect(await tgtd.portalAccepts()).toBe(true);
      expect((await a.listTargets()).map((t) => t.volumeId)).toEqual([id]);
    } finally {
      tmp.cleanup();
    }
  });

  it('a portal tgtd cannot bind fails the pass, naming the tgtadm call that failed', async () => {
    const h = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:', listenPortals: ['192.0.2.1:3260'] }, host);
    await expect(h.restoring(async () => undefined)).rejects.toThrow(/tgtadm .*--mode portal --param portal=192\.0\.2\.1:3260/);
  });
});
