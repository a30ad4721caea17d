import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { runFsck } from '../../src/fsck/check.js';
import { describe as describeReport } from '../helpers/fsck.js';
import { Rng, seedFromEnv, SOAK } from '../helpers/rng.js';
import { asSidecar, blockCap, codeOf, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';

/**
 * Concurrency (Cinder's coordination.synchronized): many RPCs at once on one
 * name or one volume must serialize into a state some one-at-a-time order
 * could have produced, and every refusal must be a precise code.
 */

const seed = seedFromEnv();
const ROUNDS = SOAK ? 200 : 25;
const REFUSALS = ['OK', 'FAILED_PRECONDITION', 'ALREADY_EXISTS', 'ABORTED'];

describe(`concurrency (SINTER_SEED=${seed})`, () => {
  let s: SinterProcess;
  let nodeId: string;
  const rng = new Rng(seed);
  const ctl = () => s.client.controller;
  const node = () => s.client.node;
  const fsck = () =>
    runFsck(loadConfig('all', ['--data-dir', s.dataDir, '--kubelet-root', s.kubeletRoot, '--node-name', 'test-node']), { scope: 'all' });
  const records = () =>
    readdirSync(join(s.dataDir, 'volumes'))
      .filter((f) => f.endsWith('.json'))
      .flatMap((f) => {
        try {
          return [JSON.parse(readFileSync(join(s.dataDir, 'volumes', f), 'utf8')) as { id: string; name: string; sizeBytes: number; state: string; attachments: { nodeId: string }[] }];
        } catch {
          return []; // removed by a delete in flight since readdir
        }
      });
  const mountsUnder = (dir: string) =>
    readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${dir}/`));
  const loopsUnder = async (dir: string) =>
    (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout.split('\n').filter((l) => l.includes(`${dir}/`));

  beforeAll(async () => {
    s = await startSinter();
    nodeId = (await node().NodeGetInfo({})).node_id!;
  });
  afterAll(async () => s?.cleanup());

  it('100 concurrent CreateVolume calls with one name make exactly one volume; incompatible ones get ALREADY_EXISTS', async () => {
    const req = { name: 'same-name', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [mountCap()] };
    const replies = await Promise.all(Array.from({ length: 100 }, () => asSidecar(() => ctl().CreateVolume(req))));
    const ids = new Set(replies.map((r) => r.volume!.volume_id));
    expect(ids.size).toBe(1);
    expect(records().filter((r) => r.name === 'same-name')).toHaveLength(1);

    // A mix of two incompatible requests for one new name: one wins, the other kind is refused.
    const a = { name: 'contested', capacity_range: { required_bytes: 16 * MiB, limit_bytes: 16 * MiB }, volume_capabilities: [mountCap()] };
    const b = { ...a, capacity_range: { required_bytes: 32 * MiB, limit_bytes: 32 * MiB } };
    const reqs = rng.shuffle(Array.from({ length: 100 }, (_, i) => (i % 2 ? a : b)));
    const out = await Promise.all(reqs.map((r) => asSidecar(() => ctl().CreateVolume(r)).then((x) => ({ ok: x.volume, r }), (e: { code: number }) => ({ code: e.code, r }))));
    const won = out.filter((o) => 'ok' in o);
    expect(new Set(won.map((o) => (o as { ok: { volume_id: string } }).ok.volume_id)).size).toBe(1);
    const winner = won[0].r;
    for (const o of out) {
      if (o.r === winner) expect('ok' in o).toBe(true);
      else expect((o as { code: number }).code).toBe(6); // ALREADY_EXISTS
    }
    expect(records().filter((r) => r.name === 'contested')).toHaveLength(1);

    // And 100 concurrent CreateSnapshot with one name: one snapshot.
    const vol = [...ids][0]!;
    const snaps = await Promise.all(Array.from({ length: 100 }, () => asSidecar(() => ctl().CreateSnapshot({ name: 'same-snap', source_volume_id: vol }))));
    expect(new Set(snaps.map((x) => x.snapshot!.snapshot_id)).size).toBe(1);
    expect(readdirSync(join(s.dataDir, 'snapshots')).filter((f) => f.endsWith('.json'))).toHaveLength(1);

    // 50 concurrent deletes of one volume all succeed, and it is gone.
    const del = await Promise.all(Array.from({ length: 50 }, () => codeOf(asSidecar(() => ctl().DeleteSnapshot({ snapshot_id: snaps[0].snapshot!.snapshot_id })))));
    expect(new Set(del)).toEqual(new Set(['OK']));
    expect(readdirSync(join(s.dataDir, 'snapshots'))).toEqual([]);
    const delv = await Promise.all(Array.from({ length: 50 }, () => codeOf(asSidecar(() => ctl().DeleteVolume({ volume_id: vol })))));
    expect(new Set(delv)).toEqual(new Set(['OK']));
    expect(records().some((r) => r.id === vol)).toBe(false);
    expect((await fsck()).findings).toEqual([]);
  });

  it('deletes racing publishes never delete a published volume', { timeout: 300_000 }, async () => {
    const n = SOAK ? 200 : 40;
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push((await ctl().CreateVolume({ name: `race-${i}`, capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!);
    let published = 0;
    let deleted = 0;
    await Promise.all(
      ids.map(async (id) => {
        const d = rng.int(0, 3);
        const pub = (async () => {
          await new Promise((r) => setTimeout(r, rng.int(0, 3) - d + 3));
          return codeOf(asSidecar(() => ctl().ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: blockCap() })));
        })();
        const del = (async () => {
          await new Promise((r) => setTimeout(r, d));
          return codeOf(asSidecar(() => ctl().DeleteVolume({ volume_id: id })));
        })();
        const [p, x] = await Promise.all([pub, del]);
        const rec = records().find((r) => r.id === id);
        if (p === 'OK') {
          // Published: the delete was refused, and the volume is there with its image.
          expect(x).toBe('FAILED_PRECONDITION');
          expect(rec?.attachments.map((a) => a.nodeId)).toEqual([nodeId]);
          expect(existsSync(join(s.dataDir, 'volumes', `${id}.img`))).toBe(true);
          published++;
        } else {
          expect(x).toBe('OK');
          expect(p).toBe('NOT_FOUND');
          expect(rec).toBeUndefined();
          deleted++;
        }
      }),
    );
    expect(published + deleted).toBe(n);
    // Tidy up: unpublish and delete what stayed.
    for (const id of ids) {
      await ctl().ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
      await ctl().DeleteVolume({ volume_id: id });
    }
    expect((await fsck()).findings).toEqual([]);
    console.log(`delete/publish races: ${published} publishes won, ${deleted} deletes won`);
  });

  it('a clone racing an expand of its source gets a record that matches its image', { timeout: 300_000 }, async () => {
    for (let i = 0; i < (SOAK ? 50 : 10); i++) {
      const src = (await ctl().CreateVolume({ name: `grow-src-${i}`, capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id;
      const [clone, grown] = await Promise.all([
        ctl().CreateVolume({ name: `grow-clone-${i}`, volume_capabilities: [blockCap()], volume_content_source: { volume: { volume_id: src } } }).then(
          (r) => r.volume,
          (e: { code: number }) => e.code,
        ),
        ctl().ControllerExpandVolume({ volume_id: src, capacity_range: { required_bytes: 64 * MiB } }),
      ]);
      expect(Number(grown.capacity_bytes)).toBe(64 * MiB);
      const report = await fsck();
      expect(report.findings, describeReport(report)).toEqual([]);
      if (typeof clone === 'number') expect(clone).toBe(10); // ABORTED: the CO retries
      else expect([16 * MiB, 64 * MiB]).toContain(Number(clone!.capacity_bytes));
      for (const r of records().filter((x) => x.name.startsWith('grow-'))) await ctl().DeleteVolume({ volume_id: r.id });
    }
  });

  it(`storms of publish/unpublish/stage/unstage on one volume leave a consistent state, and the CO's ordinary sequence then converges (${ROUNDS} rounds)`, { timeout: ROUNDS * 4_000 + 60_000 }, async () => {
    for (const access of ['mount', 'block'] as const) {
      const cap = access === 'mount' ? mountCap() : blockCap();
      const vol = (await ctl().CreateVolume({ name: `storm-${access}`, capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [cap] })).volume!.volume_id as string;
      const ctx = (await ctl().ControllerPublishVolume({ volume_id: vol, node_id: nodeId, volume_capability: cap })).publish_context;
      const staging = join(s.kubeletRoot, 'storm', vol, 'staging');
      const targets = [1, 2, 3].map((i) => join(s.kubeletRoot, 'storm', vol, `pod${i}`, access === 'mount' ? 'mount' : 'dev'));
      const rpcs: Record<string, () => Promise<unknown>> = {
        ctrlPublish: () => ctl().ControllerPublishVolume({ volume_id: vol, node_id: nodeId, volume_capability: cap }),
        ctrlUnpublish: () => ctl().ControllerUnpublishVolume({ volume_id: vol, node_id: nodeId }),
        stage: () => node().NodeStageVolume({ volume_id: vol, staging_target_path: staging, volume_capability: cap, publish_context: ctx }),
        unstage: () => node().NodeUnstageVolume({ volume_id: vol, staging_target_path: staging }),
        ...Object.fromEntries(
          targets.flatMap((t, i) => [
            [`publish${i}`, () => node().NodePublishVolume({ volume_id: vol, staging_target_path: staging, target_path: t, volume_capability: cap, publish_context: ctx })],
            [`unpublish${i}`, () => node().NodeUnpublishVolume({ volume_id: vol, target_path: t })],
          ]),
        ),
      };
      const names = Object.keys(rpcs);
      const codes = new Map<string, number>();
      for (let round = 0; round < ROUNDS; round++) {
        const calls = Array.from({ length: rng.int(4, 14) }, () => rng.pick(names));
        const results = await Promise.all(
          calls.map(async (n) => {
            await new Promise((r) => setTimeout(r, rng.int(0, 15)));
            const e = await rpcs[n]().then(() => undefined, (x: Error & { details?: string }) => x);
            return [n, await codeOf(e ? Promise.reject(e) : Promise.resolve()), e?.details ?? ''] as const;
          }),
        );
        for (const [n, code, msg] of results) {
          codes.set(code, (codes.get(code) ?? 0) + 1);
          expect(REFUSALS, `${n} in round ${round}: ${msg}`).toContain(code);
        }
        // The node's record, its mounts and its loop device agree; fsck sees nothing out of step.
        const report = await fsck();
        const recFile = join(s.dataDir, 'node-state', 'volumes', `${vol}.json`);
        expect(
          report.findings,
          `round ${round}: ${results.map((r) => r.join(' ')).join('; ')}\n${describeReport(report)}\nrecord: ${existsSync(recFile) ? readFileSync(recFile, 'utf8') : 'none'}`,
        ).toEqual([]);
        const rec = existsSync(recFile) ? (JSON.parse(readFileSync(recFile, 'utf8')) as { phase: string; publishes: { targetPath: string }[] }) : undefined;
        const mounts = mountsUnder(join(s.kubeletRoot, 'storm', vol));
        const stagedAt = access === 'mount' ? staging : join(staging, vol);
        expect(rec === undefined || rec.phase === 'staged', `round ${round}: phase ${rec?.phase}`).toBe(true);
        expect(mounts.includes(stagedAt)).toBe(rec !== undefined);
        expect(mounts.filter((m) => m !== stagedAt).sort()).toEqual((rec?.publishes ?? []).map((p) => p.targetPath).sort());
        expect((await loopsUnder(s.base)).length).toBe(rec ? 1 : 0);
        // The controller's record on disk is what it reports.
        const ctlRec = records().find((r) => r.id === vol)!;
        const reported = (await ctl().ControllerGetVolume({ volume_id: vol })).status!.published_node_ids ?? [];
        expect(ctlRec.attachments.map((a) => a.nodeId)).toEqual(reported);
        expect(ctlRec.state).toBe(reported.length ? 'in-use' : 'available');
      }
      // The CO settles on a final state by its ordinary sequence; then controller and node agree exactly.
      const final = rng.pick(['detached', 'attached', 'staged', 'published'] as const);
      for (const t of targets) await node().NodeUnpublishVolume({ volume_id: vol, target_path: t });
      await node().NodeUnstageVolume({ volume_id: vol, staging_target_path: staging });
      await ctl().ControllerUnpublishVolume({ volume_id: vol, node_id: nodeId });
      if (final !== 'detached') await ctl().ControllerPublishVolume({ volume_id: vol, node_id: nodeId, volume_capability: cap });
      if (final === 'staged' || final === 'published') await node().NodeStageVolume({ volume_id: vol, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
      if (final === 'published') await rpcs.publish0();
      const published = (await ctl().ControllerGetVolume({ volume_id: vol })).status!.published_node_ids ?? [];
      expect(published).toEqual(final === 'detached' ? [] : [nodeId]);
      const want = final === 'staged' ? 1 : final === 'published' ? 2 : 0;
      expect(mountsUnder(join(s.kubeletRoot, 'storm', vol))).toHaveLength(want);
      expect((await fsck()).findings).toEqual([]);
      // Tear down.
      await node().NodeUnpublishVolume({ volume_id: vol, target_path: targets[0] });
      await node().NodeUnstageVolume({ volume_id: vol, staging_target_path: staging });
      await ctl().ControllerUnpublishVolume({ volume_id: vol, node_id: nodeId });
      await ctl().DeleteVolume({ volume_id: vol });
      expect(mountsUnder(s.base)).toEqual([]);
      expect(await loopsUnder(s.base)).toEqual([]);
      console.log(`storm (${access}): ${JSON.stringify(Object.fromEntries(codes))}`);
    }
  });
});
