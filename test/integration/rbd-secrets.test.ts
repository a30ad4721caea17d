import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cephForFile, type FileCeph } from '../helpers/ceph-shared.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { codeOf, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';

// The rbd backend with `keyFrom: secrets` against the run's real single-node
// Ceph (a pool and a cephx user of this file's): the controller has no key
// file; each request's CSI secrets (ceph-csi's userID/userKey) carry the key.
// `rbd` and `ceph` on sinter's PATH are stand-ins that log their argv and the
// key file they were given (mode, filesystem) before running the real tool:
// the exec layer's every command, captured.

const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');

/** The same key with its secret's last byte changed: a well-formed cephx key Ceph refuses. */
function wrongKeyOf(key: string): string {
  const b = Buffer.from(key, 'base64');
  b[b.length - 1] = b[b.length - 1] ^ 0x5a;
  return b.toString('base64');
}

describe('rbd keyFrom: secrets: the cephx key comes with each request, never on a command line or a disk', () => {
  const t = tempDir('sinter-rbd-secrets-');
  let c: FileCeph;
  let cfg: string;
  let shims: string;
  let s: SinterProcess | undefined;
  /** Every controller this file started (their logs are checked at the end). */
  const procs: SinterProcess[] = [];
  let good: Record<string, string>;
  let wrong: Record<string, string>;
  const argvSeen: string[] = [];
  let poller: NodeJS.Timeout | undefined;

  const start = async () => {
    s = await startSinter({ base: join(t.dir, 'sinter'), args: ['--config', cfg], wrapper: ['env', `PATH=${shims}:${process.env.PATH ?? ''}`], readyTimeoutMs: 60_000 });
    procs.push(s);
    return s;
  };

  beforeAll(async () => {
    c = await cephForFile('rbd-secrets');
    good = { userID: c.user, userKey: c.key };
    wrong = { userID: c.user, userKey: wrongKeyOf(c.key) };
    shims = join(t.dir, 'bin');
    mkdirSync(shims, { recursive: true });
    const log = join(t.dir, 'exec.log');
    for (const tool of ['rbd', 'ceph']) {
      writeFileSync(
        join(shims, tool),
        [
          '#!/bin/sh',
          'kf=""; prev=""',
          'for a in "$@"; do [ "$prev" = "--keyfile" ] && kf="$a"; prev="$a"; done',
          `echo "ARGV ${tool} $*" >> ${log}`,
          `[ -n "$kf" ] && echo "KEYFILE $kf $(stat -c %a "$kf") $(stat -c %a "$(dirname "$kf")") $(stat -f -c %T "$kf")" >> ${log}`,
          `exec /usr/bin/${tool} "$@"`,
          '',
        ].join('\n'),
      );
      chmodSync(join(shims, tool), 0o755);
    }
    cfg = join(t.dir, 'sinter.yaml');
    writeFileSync(
      cfg,
      [
        'backends:',
        '  - name: ceph',
        '    driver: rbd',
        `    pool: ${c.pool}`,
        `    monitors: ["${c.monitors}"]`,
        `    user: ${c.user}`,
        '    keyFrom: secrets',
        // A wrong key is not refused outright: the client retries until its mount timeout.
        '    commandTimeoutSeconds: 6',
        `controller: { stateDir: ${join(t.dir, 'controller-state')} }`,
      ].join('\n'),
    );
    // Every process's command line, sampled all along: the key must never be on one (ps shows argv to every user).
    poller = setInterval(() => {
      for (const pid of readdirSync('/proc')) {
        if (!/^\d+$/.test(pid)) continue;
        try {
          const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          if (argv.includes(c.key) || argv.includes(wrong.userKey)) argvSeen.push(argv.replace(/\0/g, ' '));
        } catch {
          // gone
        }
      }
    }, 15);
  }, 150_000);

  afterAll(async () => {
    if (poller) clearInterval(poller);
    await s?.cleanup();
    await c?.stop();
    t.cleanup();
  });

  const keyFilesLeft = () => ['/dev/shm', '/run'].flatMap((d) => (existsSync(d) ? readdirSync(d).filter((n) => n.startsWith('sinter-cephx-')) : []));

  it('no key yet: ListVolumes, GetCapacity, ControllerGetVolume and a CreateVolume without secrets are UNAVAILABLE saying how to give one; Probe is fine', async () => {
    const p = await start();
    const ctl = p.client.controller;
    expect((await p.client.identity.Probe({})).ready?.value ?? true).toBe(true);
    for (const call of [
      ctl.ListVolumes({}),
      ctl.GetCapacity({ parameters: {} }),
      ctl.ControllerGetVolume({ volume_id: 'ceph-6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d' }),
      ctl.CreateVolume({ name: 'pvc-nokey', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [cap], parameters: {} }),
    ]) {
      const e = (await call.then(() => undefined, (x: unknown) => x)) as { code: number; details: string };
      expect(e?.code, e?.details).toBe(14);
      expect(e.details).toMatch(/rbd backend ceph has no cephx key yet: it comes with the provisioner secrets .* of the first CreateVolume\/DeleteVolume .*; or set keyFile/);
    }
  });

  it('a wrong user is INVALID_ARGUMENT naming secrets["userID"]; a wrong key is PERMISSION_DENIED naming the user, never the key, and gives no key', async () => {
    const ctl = s!.client.controller;
    const req = (secrets: Record<string, string>) => ctl.CreateVolume({ name: 'pvc-bad', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [cap], parameters: {}, secrets });
    const user = (await req({ userID: 'someone-else', userKey: c.key }).catch((e: unknown) => e)) as { code: number; details: string };
    expect(user.code).toBe(3);
    expect(user.details).toContain('secrets["userID"]');
    expect(user.details).not.toContain(c.key);
    const t0 = performance.now();
    const bad = (await req(wrong).catch((e: unknown) => e)) as { code: number; details: string };
    console.log(`wrong key refused in ${Math.round(performance.now() - t0)} ms`);
    expect(bad.code, bad.details).toBe(7);
    expect(bad.details).toContain(`client.${c.user}`);
    expect(bad.details).not.toContain(wrong.userKey);
    expect(bad.details).toMatch(/check userKey in the Secret the StorageClass names/);
    expect(await codeOf(ctl.ListVolumes({}))).toBe('UNAVAILABLE');
  });

  it('create, snapshot, publish, expand, unpublish, group snapshot, delete with the key only in the secrets; a wrong key later is refused and the good one still works', async () => {
    const ctl = s!.client.controller;
    const nodeId = (await s!.client.node.NodeGetInfo({})).node_id as string;
    const v = (await ctl.CreateVolume({ name: 'pvc-sec-1', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {}, secrets: good })).volume!;
    // The key that request brought now serves the work that carries none.
    const listed = await ctl.ListVolumes({});
    expect(listed.entries?.map((e) => e.volume?.volume_id)).toEqual([v.volume_id]);
    expect(await codeOf(ctl.GetCapacity({ parameters: {} }))).toBe('OK');

    // A wrong key once a good one is held, on a retry that would touch nothing (the volume exists): refused by Ceph, and the held key stays.
    const t0 = performance.now();
    const bad = (await ctl.CreateVolume({ name: 'pvc-sec-1', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {}, secrets: wrong }).catch((e: unknown) => e)) as { code: number; details: string };
    console.log(`wrong key (a good one held) refused in ${Math.round(performance.now() - t0)} ms`);
    expect(bad.code, bad.details).toBe(7);
    expect(bad.details).not.toContain(wrong.userKey);
    expect(await codeOf(ctl.ListVolumes({}))).toBe('OK');
    expect((await c.rbd(['ls', c.pool])).split('\n').filter(Boolean)).toEqual([v.volume_id]);

    const snap = (await ctl.CreateSnapshot({ name: 'snap-sec-1', source_volume_id: v.volume_id, secrets: good })).snapshot!;
    expect(snap.ready_to_use).toBe(true);
    const pub = await ctl.ControllerPublishVolume({ volume_id: v.volume_id, node_id: nodeId, volume_capability: cap, secrets: good });
    expect(pub.publish_context).toMatchObject({ transport: 'rbd', pool: c.pool, image: v.volume_id });
    expect(JSON.stringify(pub.publish_context)).not.toContain(c.key);
    expect((await ctl.ControllerExpandVolume({ volume_id: v.volume_id, capacity_range: { required_bytes: 32 * MiB }, volume_capability: cap, secrets: good })).capacity_bytes).toBe(32 * MiB);
    await ctl.ControllerUnpublishVolume({ volume_id: v.volume_id, node_id: nodeId, secrets: good });
    const grp = s!.client.groupController;
    const g = (await grp.CreateVolumeGroupSnapshot({ name: 'group-sec-1', source_volume_ids: [v.volume_id ?? ''], secrets: good })).group_snapshot!;
    expect(g.ready_to_use).toBe(true);
    expect(await codeOf(grp.DeleteVolumeGroupSnapshot({ group_snapshot_id: g.group_snapshot_id, snapshot_ids: g.snapshots?.map((x) => x.snapshot_id ?? '') ?? [], secrets: good }))).toBe('OK');
    expect(await codeOf(ctl.DeleteSnapshot({ snapshot_id: snap.snapshot_id, secrets: good }))).toBe('OK');
    expect(await codeOf(ctl.DeleteVolume({ volume_id: v.volume_id, secrets: good }))).toBe('OK');
    expect((await c.rbd(['ls', c.pool])).trim()).toBe('');
  });

  it('a restarted controller is UNAVAILABLE until a request brings the key again, then finds what was made before', async () => {
    const ctl0 = s!.client.controller;
    const kept = (await ctl0.CreateVolume({ name: 'pvc-sec-kept', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [cap], parameters: {}, secrets: good })).volume!;
    await s!.cleanup();
    const p = await start();
    const ctl = p.client.controller;
    expect(await codeOf(ctl.ListVolumes({}))).toBe('UNAVAILABLE');
    expect(await codeOf(ctl.ControllerGetVolume({ volume_id: kept.volume_id }))).toBe('UNAVAILABLE');
    // DeleteVolume of another id would answer OK for a volume it cannot see: it waits for the key too.
    expect(await codeOf(ctl.DeleteVolume({ volume_id: kept.volume_id }))).toBe('UNAVAILABLE');
    // The same name again, with the key: the records are read first, so it is the same volume.
    const again = (await ctl.CreateVolume({ name: 'pvc-sec-kept', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [cap], parameters: {}, secrets: good })).volume!;
    expect(again.volume_id).toBe(kept.volume_id);
    expect((await ctl.ListVolumes({})).entries?.map((e) => e.volume?.volume_id)).toEqual([kept.volume_id]);
    expect(await codeOf(ctl.DeleteVolume({ volume_id: kept.volume_id, secrets: good }))).toBe('OK');
  });

  it('the key was on no command line, in no log line, in no file left behind; the CLI read it from a 0600 file on a tmpfs, removed after each call', async () => {
    expect(argvSeen).toEqual([]);
    const log = readFileSync(join(t.dir, 'exec.log'), 'utf8');
    expect(log).not.toContain(c.key);
    const keyFiles = log.split('\n').filter((l) => l.startsWith('KEYFILE '));
    // The publish's client check (rbd status) and the record scan (rbd ls) go through the CLI.
    expect(keyFiles.length).toBeGreaterThan(0);
    for (const l of keyFiles) {
      const [, path, mode, dirMode, fs] = l.split(' ');
      expect({ mode, dirMode, fs }, l).toEqual({ mode: '600', dirMode: '700', fs: 'tmpfs' });
      expect(existsSync(path), `${path} left behind`).toBe(false);
    }
    expect(keyFilesLeft()).toEqual([]);
    for (const p of procs) expect(p.logs()).not.toContain(c.key);
    expect(procs.map((p) => p.logs()).join('')).toContain('cephx key received with a request');
    const onDisk = await execa('grep', ['-rlF', '--', c.key, t.dir, '/dev/shm'], { reject: false });
    expect(onDisk.stdout).toBe('');
  });
});
