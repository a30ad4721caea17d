// 8. Ceph RBD: CreateVolume, CreateSnapshot, clone (CreateVolume from a
// snapshot) and DeleteVolume of 64 MiB volumes through `sinter controller`
// with an rbd backend, on a single-node Ceph this section starts
// (test/helpers/ceph-cluster.ts, transpiled on the fly), against the raw `rbd`
// commands of the same operation run through sinter's executor with the same
// connection arguments (monitors, user, key file, --conf /dev/null). The issue's
// goal: CreateVolume p50 ≤ 50 ms on the test cluster.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { hostExec, median, MiB, onCleanup, percentile, startSinter } from './lib.mjs';

export const RAW = 'rbd create --size 64M / rbd snap create + rbd clone (format 2) + rbd snap rm / rbd rm, each one `rbd` process through sinter\'s executor with the same monitors, user and key file';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** test/helpers/ceph-cluster.ts (and tgtd.ts, for freePort) as JavaScript under .tmp/, so the bench starts the same cluster the tests do. */
async function loadCephHelper() {
  const ts = (await import('typescript')).default;
  const out = join(ROOT, '.tmp', 'bench-helpers');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'package.json'), '{"type":"module"}\n');
  for (const f of ['ceph-cluster', 'tgtd']) {
    const src = readFileSync(join(ROOT, 'test', 'helpers', `${f}.ts`), 'utf8');
    const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    writeFileSync(join(out, `${f}.js`), js);
  }
  return import(pathToFileURL(join(out, 'ceph-cluster.js')).href);
}

export async function rbdBench({ reps, log }) {
  const { startCephCluster } = await loadCephHelper();
  const c = await startCephCluster();
  onCleanup(() => c.stop());
  log(`  ceph cluster up in ${c.startMs} ms (${c.monitors})`);
  const common = ['--conf', '/dev/null', '-m', c.monitors, '--id', c.user, '--keyfile', c.keyFile];
  const rbd = (args) => hostExec.run('rbd', [...common, ...args]);
  const cfg = ['backends:', '  - name: ceph', '    driver: rbd', `    pool: ${c.pool}`, `    monitors: ["${c.monitors}"]`, `    user: ${c.user}`, `    keyFile: ${c.keyFile}`].join('\n') + '\n';
  const s = await startSinter({ role: 'controller', config: cfg });
  const ctl = s.client.controller;
  const block = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
  const got = { create: [], createRaw: [], snapshot: [], snapshotRaw: [], clone: [], cloneRaw: [], del: [], delRaw: [] };
  const time = async (fn) => {
    const t = performance.now();
    const out = await fn();
    return [performance.now() - t, out];
  };
  try {
    // One warm-up of each side: the first call starts the agent and the first rbd process loads librbd from disk.
    const w = await ctl.CreateVolume({ name: 'warm', capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [block] });
    await ctl.DeleteVolume({ volume_id: w.volume.volume_id });
    await rbd(['create', '--size', '64M', `${c.pool}/raw-warm`]);
    await rbd(['rm', '--no-progress', `${c.pool}/raw-warm`]);
    for (let i = 0; i < reps; i++) {
      // Interleaved, so both sides see the same cluster and machine load.
      const [ms, r] = await time(() => ctl.CreateVolume({ name: `v-${i}`, capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [block] }));
      got.create.push(ms);
      const id = r.volume.volume_id;
      got.createRaw.push((await time(() => rbd(['create', '--size', '64M', `${c.pool}/raw-${i}`])))[0]);

      const [sms, sn] = await time(() => ctl.CreateSnapshot({ name: `s-${i}`, source_volume_id: id }));
      got.snapshot.push(sms);
      got.snapshotRaw.push(
        (
          await time(async () => {
            await rbd(['snap', 'create', '--no-progress', `${c.pool}/raw-${i}@tmp`]);
            await rbd(['clone', '--rbd-default-clone-format', '2', `${c.pool}/raw-${i}@tmp`, `${c.pool}/raw-${i}-snap`]);
            await rbd(['snap', 'rm', '--no-progress', `${c.pool}/raw-${i}@tmp`]);
          })
        )[0],
      );
      const [cms, cl] = await time(() => ctl.CreateVolume({ name: `c-${i}`, capacity_range: { required_bytes: 64 * MiB }, volume_capabilities: [block], volume_content_source: { snapshot: { snapshot_id: sn.snapshot.snapshot_id } } }));
      got.clone.push(cms);
      got.cloneRaw.push(
        (
          await time(async () => {
            await rbd(['snap', 'create', '--no-progress', `${c.pool}/raw-${i}-snap@tmp`]);
            await rbd(['clone', '--rbd-default-clone-format', '2', `${c.pool}/raw-${i}-snap@tmp`, `${c.pool}/raw-${i}-clone`]);
            await rbd(['snap', 'rm', '--no-progress', `${c.pool}/raw-${i}-snap@tmp`]);
          })
        )[0],
      );
      got.del.push((await time(() => ctl.DeleteVolume({ volume_id: cl.volume.volume_id })))[0]);
      got.delRaw.push((await time(() => rbd(['rm', '--no-progress', `${c.pool}/raw-${i}-clone`])))[0]);
      await ctl.DeleteSnapshot({ snapshot_id: sn.snapshot.snapshot_id });
      await ctl.DeleteVolume({ volume_id: id });
      await rbd(['rm', '--no-progress', `${c.pool}/raw-${i}-snap`]);
      await rbd(['rm', '--no-progress', `${c.pool}/raw-${i}`]);
    }
  } finally {
    await s.stop();
  }
  const row = (label, mine, raw, target) => {
    const v = median(mine);
    const f = median(raw);
    log(`  ${label}: sinter p50 ${v.toFixed(1)} ms (p95 ${percentile(mine, 0.95).toFixed(1)}), raw p50 ${f.toFixed(1)} ms`);
    return { section: 'rbd (8)', label, value: v, floor: f, ratio: v / f, unit: 'ms', ratios: mine.map((m, i) => m / raw[i]), ...(target ? { target } : {}) };
  };
  return [
    row('CreateVolume 64 MiB, p50', got.create, got.createRaw, { valueMax: 50 }),
    row('CreateSnapshot, p50', got.snapshot, got.snapshotRaw),
    row('CreateVolume from snapshot (clone), p50', got.clone, got.cloneRaw),
    row('DeleteVolume, p50', got.del, got.delRaw),
  ];
}
