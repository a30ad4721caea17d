// What `sinter all` and `sinter controller` load before their first Probe
// answers ready: start-up time is mostly module loading (and, in the VM
// tests' TCG guests, seconds of it), so what start-up does not use must stay
// lazy. The module list comes from a module-loader hook in the real process.
// sinter runs from its bundle (scripts/bundle.mjs), whose chunks the hook sees:
// each is read as the modules it holds (dist/bundle/modules.json).
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { MAIN, startSinter } from '../helpers/sinter-process.js';
import { tempDir } from '../helpers/scratch-fs.js';

// The bundler names the file (a plain .mjs script: imported for its constant, as csi-proto-cache.test.ts does).
const { MODULES_FILE } = (await import(new URL('../../scripts/bundle.mjs', import.meta.url).href)) as { MODULES_FILE: string };

const t = tempDir('sinter-startmods-');
afterAll(() => t.cleanup());

/** Starts `role` with a loader hook that appends every module URL it loads to a file; returns them once Probe says ready. */
async function modulesAtReady(role: 'all' | 'controller'): Promise<string[]> {
  const out = join(t.dir, `${role}.modules`);
  writeFileSync(out, '');
  const hooks = join(t.dir, `${role}-hooks.mjs`);
  writeFileSync(hooks, `import { appendFileSync } from 'node:fs';\nexport async function load(url, ctx, next) { appendFileSync(${JSON.stringify(out)}, url + '\\n'); return next(url, ctx); }\n`);
  const register = join(t.dir, `${role}-register.mjs`);
  writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
  const s = await startSinter({ role, nodeArgs: ['--import', register] });
  try {
    const bundleDir = dirname(MAIN);
    const packageRoot = dirname(dirname(bundleDir));
    const chunks = JSON.parse(readFileSync(join(bundleDir, MODULES_FILE), 'utf8')) as Record<string, string[]>;
    const urls = readFileSync(out, 'utf8').split('\n').filter(Boolean);
    const fromBundle = urls.filter((u) => u.startsWith('file:') && dirname(fileURLToPath(u)) === bundleDir);
    expect(fromBundle.length, 'sinter started from its bundle').toBeGreaterThan(0);
    return urls.flatMap((u) => {
      if (!fromBundle.includes(u)) return [u];
      const held = chunks[basename(fileURLToPath(u))];
      if (!held) throw new Error(`${u}: a chunk ${MODULES_FILE} does not list`);
      return held.map((m) => `file://${join(packageRoot, m)}`);
    });
  } finally {
    await s.cleanup();
  }
}

describe('start-up loads only what answering the first Probe needs', () => {
  it('sinter all (file backend, no Kubernetes): no execa (the orphan scan runs no command), no LVM or RBD backend, no Kubernetes client, no prom-client', async () => {
    const mods = await modulesAtReady('all');
    expect(mods.some((u) => u.endsWith('/dist/app.js'))).toBe(true); // the hook saw the driver load
    expect(mods.filter((u) => /node_modules\/(execa|@kubernetes|prom-client)\//.test(u))).toEqual([]);
    expect(mods.filter((u) => /dist\/backends\/(lvm|rbd)\/backend\.js$/.test(u))).toEqual([]);
  });

  it('sinter controller: no node service or connectors either', async () => {
    const mods = await modulesAtReady('controller');
    expect(mods.some((u) => u.endsWith('/dist/app.js'))).toBe(true);
    expect(mods.filter((u) => /node_modules\/(execa|@kubernetes|prom-client)\/|dist\/node\/|dist\/backends\/(lvm|rbd)\/backend\.js$/.test(u))).toEqual([]);
  });
});
