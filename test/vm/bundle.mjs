// sinter bundled for the VM guest: dist/'s ~540 modules (src and node_modules) in a dozen chunks.
//
// Under TCG, Node's ESM loader spends most of a sinter start resolving, reading and linking
// modules one by one: `sinter node` took 35-40 s to its first ready Probe from dist/main.js and
// 14-28 s from this bundle in the same guest (2026-12-06, host load ~12), where the host sees
// 1.43 s against 1.32 s. Every VM file starts one to four sinter processes, so the VM stage runs
// the bundle (run.mjs passes SINTER_VM_MAIN to the guests; test/helpers/sinter-process.ts reads it).
//
// What the bundle runs is dist/ itself: rolldown only joins the modules, dynamic imports stay
// lazy chunks (the node wiring, the Kubernetes client, fsck), and every `import.meta.url` keeps the
// URL of the dist/ file it was in, so proto/csi.json, package.json, rbd_agent.py and the YAML
// parser's createRequire resolve as they do from dist/ (the guest sees the checkout at the same path).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CHECKOUT } from './harness.mjs';

export const BUNDLE_DIR = join(CHECKOUT, '.tmp', 'vm-bundle');
export const BUNDLE_MAIN = join(BUNDLE_DIR, 'main.mjs');

/** Bundles dist/main.js (build first) into BUNDLE_DIR; returns the entry's path. */
export async function bundleSinter() {
  const { rolldown } = await import('rolldown');
  rmSync(BUNDLE_DIR, { recursive: true, force: true });
  const b = await rolldown({
    input: join(CHECKOUT, 'dist', 'main.js'),
    platform: 'node',
    logLevel: 'warn',
    plugins: [
      {
        name: 'keep-import-meta-url',
        transform(code, id) {
          return code.includes('import.meta.url') ? code.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(id).href)) : null;
        },
      },
    ],
  });
  try {
    await b.write({ dir: BUNDLE_DIR, format: 'esm', entryFileNames: 'main.mjs', chunkFileNames: '[name]-[hash].mjs' });
  } finally {
    await b.close();
  }
  return BUNDLE_MAIN;
}
