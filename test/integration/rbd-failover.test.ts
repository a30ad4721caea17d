import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cephForFile, rbdSinterConfig, type FileCeph } from '../helpers/ceph-shared.js';
import { tempDir } from '../helpers/scratch-fs.js';
import { codeOf, MAIN, MiB, mountCap, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';

// Controller failover on rbd: two `sinter controller` processes on one pool,
// no local state. One is killed (SIGKILL, its process group) in the middle of
// a CreateVolume, at a step boundary picked by a stand-in `rbd` on its PATH
// that stops before (or after) the record write (`rbd image-meta set`); the
// other answers the CO's retry of the same name: it returns the same volume,
// or cleans up and makes it; `sinter fsck` against the pool finds nothing.
// The killed controllers run with `agent: false` (each step an rbd process the
// stand-in can stop between; the agent writes image and record in one request,
// which leaves a far narrower window but the same half-made image); the
// surviving ones use the agent, as production does.

const cap = mountCap('SINGLE_NODE_WRITER', 'ext4');
const REAL_RBD = '/usr/bin/rbd';

describe('rbd controller failover: kill one controller mid-CreateVolume, the other finishes or rolls back', () => {
  const t = tempDir('sinter-rbd-failover-');
  let c: FileCeph;
  let cfg: string;
  let cliCfg: string;
  const procs: SinterProcess[] = [];

  /** A stand-in rbd that parks the `image-meta set` call (before or after running it) until killed, marking `<dir>/parked`. */
  const shim = (name: string, when: 'before' | 'after') => {
    const dir = join(t.dir, name);
    mkdirSync(dir, { recursive: true });
    const body =
      when === 'before'
        ? `case "$*" in *"image-meta set"*) echo $$ > ${dir}/parked; exec sleep 600;; esac\nexec ${REAL_RBD} "$@"`
        : `case "$*" in *"image-meta set"*) ${REAL_RBD} "$@" || exit $?; echo $$ > ${dir}/parked; exec sleep 600;; esac\nexec ${REAL_RBD} "$@"`;
    writeFileSync(join(dir, 'rbd'), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, 'rbd'), 0o755);
    return dir;
  };

  const controller = async (name: string, pathDir?: string) => {
    const s = await startSinter({
      role: 'controller',
      base: join(t.dir, name),
      args: ['--config', pathDir ? cliCfg : cfg],
      detached: true, // kill() takes the process group: sinter and the rbd it runs, as a container's death would
      wrapper: pathDir ? ['env', `PATH=${pathDir}:${process.env.PATH ?? ''}`] : undefined,
      readyTimeoutMs: 60_000,
    });
    procs.push(s);
    return s;
  };

  const images = async () => (await c.rbd(['ls', c.pool])).split('\n').filter(Boolean);
  const fsck = async () => {
    const r = await execa('node', [MAIN, 'fsck', 'controller', '--config', cfg, '--endpoint', `unix://${join(t.dir, 'none.sock')}`, '--json'], { reject: false });
    return (JSON.parse(r.stdout) as { findings: { kind: string; subject: string }[] }).findings;
  };

  beforeAll(async () => {
    c = await cephForFile('rbd-failover');
    cfg = join(t.dir, 'sinter.yaml');
    cliCfg = join(t.dir, 'sinter-cli.yaml');
    const lines = (agent: boolean) => rbdSinterConfig(c, { controllerStateDir: join(t.dir, 'controller-state'), backend: ['staleCreateSeconds: 5', `agent: ${agent}`] });
    writeFileSync(cfg, lines(true));
    writeFileSync(cliCfg, lines(false));
  }, 150_000);

  afterAll(async () => {
    for (const p of procs) await p.kill().catch(() => undefined);
    for (const p of procs) await p.cleanup().catch(() => undefined);
    await c?.stop();
    t.cleanup();
  });

  it('killed after the image, before its record: the other controller refuses while it could still be in progress, then removes it and creates the volume', async () => {
    const one = await controller('one', shim('shim-before', 'before'));
    const two = await controller('two');
    const req = { name: 'pvc-failover-1', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {} };
    const pending = one.client.controller.CreateVolume(req).catch((e: unknown) => e);
    const parked = join(t.dir, 'shim-before', 'parked');
    await waitFor('controller one to stop before the record write', () => existsSync(parked), 60_000);
    const half = await images();
    expect(half).toHaveLength(1); // the image exists, its record does not
    await one.kill();
    await pending;
    try {
      process.kill(Number(readFileSync(parked, 'utf8')), 'SIGKILL');
    } catch {
      // gone with the process group
    }
    // The retry on the other replica: the image is young, it may be a create in progress.
    expect(await codeOf(two.client.controller.CreateVolume(req))).toBe('ABORTED');
    // Once it is older than staleCreateSeconds, the retry removes it and makes the volume, under the same id.
    await new Promise((r) => setTimeout(r, 5500));
    const vol = (await two.client.controller.CreateVolume(req)).volume!;
    expect(vol.volume_id).toBe(half[0]);
    expect(await images()).toEqual([vol.volume_id]);
    expect(await fsck()).toEqual([]);
    expect(await codeOf(two.client.controller.DeleteVolume({ volume_id: vol.volume_id }))).toBe('OK');
    expect(await images()).toEqual([]);
  }, 180_000);

  it('killed after the record, before the answer: the other controller returns the same volume and can delete it', async () => {
    const one = await controller('three', shim('shim-after', 'after'));
    const two = await controller('four');
    const req = { name: 'pvc-failover-2', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {} };
    const pending = one.client.controller.CreateVolume(req).catch((e: unknown) => e);
    await waitFor('controller three to stop after the record write', () => existsSync(join(t.dir, 'shim-after', 'parked')), 60_000);
    await one.kill();
    await pending;
    const vol = (await two.client.controller.CreateVolume(req)).volume!;
    expect(await images()).toEqual([vol.volume_id]);
    // A request for the same name with another size is refused, as on one controller.
    expect(await codeOf(two.client.controller.CreateVolume({ ...req, capacity_range: { required_bytes: 64 * MiB, limit_bytes: 64 * MiB } }))).toBe('ALREADY_EXISTS');
    expect(await fsck()).toEqual([]);
    // A replica that never saw the volume (started before it was made, never asked for it) deletes it: it reads the record from the pool.
    const blind = procs.find((p) => p.base.endsWith('two'))!;
    expect(await codeOf(blind.client.controller.DeleteVolume({ volume_id: vol.volume_id }))).toBe('OK');
    expect(await images()).toEqual([]);
  }, 180_000);

  it('two live controllers given one name at once make one image, and both answer with its id', async () => {
    const a = procs.find((p) => p.base.endsWith('two'))!;
    const b = procs.find((p) => p.base.endsWith('four'))!;
    const req = { name: 'pvc-race', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {} };
    // As the provisioner does: retry ABORTED until an answer.
    const create = async (s: SinterProcess) => {
      for (;;) {
        try {
          return (await s.client.controller.CreateVolume(req)).volume!.volume_id!;
        } catch (e) {
          if ((e as { code?: number }).code !== 10) throw e;
          await new Promise((r) => setTimeout(r, 300));
        }
      }
    };
    const [x, y] = await Promise.all([create(a), create(b)]);
    expect(x).toBe(y);
    expect(await images()).toEqual([x]);
    expect(await fsck()).toEqual([]);
    expect(await codeOf(b.client.controller.DeleteVolume({ volume_id: x }))).toBe('OK');
    expect(await images()).toEqual([]);
  }, 120_000);

  it('a replica that read a volume before the other published it moves nothing back: its expand and a late unpublish act on the record as the pool has it now', async () => {
    // The sidecars elect their leaders one by one: the attacher's may be in one pod, the resizer's in the other.
    const a = await controller('five');
    const b = await controller('six');
    const [x, y] = ['node-x;;', 'node-y;;'];
    const vol = (await a.client.controller.CreateVolume({ name: 'pvc-stale', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], parameters: {} })).volume!;
    const id = vol.volume_id!;
    // b reads it (an expand to its size changes nothing): b's copy says unpublished.
    await b.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 16 * MiB } });
    expect((await b.client.controller.ControllerGetVolume({ volume_id: id })).status?.published_node_ids ?? []).toEqual([]);
    await a.client.controller.ControllerPublishVolume({ volume_id: id, node_id: x, volume_capability: cap });
    const pooled = async () => (JSON.parse(await c.rbd(['image-meta', 'get', `${c.pool}/${id}`, 'sinter.volume'])) as { attachments: { nodeId: string }[]; sizeBytes: number });
    // Before: b wrote its old copy back, and the publish to x was gone from the pool.
    await b.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 32 * MiB } });
    expect((await pooled()).attachments.map((t) => t.nodeId)).toEqual([x]);
    expect((await pooled()).sizeBytes).toBe(32 * MiB);
    // The volume moves to y through a; then b gets the attacher's retry of the old detach from x.
    await a.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: x });
    await a.client.controller.ControllerPublishVolume({ volume_id: id, node_id: y, volume_capability: cap });
    await b.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: x });
    expect((await pooled()).attachments.map((t) => t.nodeId)).toEqual([y]);
    expect((await b.client.controller.ControllerGetVolume({ volume_id: id })).status?.published_node_ids).toEqual([y]);
    await a.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: y });
    expect(await codeOf(b.client.controller.DeleteVolume({ volume_id: id }))).toBe('OK');
    expect(await images()).toEqual([]);
  }, 120_000);
});
