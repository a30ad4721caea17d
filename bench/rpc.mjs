// 1. RPC overhead: sequential Probe and NodeGetCapabilities round trips over
// a unix socket, sinter (`sinter all`, logging every RPC at info) against the
// floor server (bare grpc-js, constant replies). Same client, same process,
// rounds alternate which server goes first.
import { median, p99, startFloorServer, startSinter } from './lib.mjs';

async function series(server, side, method, req, n) {
  const lat = new Array(n);
  const call = server.client[side][method];
  const cpu0 = server.cpu();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await call(req);
    lat[i] = performance.now() - t;
  }
  // Server CPU per call, µs: less sensitive to the machine's other load than latency.
  lat.cpuUs = ((server.cpu() - cpu0) * 1000) / n;
  return lat;
}

export async function rpcBench({ rounds, calls, log }) {
  const sinter = await startSinter({ role: 'all' });
  const floor = await startFloorServer();
  const methods = [
    ['Probe', 'identity', 'Probe'],
    ['NodeGetCapabilities', 'node', 'NodeGetCapabilities'],
  ];
  const per = {}; // method -> { sinter: {p50:[],p99:[]}, floor: {...}, ratio50: [], ratio99: [] }
  try {
    for (const [name, side, m] of methods) {
      per[name] = { sinter: { p50: [], p99: [], cpu: [] }, floor: { p50: [], p99: [], cpu: [] }, ratio50: [], ratio99: [], ratioCpu: [] };
      // Warm both: JIT, channel, HTTP/2 windows.
      await series(sinter, side, m, {}, 300);
      await series(floor, side, m, {}, 300);
    }
    for (let r = 0; r < rounds; r++) {
      for (const [name, side, m] of methods) {
        const order = r % 2 === 0 ? ['floor', 'sinter'] : ['sinter', 'floor'];
        const got = {};
        for (const who of order) got[who] = await series(who === 'sinter' ? sinter : floor, side, m, {}, calls);
        const rec = per[name];
        for (const who of order) {
          rec[who].p50.push(median(got[who]));
          rec[who].p99.push(p99(got[who]));
          rec[who].cpu.push(got[who].cpuUs);
        }
        rec.ratio50.push(median(got.sinter) / median(got.floor));
        rec.ratio99.push(p99(got.sinter) / p99(got.floor));
        rec.ratioCpu.push(got.sinter.cpuUs / got.floor.cpuUs);
      }
      log(`  rpc round ${r + 1}/${rounds}: Probe ${per.Probe.ratio50.at(-1).toFixed(2)}×, NodeGetCapabilities ${per.NodeGetCapabilities.ratio50.at(-1).toFixed(2)}×`);
    }
  } finally {
    await sinter.stop();
    await floor.stop();
  }
  const rows = [];
  for (const [name] of methods) {
    const rec = per[name];
    rows.push({
      id: `rpc.${name}.p50`,
      section: '1. RPC overhead',
      label: `${name} round trip p50`,
      unit: 'ms',
      value: median(rec.sinter.p50),
      floor: median(rec.floor.p50),
      ratio: median(rec.ratio50),
      ratios: rec.ratio50,
      target: { ratioMax: 1.3 },
    });
    rows.push({
      id: `rpc.${name}.p99`,
      section: '1. RPC overhead',
      label: `${name} round trip p99`,
      unit: 'ms',
      value: median(rec.sinter.p99),
      floor: median(rec.floor.p99),
      ratio: median(rec.ratio99),
      ratios: rec.ratio99,
    });
    rows.push({
      id: `rpc.${name}.cpu`,
      section: '1. RPC overhead',
      label: `${name} server CPU per call`,
      unit: 'µs',
      value: median(rec.sinter.cpu),
      floor: median(rec.floor.cpu),
      ratio: median(rec.ratioCpu),
      ratios: rec.ratioCpu,
    });
  }
  return rows;
}
