// The conformance files' perBackend tests against LVM thin, exported through tgt, LIO and nvmet (issue #14):
// see test/vm/lvm-conformance.ts.
import { lvmConformance } from './lvm-conformance.js';

lvmConformance(['lvm-thin-tgt', 'lvm-thin-lio', 'lvm-thin-nvmet']);
