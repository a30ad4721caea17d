import type { Logger } from 'pino';
import type { Executor } from '../../exec/run.js';

const MiB = 1024 * 1024;

/**
 * Copies (or, from /dev/zero, clears) the first `bytes` of a block device
 * with dd, in steps so the log shows progress: a thick clone or a
 * volume_clear of a large LV takes minutes. Direct I/O keeps the copy out of
 * the page cache; the last step flushes.
 */
export async function blockCopy(exec: Executor, log: Logger, opts: { from: string; to: string; bytes: number; what: string }): Promise<void> {
  const totalMiB = Math.ceil(opts.bytes / MiB);
  const step = Math.max(64, Math.ceil(totalMiB / 20));
  const started = performance.now();
  for (let off = 0; off < totalMiB; off += step) {
    const count = Math.min(step, totalMiB - off);
    const last = off + count >= totalMiB;
    const args = [`if=${opts.from}`, `of=${opts.to}`, 'bs=1M', `count=${count}`, `seek=${off}`, 'oflag=direct', 'status=none'];
    if (opts.from !== '/dev/zero') args.push(`skip=${off}`, 'iflag=direct');
    if (last) args.push('conv=fsync');
    await exec.run('dd', args, { timeoutMs: 10 * 60_000 });
    const done = off + count;
    log.info({ what: opts.what, doneMiB: done, totalMiB, percent: Math.round((done / totalMiB) * 100), ms: Math.round(performance.now() - started) }, `${opts.what}: ${done} of ${totalMiB} MiB`);
  }
}
