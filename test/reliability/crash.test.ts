import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { runFsck, type FsckReport } from '../../src/fsck/check.js';
import { describe as describeReport, fsckCli } from '../helpers/fsck.js';
import { Rng, seedFromEnv, SOAK } from '../helpers/rng.js';
import { blockCap, MiB, mountCap, scrub, sinterArgs, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import type { ControllerExpandVolumeResponse__Output } from '../../src/csi/generated/csi/v1/ControllerExpandVolumeResponse.js';
import type { ControllerPublishVolumeResponse__Output } from '../../src/csi/generated/csi/v1/ControllerPublishVolumeResponse.js';
import type { CreateSnapshotResponse__Output } from '../../src/csi/generated/csi/v1/CreateSnapshotResponse.js';
import type { CreateVolumeResponse__Output } from '../../src/csi/generated/csi/v1/CreateVolumeResponse.js';

/**
 * Crash safety (safety rule 3). A seeded random mix of controller and node
 * RPCs runs against `sinter all`; after a batch is sent, sinter (with the
 * host commands it runs) is SIGKILLed at a random moment. Then:
 *  1. `sinter fsck` on the dead system finds only what a restart or the CO's
 *     retry repairs (never something for an operator);
 *  2. after the restart, fsck finds nothing a restart should have repaired,
 *     every volume and snapshot the CO was told exists is listed with its
 *     size, its image is there, every acknowledged delete is gone, publishes
 *     are as acknowledged;
 *  3. the CO settles every RPC whose answer the kill swallowed, by retrying
 *     it (same name, same id) or by the reverse RPC, as Kubernetes does; each
 *     succeeds, and then fsck finds nothing at all and the host (records,
 *     mounts, loop devices) matches the model exactly.
 * Sometimes sinter is killed again during its start-up recovery.
 * CI: 50 kills; `npm run soak`: 1,000. SINTER_SEED=<n> replays a run.
 */

const KILLS = Number(process.env.SINTER_KILLS ?? (SOAK ? 1000 : 50));
const MAX_VOLUMES = 10;
const MAX_SNAPSHOTS = 5;
const LOST = new Set([1, 14]); // CANCELLED, UNAVAILABLE: the answer died with the process

type Access = 'mount' | 'block';
interface Vol {
  name: string;
  id: string;
  size: number;
  access: Access;
  ctrl: boolean;
  ctx?: Record<string, string>;
  staged: boolean;
  published: boolean;
  readonly: boolean;
  /** An expand whose answer was lost: the size is one of these until it is settled. */
  sizes?: number[];
}
interface Snap {
  name: string;
  id: string;
  source: string;
  size: number;
}

interface Op {
  desc: string;
  /** Model keys this op works on; one op per key per batch. */
  keys: string[];
  /** Volume whose node state may be unfinished while this op is in doubt. */
  nodeVolume?: string;
  send(): Promise<unknown>;
  /** The op's answer (each op reads its own response type). */
  ack(res: unknown): void;
  /** After a restart: settle the op whose answer was lost (retry, or the reverse RPC), and apply it. */
  settle(): Promise<void>;
  /** While in doubt before settling: what the pre-settle checks must tolerate. */
  doubt(): void;
}

const capOf = (a: Access) => (a === 'mount' ? mountCap() : blockCap());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('crash safety: SIGKILL at random moments, restart, fsck, converge', () => {
  let s: SinterProcess | undefined;
  const base = mkdtempSync(join(tmpdir(), 'sinter-crash-'));
  afterAll(async () => {
    await s?.kill();
    s?.client.close();
    await scrub(base);
    rmSync(base, { recursive: true, force: true });
  });

  it(`survives ${KILLS} SIGKILLs with nothing lost, nothing leaked, every retry converging`, { timeout: KILLS * 20_000 + 60_000 }, async () => {
    const seed = seedFromEnv();
    const rng = new Rng(seed);
    const history: string[] = [];
    const note = (line: string) => {
      history.push(line);
      if (history.length > 60) history.shift();
    };
    const vols = new Map<string, Vol>();
    const snaps = new Map<string, Snap>();
    const deletedVols = new Set<string>();
    const deletedSnaps = new Set<string>();
    let seq = 0;
    let nodeId = '';
    let kills = 0;
    let startupKills = 0;
    let lostAnswers = 0;
    const seen = new Map<string, number>();
    const lostByKind = new Map<string, number>();
    const timing = { restart: 0, fsck: 0, traffic: 0, settle: 0, check: 0 };
    const timed = async <T>(k: keyof typeof timing, fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      try {
        return await fn();
      } finally {
        timing[k] += performance.now() - t0;
      }
    };
    const dataDir = join(base, 'data');
    const kubelet = join(base, 'kubelet');
    const cfg = loadConfig('all', ['--data-dir', dataDir, '--kubelet-root', kubelet, '--node-name', 'test-node']);
    const c = () => s!.client;
    const staging = (v: Vol) => join(kubelet, 'staging', v.id);
    const target = (v: Vol) => join(kubelet, 'pods', 'p', v.id, v.access === 'mount' ? 'mount' : 'dev');
    const image = (id: string) => join(dataDir, 'volumes', `${id}.img`);

    const start = async () => {
      s = await startSinter({ base, detached: true });
      nodeId = (await c().node.NodeGetInfo({})).node_id!;
    };

    // ---- the operations: each knows its request, its effect on the model, and how the CO settles it after a crash.
    const createOp = (): Op | undefined => {
      if (vols.size >= MAX_VOLUMES) return undefined;
      const name = `crash-${seq++}`;
      const access: Access = rng.chance(0.7) ? 'mount' : 'block';
      let size = rng.int(16, 40) * MiB;
      let source: { snapshot?: { snapshot_id: string }; volume?: { volume_id: string } } | undefined;
      const keys = [`v:${name}`];
      let from = '';
      if (rng.chance(0.3)) {
        const choices = [...[...vols.values()].map((v) => ({ key: `v:${v.name}`, v })), ...[...snaps.values()].map((sn) => ({ key: `s:${sn.name}`, sn }))];
        if (choices.length > 0) {
          const ch = rng.pick(choices);
          keys.push(ch.key);
          if ('v' in ch && ch.v) {
            source = { volume: { volume_id: ch.v.id } };
            size = Math.max(size, ch.v.size);
            from = ` from volume ${ch.v.name}`;
          } else if ('sn' in ch && ch.sn) {
            source = { snapshot: { snapshot_id: ch.sn.id } };
            size = Math.max(size, ch.sn.size);
            from = ` from snapshot ${ch.sn.name}`;
          }
        }
      }
      const req = { name, capacity_range: { required_bytes: size }, volume_capabilities: [capOf(access)], parameters: {}, ...(source ? { volume_content_source: source } : {}) };
      const ack = (res: CreateVolumeResponse__Output) => {
        expect(Number(res.volume!.capacity_bytes), `${name} size`).toBe(size);
        vols.set(name, { name, id: res.volume!.volume_id!, size, access, ctrl: false, staged: false, published: false, readonly: false });
      };
      return {
        desc: `create ${name} ${size / MiB}MiB ${access}${from}`,
        keys,
        send: () => c().controller.CreateVolume(req),
        ack,
        settle: async () => ack(await c().controller.CreateVolume(req)),
        doubt: () => undefined,
      };
    };

    const deleteOp = (v: Vol): Op => {
      const ack = () => {
        vols.delete(v.name);
        deletedVols.add(v.id);
      };
      return {
        desc: `delete ${v.name}`,
        keys: [`v:${v.name}`],
        send: () => c().controller.DeleteVolume({ volume_id: v.id }),
        ack,
        settle: async () => {
          await c().controller.DeleteVolume({ volume_id: v.id });
          ack();
        },
        doubt: () => vols.delete(v.name) && (pendingVols.add(v.id), undefined),
      };
    };

    const snapshotOp = (v: Vol): Op | undefined => {
      if (snaps.size >= MAX_SNAPSHOTS) return undefined;
      const name = `crash-snap-${seq++}`;
      const req = { name, source_volume_id: v.id };
      const ack = (res: CreateSnapshotResponse__Output) => {
        expect(res.snapshot!.ready_to_use).toBe(true);
        snaps.set(name, { name, id: res.snapshot!.snapshot_id!, source: v.id, size: Number(res.snapshot!.size_bytes) });
      };
      return {
        desc: `snapshot ${name} of ${v.name}`,
        keys: [`v:${v.name}`, `s:${name}`],
        send: () => c().controller.CreateSnapshot(req),
        ack,
        settle: async () => ack(await c().controller.CreateSnapshot(req)),
        doubt: () => undefined,
      };
    };

    const deleteSnapshotOp = (sn: Snap): Op => {
      const ack = () => {
        snaps.delete(sn.name);
        deletedSnaps.add(sn.id);
      };
      return {
        desc: `delete snapshot ${sn.name}`,
        keys: [`s:${sn.name}`],
        send: () => c().controller.DeleteSnapshot({ snapshot_id: sn.id }),
        ack,
        settle: async () => {
          await c().controller.DeleteSnapshot({ snapshot_id: sn.id });
          ack();
        },
        doubt: () => snaps.delete(sn.name) && (pendingSnaps.add(sn.id), undefined),
      };
    };

    const expandOp = (v: Vol): Op => {
      const size = v.size + rng.int(1, 16) * MiB;
      const req = { volume_id: v.id, capacity_range: { required_bytes: size }, volume_capability: capOf(v.access) };
      const ack = (res: ControllerExpandVolumeResponse__Output) => {
        expect(Number(res.capacity_bytes)).toBe(size);
        v.size = size;
        delete v.sizes;
      };
      return {
        desc: `expand ${v.name} ${v.size / MiB}→${size / MiB}MiB`,
        keys: [`v:${v.name}`],
        send: () => c().controller.ControllerExpandVolume(req),
        ack,
        settle: async () => ack(await c().controller.ControllerExpandVolume(req)),
        doubt: () => void (v.sizes = [v.size, size]),
      };
    };

    const ctrlPublishOp = (v: Vol): Op => {
      const req = () => ({ volume_id: v.id, node_id: nodeId, volume_capability: capOf(v.access) });
      const ack = (res: ControllerPublishVolumeResponse__Output) => {
        v.ctrl = true;
        v.ctx = res.publish_context;
      };
      const unpublish = async () => {
        await c().controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId });
        v.ctrl = false;
        delete v.ctx;
      };
      return {
        desc: `ControllerPublish ${v.name}`,
        keys: [`v:${v.name}`],
        send: () => c().controller.ControllerPublishVolume(req()),
        ack,
        settle: async () => (rng.chance(0.5) ? ack(await c().controller.ControllerPublishVolume(req())) : unpublish()),
        doubt: () => void pendingCtrl.add(v.id),
      };
    };

    const ctrlUnpublishOp = (v: Vol): Op => {
      const ack = () => {
        v.ctrl = false;
        delete v.ctx;
      };
      return {
        desc: `ControllerUnpublish ${v.name}`,
        keys: [`v:${v.name}`],
        send: () => c().controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId }),
        ack,
        settle: async () => {
          await c().controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId });
          ack();
        },
        doubt: () => void pendingCtrl.add(v.id),
      };
    };

    const stageReq = (v: Vol) => ({ volume_id: v.id, staging_target_path: staging(v), volume_capability: capOf(v.access), publish_context: v.ctx, volume_context: {} });
    const unstage = async (v: Vol) => {
      await c().node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: staging(v) });
      v.staged = false;
    };
    const stageOp = (v: Vol): Op => ({
      desc: `NodeStage ${v.name}`,
      keys: [`v:${v.name}`],
      nodeVolume: v.id,
      send: () => c().node.NodeStageVolume(stageReq(v)),
      ack: () => void (v.staged = true),
      settle: async () => {
        if (rng.chance(0.5)) {
          await c().node.NodeStageVolume(stageReq(v));
          v.staged = true;
        } else await unstage(v);
      },
      doubt: () => undefined,
    });
    const unstageOp = (v: Vol): Op => ({
      desc: `NodeUnstage ${v.name}`,
      keys: [`v:${v.name}`],
      nodeVolume: v.id,
      send: () => c().node.NodeUnstageVolume({ volume_id: v.id, staging_target_path: staging(v) }),
      ack: () => void (v.staged = false),
      settle: () => unstage(v),
      doubt: () => undefined,
    });

    const publishReq = (v: Vol, ro: boolean) => ({
      volume_id: v.id,
      staging_target_path: staging(v),
      target_path: target(v),
      volume_capability: capOf(v.access),
      publish_context: v.ctx,
      readonly: ro,
    });
    const unpublish = async (v: Vol) => {
      await c().node.NodeUnpublishVolume({ volume_id: v.id, target_path: target(v) });
      v.published = false;
      v.readonly = false;
    };
    const nodePublishOp = (v: Vol): Op => {
      const ro = rng.chance(0.25);
      const ack = () => {
        v.published = true;
        v.readonly = ro;
      };
      return {
        desc: `NodePublish ${v.name}${ro ? ' read-only' : ''}`,
        keys: [`v:${v.name}`],
        nodeVolume: v.id,
        send: () => c().node.NodePublishVolume(publishReq(v, ro)),
        ack,
        settle: async () => {
          if (rng.chance(0.5)) {
            await c().node.NodePublishVolume(publishReq(v, ro));
            ack();
          } else await unpublish(v);
        },
        doubt: () => undefined,
      };
    };
    const nodeUnpublishOp = (v: Vol): Op => ({
      desc: `NodeUnpublish ${v.name}`,
      keys: [`v:${v.name}`],
      nodeVolume: v.id,
      send: () => c().node.NodeUnpublishVolume({ volume_id: v.id, target_path: target(v) }),
      ack: () => void ((v.published = false), (v.readonly = false)),
      settle: () => unpublish(v),
      doubt: () => undefined,
    });

    // In-doubt bookkeeping for the checks between the restart and the settling.
    const pendingVols = new Set<string>();
    const pendingSnaps = new Set<string>();
    const pendingCtrl = new Set<string>();
    let pendingCreates = 0;

    const chooseOp = (busy: Set<string>): Op | undefined => {
      const free = [...vols.values()].filter((v) => !busy.has(`v:${v.name}`));
      const freeSnaps = [...snaps.values()].filter((sn) => !busy.has(`s:${sn.name}`));
      const table: [number, () => Op | undefined][] = [
        [vols.size < 4 ? 6 : 3, createOp],
        [vols.size > 7 ? 4 : 1.5, () => {
          const vs = free.filter((v) => !v.ctrl && !v.staged && !v.published);
          return vs.length ? deleteOp(rng.pick(vs)) : undefined;
        }],
        [1, () => (free.length ? snapshotOp(rng.pick(free)) : undefined)],
        [snaps.size > 3 ? 2 : 0.7, () => (freeSnaps.length ? deleteSnapshotOp(rng.pick(freeSnaps)) : undefined)],
        [1, () => (free.length ? expandOp(rng.pick(free)) : undefined)],
        [2, () => pickWhere(free, (v) => !v.ctrl, ctrlPublishOp)],
        [1, () => pickWhere(free, (v) => v.ctrl && !v.staged, ctrlUnpublishOp)],
        [2.5, () => pickWhere(free, (v) => v.ctrl && !v.staged, stageOp)],
        [1.2, () => pickWhere(free, (v) => v.staged && !v.published, unstageOp)],
        [2, () => pickWhere(free, (v) => v.staged && !v.published, nodePublishOp)],
        [1.2, () => pickWhere(free, (v) => v.published, nodeUnpublishOp)],
      ];
      for (let attempt = 0; attempt < 8; attempt++) {
        const total = table.reduce((a, [w]) => a + w, 0);
        let x = rng.next() * total;
        for (const [w, make] of table) {
          x -= w;
          if (x <= 0) {
            const op = make();
            if (op && !op.keys.some((k) => busy.has(k))) return op;
            break;
          }
        }
      }
      return undefined;
    };
    const pickWhere = (vs: Vol[], ok: (v: Vol) => boolean, make: (v: Vol) => Op) => {
      const m = vs.filter(ok);
      return m.length ? make(rng.pick(m)) : undefined;
    };
    const batch = (n: number): Op[] => {
      const busy = new Set<string>();
      const ops: Op[] = [];
      for (let i = 0; i < n; i++) {
        const op = chooseOp(busy);
        if (!op) continue;
        for (const k of op.keys) busy.add(k);
        ops.push(op);
      }
      return ops;
    };

    /** Sends ops at once; returns each one's outcome. */
    const send = (ops: Op[]) =>
      ops.map((op) => op.send().then(
        (res) => ({ op, ok: true as const, res }),
        (e: Error & { code?: number; details?: string }) => ({ op, ok: false as const, code: e.code ?? -1, msg: e.details ?? e.message ?? String(e) }),
      ));

    // ---- checks
    const listAll = async () => {
      const r = await c().controller.ListVolumes({});
      return new Map<string, { size: number; nodes: string[] }>(
        r.entries.map((e) => [e.volume!.volume_id!, { size: Number(e.volume!.capacity_bytes), nodes: e.status?.published_node_ids ?? [] }]),
      );
    };
    const listSnaps = async () => {
      const r = await c().controller.ListSnapshots({});
      return new Map<string, number>(r.entries.map((e) => [e.snapshot!.snapshot_id!, Number(e.snapshot!.size_bytes)]));
    };
    const fsckInProcess = () => runFsck(cfg, { scope: 'all' });
    const onlyRemedies = (r: FsckReport, allowed: string[], nodeDoubt: Set<string>, when: string) => {
      for (const f of r.findings) {
        expect(allowed, `${when}: fsck finding out of bounds:\n${describeReport(r)}`).toContain(f.remedy);
        if (f.remedy === 'retry') {
          const id = f.subject.replace(/^volume /, '');
          expect(nodeDoubt.has(id), `${when}: a 'retry' finding for a volume with no RPC in doubt:\n${describeReport(r)}`).toBe(true);
        }
      }
    };

    /** Between restart and settling: what the CO was told holds, give or take the RPCs in doubt. */
    const checkAcknowledged = async () => {
      const listed = await listAll();
      for (const v of vols.values()) {
        const l = listed.get(v.id);
        expect(l, `volume ${v.name} (${v.id}) the CO was told exists is not listed`).toBeDefined();
        const sizes = v.sizes ?? [v.size];
        expect(sizes, `volume ${v.name} size`).toContain(l!.size);
        expect(existsSync(image(v.id)), `image of ${v.name}`).toBe(true);
        expect(statSync(image(v.id)).size).toBeGreaterThanOrEqual(l!.size);
        if (!pendingCtrl.has(v.id)) expect(l!.nodes, `publishes of ${v.name}`).toEqual(v.ctrl ? [nodeId] : []);
      }
      for (const id of deletedVols) {
        expect(listed.has(id), `deleted volume ${id} is listed again`).toBe(false);
        expect(existsSync(image(id)), `image of deleted volume ${id}`).toBe(false);
      }
      const known = new Set([...vols.values()].map((v) => v.id));
      const extra = [...listed.keys()].filter((id) => !known.has(id) && !pendingVols.has(id));
      expect(extra.length, `volumes nobody was told of: ${extra.join(', ')}`).toBeLessThanOrEqual(pendingCreates);
      const ls = await listSnaps();
      for (const sn of snaps.values()) expect(ls.get(sn.id), `snapshot ${sn.name}`).toBe(sn.size);
      for (const id of deletedSnaps) expect(ls.has(id), `deleted snapshot ${id} is listed again`).toBe(false);
    };

    /** After settling: the host and the records are exactly the model. */
    const checkExact = async () => {
      const r = await fsckInProcess();
      expect(r.findings, `fsck after the CO settled everything:\n${describeReport(r)}`).toEqual([]);
      const listed = await listAll();
      expect([...listed.keys()].sort(), 'listed volumes = the model').toEqual([...vols.values()].map((v) => v.id).sort());
      for (const v of vols.values()) {
        expect(listed.get(v.id)!.size, `size of ${v.name}`).toBe(v.size);
        expect(listed.get(v.id)!.nodes, `publishes of ${v.name}`).toEqual(v.ctrl ? [nodeId] : []);
      }
      const ls = await listSnaps();
      expect([...ls.keys()].sort(), 'listed snapshots = the model').toEqual([...snaps.values()].map((sn) => sn.id).sort());
      const recs = readdirSync(join(dataDir, 'node-state', 'volumes')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));
      expect(recs.sort(), 'stage records = staged volumes').toEqual([...vols.values()].filter((v) => v.staged).map((v) => v.id).sort());
      const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${base}/`));
      const want: string[] = [];
      for (const v of vols.values()) {
        if (v.staged) want.push(v.access === 'mount' ? staging(v) : join(staging(v), v.id));
        if (v.published) want.push(target(v));
      }
      expect(mounts.sort(), 'mounts = the model').toEqual(want.sort());
      const loops = (JSON.parse((await execa('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])).stdout || '{"loopdevices":[]}') as { loopdevices: { name: string; 'back-file': string }[] }).loopdevices;
      const ours = loops.filter((l) => (l['back-file'] ?? '').startsWith(`${base}/`));
      const oursNames = new Set(ours.map((l) => l.name));
      const views = loops.filter((l) => oursNames.has((l['back-file'] ?? '').replace(/ \(deleted\)$/, '')));
      expect(ours.map((l) => l['back-file']).sort(), 'loop devices = staged volumes').toEqual([...vols.values()].filter((v) => v.staged).map((v) => image(v.id)).sort());
      expect(views.length, 'read-only views = read-only block publishes').toBe([...vols.values()].filter((v) => v.published && v.readonly && v.access === 'block').length);
    };

    const runBatch = async (ops: Op[]) => {
      for (const o of await Promise.all(send(ops))) {
        note(`  ${o.op.desc}: ${o.ok ? 'OK' : `code ${o.code} ${o.msg}`}`);
        if (!o.ok) throw new Error(`${o.op.desc} failed with code ${o.code}: ${o.msg}`);
        o.op.ack(o.res);
      }
    };

    try {
      await start();
      for (let i = 0; i < KILLS; i++) {
        note(`round ${i}`);
        // A little normal traffic first, so the state grows.
        for (let b = rng.int(0, 2); b > 0; b--) await timed('traffic', () => runBatch(batch(rng.int(1, 4))));

        // The batch the kill interrupts.
        const ops = batch(rng.int(1, 5));
        const delay = rng.pick([0, 2, 5, 10, 20, 40, 80, 150, 300]) * rng.next();
        note(`killed batch (kill after ${delay.toFixed(1)} ms): ${ops.map((o) => o.desc).join('; ')}`);
        const outcomes = send(ops);
        await sleep(delay);
        await s!.kill();
        s!.client.close();
        kills++;
        const inDoubt: Op[] = [];
        for (const o of await Promise.all(outcomes)) {
          note(`  ${o.op.desc}: ${o.ok ? 'OK' : `code ${o.code}`}`);
          if (o.ok) o.op.ack(o.res);
          else if (LOST.has(o.code)) inDoubt.push(o.op);
          else throw new Error(`${o.op.desc} failed with code ${o.code}: ${o.msg}`);
        }
        lostAnswers += inDoubt.length;
        for (const op of inDoubt) lostByKind.set(op.desc.split(' ')[0], (lostByKind.get(op.desc.split(' ')[0]) ?? 0) + 1);
        pendingVols.clear();
        pendingSnaps.clear();
        pendingCtrl.clear();
        pendingCreates = inDoubt.filter((op) => op.desc.startsWith('create ')).length;
        for (const op of inDoubt) op.doubt();
        const nodeDoubt = new Set(inDoubt.map((op) => op.nodeVolume).filter((x): x is string => !!x));

        // 1. On the dead system: only what a restart or the CO's retry repairs.
        const dead = await timed('fsck', async () => (i % 5 === 0 ? (await fsckCli({ dataDir, kubeletRoot: kubelet, socket: join(base, 'csi.sock') })).report : await fsckInProcess()));
        onlyRemedies(dead, ['restart', 'retry'], nodeDoubt, 'fsck on the killed system');
        for (const f of dead.findings) seen.set(f.kind, (seen.get(f.kind) ?? 0) + 1);

        // Sometimes the start-up recovery itself is killed.
        if (rng.chance(0.12)) {
          const p = execa('node', sinterArgs(base, { logLevel: 'warn' }), { reject: false, detached: true, stdout: 'ignore', stderr: 'ignore' });
          await sleep(rng.int(0, 700));
          try {
            process.kill(-p.pid!, 'SIGKILL');
          } catch {
            /* exited */
          }
          await p;
          startupKills++;
          note('  killed during start-up');
          onlyRemedies(await fsckInProcess(), ['restart', 'retry'], nodeDoubt, 'fsck after a start-up was killed');
        }

        // 2. Restarted: nothing left a restart repairs; what the CO was told holds.
        await timed('restart', start);
        onlyRemedies(await fsckInProcess(), ['retry'], nodeDoubt, 'fsck after the restart');
        await timed('check', checkAcknowledged);

        // 3. The CO settles what it never heard back about; then everything is exact.
        for (const op of rng.shuffle(inDoubt)) {
          note(`  settle ${op.desc}`);
          await timed('settle', () => op.settle());
        }
        pendingVols.clear();
        pendingSnaps.clear();
        pendingCtrl.clear();
        pendingCreates = 0;
        // A retried RPC of an acknowledged create converges on the same volume.
        if (vols.size > 0 && rng.chance(0.3)) {
          const v = rng.pick([...vols.values()]);
          const again = await c().controller.CreateVolume({ name: v.name, capacity_range: { required_bytes: v.size }, volume_capabilities: [capOf(v.access)], parameters: {} }).catch((e: Error) => e);
          // A clone's retry must name its source; without one the answer is ALREADY_EXISTS, which converges too.
          if (!(again instanceof Error)) expect(again.volume!.volume_id).toBe(v.id);
          else expect((again as { code?: number }).code).toBe(6);
        }
        await timed('check', checkExact);
      }

      // Tear everything down the way a CO would; nothing may be left.
      for (const v of vols.values()) {
        if (v.published) await unpublish(v);
        if (v.staged) await unstage(v);
        if (v.ctrl) await c().controller.ControllerUnpublishVolume({ volume_id: v.id, node_id: nodeId });
        await c().controller.DeleteVolume({ volume_id: v.id });
      }
      for (const sn of snaps.values()) await c().controller.DeleteSnapshot({ snapshot_id: sn.id });
      vols.clear();
      snaps.clear();
      await checkExact();
      expect(readdirSync(join(dataDir, 'volumes'))).toEqual([]);
      expect(readdirSync(join(dataDir, 'snapshots'))).toEqual([]);
      console.log(`crash test: seed ${seed}: ${kills} SIGKILLs (+${startupKills} during start-up recovery), ${lostAnswers} answers lost and settled by the CO ${JSON.stringify(Object.fromEntries(lostByKind))}; fsck on the killed system found ${JSON.stringify(Object.fromEntries(seen))}; ms ${JSON.stringify(Object.fromEntries(Object.entries(timing).map(([k, v]) => [k, Math.round(v)])))}`);
      expect(kills).toBe(KILLS);
    } catch (e) {
      const err = e as Error;
      err.message = `crash test failed with SINTER_SEED=${seed} after ${kills} kills: ${err.message}\n--- recent history ---\n${history.join('\n')}\n--- sinter log tail ---\n${s?.logs().slice(-3000) ?? ''}`;
      throw err;
    }
  });
});
