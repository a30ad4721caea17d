// sinter's entry as a bundle: dist/'s modules (sinter's and node_modules') joined into a couple
// of dozen chunks in dist/bundle/, run as `node dist/bundle/main.mjs` (the image's entrypoint, the
// tests', the bench's). `npm run build` makes it, and so does every vitest run (test/global-setup.ts).
//
// Node's ESM loader resolves, reads and links ~540 modules one by one at every start. Joined,
// `sinter controller` answered its first Probe in 321 ms instead of 377 and `sinter all` in 366
// instead of 452 (medians of 8 alternating starts, 2026-12-07); under qemu TCG (the VM stage) a
// `sinter node` start took 14-28 s instead of 35-40 s.
//
// What the bundle runs is dist/ itself: rolldown only joins the modules; dynamic imports stay
// lazy chunks (the node wiring, the Kubernetes client, fsck), and each `import.meta.url` becomes
// the URL of the dist/ file it was in, relative to the chunk, so proto/csi.json, package.json,
// rbd_agent.py, the read-ahead worker and the YAML parser's createRequire resolve as they do from
// dist/, wherever dist/ is (the image copies it to /app/dist).
//
// A rebuild must not disturb a sinter starting from the bundle meanwhile (the crash test starts
// hundreds), so the chunks are written beside it and only files whose content changed are moved
// in, each with one rename, the entry last; chunk names carry a content hash. A chunk the new
// build no longer has is removed once it is an hour old (a process that started from the old
// entry may still import it lazily).
//   node scripts/bundle.mjs [DIST_DIR]      (default: this checkout's dist/)
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ENTRY = 'main.mjs';
/**
 * Which modules each chunk holds ({ "app-….mjs": ["dist/app.js", "node_modules/…", …] }, paths from the
 * package root), so a test can tell what a start loaded (test/integration/startup-modules.test.ts).
 */
export const MODULES_FILE = 'modules.json';
const STALE_MS = 60 * 60 * 1000;

/** Bundles DIST/main.js (tsc first) into DIST/bundle; returns the entry's path. */
export async function bundleSinter(dist = join(ROOT, 'dist')) {
  const { rolldown } = await import('rolldown');
  const outDir = join(dist, 'bundle');
  const scratch = mkdtempSync(join(dist, '.bundle-'));
  try {
    const b = await rolldown({
      input: join(dist, 'main.js'),
      platform: 'node',
      logLevel: 'warn',
      plugins: [
        {
          name: 'keep-import-meta-url',
          transform(code, id) {
            // \0: rolldown's own virtual modules (its runtime), which are no file of dist/.
            if (id.startsWith('\0') || !code.includes('import.meta.url')) return null;
            // Every chunk lands in outDir, so the original file is this path away from any of them.
            const rel = relative(outDir, id).split(sep).join('/');
            return code.replaceAll('import.meta.url', `new URL(${JSON.stringify(rel)}, import.meta.url).href`);
          },
        },
      ],
    });
    try {
      const { output } = await b.write({ dir: scratch, format: 'esm', entryFileNames: ENTRY, chunkFileNames: '[name]-[hash].mjs' });
      const root = dirname(dist);
      const held = Object.fromEntries(output.filter((o) => o.type === 'chunk').map((c) => [c.fileName, c.moduleIds.filter((id) => !id.startsWith('\0')).map((id) => relative(root, id).split(sep).join('/'))]));
      writeFileSync(join(scratch, MODULES_FILE), `${JSON.stringify(held, null, 1)}\n`);
    } finally {
      await b.close();
    }
    mkdirSync(outDir, { recursive: true });
    const built = new Set(readdirSync(scratch));
    for (const f of [...built].filter((f) => f !== ENTRY).concat(ENTRY)) {
      const to = join(outDir, f);
      if (!existsSync(to) || !readFileSync(to).equals(readFileSync(join(scratch, f)))) renameSync(join(scratch, f), to);
    }
    for (const f of readdirSync(outDir)) {
      if (!built.has(f) && Date.now() - statSync(join(outDir, f)).mtimeMs > STALE_MS) rmSync(join(outDir, f), { force: true });
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return join(outDir, ENTRY);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await bundleSinter(process.argv[2] ? resolve(process.argv[2]) : undefined);
}
