// 5. Scale: start-up to the first successful Probe (against `node -e ""`),
// controller RSS idle and with 10,000 volumes (against the idle floor server:
// node + grpc-js + the CSI proto), and a ListVolumes page of 100 at 10,000
// volumes (against the floor server answering a canned page of 100 of the
// same shape).
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { base, GiB, median, mountCap, nodeStartup, pool, sleep, startFloorServer, startSinter } from './lib.mjs';

const SETTLE_MS = 1000;

/** The default bench config plus a metrics endpoint on a free loopback port. */
const metricsConfig = (dataDir) => `backends:\n  - name: default\n    dataDir: ${dataDir}\n    overSubscriptionRatio: 1000\nmetricsAddress: "127.0.0.1:0"\n`;

/** The metrics endpoint's address from a bench sinter's log file (appended to by every run in its directory: the last one). */
function metricsAddressOf(s) {
  const line = readFileSync(s.logFile, 'utf8').split('\n').findLast((l) => l.includes('metrics endpoint listening'));
  if (!line) throw new Error('no metrics endpoint in the log');
  return JSON.parse(line).address;
}

async function getMs(url) {
  const t = performance.now();
  const res = await fetch(url).catch((e) => {
    throw new Error(`GET ${url}: ${e.message} (${e.cause?.message ?? ''})`);
  });
  await res.text();
  return performance.now() - t;
}

/** Median of five RSS readings 100 ms apart. */
async function rssSamples(proc) {
  const v = [];
  for (let i = 0; i < 5; i++) {
    v.push(proc.rss());
    await sleep(100);
  }
  return median(v);
}

async function listPages(client, pages) {
  const lat = [];
  let token = '';
  for (let i = 0; i < pages; i++) {
    const t = performance.now();
    const r = await client.controller.ListVolumes({ max_entries: 100, starting_token: token });
    lat.push(performance.now() - t);
    token = r.next_token;
    if (r.entries.length !== 100 && token) throw new Error(`ListVolumes returned ${r.entries.length} entries, not 100`);
  }
  return lat;
}

export async function scaleBench({ reps, volumes, log }) {
  const section = '5. Scale';
  const st = { empty: [], controller: [], controllerMetrics: [], all: [], floor: [], cpuController: [], cpuAll: [], cpuFloor: [], rssController: [], rssAll: [], rssFloor: [] };
  for (let r = 0; r < reps; r++) {
    st.empty.push(await nodeStartup());
    for (const role of ['controller', 'all']) {
      const s = await startSinter({ role });
      st[role].push(s.startupMs);
      st[role === 'controller' ? 'cpuController' : 'cpuAll'].push(s.startupCpuMs);
      await sleep(SETTLE_MS);
      st[role === 'controller' ? 'rssController' : 'rssAll'].push(await rssSamples(s));
      await s.stop();
      rmSync(s.dir, { recursive: true, force: true });
    }
    // The same controller with --metrics-address: prom-client is loaded only then.
    const m = await startSinter({ role: 'controller', config: metricsConfig(join(base, `metrics-startup-${r}`)) });
    st.controllerMetrics.push(m.startupMs);
    await m.stop();
    rmSync(m.dir, { recursive: true, force: true });
    rmSync(join(base, `metrics-startup-${r}`), { recursive: true, force: true });
    const f = await startFloorServer();
    st.floor.push(f.startupMs);
    st.cpuFloor.push(f.startupCpuMs);
    await sleep(SETTLE_MS);
    st.rssFloor.push(await rssSamples(f));
    await f.stop();
    log(`  start-up rep ${r + 1}/${reps}: node -e "" ${st.empty.at(-1).toFixed(0)} ms, controller ${st.controller.at(-1).toFixed(0)} ms, all ${st.all.at(-1).toFixed(0)} ms; idle RSS controller ${st.rssController.at(-1).toFixed(1)} MiB`);
  }
  const rows = [];
  const ratios = (xs, ys) => xs.map((x, i) => x / ys[i]);
  rows.push({ id: 'scale.startup.controller', section, label: 'Start-up to first Probe, `sinter controller`', unit: 'ms', value: median(st.controller), floor: median(st.empty), ratio: median(ratios(st.controller, st.empty)), ratios: ratios(st.controller, st.empty), target: { valueMax: 400 }, floorIs: 'node -e "" (spawn to exit)' });
  rows.push({ id: 'scale.startup.controller.metrics', section, label: 'Start-up to first Probe, `sinter controller` with metricsAddress', unit: 'ms', value: median(st.controllerMetrics), floor: median(st.empty), ratio: median(ratios(st.controllerMetrics, st.empty)), ratios: ratios(st.controllerMetrics, st.empty), floorIs: 'node -e "" (spawn to exit)' });
  rows.push({ id: 'scale.startup.all', section, label: 'Start-up to first Probe, `sinter all`', unit: 'ms', value: median(st.all), floor: median(st.empty), ratio: median(ratios(st.all, st.empty)), ratios: ratios(st.all, st.empty), target: { valueMax: 400 }, floorIs: 'node -e "" (spawn to exit)' });
  rows.push({ id: 'scale.startup.floorserver', section, label: 'Start-up to first Probe, bare grpc-js floor server (reference)', unit: 'ms', value: median(st.floor), floor: median(st.empty), ratio: median(ratios(st.floor, st.empty)), ratios: ratios(st.floor, st.empty), floorIs: 'node -e ""' });
  rows.push({ id: 'scale.startup.cpu.controller', section, label: 'Start-up CPU time to first Probe, `sinter controller`', unit: 'ms', value: median(st.cpuController), floor: median(st.cpuFloor), ratio: median(ratios(st.cpuController, st.cpuFloor)), ratios: ratios(st.cpuController, st.cpuFloor), floorIs: 'floor server CPU to first Probe' });
  rows.push({ id: 'scale.startup.cpu.all', section, label: 'Start-up CPU time to first Probe, `sinter all`', unit: 'ms', value: median(st.cpuAll), floor: median(st.cpuFloor), ratio: median(ratios(st.cpuAll, st.cpuFloor)), ratios: ratios(st.cpuAll, st.cpuFloor), floorIs: 'floor server CPU to first Probe' });
  rows.push({ id: 'scale.rss.idle', section, label: 'Controller RSS idle', unit: 'MiB', value: median(st.rssController), floor: median(st.rssFloor), ratio: median(ratios(st.rssController, st.rssFloor)), ratios: ratios(st.rssController, st.rssFloor), target: { valueMax: 80 }, floorIs: 'idle floor server (node + grpc-js + csi.proto)' });
  rows.push({ id: 'scale.rss.idle.all', section, label: '`sinter all` RSS idle', unit: 'MiB', value: median(st.rssAll), floor: median(st.rssFloor), ratio: median(ratios(st.rssAll, st.rssFloor)), ratios: ratios(st.rssAll, st.rssFloor), floorIs: 'idle floor server' });

  if (!volumes) return rows;
  // 10,000 volumes through the real CreateVolume path.
  const s = await startSinter({ role: 'controller' });
  const floor = await startFloorServer();
  let restart;
  try {
    const cap = mountCap('ext4');
    const t0 = performance.now();
    const made = await pool(64, volumes, (i) => s.client.controller.CreateVolume({ name: `scale-${i}`, capacity_range: { required_bytes: GiB }, volume_capabilities: [cap] }));
    log(`  created ${volumes} volumes in ${((performance.now() - t0) / 1000).toFixed(1)} s (${((volumes / made.wallMs) * 1000).toFixed(0)}/s)`);
    await sleep(SETTLE_MS);
    const rssFull = await rssSamples(s);
    const floorRss = await rssSamples(floor);
    // Warm-up walk, then three full walks of 100 pages.
    await listPages(s.client, 20);
    await listPages(floor.client, 20);
    const list = { sinter: [], floor: [], ratio: [] };
    for (let r = 0; r < 3; r++) {
      const a = await listPages(floor.client, volumes / 100);
      const b = await listPages(s.client, volumes / 100);
      list.floor.push(median(a));
      list.sinter.push(median(b));
      list.ratio.push(median(b) / median(a));
    }
    rows.push({ id: 'scale.rss.10k', section, label: `Controller RSS with ${volumes} volumes (after creating them)`, unit: 'MiB', value: rssFull, floor: floorRss, ratio: rssFull / floorRss, target: { valueMax: 150 }, floorIs: 'idle floor server' });
    rows.push({ id: 'scale.list.p50', section, label: `ListVolumes page of 100 at ${volumes} volumes, p50`, unit: 'ms', value: median(list.sinter), floor: median(list.floor), ratio: median(list.ratio), ratios: list.ratio, target: { valueMax: 10 }, floorIs: 'floor server, canned page of 100' });
    await s.stop();
    // Restarts that load the 10,000 records from disk, each against an empty `sinter controller`
    // started just before it. After a clean stop (SIGTERM) the records come from the digest that
    // stop left; after a crash (SIGKILL) from the 10,000 record files and the images' lstats.
    const re = { startup: [], rss: [], empty: [], crash: [] };
    const scrape = { first: [], steady: [], floor: [] };
    for (let r = 0; r < 3; r++) {
      const empty = await startSinter({ role: 'controller' });
      re.empty.push(empty.startupMs);
      await empty.stop();
      rmSync(empty.dir, { recursive: true, force: true });
      restart = await startSinter({ role: 'controller', dir: s.dir });
      re.startup.push(restart.startupMs);
      await sleep(SETTLE_MS);
      re.rss.push(await rssSamples(restart));
      await restart.stop('SIGKILL');
      restart = undefined;
      // The killed process's socket file would make the client's first connect fail and back off.
      rmSync(s.socket, { force: true });
      restart = await startSinter({ role: 'controller', dir: s.dir });
      re.crash.push(restart.startupMs);
      await restart.stop();
      restart = undefined;
      // /metrics at 10,000 volumes: the first scrape waits for the images' allocated blocks to be
      // counted; later ones read memory only (the count is redone in the background).
      restart = await startSinter({ role: 'controller', dir: s.dir, config: metricsConfig(s.dataDir) });
      const addr = metricsAddressOf(restart);
      scrape.first.push(await getMs(`http://${addr}/metrics`));
      const steady = [];
      const floorGets = [];
      for (let i = 0; i < 20; i++) {
        floorGets.push(await getMs(`http://${addr}/nothing-here`));
        steady.push(await getMs(`http://${addr}/metrics`));
      }
      scrape.steady.push(median(steady));
      scrape.floor.push(median(floorGets));
      await restart.stop();
      restart = undefined;
    }
    const scrapeRatios = scrape.steady.map((x, i) => x / scrape.floor[i]);
    rows.push({ id: 'scale.metrics.scrape.10k', section, label: `GET /metrics at ${volumes} volumes, median`, unit: 'ms', value: median(scrape.steady), floor: median(scrape.floor), ratio: median(scrapeRatios), ratios: scrapeRatios, floorIs: 'GET of a 404 on the same endpoint' });
    rows.push({ id: 'scale.metrics.scrape.10k.first', section, label: `First GET /metrics at ${volumes} volumes (counts the images' blocks)`, unit: 'ms', value: median(scrape.first), floor: median(scrape.floor), ratio: median(scrape.first) / median(scrape.floor), floorIs: 'GET of a 404 on the same endpoint' });
    log(`  10k /metrics: first ${scrape.first.map((x) => x.toFixed(0)).join('/')} ms, then median ${scrape.steady.map((x) => x.toFixed(1)).join('/')} ms (404: ${scrape.floor.map((x) => x.toFixed(1)).join('/')} ms)`);
    const reRatios = re.startup.map((x, i) => x / re.empty[i]);
    const crashRatios = re.crash.map((x, i) => x / re.empty[i]);
    rows.push({ id: 'scale.rss.10k.restart', section, label: `Controller RSS with ${volumes} volumes (restarted, loaded from disk)`, unit: 'MiB', value: median(re.rss), floor: floorRss, ratio: median(re.rss) / floorRss, ratios: re.rss.map((x) => x / floorRss), target: { valueMax: 150 }, floorIs: 'idle floor server' });
    rows.push({ id: 'scale.startup.10k', section, label: `Start-up to first Probe with ${volumes} volumes on disk, after a clean stop (records from its digest)`, unit: 'ms', value: median(re.startup), floor: median(re.empty), ratio: median(reRatios), ratios: reRatios, target: { ratioMax: 1.5 }, floorIs: 'empty `sinter controller` started just before' });
    rows.push({ id: 'scale.startup.10k.crash', section, label: `Start-up to first Probe with ${volumes} volumes on disk, after a crash (every record file read)`, unit: 'ms', value: median(re.crash), floor: median(re.empty), ratio: median(crashRatios), ratios: crashRatios, floorIs: 'empty `sinter controller` started just before' });
    log(`  10k: RSS ${rssFull.toFixed(1)} MiB, list p50 ${median(list.sinter).toFixed(2)} ms; restarts ${re.startup.map((x) => x.toFixed(0)).join('/')} ms after a clean stop, ${re.crash.map((x) => x.toFixed(0)).join('/')} ms after a crash, empty ${re.empty.map((x) => x.toFixed(0)).join('/')} ms; RSS ${median(re.rss).toFixed(1)} MiB`);
  } finally {
    await restart?.stop();
    await s.stop();
    await floor.stop();
    rmSync(s.dir, { recursive: true, force: true });
  }
  return rows;
}
