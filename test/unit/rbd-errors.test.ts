import { PassThrough } from 'node:stream';
import { createInterface } from 'node:readline';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { RbdAgent } from '../../src/backends/rbd/agent.js';
import { CephCli, CephCommandError, cephErrnoError, Errno, toCephError } from '../../src/backends/rbd/cli.js';
import { CephKeys } from '../../src/backends/rbd/credentials.js';
import { Code } from '../../src/errors/domain-error.js';
import { ExecError, type DaemonExit, type Executor, type PipedProcess, type PipeSpawner } from '../../src/exec/run.js';

const keys = new CephKeys('ceph', { user: 'sinter', keyFile: '/etc/sinter/ceph.key', keyFrom: 'file' }, pino({ level: 'silent' }));
const conn = { monitors: ['10.0.0.1:3300'], user: 'sinter', keys, timeoutMs: 5000 };

/**
 * The agent's side of the JSON-lines protocol, modelled from src/backends/rbd/rbd_agent.py (this
 * repository): a hello answer with id 0, then {"id","ok":false,"errno","error"} per failed request.
 */
function fakeAgent(errno: number | null, error: string): PipeSpawner {
  return {
    async spawnPiped(): Promise<PipedProcess> {
      const stdin = new PassThrough();
      const stdout = new PassThrough();
      let exit: (x: DaemonExit) => void = () => undefined;
      const exited = new Promise<DaemonExit>((r) => (exit = r));
      let first = true;
      createInterface({ input: stdin }).on('line', (line) => {
        if (first) {
          first = false;
          stdout.write(JSON.stringify({ id: 0, ok: true, result: { instanceId: 4117 } }) + '\n');
          return;
        }
        const { id } = JSON.parse(line) as { id: number };
        stdout.write(JSON.stringify({ id, ok: false, errno, error }) + '\n');
      });
      return { pid: 1, shown: 'python3 rbd_agent.py', stdin, stdout, exited, kill: () => exit({ exitCode: undefined, signal: 'SIGTERM' }) };
    },
  };
}

/** The rbd CLI exits with the errno (rbd's main returns -r); the executor reports that as ExecError. */
const failingExec = (exitCode: number, stderr: string): Executor => ({
  run: async (cmd) => {
    throw new ExecError(cmd, exitCode, stderr, false);
  },
});

async function viaAgent(errno: number, error: string): Promise<CephCommandError> {
  const agent = new RbdAgent(conn, fakeAgent(errno, error), pino({ level: 'silent' }));
  try {
    return await agent.call('remove', { image: 'x' }, 'removing image x').then(() => expect.fail('the call succeeded'));
  } catch (e) {
    return e as CephCommandError;
  } finally {
    agent.stop();
  }
}

async function viaCli(errno: number, stderr: string): Promise<CephCommandError> {
  const cli = new CephCli(conn, failingExec(errno, stderr));
  return cli.rbd(['rm', 'kube/x'], 'removing image x').then(
    () => expect.fail('the call succeeded'),
    (e: unknown) => e as CephCommandError,
  );
}

describe('Ceph errno → domain error, one mapping for the agent and the CLI', () => {
  const cases: [string, number, CephCommandError['code'], RegExp][] = [
    ['ENOENT', Errno.ENOENT, Code.NOT_FOUND, /^removing image x: not found \(/],
    ['EEXIST', Errno.EEXIST, Code.ALREADY_EXISTS, /^removing image x: already exists \(/],
    ['EBUSY', Errno.EBUSY, Code.FAILED_PRECONDITION, /^removing image x: in use \(/],
    ['ENOTEMPTY', Errno.ENOTEMPTY, Code.FAILED_PRECONDITION, /^removing image x: in use \(/],
    ['ENOSPC', Errno.ENOSPC, Code.RESOURCE_EXHAUSTED, /^removing image x: the pool is full \(/],
    ['EACCES', Errno.EACCES, Code.PERMISSION_DENIED, /Ceph refused client\.sinter .*"profile rbd" on the pool$/],
    ['ETIMEDOUT', Errno.ETIMEDOUT, Code.UNAVAILABLE, /monitors \(10\.0\.0\.1:3300\) did not answer in time .*check that they run/],
    ['EIO (unmapped)', Errno.EIO, Code.INTERNAL, /^removing image x failed \(errno 5\): /],
  ];
  for (const [name, errno, code, msg] of cases) {
    it(`${name}: the agent and the CLI fail with the same code, errno and message`, async () => {
      const detail = 'rbd: delete error: (n) something';
      const a = await viaAgent(errno, detail);
      const c = await viaCli(errno, `2026-12-06T10:00:00.000+0000 7f00 -1 ${detail}\n`);
      for (const e of [a, c]) {
        expect(e).toBeInstanceOf(CephCommandError);
        expect(e.code).toBe(code);
        expect(e.errno).toBe(errno);
        expect(e.message).toMatch(msg);
      }
      expect(a.message).toBe(c.message);
    });
  }

  it('EPERM from librbd is a refused user too', () => {
    expect(cephErrnoError('opening image x', Errno.EPERM, 'PermissionError', conn).code).toBe(Code.PERMISSION_DENIED);
  });

  it('leaves host paths out of the message but keeps pool/image specs', () => {
    const e = cephErrnoError('opening image kube/x', Errno.ENOENT, "unable to read key from '/etc/sinter/ceph.key' for kube/x in /var/run/ceph/asok", conn);
    expect(e.message).not.toMatch(/\/etc\/|\/var\//);
    expect(e.message).toContain("'<path>'");
    expect(e.message).toContain('for kube/x in <path>');
  });

  it('a CLI that timed out or was refused by auth is mapped by its stderr, not its exit code (the ceph CLI exits 1 for any failure)', () => {
    const slow = toCephError(new ExecError('ceph', undefined, '', true), 'listing pools', conn);
    expect(slow.code).toBe(Code.UNAVAILABLE);
    expect((slow as CephCommandError).errno).toBe(Errno.ETIMEDOUT);
    const refused = toCephError(new ExecError('ceph', 1, 'monclient(hunting): handle_auth_bad_method server allowed_methods [2] but i only support [2]', false), 'listing pools', conn);
    expect(refused.code).toBe(Code.PERMISSION_DENIED);
    expect(refused.message).not.toContain('/etc/sinter/ceph.key');
  });

  it('a CLI that is not installed says which package to install', () => {
    const e = toCephError(new ExecError('rbd', undefined, 'spawn rbd ENOENT', false), 'creating image x', conn);
    expect(e.code).toBe(Code.FAILED_PRECONDITION);
    expect(e.message).toMatch(/install ceph-common/);
  });
});
