// The conformance files' perBackend tests against LVM thick, exported through tgt, LIO and nvmet (issue #14):
// see test/vm/lvm-conformance.ts.
import { lvmConformance } from './lvm-conformance.js';

lvmConformance(['lvm-thick-tgt', 'lvm-thick-lio', 'lvm-thick-nvmet']);
