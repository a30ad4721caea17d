import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Integration and conformance tests run the built CLI (dist/main.js), as a user would.
 *
 * The build must not disturb tests already running from this checkout: the
 * crash test starts `node dist/main.js` hundreds of times over half an hour,
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
