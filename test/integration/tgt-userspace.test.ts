import { Code } from '../../src/errors/domain-error.js';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { execa } from 'execa';
import { TgtTargetHelper } from '../../src/backends/targets/tgt.js';
import { newVolumeId } from '../../src/backends/ids.js';
import { HostExecutor } from '../../src/exec/run.js';
import { UserspaceIscsiInitiator } from '../../src/node/connectors/iscsi/userspace.js';
import type { IscsiTarget } from '../../src/node/connectors/iscsi/types.js';
import { freePort, requireIscsiTools, TestTgtd } from '../helpers/tgtd.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { forceCleanupUserspace } from '../helpers/userspace-cleanup.js';
import { readAt, writeAt } from '../helpers/file-io.js';
import { stringMatching } from '../helpers/matchers.js';

const MiB = 1024 * 1024;
const log = pino({ level: 'silent' });
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 30_000 }, log);

const NODE = 'iqn.2025-01.io.test:node-1';
const OTHER = 'iqn.2025-01.io.test:intruder';
const CHAP = { user: 'sinter-node', password: 'Right-chap-secret-1' };



/** Loop devices, FUSE mounts and qemu-nbd/nbdfuse processes under `dir`, as the host sees them. */
async function leftovers(dir: string): Promise<string[]> {
  const out: string[] = [];
  const loops = (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout;
  for (const l of loops.split('\n')) if (l.includes(dir)) out.push(l.trim());
  for (const l of (await fs.readFile('/proc/mounts', 'utf8')).split('\n')) if (l.includes(dir)) out.push(l);
  const ps = (await execa('ps', ['-eo', 'pid,args'])).stdout;
  for (const l of ps.split('\n')) if (l.includes(dir) && /qemu-nbd|nbdfuse/.test(l)) out.push(l.trim());
  return out;
}

describe('user-space iSCSI initiator against a real tgtd (127.0.0.1, private ports)', () => {
  let tgtd: TestTgtd;
  let tmp: { dir: string; cleanup(): void };
  let stateDir: string;
  let helper: TgtTargetHelper;
  let us: UserspaceIscsiInitiator;
  const volumeId = newVolumeId('default');
  let image: string;
  let target: IscsiTarget;

  beforeAll(async () => {
    requireIscsiTools();
    tmp = tempDir('sinter-us-');
    stateDir = join(tmp.dir, 'state');
    image = join(tmp.dir, 'vol.img');
    await fs.writeFile(image, '');
    await fs.truncate(image, 64 * MiB);
    tgtd = await TestTgtd.start();
    helper = new TgtTargetHelper({ controlPort: tgtd.controlPort, iqnPrefix: 'iqn.2025-01.io.sinter:' }, exec, log);
    us = new UserspaceIscsiInitiator({ stateDir, loginTimeoutMs: 20_000, stopTimeoutMs: 6_000 }, exec, log);
    const ref = await helper.ensureTarget(volumeId, image);
    await helper.allowInitiator(volumeId, NODE, CHAP);
    target = { portals: [tgtd.portal], iqn: ref.iqn, lun: ref.lun };
  });

  afterAll(async () => {
    // Whatever happened above: no loop device, FUSE mount, qemu-nbd or tgtd survives this file.
    try {
      if (us && target) await us.disconnect(target).catch(() => undefined);
    } finally {
      if (stateDir) await forceCleanupUserspace(stateDir);
      await tgtd?.stop();
      tmp?.cleanup();
    }
  });

  it('logs in with the allowed initiator name and CHAP; bytes written to the loop device land in the image', async () => {
    const a = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    expect(a.devicePath).toMatch(/^\/dev\/loop\d+$/);
    expect(a.initiator).toBe('userspace');
    const size = Number((await execa('blockdev', ['--getsize64', a.devicePath])).stdout.trim());
    expect(size).toBe(64 * MiB);

    // The session is real: tgtd lists it under our initiator name.
    const t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.sessions.map((s) => s.initiator)).toEqual([NODE]);

    // Nothing secret in any process's command line, and the secret file is gone.
    const ps = (await execa('ps', ['-eo', 'args'])).stdout;
    expect(ps).not.toContain(CHAP.password);
    expect(ps).toContain(`initiator-name=${NODE}`);
    const dirs = await fs.readdir(stateDir);
    for (const d of dirs) expect(await fs.readdir(join(stateDir, d))).not.toContain('chap.secret');
    expect((await fs.stat(join(stateDir, dirs[0]))).mode & 0o777).toBe(0o700);

    const data = Buffer.from(`sinter-userspace-${volumeId}`.padEnd(4096, '#'));
    await writeAt(a.devicePath, 5 * MiB, data);
    expect((await readAt(image, 5 * MiB, data.length)).equals(data)).toBe(true);
    // And the other way round: bytes in the image read back through the device.
    const back = await readAt(a.devicePath, 5 * MiB, data.length);
    expect(back.equals(data)).toBe(true);
  });

  it('connect is idempotent: the same device, no second session', async () => {
    const a1 = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    const a2 = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    expect(a2.devicePath).toBe(a1.devicePath);
    const t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.sessions).toHaveLength(1);
    expect(await us.list()).toHaveLength(1);
    // A restarted node plugin (a new instance on the same state dir) finds the running attachment.
    const restarted = new UserspaceIscsiInitiator({ stateDir }, exec, log);
    expect((await restarted.connect(target, { initiatorName: NODE, chap: CHAP })).devicePath).toBe(a1.devicePath);
    expect((await helper.listTargets()).find((x) => x.volumeId === volumeId)!.sessions).toHaveLength(1);
  });

  it('repairs a half-dead attachment (nbdfuse killed) on the next connect', async () => {
    const before = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    const [info] = await us.list();
    expect(info.nbdfusePid).toBeGreaterThan(1);
    process.kill(info.nbdfusePid!, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const after = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    expect(after.devicePath).toMatch(/^\/dev\/loop\d+$/);
    const [again] = await us.list();
    expect(again.nbdfusePid).not.toBe(info.nbdfusePid);
    expect(again.mounted).toBe(true);
    // Still one session on the target, and the data path works.
    expect((await helper.listTargets()).find((x) => x.volumeId === volumeId)!.sessions).toHaveLength(1);
    const data = Buffer.from('repaired'.padEnd(512, '.'));
    await writeAt(after.devicePath, 7 * MiB, data);
    expect((await readAt(image, 7 * MiB, data.length)).equals(data)).toBe(true);
    void before;
  });

  it('grows LUN 1 under I/O: each reopen drains the session first, so no command in flight fails (tgt 1.0.85 closes the image under its worker threads); libiscsi logs in again by itself; the LUN identity stays; a new session reads the new capacity', async () => {
    const a = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    const sessionsBefore = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!.sessions;
    expect(sessionsBefore).toHaveLength(1);
    const url = `iscsi://${CHAP.user}%${CHAP.password}@${tgtd.portal}/${target.iqn}/1`;
    const libiscsi = async (cmd: string, ...args: string[]) => (await execa(cmd, ['-i', NODE, ...args, url])).stdout;
    const identity = async () => [await libiscsi('iscsi-inq'), await libiscsi('iscsi-inq', '-e', '1', '-c', '128'), await libiscsi('iscsi-inq', '-e', '1', '-c', '131')].join('\n');
    const idBefore = await identity();
    expect(idBefore).toContain('SINTER');
    expect(await libiscsi('iscsi-readcapacity16')).toContain(`Total size:${64 * MiB}`);

    const early = Buffer.from(`written before the growth ${volumeId}`.padEnd(4096, '<'));
    await writeAt(a.devicePath, 11 * MiB, early);

    // I/O keeps running while the image grows and tgt reopens it, again and again. Before the
    // reopen drained the sessions, about one reopen in three under load failed a command in flight
    // (tgtd: "bs_rdwr_request io error ... Bad file descriptor"; here: EIO from fsync).
    let stop = false;
    let rounds = 0;
    const failures: string[] = [];
    const io = (async () => {
      while (!stop) {
        const off = (rounds % 32) * MiB + 16 * MiB;
        const data = Buffer.alloc(64 * 1024, rounds % 251);
        try {
          await writeAt(a.devicePath, off, data);
          if (!(await readAt(a.devicePath, off, data.length)).equals(data)) failures.push(`round ${rounds}: read back differs`);
        } catch (e) {
          failures.push(`round ${rounds}: ${(e as Error).message}`);
        }
        rounds++;
      }
    })();
    // The growth starts once I/O is flowing on the session: it is I/O in flight across the reopen
    // that this asserts, not the session's first command racing the first reopen.
    for (let i = 0; rounds < 3 && i < 500; i++) await new Promise((r) => setTimeout(r, 10));
    await fs.truncate(image, 128 * MiB);
    expect(await helper.refreshLunSize(volumeId, image)).toBe('refreshed');
    for (let i = 0; i < 15; i++) await helper.refreshLunSize(volumeId, image, { force: true });
    // Each reopen pauses the I/O while the initiator logs in again; after the last one it flows on.
    const atEnd = rounds;
    for (let i = 0; rounds < atEnd + 3 && i < 3000; i++) await new Promise((r) => setTimeout(r, 10));
    stop = true;
    await io;
    expect(failures).toEqual([]);
    expect(rounds).toBeGreaterThanOrEqual(atEnd + 3);

    // The initiator is logged in again, once, as itself, in a new session (the old one was ended).
    const t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.sessions.map((s) => s.initiator)).toEqual([NODE]);
    expect(t.sessions[0].sid).not.toBe(sessionsBefore[0].sid);
    expect(t.state).toBe('ready');
    expect(t.luns.find((l) => l.lun === 1)!.online).toBe(true);
    // The same attachment reads what was written before and writes on; the bytes land in the image.
    expect((await readAt(a.devicePath, 11 * MiB, early.length)).equals(early)).toBe(true);
    const late = Buffer.from('written after the growth'.padEnd(4096, '>'));
    await writeAt(a.devicePath, 13 * MiB, late);
    expect((await readAt(image, 13 * MiB, late.length)).equals(late)).toBe(true);
    // A new session sees the new capacity, and the same disk (inquiry, serial, device id).
    expect(await libiscsi('iscsi-readcapacity16')).toContain(`Total size:${128 * MiB}`);
    expect(await identity()).toBe(idBefore);
    // The user-space chain keeps the size it had at login (qemu-nbd and nbdfuse read it once) …
    expect(Number((await execa('blockdev', ['--getsize64', a.devicePath])).stdout.trim())).toBe(64 * MiB);
    // … until it logs in again.
    await us.disconnect(target);
    const b = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    expect(Number((await execa('blockdev', ['--getsize64', b.devicePath])).stdout.trim())).toBe(128 * MiB);
    expect((await readAt(b.devicePath, 11 * MiB, early.length)).equals(early)).toBe(true);
    expect((await readAt(b.devicePath, 13 * MiB, late.length)).equals(late)).toBe(true);
  });

  it('disconnect tears everything down in reverse and is idempotent', async () => {
    await us.disconnect(target);
    await us.disconnect(target);
    expect(await leftovers(stateDir)).toEqual([]);
    await expect(fs.readdir(stateDir)).resolves.toEqual([]);
    const t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.sessions).toEqual([]);
  });

  it('refuses a login with another initiator name (ACL), leaving nothing behind', async () => {
    const err = await us.connect(target, { initiatorName: OTHER, chap: CHAP }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: Code.FAILED_PRECONDITION });
    expect((err as Error).message).toContain(OTHER);
    expect((err as Error).message).toMatch(/does not allow this initiator/);
    expect(await leftovers(stateDir)).toEqual([]);
  });

  it('refuses a wrong CHAP secret with an error naming CHAP, and never echoes the secret', async () => {
    const wrong = { user: CHAP.user, password: 'Wrong-chap-secret-9' };
    const err = await us.connect(target, { initiatorName: NODE, chap: wrong }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: Code.PERMISSION_DENIED });
    expect((err as Error).message).toMatch(/CHAP/);
    expect((err as Error).message).not.toContain(wrong.password);
    expect(await leftovers(stateDir)).toEqual([]);
  });

  it('refuses mutual CHAP instead of silently not checking the target', async () => {
    await expect(us.connect(target, { initiatorName: NODE, chap: { ...CHAP, mutualUser: 'tgt', mutualPassword: 'Mutual-secret-12' } })).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION, message: stringMatching(/mutual CHAP/) });
  });

  it('skips an unreachable portal and logs in through the next; with none reachable it is UNAVAILABLE', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const a = await us.connect({ ...target, portals: [dead, tgtd.portal] }, { initiatorName: NODE, chap: CHAP });
    expect(a.paths.map((p) => p.portal)).toEqual([tgtd.portal]);
    // The same attachment is found again whatever order the portals come in.
    const again = await us.connect({ ...target, portals: [tgtd.portal, dead] }, { initiatorName: NODE, chap: CHAP });
    expect(again.devicePath).toBe(a.devicePath);
    await us.disconnect({ ...target, portals: [dead, tgtd.portal] });
    expect(await leftovers(stateDir)).toEqual([]);
    await expect(us.connect({ ...target, portals: [dead] }, { initiatorName: NODE, chap: CHAP })).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    expect(await leftovers(stateDir)).toEqual([]);
  });

  it('after revokeInitiator the session is gone and a new login is refused (fence)', async () => {
    const a = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    expect(a.devicePath).toMatch(/^\/dev\/loop\d+$/);
    await helper.revokeInitiator(volumeId, NODE);
    let t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.acls).toEqual([]);
    expect(t.sessions).toEqual([]);
    // libiscsi keeps trying to reconnect; the target keeps refusing.
    await new Promise((r) => setTimeout(r, 2000));
    t = (await helper.listTargets()).find((x) => x.volumeId === volumeId)!;
    expect(t.sessions).toEqual([]);
    // Teardown of a fenced attachment still works (qemu-nbd needs SIGKILL while reconnecting).
    await us.disconnect(target);
    expect(await leftovers(stateDir)).toEqual([]);
    const err = await us.connect(target, { initiatorName: NODE, chap: CHAP }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: Code.FAILED_PRECONDITION });
    expect(await leftovers(stateDir)).toEqual([]);
  });

  it('after tgtd is killed and restarted, re-applying the export makes a new login work', async () => {
    await tgtd.kill();
    await tgtd.startAgain();
    expect(await helper.listTargets()).toEqual([]);
    // What the controller's reconcile does:
    await helper.ensureTarget(volumeId, image);
    await helper.allowInitiator(volumeId, NODE, CHAP);
    const a = await us.connect(target, { initiatorName: NODE, chap: CHAP });
    const data = Buffer.from('after-restart'.padEnd(512, '!'));
    await writeAt(a.devicePath, 9 * MiB, data);
    expect((await readAt(image, 9 * MiB, data.length)).equals(data)).toBe(true);
    await us.disconnect(target);
    expect(await leftovers(stateDir)).toEqual([]);
  });
});
