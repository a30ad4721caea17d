import { existsSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Plugin } from 'vite';
import { defineConfig } from 'vitest/config';

// Tests that need a real Linux kernel (iscsi_tcp, device-mapper, LIO …) are
// named *.vm.test.ts and run only in the `vm` project, inside one guest booted
// by test/vm/run.mjs (scripts/test.sh's VM stage); the host run never sees them.
const VM_TESTS = ['test/**/*.vm.test.ts'];
// The `vm` project exists only inside the guest (its init sets SINTER_IN_VM), so
// a plain `npx vitest run` on the host runs the host project alone.
const IN_VM = process.env.SINTER_IN_VM === '1';
// The conformance suite once more in the guest, with the kernel initiator under the node half
// (test/helpers/conformance.ts). publish-topology drives only the controller half and tgtd, the
// same as on the host.
const CONFORMANCE_IN_VM = ['controller-publish', 'node', 'controller-volumes', 'static-volumes', 'identity', 'publish-topology', 'snapshots'].map(
  (f) => `test/conformance/${f}.test.ts`,
);
// VM files too long for the VM stage's budget, run only with SINTER_VM_LONG=1 in the guest:
// the LVM × target-helper lifecycle matrix, ~16 min at host load ~21 (its set-up, a controller with six LVM
// backends and a node, alone 284 s there; the six combinations 664 s), test/vm/README.md.
// Kernel RBD (test/vm/rbd-kernel.vm.test.ts) starts a Ceph cluster inside the guest: ~65-100 s for the
// cluster and ~75 s for sinter's first pool calls under TCG, ~280 s in all, over the VM stage's budget.
const VM_LONG = process.env.SINTER_VM_LONG === '1' ? [] : ['test/vm/lvm-lifecycle.vm.test.ts', 'test/vm/rbd-kernel.vm.test.ts'];

// In the guest, a test's imports of src/ load the dist/ the host built (run.mjs builds first; the sinter
// processes the tests start run the same files), through Node's own loader: vite's module runner
// transforming and evaluating src/'s ~100 TypeScript modules under TCG cost more than the files'
// tests (2 small files: transform 26 s + import 49 s, host load ~7). The test files and test/helpers
// are still TypeScript through vite. SINTER_VM_SRC=1 goes back to src/ (to debug with its line numbers).
const ROOT = dirname(fileURLToPath(import.meta.url));
const SRC = join(ROOT, 'src') + '/';
const DIST = join(ROOT, 'dist') + '/';
const DIST_FOR_SRC = IN_VM && process.env.SINTER_VM_SRC !== '1';
function distForSrc(): Plugin {
  return {
    name: 'sinter-vm-dist-for-src',
    enforce: 'pre',
    resolveId(source, importer) {
      if (!importer || !source.startsWith('.') || !source.endsWith('.js')) return null;
      const abs = resolve(dirname(importer), source);
      if (!abs.startsWith(SRC)) return null;
      const js = join(DIST, relative(SRC, abs));
      // Only with a build: without one the import fails on src/ as it would on the host, not on a missing dist/.
      return existsSync(js) ? js : null;
    },
  };
}

export default defineConfig({
  test: {
    // Integration tests share loop devices and mounts on one host; running test
    // files one at a time keeps their resource checks meaningful.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: {
          name: 'host',
          include: ['test/**/*.test.ts'],
          exclude: ['**/node_modules/**', ...VM_TESTS],
          globalSetup: ['test/global-setup.ts', 'test/ceph-global-setup.ts'],
        },
      },
      ...(IN_VM ? [{
        extends: true as const,
        plugins: DIST_FOR_SRC ? [distForSrc()] : [],
        test: {
          name: 'vm',
          // The guest runs the dist/ the host built (run.mjs builds first): tsc
          // under TCG would cost a minute, and the checkout is shared.
          // and the conformance suite, once more with the kernel initiator.
          include: [...VM_TESTS, ...CONFORMANCE_IN_VM],
          // One worker for every file, modules loaded once: under TCG a fresh fork per file, with
          // vitest's runtime and the test's module graph (grpc-js, proto-loader, execa, pino, src/)
          // loaded again, cost ~25 s a file, more than most files' tests. The files share no state
          // through modules (each starts and stops its own daemons and processes in its hooks);
          // fileParallelism: false (above) keeps them one at a time.
          isolate: false,
          exclude: ['**/node_modules/**', ...VM_LONG],
          // Node in the guest is ~7x slower than on the host.
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // dist/ goes to Node's own import, as node_modules does.
          server: { deps: { external: DIST_FOR_SRC ? [/\/node_modules\//, new RegExp(`^${DIST.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)] : [] } },
          env: { SINTER_CONFORMANCE_TRANSPORT: process.env.SINTER_CONFORMANCE_TRANSPORT ?? 'iscsi-kernel', SINTER_TEST_SLOW: '8' },
        },
      }] : []),
    ],
  },
});
