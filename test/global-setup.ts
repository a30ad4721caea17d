import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Integration and conformance tests run the built CLI as a user would: the bundle of dist/
 * (dist/bundle/main.mjs, scripts/bundle.mjs), which is what the image runs.
 *
 * The build must not disturb tests already running from this checkout: the
 * crash test starts sinter hundreds of times over half an hour,
 * and every vitest run passes through here. tsc rewrites every output file in
 * place (truncate, then write), so a sinter starting meanwhile loaded a mix of
 * old and new or half-written modules (seen: "Cannot read properties of
 * undefined" from a stage.js newer than the service.js that built its deps).
 * So tsc writes into a scratch directory next to dist/, and only files whose
 * content changed are moved over, each with one rename: an unchanged build
 * touches nothing, and no module is ever seen half-written.
 */
export default async function setup(): Promise<void> {
  // Beside dist/ (same file system, so a rename is atomic; same depth, so the source maps' relative paths match).
  const scratch = mkdtempSync(join(ROOT, '.dist-build-'));
  try {
    await execa('npx', ['tsc', '-p', 'tsconfig.json', '--outDir', scratch], { cwd: ROOT, stdio: 'inherit' });
    syncInto(scratch, join(ROOT, 'dist'));
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  // Moves in only what changed, the entry last, as above.
  const { bundleSinter } = (await import(new URL('../scripts/bundle.mjs', import.meta.url).href)) as { bundleSinter: () => Promise<string> };
  await bundleSinter();
}

function syncInto(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const e of readdirSync(from, { withFileTypes: true })) {
    const src = join(from, e.name);
    const dst = join(to, e.name);
    if (e.isDirectory()) syncInto(src, dst);
    else if (!existsSync(dst) || !readFileSync(src).equals(readFileSync(dst))) renameSync(src, dst);
  }
}
