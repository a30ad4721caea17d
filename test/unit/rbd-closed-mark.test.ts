import { describe, expect, it } from 'vitest';
import { rbdClosedMetaKey } from '../../src/contracts/rbd-closed.js';
import { ExecError, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { RbdClosedMark } from '../../src/node/connectors/rbd-closed-mark.js';

/** Records each rbd call; answers with the scripted stderr and exit code (0: success). */
function fakeRbd(answer: (args: string[]) => { exitCode: number; stderr?: string } = () => ({ exitCode: 0 })) {
  const calls: string[][] = [];
  const exec: Executor = {
    run(cmd: string, args: string[], _o?: ExecOptions): Promise<ExecResult> {
      calls.push([cmd, ...args]);
      const a = answer(args);
      if (a.exitCode !== 0) return Promise.reject(new ExecError(`${cmd} ${args.join(' ')}`, a.exitCode, a.stderr ?? '', false));
      const ok: ExecResult = { stdout: '', stderr: '', exitCode: 0 };
      return Promise.resolve(ok);
    },
  };
  return { exec, calls };
}

const ctx = { transport: 'rbd' as const, pool: 'kube', image: 'csi-vol-1', monitors: ['v2:10.0.0.1:3300', 'v2:10.0.0.2:3300'] };
const cfg = { nodeHost: 'worker-3', user: 'k8s-node', keyFile: '/etc/ceph/node.key' };

describe('the node\'s closed mark on an rbd image (src/contracts/rbd-closed.ts)', () => {
  it('set after unstage: image-meta set of sinter.closed.<host> with the node\'s own key, explicit monitors, no ceph.conf', async () => {
    const f = fakeRbd();
    await new RbdClosedMark(cfg, f.exec).set(ctx);
    expect(f.calls).toHaveLength(1);
    const [cmd, ...args] = f.calls[0];
    expect(cmd).toBe('rbd');
    expect(args.slice(0, 2)).toEqual(['image-meta', 'set']);
    expect(args).toEqual(expect.arrayContaining(['--conf', '/dev/null', '--id', 'k8s-node', '--keyfile', '/etc/ceph/node.key', '-m', 'v2:10.0.0.1:3300,v2:10.0.0.2:3300', 'kube/csi-vol-1', 'sinter.closed.worker-3']));
    expect(rbdClosedMetaKey('worker-3')).toBe('sinter.closed.worker-3');
    // The value: when the node closed it (an ISO time), for the operator reading image-meta.
    expect(new Date(args[args.length - 1]).getTime()).toBeGreaterThan(Date.now() - 60_000);
  });

  it('a failed set does not fail the unstage (the controller then fences a client that is gone: harmless)', async () => {
    const f = fakeRbd(() => ({ exitCode: 1, stderr: 'rbd: error connecting to the cluster' }));
    const warned: unknown[] = [];
    const log = { warn: (o: unknown) => warned.push(o) } as unknown as import('pino').Logger;
    await expect(new RbdClosedMark(cfg, f.exec, log).set(ctx)).resolves.toBeUndefined();
    expect(warned).toHaveLength(1);
  });

  it('clear before a stage opens the image: image-meta remove; no mark there is the usual case, not an error', async () => {
    const f = fakeRbd(() => ({ exitCode: 2, stderr: 'rbd: failed to remove metadata sinter.closed.worker-3 of image : (2) No such file or directory' }));
    await new RbdClosedMark(cfg, f.exec).clear(ctx);
    expect(f.calls[0]?.slice(0, 3)).toEqual(['rbd', 'image-meta', 'remove']);
    expect(f.calls[0]?.slice(-2)).toEqual(['kube/csi-vol-1', 'sinter.closed.worker-3']);
  });

  it('a clear that fails otherwise fails the stage as UNAVAILABLE (retried): a stale mark must never speak for the new client', async () => {
    const f = fakeRbd(() => ({ exitCode: 110, stderr: 'monclient(hunting): authenticate timed out after 10\nrbd: couldn\'t connect to the cluster!' }));
    const err = await new RbdClosedMark(cfg, f.exec).clear(ctx).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'unavailable' });
    expect((err as Error).message).toMatch(/closed mark .*sinter\.closed\.worker-3.* kube\/csi-vol-1.*couldn't connect/);
  });
});
