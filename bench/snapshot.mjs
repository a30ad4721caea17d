// 4. Snapshot and clone of a 1 GiB volume with 256 MiB written, on a real
// loop-mounted xfs (reflink=1: sinter clones extents) and ext4 (no reflink:
// sinter falls back to `cp --sparse=always`), against the raw copy of the same
// image file: `cp --reflink=always` on xfs, `cp --sparse=always
// --reflink=never` on ext4, each followed by an fsync of the copy (sinter
// makes every copy durable before it answers, so the floor does too).
import { randomBytes } from 'node:crypto';
import { promises as fs, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { base, fsyncFile, GiB, hostExec, median, MiB, mountCap, startSinter } from './lib.mjs';

/** A real filesystem on a loop device under base; cleanup() always unmounts and detaches (and the global scrub backs it up). */
async function scratchFs(type, sizeMiB) {
  const img = join(base, `fs-${type}.img`);
  const dir = join(base, `mnt-${type}`);
  writeFileSync(img, '');
  await hostExec.run('truncate', ['-s', `${sizeMiB}M`, img]);
  await hostExec.run(`mkfs.${type}`, type === 'xfs' ? ['-q', '-m', 'reflink=1', img] : ['-q', '-F', img]);
  const device = (await hostExec.run('losetup', ['--find', '--show', img])).stdout.trim();
  mkdirSync(dir, { recursive: true });
  try {
    await hostExec.run('mount', [device, dir]);
  } catch (e) {
    await hostExec.run('losetup', ['-d', device]).catch(() => undefined);
    throw e;
  }
  return {
    dir,
    async cleanup() {
      await hostExec.run('umount', [dir]).catch(() => hostExec.run('umount', ['-l', dir]).catch(() => undefined));
      await hostExec.run('losetup', ['-d', device]).catch(() => undefined);
      rmSync(img, { force: true });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** 256 × 1 MiB of random data, one chunk every 4 MiB, so the image has 256 extents and 768 MiB of holes. */
async function fill(path) {
  const fh = await fs.open(path, 'r+');
  try {
    for (let k = 0; k < 256; k++) await fh.write(randomBytes(MiB), 0, MiB, k * 4 * MiB);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function snapshotBench({ reps, log }) {
  const rows = [];
  for (const type of ['xfs', 'ext4']) {
    const sfs = await scratchFs(type, 4096);
    let s;
    const got = { snapshot: { sinter: [], raw: [], ratio: [] }, clone: { sinter: [], raw: [], ratio: [] } };
    let method = '?';
    try {
      const dataDir = join(sfs.dir, 'data');
      const rawDir = join(sfs.dir, 'raw');
      mkdirSync(rawDir, { recursive: true });
      s = await startSinter({ role: 'controller', dataDir });
      const cap = mountCap('ext4');
      const c = s.client.controller;
      const { volume } = await c.CreateVolume({ name: `src-${type}`, capacity_range: { required_bytes: GiB }, volume_capabilities: [cap] });
      const srcImg = join(dataDir, 'volumes', `${volume.volume_id}.img`);
      await fill(srcImg);

      const driver = {
        async snapshot(i) {
          const t = performance.now();
          const { snapshot } = await c.CreateSnapshot({ name: `snap-${type}-${i}`, source_volume_id: volume.volume_id });
          const ms = performance.now() - t;
          method = JSON.parse(readFileSync(join(dataDir, 'snapshots', `${snapshot.snapshot_id}.json`), 'utf8')).copyMethod ?? '?';
          await c.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id });
          return ms;
        },
        async clone(i) {
          const t = performance.now();
          const r = await c.CreateVolume({ name: `clone-${type}-${i}`, volume_capabilities: [cap], volume_content_source: { volume: { volume_id: volume.volume_id } } });
          const ms = performance.now() - t;
          await c.DeleteVolume({ volume_id: r.volume.volume_id });
          return ms;
        },
      };
      const cpArgs = type === 'xfs' ? ['--reflink=always'] : ['--sparse=always', '--reflink=never'];
      const rawCopy = async (i) => {
        const dst = join(rawDir, `copy-${i}.img`);
        const t = performance.now();
        await hostExec.run('cp', [...cpArgs, '--', srcImg, dst]);
        await fsyncFile(dst);
        const ms = performance.now() - t;
        rmSync(dst, { force: true });
        return ms;
      };
      const raw = { snapshot: rawCopy, clone: rawCopy };

      await driver.snapshot('warm');
      await rawCopy('warm');
      for (let r = 0; r < reps; r++) {
        for (const op of ['snapshot', 'clone']) {
          const order = r % 2 === 0 ? ['raw', 'sinter'] : ['sinter', 'raw'];
          const one = {};
          for (const who of order) one[who] = await (who === 'sinter' ? driver : raw)[op](`${r}`);
          got[op].sinter.push(one.sinter);
          got[op].raw.push(one.raw);
          got[op].ratio.push(one.sinter / one.raw);
        }
        log(`  ${type} rep ${r + 1}/${reps}: snapshot ${got.snapshot.sinter.at(-1).toFixed(0)} ms (raw ${got.snapshot.raw.at(-1).toFixed(0)}), clone ${got.clone.sinter.at(-1).toFixed(0)} ms (raw ${got.clone.raw.at(-1).toFixed(0)})`);
      }
    } finally {
      await s?.stop();
      await sfs.cleanup();
    }
    const section = '4. Snapshot and clone (1 GiB, 256 MiB written)';
    for (const op of ['snapshot', 'clone']) {
      rows.push({
        id: `snapshot.${type}.${op}`,
        section,
        label: `${op === 'snapshot' ? 'CreateSnapshot' : 'CreateVolume from volume'} on ${type} (${method})`,
        unit: 'ms',
        value: median(got[op].sinter),
        floor: median(got[op].raw),
        ratio: median(got[op].ratio),
        ratios: got[op].ratio,
        floorIs: type === 'xfs' ? 'cp --reflink=always + fsync' : 'cp --sparse=always --reflink=never + fsync',
      });
    }
  }
  return rows;
}
