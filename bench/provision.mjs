// 2. Provisioning: CreateVolume + DeleteVolume of 1 GiB file-backend volumes
// through `sinter controller`, against the same files written directly by
// this process with the same durable steps (see FLOOR below).
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { freshDir, GiB, median, mountCap, openDir, p99, pool, removeFileDurable, sparseImage, startFloorServer, startSinter, writeFileAtomic } from './lib.mjs';

export const FLOOR = [
  'create: record {state: creating} (temp file, write, fsync, rename, dir fsync);',
  'image: open O_CREAT|O_EXCL, ftruncate to 1 GiB (sparse), fsync;',
  'record {state: available} (temp, write, fsync, rename, dir fsync) — 5 fsyncs;',
  'delete: record {state: deleting} (temp, fsync, rename, dir fsync); unlink image + dir fsync; unlink record + dir fsync — 4 fsyncs;',
  'the directory is opened once and kept for its fsyncs; fs.promises, in this process (same libuv thread pool size as sinter).',
  'These are the steps sinter\'s crash rules need (a create is recorded before its image exists, a delete before the image goes);',
  'the floor leaves out only gRPC, validation, scheduling (statfs), locks and logging.',
].join(' ');

function floorOps(dir, dh) {
  const rec = (id, name, state) => {
    const t = new Date().toISOString();
    return `${JSON.stringify({
      id,
      name,
      backend: 'default',
      sizeBytes: GiB,
      state,
      parameters: {},
      capabilities: [{ accessType: 'mount', accessMode: 'SINGLE_NODE_WRITER', fsType: 'ext4' }],
      attachments: [],
      createdAt: t,
      updatedAt: t,
    })}\n`;
  };
  return {
    async create(name) {
      const id = `default-${randomUUID()}`;
      const json = join(dir, `${id}.json`);
      await writeFileAtomic(json, rec(id, name, 'creating'), dh);
      await sparseImage(join(dir, `${id}.img`), GiB);
      await writeFileAtomic(json, rec(id, name, 'available'), dh);
      return id;
    },
    async delete(id) {
      const json = join(dir, `${id}.json`);
      await writeFileAtomic(json, rec(id, id, 'deleting'), dh);
      await removeFileDurable(join(dir, `${id}.img`), dh);
      await removeFileDurable(json, dh);
    },
  };
}

function driverOps(client) {
  return {
    async create(name) {
      const r = await client.controller.CreateVolume({ name, capacity_range: { required_bytes: GiB }, volume_capabilities: [mountCap('ext4')] });
      return r.volume.volume_id;
    },
    async delete(id) {
      await client.controller.DeleteVolume({ volume_id: id });
    },
  };
}

/**
 * The floor with the CSI transport: each create and delete is also one round
 * trip of the same request to the bare grpc-js floor server (canned answer),
 * at the same concurrency, so the gRPC work any plugin pays (this process's
 * client side included, as sinter's side pays it) is in the floor too.
 */
function floorWithTransport(floor, server) {
  const c = server.client.controller;
  return {
    async create(name) {
      await c.CreateVolume({ name, capacity_range: { required_bytes: GiB }, volume_capabilities: [mountCap('ext4')] });
      return floor.create(name);
    },
    async delete(id) {
      await c.DeleteVolume({ volume_id: id });
      await floor.delete(id);
    },
  };
}

let names = 0;
const nextName = () => `bench-${++names}`;

async function pairs(ops, concurrency, total) {
  return pool(concurrency, total, async () => {
    const id = await ops.create(nextName());
    await ops.delete(id);
  });
}

async function bulk(ops, concurrency, total, cpu) {
  const ids = [];
  const cpu0 = cpu();
  const c = await pool(concurrency, total, async () => {
    ids.push(await ops.create(nextName()));
  });
  const createCpuUs = ((cpu() - cpu0) * 1000) / total;
  const d = await pool(concurrency, ids.length, async (i) => {
    await ops.delete(ids[i]);
  });
  return { createPerS: (total / c.wallMs) * 1000, deletePerS: (total / d.wallMs) * 1000, createCpuUs };
}

export async function provisionBench({ rounds, pairsAt, bulkCount, log }) {
  const sinter = await startSinter({ role: 'controller' });
  const floorDir = freshDir('floor-volumes');
  const dh = await openDir(floorDir);
  const floorServer = await startFloorServer();
  const ops = { sinter: driverOps(sinter.client), floor: floorOps(floorDir, dh) };
  ops.floorRpc = floorWithTransport(ops.floor, floorServer);
  // CPU time (ms) of the process doing the work: sinter's (from /proc, 10 ms ticks, summed over the whole bulk) and this one's for the floor.
  const cpuOfSide = {
    sinter: () => sinter.cpu(),
    floor: () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1000;
    },
    floorRpc: () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1000 + floorServer.cpu();
    },
  };
  const lat = {};
  const tput = { sinter: { create: [], delete: [], cpu: [] }, floor: { create: [], delete: [], cpu: [] }, floorRpc: { create: [], delete: [], cpu: [] }, ratio: [], ratioDelete: [], ratioCpu: [], ratioRpc: [] };
  try {
    // Warm-up: JIT and the channel.
    await pairs(ops.sinter, 4, 40);
    await pairs(ops.floor, 4, 40);
    await pairs(ops.floorRpc, 4, 40);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? ['floor', 'sinter'] : ['sinter', 'floor'];
      for (const [conc, total] of pairsAt) {
        const k = `c${conc}`;
        lat[k] ??= { sinter: { p50: [], p99: [], rate: [] }, floor: { p50: [], p99: [], rate: [] }, ratio50: [], ratio99: [] };
        const got = {};
        for (const who of order) got[who] = await pairs(ops[who], conc, total);
        for (const who of order) {
          lat[k][who].p50.push(median(got[who].lat));
          lat[k][who].p99.push(p99(got[who].lat));
          lat[k][who].rate.push((total / got[who].wallMs) * 1000);
        }
        lat[k].ratio50.push(median(got.sinter.lat) / median(got.floor.lat));
        lat[k].ratio99.push(p99(got.sinter.lat) / p99(got.floor.lat));
      }
      const got = {};
      for (const who of [...order, 'floorRpc']) got[who] = await bulk(ops[who], 64, bulkCount, cpuOfSide[who]);
      for (const who of [...order, 'floorRpc']) {
        tput[who].create.push(got[who].createPerS);
        tput[who].delete.push(got[who].deletePerS);
        tput[who].cpu.push(got[who].createCpuUs);
      }
      tput.ratioCpu.push(got.sinter.createCpuUs / got.floor.createCpuUs);
      tput.ratio.push(got.floor.createPerS / got.sinter.createPerS);
      tput.ratioDelete.push(got.floor.deletePerS / got.sinter.deletePerS);
      tput.ratioRpc.push(got.floorRpc.createPerS / got.sinter.createPerS);
      log(
        `  provisioning round ${r + 1}/${rounds}: ${pairsAt.map(([c]) => `c${c} ${lat[`c${c}`].ratio50.at(-1).toFixed(2)}×`).join(', ')}; ` +
          `${bulkCount} creates at c64 ${got.sinter.createPerS.toFixed(0)}/s (floor ${got.floor.createPerS.toFixed(0)}/s, floor + transport ${got.floorRpc.createPerS.toFixed(0)}/s)`,
      );
    }
  } finally {
    await sinter.stop();
    await floorServer.stop();
    await dh.close();
  }
  const rows = [];
  for (const [conc] of pairsAt) {
    const k = lat[`c${conc}`];
    rows.push({
      id: `provision.c${conc}.p50`,
      section: '2. Provisioning (1 GiB, file backend)',
      label: `Create+Delete latency p50, concurrency ${conc}`,
      unit: 'ms',
      value: median(k.sinter.p50),
      floor: median(k.floor.p50),
      ratio: median(k.ratio50),
      ratios: k.ratio50,
    });
    rows.push({
      id: `provision.c${conc}.p99`,
      section: '2. Provisioning (1 GiB, file backend)',
      label: `Create+Delete latency p99, concurrency ${conc}`,
      unit: 'ms',
      value: median(k.sinter.p99),
      floor: median(k.floor.p99),
      ratio: median(k.ratio99),
      ratios: k.ratio99,
    });
  }
  rows.push({
    id: 'provision.throughput.create',
    section: '2. Provisioning (1 GiB, file backend)',
    label: `CreateVolume throughput, ${bulkCount} volumes, concurrency 64`,
    unit: 'vol/s',
    value: median(tput.sinter.create),
    floor: median(tput.floor.create),
    ratio: median(tput.ratio),
    ratios: tput.ratio,
    target: { valueMin: 500 },
  });
  rows.push({
    id: 'provision.throughput.createVsTransport',
    section: '2. Provisioning (1 GiB, file backend)',
    label: `  against the floor + the CSI transport (each create also a round trip to the bare grpc-js floor server, same request, same concurrency)`,
    unit: 'vol/s',
    value: median(tput.sinter.create),
    floor: median(tput.floorRpc.create),
    ratio: median(tput.ratioRpc),
    ratios: tput.ratioRpc,
  });
  rows.push({
    id: 'provision.cpu.create',
    section: '2. Provisioning (1 GiB, file backend)',
    label: `  CPU per CreateVolume at concurrency 64 (sinter's process; floor: this one's)`,
    unit: 'µs',
    value: median(tput.sinter.cpu),
    floor: median(tput.floor.cpu),
    ratio: median(tput.ratioCpu),
    ratios: tput.ratioCpu,
  });
  rows.push({
    id: 'provision.throughput.delete',
    section: '2. Provisioning (1 GiB, file backend)',
    label: `DeleteVolume throughput, ${bulkCount} volumes, concurrency 64`,
    unit: 'vol/s',
    value: median(tput.sinter.delete),
    floor: median(tput.floor.delete),
    ratio: median(tput.ratioDelete),
    ratios: tput.ratioDelete,
  });
  return rows;
}
