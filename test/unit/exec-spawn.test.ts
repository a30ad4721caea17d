import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ExecError, HostExecutor } from '../../src/exec/run.js';

const dir = mkdtempSync(join(tmpdir(), 'sinter-exec-spawn-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 5000 });

/** Field 6 of /proc/<pid>/stat: the session id (after the parenthesised command name). */
const sessionOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[3]);

describe('HostExecutor spawns (real processes)', () => {
  it('spawnPiped: talks over stdin/stdout, stderr goes to the 0600 log file, the secret is masked in the shown line', async () => {
    const log = join(dir, 'piped.log');
    const p = await exec.spawnPiped('sh', ['-c', 'echo to-log >&2; while read l; do echo "got $l"; done', 's3cret'], { logFile: log, secrets: ['s3cret'] });
    try {
      expect(p.shown).not.toContain('s3cret');
      const lines = createInterface({ input: p.stdout });
      const first = once(lines, 'line');
      p.stdin.write('ping\n');
      expect((await first)[0]).toBe('got ping');
      expect(sessionOf(p.pid)).not.toBe(p.pid);
    } finally {
      p.kill();
    }
    expect(await p.exited).toEqual({ exitCode: undefined, signal: 'SIGKILL' });
    expect(readFileSync(log, 'utf8')).toBe('to-log\n');
    expect(statSync(log).mode & 0o777).toBe(0o600);
  });

  it('spawnDaemon: runs in its own session with stdout and stderr appended to the log file', async () => {
    const log = join(dir, 'daemon.log');
    const d = await exec.spawnDaemon('sh', ['-c', 'echo out; echo err >&2; exit 3'], { logFile: log });
    expect(await d.exited).toEqual({ exitCode: 3, signal: undefined });
    expect(readFileSync(log, 'utf8').split('\n').sort()).toEqual(['', 'err', 'out']);
    const s = await exec.spawnDaemon('sleep', ['30']);
    try {
      expect(sessionOf(s.pid)).toBe(s.pid);
    } finally {
      process.kill(s.pid, 'SIGKILL');
    }
    expect((await s.exited).signal).toBe('SIGKILL');
  });

  it('a command that cannot start is an ExecError naming it, from both', async () => {
    for (const spawn of [exec.spawnPiped.bind(exec), exec.spawnDaemon.bind(exec)]) {
      const e = await spawn('/nonexistent/sinter-no-such-binary', [], {}).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(ExecError);
      expect((e as ExecError).message).toMatch(/sinter-no-such-binary/);
    }
  });
});
