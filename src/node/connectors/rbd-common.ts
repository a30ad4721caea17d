import { createHash } from 'node:crypto';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../errors/domain-error.js';

/** What the two rbd attach modes (user space in rbd.ts, kernel in rbd-kernel.ts) share. */
export type RbdContext = Extract<PublishContext, { transport: 'rbd' }>;

export function asRbd(ctx: PublishContext): RbdContext {
  if (ctx.transport !== 'rbd') throw new Error(`rbd connector got a ${ctx.transport} context`);
  return ctx;
}

/** A short, path-safe name for one image's attachment state (pool and image names may hold any character). */
export function imageKey(c: { pool: string; image: string }): string {
  return createHash('sha256').update(`${c.pool}\n${c.image}`).digest('hex').slice(0, 20);
}

/** Where the key comes from: the stage secrets (ceph-csi's `userID`/`userKey`), else the node config. */
export function rbdCredentials(secrets: Record<string, string>, cfg: { user?: string; keyFile?: string }): { user: string; key?: string; keyFile?: string } {
  if (secrets.userKey) return { user: secrets.userID || cfg.user || 'admin', key: secrets.userKey };
  if (cfg.keyFile) return { user: cfg.user ?? 'admin', keyFile: cfg.keyFile };
  throw failedPrecondition(
    'this node has no cephx key for rbd volumes: set node.rbd.keyFile (and node.rbd.user) in the node config, or give the StorageClass a node-stage secret with userID and userKey',
  );
}
