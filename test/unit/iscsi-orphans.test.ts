import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { DaemonSpawner, ExecResult } from '../../src/exec/run.js';
import { IscsiConnector } from '../../src/node/connectors/iscsi-connector.js';
import type { Orphan, OrphanSessions } from '../../src/node/orphans.js';
import { NodeService } from '../../src/node/service.js';
import { FakeExecutor, FakeSysfs, fixture } from '../helpers/fake-iscsi-host.js';
import { keyOf } from '../helpers/config-key.js';
import { objectContaining, stringContaining, stringMatching } from '../helpers/matchers.js';

const T1 = 'iqn.2025-01.io.sinter:default-1b4e28ba-2fa1-11d2-883f-0016d3cca427';
const P1 = '127.0.0.1:3260';
const NODE_IQN = 'iqn.1993-08.org.debian:01:573a5b2d8368';
const ok: ExecResult = { stdout: '', stderr: '', exitCode: 0 };
const N = `iscsiadm -m node -T ${T1} -p ${P1} --interface default`;

describe('configuration: node.orphanSessions and --orphan-sessions', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sinter-orphan-cfg-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const load = (yaml: string, flags: string[] = []) => {
    writeFileSync(join(dir, 'node.yaml'), yaml);
    return loadConfig('node', ['--config', join(dir, 'node.yaml'), ...flags]);
  };

  it('node.orphanTargetPrefixes: by default the default iqnPrefix and every iSCSI backend\'s; a bad prefix names its key', () => {
    expect(load('node: {}\n').node.orphanTargetPrefixes).toEqual(['iqn.2026-11.io.sinter:']);
    const withBackend = `backends:\n  - name: san\n    driver: file\n    dataDir: ${join(dir, 'san')}\n    export: iscsi\n    iscsi:\n      portals: ["127.0.0.1:3260"]\n      iqnPrefix: "iqn.2030-01.com.example.san:"\nnode: {}\n`;
    expect(load(withBackend).node.orphanTargetPrefixes).toEqual(['iqn.2026-11.io.sinter:', 'iqn.2030-01.com.example.san:']);
    expect(load('node:\n  orphanTargetPrefixes: ["iqn.2030-01.com.example:"]\n').node.orphanTargetPrefixes).toEqual(['iqn.2030-01.com.example:']);
    expect(keyOf(() => load('node:\n  orphanTargetPrefixes: ["iqn.2030-01.com.example:", "anything"]\n'))).toBe('node.orphanTargetPrefixes[1]');
    expect(keyOf(() => load('node:\n  orphanTargetPrefixes: []\n'))).toBe('node.orphanTargetPrefixes');
  });

  it('defaults to report; the YAML key and the flag (which wins) set it', () => {
    expect(load('node: {}\n').node.orphanSessions).toBe('report');
    expect(load('node:\n  orphanSessions: clean\n').node.orphanSessions).toBe('clean');
    expect(load('node:\n  orphanSessions: clean\n', ['--orphan-sessions', 'report']).node.orphanSessions).toBe('report');
    expect(load('node: {}\n', ['--orphan-sessions', 'clean']).node.orphanSessions).toBe('clean');
  });

  it('rejects anything else, naming the key or the flag', () => {
    expect(keyOf(() => load('node:\n  orphanSessions: delete\n'))).toBe('node.orphanSessions');
    expect(keyOf(() => load('node:\n  orphanSessions: true\n'))).toBe('node.orphanSessions');
    expect(keyOf(() => load('node: {}\n', ['--orphan-sessions', 'yes']))).toBe('--orphan-sessions');
    expect(() => load('node:\n  orphanSessions: Clean\n')).toThrow(/node\.orphanSessions: must be one of report, clean/);
  });
});

/**
 * NodeService.start() with the kernel initiator, where every host command
 * answers from test/fixtures/iscsiadm (session listings recorded on Linux 6.1
 * in the VM guest, node record answers recorded on the host) and sysfs / /dev are a fake tree whose `delete`
 * writes remove the disk as the kernel would. The mount table is a file.
 */
describe('start-up clean-up of orphan kernel iSCSI LUNs (iscsiadm outputs recorded on a real kernel, fake sysfs)', () => {
  let sysfs: FakeSysfs;
  let dir: string;
  let logs: Record<string, unknown>[];

  beforeEach(() => {
    sysfs = new FakeSysfs();
    dir = mkdtempSync(join(tmpdir(), 'sinter-kernel-orphans-'));
    mkdirSync(join(dir, 'kubelet'), { recursive: true });
    writeFileSync(join(dir, 'mountinfo'), '');
    logs = [];
  });
  afterEach(() => {
    sysfs.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A host whose session listing is `listing` until a logout, then none. */
  /** `afterFlush`: the listing once `multipath -f` removed a map and its path went (the recorded listings do not change by themselves). */
  /** The listing's sessions are described to the fake sysfs too (the kernel's records iscsiadm reads); a logout removes them there. */
  function host(listing: string, afterFlush?: string) {
    let loggedOut = false;
    let flushed = false;
    sysfs.asListed(fixture(listing).stdout);
    return new FakeExecutor((cmd, args) => {
      const a = args.join(' ');
      if (cmd === 'multipath' && args[0] === '-f') {
        flushed = true;
        return ok;
      }
      // The local connector's and the read-only views' loop device listings: no loop devices.
      if (cmd === 'losetup' && args[0] === '--list') return ok;
      if (cmd === 'blockdev') return ok;
      if (cmd === 'iscsiadm') {
        if (a === '-m session -P 3') return fixture(loggedOut ? 'session-none' : flushed && afterFlush ? afterFlush : listing);
        if (a.endsWith('--logout')) {
          loggedOut = true;
          for (const sid of sysfs.sessionsTo(args[args.indexOf('-T') + 1], args[args.indexOf('-p') + 1])) sysfs.removeSession(sid);
          return fixture('logout-ok');
        }
        if (a.endsWith('--op delete')) return fixture('node-delete');
      }
      throw new Error(`unexpected command: ${cmd} ${a}`);
    });
  }

  function service(exec: FakeExecutor, orphanSessions?: OrphanSessions, orphanTargetPrefixes = ['iqn.2025-01.io.sinter:']): NodeService {
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    const spawner: DaemonSpawner = {
      spawnDaemon: () => {
        throw new Error('the kernel initiator starts no daemon');
      },
    };
    return new NodeService({
      config: {
        driverName: 'sinter.csi.example.org',
        nodeName: 'node-a',
        nodeId: `node-a;${NODE_IQN};`,
        maxVolumesPerNode: 0,
        topology: {},
        kubeletRoots: [join(dir, 'kubelet')],
        localRoots: [join(dir, 'images')],
        stateDir: join(dir, 'state'),
        sysfsRoot: sysfs.sys,
        devRoot: sysfs.dev,
        ...(orphanSessions ? { orphanSessions } : {}),
      },
      exec,
      log,
      mountInfoPath: join(dir, 'mountinfo'),
      connectors: [
        new IscsiConnector(
          {
            mode: 'kernel',
            initiatorName: NODE_IQN,
            stateDir: join(dir, 'state', 'iscsi-userspace'),
            sysfsRoot: sysfs.sys,
            devRoot: sysfs.dev,
            orphanTargetPrefixes,
            kernel: { sysfs: sysfs.tree, mountInfoPath: sysfs.mountInfo, clock: { now: Date.now, sleep: async () => undefined }, deviceRemovalTimeoutMs: 1000 },
          },
          Object.assign(exec, spawner),
          log,
        ),
      ],
    });
  }

  /** A stage record of a mounted volume on LUN `lun` of T1, mounted at its staging path in the fake mount table. */
  function stagedVolume(id: string, lun: number, disk: string) {
    const staging = join(dir, 'kubelet', 'staging', id);
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(dir, 'state', 'volumes'), { recursive: true });
    writeFileSync(
      join(dir, 'state', 'volumes', `${id}.json`),
      JSON.stringify({
        version: 1,
        volumeId: id,
        stagingPath: staging,
        createdStagingDir: false,
        access: 'mount',
        fsType: 'ext4',
        mountFlags: [],
        accessMode: 'SINGLE_NODE_WRITER',
        publishContext: { transport: 'iscsi', portals: P1, iqn: T1, lun: String(lun) },
        device: join(sysfs.dev, disk),
        phase: 'staged',
        formatted: true,
        publishes: [],
        updatedAt: new Date().toISOString(),
      }),
    );
    mount(join(sysfs.dev, disk), staging);
  }

  let mountId = 100;
  function mount(device: string, at: string) {
    writeFileSync(join(dir, 'mountinfo'), `${mountId++} 25 8:${mountId} / ${at} rw,relatime shared:1 - ext4 ${device} rw\n`, { flag: 'a' });
  }

  /** The commands of the iSCSI connector (the loop device listings of the local connector and of read-only views left out). */
  const iscsiLines = (exec: FakeExecutor) => exec.lines.filter((l) => !l.startsWith('losetup --list'));
  const teardownWarnings = () => logs.filter((l) => l.msg === 'tore down a device no record of this node explains and nothing used');
  const devices = (orphans: Orphan[]) => orphans.filter((o) => o.kind === 'untracked-device').map((o) => `${o.kind === 'untracked-device' ? o.device : ''} ${o.remedy}`);

  it('with clean, an orphan session with one unused LUN: flush, device delete, logout, node record delete, in that order', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    const exec = host('session-p3-one');
    const svc = service(exec, 'clean');
    expect(devices(await svc.orphans())).toEqual([`${sysfs.dev}/sda restart`]);
    expect((await svc.orphans())[0].detail).toMatch(/a start tears it down \(node\.orphanSessions: clean\)/);
    exec.calls.length = 0;

    await svc.start();
    expect(iscsiLines(exec)).toEqual([
      // The report: attachments (every session on the node: iscsiadm); the release of sda reads its target's sessions from sysfs.
      'iscsiadm -m session -P 3',
      `blockdev --flushbufs ${sysfs.dev}/sda`,
      `${N} --logout`,
      `${N} --op delete`,
      // The report again, after the clean-up.
      'iscsiadm -m session -P 3',
    ]);
    expect(sysfs.writes).toEqual([{ path: 'block/sda/device/delete', data: '1' }]);
    expect(teardownWarnings()).toEqual([objectContaining({ level: 40, device: `${sysfs.dev}/sda`, source: `${T1} lun 1`, transport: 'iscsi' })]);
    expect(await svc.orphans()).toEqual([]);
  });

  it('with clean, a session shared with a staged volume: only the orphan LUN\'s device is removed, no logout, the node record stays', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    sysfs.addDisk(0, 1, 2, 'sdb');
    stagedVolume('san-staged', 1, 'sda');
    const exec = host('session-p3-two-luns');
    const svc = service(exec, 'clean');
    expect(devices(await svc.orphans())).toEqual([`${sysfs.dev}/sdb restart`]);
    exec.calls.length = 0;

    await svc.start();
    expect(iscsiLines(exec).filter((l) => l !== 'iscsiadm -m session -P 3')).toEqual([`blockdev --flushbufs ${sysfs.dev}/sdb`]);
    expect(sysfs.writes).toEqual([{ path: 'block/sdb/device/delete', data: '1' }]);
    expect(teardownWarnings().map((l) => l.device)).toEqual([`${sysfs.dev}/sdb`]);
    expect(logs.some((l) => l.msg === 'iSCSI session still serves other LUNs; keeping it')).toBe(true);
  });

  it('with clean, the session of a target a staged volume uses is kept even when that volume\'s LUN lost its device', async () => {
    // The staged volume's LUN 1 has no block device any more (a path failure took it); LUN 2 is an orphan.
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addNonDisk(0, 1, 1);
    sysfs.addDisk(0, 1, 2, 'sdb');
    stagedVolume('san-staged', 1, 'sda');
    const exec = host('session-p3-two-luns');
    const svc = service(exec, 'clean');
    await svc.start();
    expect(iscsiLines(exec).filter((l) => l !== 'iscsiadm -m session -P 3')).toEqual([`blockdev --flushbufs ${sysfs.dev}/sdb`]);
    expect(sysfs.writes).toEqual([{ path: 'block/sdb/device/delete', data: '1' }]);
    expect(logs.some((l) => l.msg === 'iSCSI session kept: a staged volume uses the target')).toBe(true);
  });

  it('with clean, an orphan LUN that is mounted is only reported; an unused multipath map over another orphan LUN is torn down (map, then its path), keeping the session', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    sysfs.addDisk(0, 1, 2, 'sdb');
    mount(join(sysfs.dev, 'sda'), join(dir, 'kubelet', 'by-hand'));
    sysfs.addMultipath('dm-0', 'mpatha', ['sdb']);
    const exec = host('session-p3-two-luns', 'session-p3-one');
    const svc = service(exec, 'clean');
    await svc.start();
    // The map is the LUN's device (never one of its paths): flushed and removed, then its path deleted; sda's LUN keeps the session.
    expect(iscsiLines(exec).filter((l) => !l.startsWith('iscsiadm -m session'))).toEqual([`blockdev --flushbufs ${sysfs.dev}/dm-0`, 'multipath -f mpatha', `blockdev --flushbufs ${sysfs.dev}/sdb`]);
    expect(sysfs.writes).toEqual([{ path: 'block/sdb/device/delete', data: '1' }]);
    expect(teardownWarnings()).toHaveLength(1);
    const left = await svc.orphans();
    expect(devices(left)).toEqual([`${sysfs.dev}/sda operator`]);
    expect(left.find((o) => o.kind === 'untracked-device')!.detail).toContain('it is in use, so sinter leaves it');
    expect(left.map((o) => o.kind)).toContain('untracked-mount');
  });

  it('with clean, the LUN a stage record\'s connection leads to is that volume\'s even when the record names another device', async () => {
    // The record says sdx (a re-login gave the LUN another name): sda is what a stage retry adopts, not an orphan.
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    stagedVolume('san-renamed', 1, 'sdx');
    const exec = host('session-p3-one');
    const svc = service(exec, 'clean');
    await svc.start();
    expect(sysfs.writes).toEqual([]);
    expect(iscsiLines(exec).every((l) => l === 'iscsiadm -m session -P 3')).toBe(true);
    expect((await svc.orphans()).map((o) => `${o.kind} ${o.remedy}`)).toEqual(['device-missing retry']);
  });

  it('with clean, an unused orphan LUN of a target that is not sinter\'s (node.orphanTargetPrefixes) is only reported, naming the setting', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    const exec = host('session-p3-one');
    const svc = service(exec, 'clean', ['iqn.2026-11.io.sinter:']);
    await svc.start();
    expect(iscsiLines(exec).every((l) => l === 'iscsiadm -m session -P 3')).toBe(true);
    expect(sysfs.writes).toEqual([]);
    expect(teardownWarnings()).toEqual([]);
    const [o] = await svc.orphans();
    expect(o).toMatchObject({ kind: 'untracked-device', device: `${sysfs.dev}/sda`, remedy: 'operator', detail: stringContaining(`its target ${T1} is not one of sinter's (node.orphanTargetPrefixes: iqn.2026-11.io.sinter:)`) });
  });

  it('with report (the default), an unused orphan LUN is left and reported with the setting that would clean it', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    const exec = host('session-p3-one');
    const svc = service(exec);
    await svc.start();
    expect(iscsiLines(exec).every((l) => l === 'iscsiadm -m session -P 3')).toBe(true);
    expect(sysfs.writes).toEqual([]);
    const [o] = await svc.orphans();
    expect(o).toMatchObject({ kind: 'untracked-device', device: `${sysfs.dev}/sda`, source: `${T1} lun 1`, transport: 'iscsi', remedy: 'operator' });
    expect(o.detail).toMatch(/node\.orphanSessions: report.*set node\.orphanSessions: clean/);
  });

  it('with clean, nothing is torn down while a stage record cannot be read (it may be the one that explains the LUN)', async () => {
    sysfs.addNonDisk(0, 1, 0);
    sysfs.addDisk(0, 1, 1, 'sda');
    mkdirSync(join(dir, 'state', 'volumes'), { recursive: true });
    writeFileSync(join(dir, 'state', 'volumes', 'san-broken.json'), 'not json');
    const exec = host('session-p3-one');
    const svc = service(exec, 'clean');
    await svc.start();
    expect(sysfs.writes).toEqual([]);
    const o = (await svc.orphans()).find((x) => x.kind === 'untracked-device');
    expect(o).toMatchObject({ remedy: 'operator', detail: stringMatching(/cannot be read/) });
  });
});
