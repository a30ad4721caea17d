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
// Their perBackend tests also run for each LVM backend x target helper in test/vm/lvm-conformance-{thin,thick}.vm.test.ts,
// which imports these files under a query of its own (a module instance per combination).
const CONFORMANCE_IN_VM = ['controller-publish', 'node', 'controller-volumes', 'static-volumes', 'identity', 'publish-topology', 'snapshots'].map(
  (f) => `test/conformance/${f}.test.ts`,
);

/** Host files that drive a guest of their own (test/vm/README.md, "Host-driven guests"). */
const GUEST_DRIVEN = 'test/**/*.guest.test.ts';

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
          exclude: ['**/node_modules/**', ...VM_TESTS, GUEST_DRIVEN],
          globalSetup: ['test/global-setup.ts', 'test/ceph-global-setup.ts'],
        },
      },
      {
        extends: true,
        test: {
          // Host tests that boot a VM guest of their own and drive it (test/helpers/guest-agent.ts). They use
          // no loop device, mount or daemon the host files look at, so scripts/test.sh runs them beside the
          // host project, on the core its one-file-at-a-time run leaves idle.
          name: 'guest-driven',
          include: [GUEST_DRIVEN],
          globalSetup: ['test/global-setup.ts'],
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
          exclude: ['**/node_modules/**'],
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
