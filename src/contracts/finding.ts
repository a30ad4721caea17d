/**
 * One thing a consistency check (`sinter fsck`, a backend's inspect(), the
 * node's orphan report) found out of step, and who puts it right:
 *
 * - `restart`: the next start of sinter repairs it on its own (an interrupted
 *   create rolled back, a delete rolled forward, a stray temp file removed, an
 *   unused loop device nobody records detached);
 * - `retry`: the CO's retry of the interrupted or failed RPC finishes it
 *   (kubelet and the sidecars retry by themselves; a person can re-run it);
 * - `operator`: sinter will not touch it: a person must look (a missing image,
 *   an unreadable record, a mount nobody records that may be someone's).
 */
export type Remedy = 'restart' | 'retry' | 'operator';

export interface Finding {
  /** Stable, kebab-case: `interrupted-create`, `orphan-image`, `untracked-device` … */
  kind: string;
  /** What it is about: a volume or snapshot id, a file, a device, a mount point. */
  subject: string;
  /** One line for a person: what is wrong and what will happen. */
  detail: string;
  remedy: Remedy;
}
