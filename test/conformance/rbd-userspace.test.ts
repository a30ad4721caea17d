// The conformance suite once more against the rbd backend (issue #15): `sinter all` with an rbd backend on a
// pool of its own on the host run's shared Ceph cluster (test/ceph-global-setup.ts), the node half attaching
// in user space (qemu-nbd's rbd driver → nbdfuse → loop). The files that start sinter through
// startConformanceSinter run here unchanged; test/helpers/conformance.ts reads and changes volumes through
// `rbd` where the file backend's helpers read image files. publish-topology and static-volumes configure
// file backends of their own and are not repeated.
//
// One file for the five: the transport is read when test/helpers/conformance.ts loads, so it is set before
// the suite's modules are imported, and they share this file's worker.
process.env.SINTER_CONFORMANCE_TRANSPORT = 'rbd-userspace';
await import('./identity.test.js');
await import('./controller-volumes.test.js');
await import('./controller-publish.test.js');
await import('./snapshots.test.js');
await import('./node.test.js');
