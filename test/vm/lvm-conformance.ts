// The conformance suite against each LVM backend x target helper combination (issue #14): thin and thick,
// exported through tgt, LIO and nvmet, with the kernel initiators (open-iscsi, nvme-tcp) under the node half.
//
// The tests are the conformance files' own (test/conformance/), not copies: for each combination this file
// binds the transport (bindConformance) and imports the files once more under a query of their own, which
// makes a module instance of its own whose suites register here, inside the combination's describe (the vm
// project loads modules once per guest, and the same files also run as themselves for iscsi-kernel). Only
// their perBackend tests register: publish (idempotent, a second node refused for single-node, two nodes for
// a multi-node mode, unpublish idempotent, the records across a restart), stage/publish of a mount and a
// block volume through the kernel initiator with the bytes read back from the LV and nothing left after
// unstage, create/delete idempotency, a snapshot restored and a volume cloned, expand. Tests of the
// services' own request checks do not depend on the backend and run once, in the files' own run.
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
  for (const transport of transports) registerCombo(transport);
}

function registerCombo(transport: LvmTransport): void {
  describe(transport, async () => {
    const combo = matrixCombo(transport);
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
