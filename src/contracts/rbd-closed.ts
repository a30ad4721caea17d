/**
 * The node's word that it has closed an rbd image: an image-meta key on the
 * image itself, set by the node once NodeUnstageVolume has taken its client
 * away (unmapped, qemu-nbd gone) and removed by NodeStageVolume before it
 * opens the image again.
 *
 * Why: at ControllerUnpublishVolume the controller must fence every client of
 * the leaving node that could still write. A client whose watch is gone may
 * have closed the image (a clean unstage) or be cut off by a partition and
 * write again once it heals; a reader never took the exclusive lock, so the
 * lock cannot tell the two apart. Only the node can say it closed the image,
 * and a partitioned node cannot say so: with the key present and no lock held
 * the recorded clients are gone and nothing is blocklisted; without it they
 * are fenced (harmless for a client that is gone: its nonce is never reused).
 */
export const RBD_CLOSED_META_PREFIX = 'sinter.closed.';

/** The key for one node (its node id's host part, already restricted to [A-Za-z0-9._-]). */
export function rbdClosedMetaKey(host: string): string {
  return RBD_CLOSED_META_PREFIX + host;
}
