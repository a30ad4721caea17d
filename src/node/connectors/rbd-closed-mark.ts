import type { Logger } from 'pino';
import { rbdClosedMetaKey } from '../../contracts/rbd-closed.js';
import { unavailable } from '../../errors/domain-error.js';
import { ExecError, type Executor } from '../../exec/run.js';
import type { RbdContext } from './rbd-common.js';

/**
 * Sets and clears this node's "closed" mark on an image (src/contracts/rbd-closed.ts)
 * with the node's own cephx key (node.rbd.keyFile). A node without a key file
 * never marks: the controller then fences its clients at every unpublish, the
 * safe side.
 */
export class RbdClosedMark {
  constructor(
    private readonly cfg: { nodeHost: string; user?: string; keyFile: string; timeoutMs?: number },
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {}

  private args(c: RbdContext, op: 'set' | 'remove', value?: string): string[] {
    const timeoutS = String(Math.max(5, Math.floor((this.cfg.timeoutMs ?? 60_000) / 2000)));
    const key = rbdClosedMetaKey(this.cfg.nodeHost);
    return ['image-meta', op, '--conf', '/dev/null', '--client_mount_timeout', timeoutS, '--id', this.cfg.user ?? 'admin', '--keyfile', this.cfg.keyFile, '-m', c.monitors.join(','), `${c.pool}/${c.image}`, key, ...(value === undefined ? [] : [value])];
  }

  /** Before the node opens the image: a mark left from an earlier unstage must not speak for the client about to be made. */
  async clear(c: RbdContext): Promise<void> {
    try {
      await this.exec.run('rbd', this.args(c, 'remove'), { timeoutMs: this.cfg.timeoutMs ?? 60_000 });
    } catch (e) {
      const text = e instanceof ExecError ? e.stderr : (e as Error).message;
      if (/No such file or directory|\(2\)/.test(text)) return; // no mark: the usual case
      throw unavailable(
        `could not clear this node's closed mark (image-meta ${rbdClosedMetaKey(this.cfg.nodeHost)}) on rbd image ${c.pool}/${c.image} before opening it: ${text.trim().split('\n').slice(-1)[0] ?? ''}; the stage is retried`,
      );
    }
  }

  /** After the node's client is gone. A failure only costs a needless blocklist entry at unpublish, so it is logged, not thrown. */
  async set(c: RbdContext): Promise<void> {
    try {
      await this.exec.run('rbd', this.args(c, 'set', new Date().toISOString()), { timeoutMs: this.cfg.timeoutMs ?? 60_000 });
    } catch (e) {
      const text = e instanceof ExecError ? e.stderr : (e as Error).message;
      this.log?.warn({ image: `${c.pool}/${c.image}`, err: text.trim().slice(-300) }, 'could not mark the rbd image closed by this node: its unpublish will blocklist the client it no longer has');
    }
  }
}
