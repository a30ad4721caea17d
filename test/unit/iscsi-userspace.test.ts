import { Code } from '../../src/errors/domain-error.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { classifyLoginFailure } from '../../src/node/connectors/iscsi/userspace.js';
import { parsePortal } from '../../src/node/connectors/iscsi/types.js';

const fx = (n: string) => readFileSync(join(import.meta.dirname, '..', 'fixtures', 'qemu-nbd', `${n}.txt`), 'utf8');
const target = { portals: ['127.0.0.1:13260'], iqn: 'iqn.2024-01.io.sinter:default-1b4e28ba', lun: 1 };
const portal = parsePortal('127.0.0.1:13260');

describe('user-space login failures (recorded qemu-nbd/libiscsi output)', () => {
  it('names CHAP for an authentication failure, even though the object id contains no hint', () => {
    const e = classifyLoginFailure(fx('login-chap-failure'), target, portal, 'iqn.2024-01.io.test:node1', false);
    expect(e.code).toBe(Code.PERMISSION_DENIED);
    expect(e.message).toMatch(/CHAP authentication failed/);
  });

  it('reads tgt\'s "Target not found" as an ACL refusal, not as CHAP', () => {
    const text = fx('login-acl-refused').replace("'driver", "--object secret,id=sinter-chap 'driver");
    const e = classifyLoginFailure(text, target, portal, 'iqn.2024-01.io.test:other', false);
    expect(e.code).toBe(Code.FAILED_PRECONDITION);
    expect(e.message).toMatch(/does not allow this initiator/);
    expect(e.message).not.toMatch(/CHAP/);
  });

  it('reports an unreachable portal as UNAVAILABLE, and a timeout too', () => {
    expect(classifyLoginFailure(fx('login-unreachable'), target, portal, 'iqn.2024-01.io.test:n', false).code).toBe(Code.UNAVAILABLE);
    expect(classifyLoginFailure('', target, portal, 'iqn.2024-01.io.test:n', true).code).toBe(Code.UNAVAILABLE);
  });
});

describe('portals', () => {
  it('parses host, host:port, [v6] and [v6]:port', () => {
    expect(parsePortal('10.0.0.1').text).toBe('10.0.0.1:3260');
    expect(parsePortal('127.0.0.1:13260')).toEqual({ host: '127.0.0.1', port: 13260, text: '127.0.0.1:13260' });
    expect(parsePortal('[::1]').text).toBe('[::1]:3260');
    expect(parsePortal('[fd00::2]:3261')).toEqual({ host: 'fd00::2', port: 3261, text: '[fd00::2]:3261' });
    for (const bad of ['', 'a b', '1.2.3.4:0', '1.2.3.4:99999', '::1', 'x:y']) expect(() => parsePortal(bad), bad).toThrow();
  });
});

describe('initiator choice (auto)', () => {
  it('picks the kernel initiator only when sysfs shows the iscsi_tcp transport', async () => {
    const { mkdtempSync, mkdirSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { createIscsiInitiator, kernelIscsiAvailable } = await import('../../src/node/connectors/iscsi/index.js');
    const { HostExecutor } = await import('../../src/exec/run.js');
    const sys = mkdtempSync(join(tmpdir(), 'sinter-sys-'));
    try {
      const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 1000 });
      expect(await kernelIscsiAvailable(sys)).toBe(false);
      expect((await createIscsiInitiator('auto', { kernel: { sysfsRoot: sys }, userspace: { stateDir: join(sys, 'us') } }, exec)).kind).toBe('userspace');
      mkdirSync(join(sys, 'class', 'iscsi_transport', 'tcp'), { recursive: true });
      expect((await createIscsiInitiator('auto', { kernel: { sysfsRoot: sys }, userspace: { stateDir: join(sys, 'us') } }, exec)).kind).toBe('kernel');
      expect((await createIscsiInitiator('userspace', { kernel: { sysfsRoot: sys }, userspace: { stateDir: join(sys, 'us') } }, exec)).kind).toBe('userspace');
    } finally {
      rmSync(sys, { recursive: true, force: true });
    }
  });
});

describe('find() at scale', () => {
  it("reads and inspects only the target's own attachment (one record read, one mountpoint process, not one per attachment on the node)", async () => {
    const { mkdtempSync, mkdirSync, rmSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { UserspaceIscsiInitiator } = await import('../../src/node/connectors/iscsi/userspace.js');
    const root = mkdtempSync(join(tmpdir(), 'sinter-us-'));
    try {
      const stateDir = join(root, 'state');
      const ran: string[] = [];
      const exec = {
        run: (cmd: string, args: string[]) => {
          ran.push([cmd, ...args].join(' '));
          return Promise.resolve({ stdout: '', stderr: '', exitCode: 0 });
        },
        spawnDaemon: () => Promise.reject(new Error('no daemon expected')),
      };
      const us = new UserspaceIscsiInitiator({ stateDir, sysfsRoot: join(root, 'sys'), procRoot: join(root, 'proc') }, exec);
      // 20 attachments on the node, each with its loop device over its FUSE file; the wanted one is not the first.
      for (let i = 0; i < 20; i++) {
        const iqn = `iqn.2024-01.io.sinter:default-${i}`;
        const dir = us.dirFor(portal, iqn, 1);
        mkdirSync(join(dir, 'mnt'), { recursive: true });
        writeFileSync(join(dir, 'attachment.json'), JSON.stringify({ portal: portal.text, iqn, lun: 1, initiatorName: 'iqn.2024-01.io.test:n', createdAt: '' }));
        mkdirSync(join(root, 'sys', 'block', `loop${i}`, 'loop'), { recursive: true });
        writeFileSync(join(root, 'sys', 'block', `loop${i}`, 'loop', 'backing_file'), `${join(dir, 'mnt', 'disk')}\n`);
      }
      // Every record file read, counted: find() runs on every stage and unstage, so it reads its own target's only.
      const { promises: fsp } = await import('node:fs');
      const reads: string[] = [];
      const readFile = fsp.readFile.bind(fsp);
      const spy = vi.spyOn(fsp, 'readFile').mockImplementation(((path: string, ...rest: unknown[]) => {
        if (String(path).endsWith('attachment.json')) reads.push(String(path));
        return (readFile as (...a: unknown[]) => Promise<unknown>)(path, ...rest);
      }) as typeof fsp.readFile);
      try {
        const device = await us.find({ portals: [portal.text], iqn: 'iqn.2024-01.io.sinter:default-7', lun: 1 });
        expect(device).toBe('/dev/loop7');
        expect(ran).toEqual([`mountpoint -q ${join(us.dirFor(portal, 'iqn.2024-01.io.sinter:default-7', 1), 'mnt')}`]);
        expect(reads).toEqual([join(us.dirFor(portal, 'iqn.2024-01.io.sinter:default-7', 1), 'attachment.json')]);
        expect(await us.find({ portals: [portal.text], iqn: 'iqn.2024-01.io.sinter:default-7', lun: 2 })).toBeUndefined();
        expect(reads).toHaveLength(2);
        // The whole list (orphan reporting) still sees all 20.
        expect((await us.attached()).map((a) => a.device).sort()).toHaveLength(20);
      } finally {
        spy.mockRestore();
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
