// The conformance suite against each LVM backend x target helper combination (issue #14): thin and thick,
// exported through tgt, LIO and nvmet, with the kernel initiators (open-iscsi, nvme-tcp) under the node half.
//
// The tests are the conformance files' own (test/conformance/), not copies: for each combination this file
// binds the transport (bindConformance) and imports the files once more under a query of their own, which
// makes a module instance of its own whose suites register here, inside the combination's describe (the vm
// project loads modules once per guest, and the same files also run as themselves for iscsi-kernel). Only
// their perBackend tests register: publish (idempotent, a second node refused for single-node, two nodes for
// a multi-node mode, unpublish idempotent), stage/publish of a mount and a block volume through the kernel
// initiator with the bytes read back from the LV and nothing left after unstage. The perBackendType tests,
// the backend's own work the helper takes no part in (create/delete idempotency, a snapshot restored and a
// volume cloned, expand, the publish records across a restart), run in the first combination of each LVM
// type only (~35 s of VM time a combination; CI's VM stage reached 18 min with them in all six). Tests of
// the services' own request checks do not depend on the backend and run once, in the files' own run.
//
// Cost: one VG, iscsid and one `sinter node` per file; per combination one `sinter controller` shared by
// its suites (started again by the restart case), and a tgtd for tgt. Two files, thin and thick
// (lvm-conformance-thin.vm / -thick.vm), so the VM stage's two guests can take one each.
import { afterAll, beforeAll, describe } from 'vitest';
import { bindConformance, endMatrix, matrixCombo, startMatrix, type LvmTransport } from '../helpers/conformance.js';
import { requireGuest } from './guest.js';

/** The conformance files with perBackend tests, in the order a combination runs them (the restart case first, so later suites use the restarted sinter). */
const FILES = ['controller-publish', 'controller-volumes', 'snapshots', 'node'];

/** Registers the matrix for these combinations in the calling test file. */
export function lvmConformance(transports: readonly LvmTransport[]): void {
  requireGuest();
  beforeAll(() => startMatrix(transports));
  afterAll(endMatrix);
  // The first combination of the type also runs the backend's own tests (perBackendType).
  transports.forEach((transport, i) => registerCombo(transport, i === 0));
}

function registerCombo(transport: LvmTransport, backendType: boolean): void {
  describe(transport, async () => {
    const combo = matrixCombo(transport, backendType);
    afterAll(() => combo.end());
    try {
      for (const f of FILES) {
        bindConformance(combo);
        // A path the type checker does not resolve: the query makes a module instance of this combination's own.
        const spec = `../conformance/${f}.test.ts?${transport}`;
        await import(/* @vite-ignore */ spec);
      }
    } finally {
      bindConformance(undefined);
    }
  });
}
