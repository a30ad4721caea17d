import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { idFromIqnSuffix, iqnSuffixForId, validateIqnPrefix } from '../../src/backends/targets/tgt.js';
import { classifyTgtError, parseTgtAccounts, parseTgtPortals, parseTgtTargets, tgtShownMB } from '../../src/backends/targets/tgt-parse.js';
import { closedPortals, TgtPortalGate } from '../../src/backends/targets/tgt-portals.js';
import { objectContaining } from '../helpers/matchers.js';

const dir = join(import.meta.dirname, '..', 'fixtures', 'tgt');
const fx = (name: string) => readFileSync(join(dir, `${name}.txt`), 'utf8');
const exitCodes = new Map(
  readFileSync(join(dir, 'exit-codes.txt'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => l.split(' ') as [string, string])
    .map(([n, c]) => [n, Number(c)]),
);

describe('tgtadm output parsing (recorded from a real tgtd 1.0.85)', () => {
  it('reads an empty daemon as no targets and no accounts', () => {
    expect(parseTgtTargets(fx('show-empty'))).toEqual([]);
    expect(parseTgtAccounts(fx('account-list-empty'))).toEqual([]);
  });

  it('reads a target without a disk LUN: only the controller LUN 0', () => {
    const [t] = parseTgtTargets(fx('show-target-no-lun'));
    expect(t).toMatchObject({ tid: 1, iqn: 'iqn.2025-01.io.sinter:default-1b4e28ba-2fa1-11d2-883f-0016d3cca427', state: 'ready', acls: [], accounts: [], sessions: [] });
    expect(t.luns).toEqual([objectContaining({ lun: 0, type: 'controller' })]);
    expect(t.luns[0].backingPath).toBeUndefined();
  });

  it('reads LUN 1 backing path, size, block size, serial, ACLs and incoming/outgoing accounts', () => {
    const [t] = parseTgtTargets(fx('show-target-lun-acl-accounts'));
    const lun1 = t.luns.find((l) => l.lun === 1)!;
    expect(lun1).toMatchObject({ type: 'disk', backingPath: '/var/lib/sinter/test/img1', backingStoreType: 'rdwr', sizeMB: 67, blockSize: 512, readonly: false, online: true, scsiSerial: '1b4e28ba-2fa1-11d2-883f-0016d3cca427' });
    expect(t.acls).toEqual(['iqn.2025-01.io.test:node1']);
    expect(t.accounts).toEqual([
      { user: 'chapuser', outgoing: false },
      { user: 'mutualuser', outgoing: true },
    ]);
    expect(parseTgtAccounts(fx('account-list')).sort()).toEqual(['chapuser', 'mutualuser']);
  });

  it('reads two targets, two live sessions with their connections, and a read-only 4K LUN', () => {
    const ts = parseTgtTargets(fx('show-two-targets-sessions'));
    expect(ts.map((t) => [t.tid, t.iqn])).toEqual([
      [1, 'iqn.2025-01.io.sinter:default-1b4e28ba-2fa1-11d2-883f-0016d3cca427'],
      [2, 'iqn.2025-01.io.sinter:default:6fa459ea-ee8a-3ca4-894e-db77e160355e'],
    ]);
    expect(ts[0].sessions).toEqual([
      { sid: 1, initiator: 'iqn.2025-01.io.test:node1', connections: [{ cid: 0, address: '127.0.0.1' }] },
      { sid: 2, initiator: 'iqn.2025-01.io.test:node2', connections: [{ cid: 0, address: '127.0.0.1' }] },
    ]);
    expect(ts[0].acls).toEqual(['iqn.2025-01.io.test:node1', 'iqn.2025-01.io.test:node2']);
    expect(ts[1].sessions).toEqual([]);
    expect(ts[1].luns.find((l) => l.lun === 1)).toMatchObject({ readonly: true, blockSize: 4096, sizeMB: 10, backingPath: '/var/lib/sinter/test/img2' });
  });

  it('sees the fenced initiator gone from ACL and sessions after unbind + delete conn', () => {
    const [t] = parseTgtTargets(fx('show-after-fence'));
    expect(t.acls).toEqual(['iqn.2025-01.io.test:node2']);
    expect(t.sessions.map((s) => s.initiator)).toEqual(['iqn.2025-01.io.test:node2']);
  });

  it('ignores unknown sections, lines and trailing noise without throwing', () => {
    const text = `${fx('show-target-lun-acl-accounts')}\n    Portal information:\n        127.0.0.1:3260\ngarbage line\n`;
    const [t] = parseTgtTargets(text);
    expect(t.acls).toEqual(['iqn.2025-01.io.test:node1']);
    expect(parseTgtTargets('tgtadm: something odd\n')).toEqual([]);
  });

  it('classifies every recorded tgtadm error sentence', () => {
    const cases: [string, string][] = [
      ['err-target-exists', 'target-exists'],
      ['err-target-exists-other-tid', 'target-exists'],
      ['err-lun-exists', 'lun-exists'],
      ['err-acl-exists', 'acl-exists'],
      ['err-acl-not-found', 'acl-not-found'],
      ['err-target-not-found', 'target-not-found'],
      ['err-lun-not-found', 'lun-not-found'],
      ['err-session-not-found', 'session-not-found'],
      ['err-account-not-found', 'account-not-found'],
      ['err-account-exists', 'account-exists'],
      ['err-account-bound', 'account-exists'],
      ['err-outgoing-exists', 'outgoing-account-exists'],
      ['err-daemon-down', 'daemon-unreachable'],
    ];
    for (const [name, kind] of cases) {
      expect(exitCodes.get(name), name).not.toBe(0);
      expect(classifyTgtError(fx(name), exitCodes.get(name)), name).toBe(kind);
    }
    expect(exitCodes.get('err-daemon-down')).toBe(107);
    expect(classifyTgtError('tgtadm: out of memory', 22)).toBe('other');
  });
});

describe('growing LUN 1 under a live session (recorded from a real tgtd 1.0.85)', () => {
  it('tgt refuses a new path while the LUN is online, and reopens it with online=0 first in the same request', () => {
    expect(exitCodes.get('err-update-path-online')).toBe(22);
    expect(fx('err-update-path-online').trim()).toBe('tgtadm: invalid request');
    expect(exitCodes.get('reopen-lun')).toBe(0);
    const [t] = parseTgtTargets(fx('show-after-reopen'));
    // The session stayed; the LUN is online at the new size with the same identity.
    expect(t.sessions.map((s) => s.initiator)).toEqual(['iqn.2025-01.io.test:node2']);
    expect(t.luns.find((l) => l.lun === 1)).toMatchObject({
      sizeMB: tgtShownMB(128 * 1024 * 1024),
      online: true,
      preventRemoval: false,
      backingPath: '/var/lib/sinter/test/img1',
      scsiSerial: '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
      scsiId: 'IET     00010001',
    });
  });

  it('reads the LUN a failed reopen leaves behind: offline, no backing store, identity kept', () => {
    expect(exitCodes.get('err-reopen-missing')).toBe(22);
    const lun = parseTgtTargets(fx('show-lun-without-store'))[0].luns.find((l) => l.lun === 1)!;
    expect(lun).toMatchObject({ type: 'disk', online: false, sizeMB: 0, backingStoreType: 'rdwr', scsiId: 'IET     00010001' });
    expect(lun.backingPath).toBeUndefined();
    expect(exitCodes.get('reattach-store')).toBe(0);
  });

  it("computes tgt's shown size like usr/target.c print_disksize", () => {
    const MiB = 1024 * 1024;
    expect(tgtShownMB(64 * MiB)).toBe(67);
    expect(tgtShownMB(128 * MiB)).toBe(134);
    expect(tgtShownMB(10 * MiB)).toBe(10);
    expect(tgtShownMB(0)).toBe(0);
    // Every whole-MiB step changes what tgt shows, so a grown LUN is always told apart.
    const same: number[] = [];
    for (let m = 1; m < 100_000; m++) if (tgtShownMB((m + 1) * MiB) <= tgtShownMB(m * MiB)) same.push(m);
    expect(same).toEqual([]);
  });

  it("classifies tgt's busy-LUN and prevent-removal refusals (usr/tgtadm.c)", () => {
    expect(classifyTgtError('tgtadm: this logical unit is still active\n', 22)).toBe('lun-active');
    expect(classifyTgtError('tgtadm: this device has Prevent Removal set\n', 22)).toBe('prevent-removal');
  });
});

describe('volume ids as iSCSI names', () => {
  it('keeps volume ids and maps snapshot ids one-to-one and back', () => {
    expect(iqnSuffixForId('default-1b4e28ba-2fa1-11d2-883f-0016d3cca427')).toBe('default-1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    expect(iqnSuffixForId('default@1b4e28ba-2fa1-11d2-883f-0016d3cca427')).toBe('default:1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    expect(idFromIqnSuffix('default:1b4e28ba-2fa1-11d2-883f-0016d3cca427')).toBe('default@1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    expect(idFromIqnSuffix('default-1b4e28ba-2fa1-11d2-883f-0016d3cca427')).toBe('default-1b4e28ba-2fa1-11d2-883f-0016d3cca427');
  });

  it('refuses ids an IQN cannot carry without collisions', () => {
    for (const bad of ['Default-x', 'a b', 'a/b', 'a_b', '', '-a']) expect(() => iqnSuffixForId(bad), bad).toThrow();
  });

  it('checks the configured prefix', () => {
    expect(() => validateIqnPrefix('iqn.2025-01.io.sinter:')).not.toThrow();
    for (const bad of ['iqn.2025-01.io.sinter', 'IQN.2025-01.io.sinter:', 'sinter:', 'iqn.25-1.x:']) expect(() => validateIqnPrefix(bad), bad).toThrow();
  });
});

describe('tgt portals (tgtadm --op show --mode portal, tgt 1.0.85 usr/iscsi/target.c iscsi_target_show_portals)', () => {
  // As tgtd printed it here for portals added by address, by host name and over IPv6.
  const shown = 'Portal: 127.0.0.1:3297,1\nPortal: [::1]:3298,1\nPortal: 127.0.0.1:3298,1\n';

  it('parses every portal line, IPv6 without brackets', () => {
    expect(parseTgtPortals(shown)).toEqual([
      { host: '127.0.0.1', port: 3297 },
      { host: '::1', port: 3298 },
      { host: '127.0.0.1', port: 3298 },
    ]);
    expect(parseTgtPortals('')).toEqual([]);
  });

  it('a configured portal is closed unless tgtd listens on its address and port, or on the wildcard of its family', () => {
    const listening = parseTgtPortals(shown);
    expect(closedPortals(['127.0.0.1:3298', '[0:0::1]:3298', '127.0.0.1:3260', '[::1]:3297'], listening)).toEqual(['127.0.0.1:3260', '[::1]:3297']);
    expect(closedPortals(['10.0.0.1:3260', '[fd00::1]:3260'], parseTgtPortals('Portal: 0.0.0.0:3260,1\n'))).toEqual(['[fd00::1]:3260']);
    expect(closedPortals(['10.0.0.1:3260', '[fd00::1]:3260'], parseTgtPortals('Portal: [::]:3260,1\nPortal: 0.0.0.0:3260,1\n'))).toEqual([]);
  });

  it('the gate opens for the last member to restore, and starts over once reset', () => {
    const g = new TgtPortalGate();
    const [a, b] = [{}, {}];
    g.join(a);
    g.join(b);
    expect(g.markRestored(a)).toBe(false);
    expect(g.waitingFor()).toBe(1);
    expect(g.markRestored(a)).toBe(false);
    expect(g.markRestored(b)).toBe(true);
    g.reset();
    expect(g.markRestored(b)).toBe(false);
  });

  it('a member whose restored targets are gone from the daemon no longer counts', () => {
    const g = new TgtPortalGate();
    const [a, b] = [{}, {}];
    g.join(a);
    g.join(b);
    g.markRestored(a, ['iqn.x:a1', 'iqn.x:a2']);
    expect(g.markRestored(b, [])).toBe(true);
    expect(g.dropStale((t) => t !== 'iqn.x:a2')).toBe(1);
    expect(g.waitingFor()).toBe(1);
    expect(g.dropStale(() => false)).toBe(0);
    expect(g.markRestored(a, ['iqn.x:a1'])).toBe(true);
  });
});
