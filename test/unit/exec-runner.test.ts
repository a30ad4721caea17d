import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { CommandRunner, COMMAND_RUNNER_PATH, decode, encode } from '../../src/exec/command-runner.js';
import { ExecError, HostExecutor } from '../../src/exec/run.js';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').startsWith('Z');
  } catch {
    return false;
  }
};
const childrenOf = (pid: number) =>
  readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
const until = async (what: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!what()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('host commands through the command runner (real perl, real processes)', () => {
  const exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 10_000 });

  it('the command is forked by the runner, not by this process, and answers as it would directly', async () => {
    const r = await exec.run('sh', ['-c', 'echo "$PPID"; printf "ü\\n" >&2; exit 3'], { okExitCodes: [3] });
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toBe('ü\n');
    const parent = Number(r.stdout.trim());
    expect(parent).not.toBe(process.pid);
    expect(cmdline(parent)).toContain('command_runner.pl');
    expect(childrenOf(process.pid)).toContain(parent);
  });

  it('a failing command is an ExecError with its exit code and stderr; output and input pass whole, 1 MiB each way', async () => {
    const e = await exec.run('sh', ['-c', 'echo nope >&2; exit 4']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecError);
    expect((e as ExecError).exitCode).toBe(4);
    expect((e as ExecError).stderr).toBe('nope\n');
    const big = 'sinter\n'.repeat(150_000);
    expect((await exec.run('cat', [], { input: big })).stdout).toBe(big);
    expect((await exec.run('head', ['-c', String(1 << 20), '/dev/zero'])).stdout).toHaveLength(1 << 20);
  });

  it('env adds to the environment; without input, stdin is empty; the command gets the default SIGPIPE', async () => {
    const r = await exec.run('sh', ['-c', 'echo "$SINTER_T1 $HOME"; cat; yes | head -n 1'], { env: { SINTER_T1: 'set' } });
    expect(r.stdout).toBe(`set ${process.env.HOME}\ny\n`);
    // With SIGPIPE ignored, yes would report the broken pipe on stderr.
    expect(r.stderr).toBe('');
  });

  it('a command inherits no descriptor beyond what a command forked by this process would (no other command\'s pipes)', async () => {
    const fdsAbove2 = async (e: HostExecutor) => {
      const busy = e.run('sleep', ['0.5']);
      const r = await e.run('ls', ['/proc/self/fd']);
      await busy;
      // ls's own directory handle is the highest-but-one it holds either way; both sides have it.
      return r.stdout.trim().split('\n').map(Number).filter((fd) => fd > 2).sort((a, b) => a - b);
    };
    const self = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 10_000, spawnVia: 'self' });
    expect(await fdsAbove2(exec)).toEqual(await fdsAbove2(self));
  });

  it('300 commands at once (more than the runner runs at a time: 256) each get their own answer', async () => {
    const got = await Promise.all(Array.from({ length: 300 }, (_, i) => exec.run('sh', ['-c', `sleep 0.5; echo ${i}; echo e${i} >&2`])));
    got.forEach((r, i) => expect([r.stdout, r.stderr]).toEqual([`${i}\n`, `e${i}\n`]));
  }, 30_000);

  it('a binary that does not exist is an ExecError naming it', async () => {
    const e = await exec.run('/nonexistent/sinter-no-such-binary', []).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecError);
    expect((e as ExecError).message).toMatch(/sinter-no-such-binary.*No such file/);
  });

  it('a timeout sends SIGTERM, then SIGKILL 2 s later to a command that ignores it, and is reported as timed out', async () => {
    let t = performance.now();
    const e1 = await exec.run('sleep', ['30'], { timeoutMs: 200 }).catch((x: unknown) => x);
    expect(e1).toBeInstanceOf(ExecError);
    expect((e1 as ExecError).timedOut).toBe(true);
    expect(performance.now() - t).toBeLessThan(1500);
    t = performance.now();
    const e2 = await exec.run('perl', ['-e', '$SIG{TERM}="IGNORE"; sleep 30'], { timeoutMs: 200 }).catch((x: unknown) => x);
    expect((e2 as ExecError).timedOut).toBe(true);
    const took = performance.now() - t;
    expect(took).toBeGreaterThan(2100);
    expect(took).toBeLessThan(4500);
  });

  it('output a command leaves to a process that outlives it is let go 2 s after the command exits, not waited for', async () => {
    const t = performance.now();
    const r = await exec.run('sh', ['-c', 'sleep 20 & echo started']);
    expect(r.stdout).toBe('started\n');
    expect(performance.now() - t).toBeLessThan(5000);
  });

  it('a runner killed mid-command fails that command as unknown, and the next command starts a new runner', async () => {
    const local = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 10_000 });
    const first = await local.run('sh', ['-c', 'echo $PPID']);
    const runnerPid = Number(first.stdout.trim());
    const pending = local.run('sleep', ['5']).catch((x: unknown) => x);
    await new Promise((r) => setTimeout(r, 200));
    process.kill(runnerPid, 'SIGKILL');
    const e = await pending;
    expect(e).toBeInstanceOf(ExecError);
    expect((e as ExecError).message).toMatch(/whether it ran is unknown/);
    const again = await local.run('sh', ['-c', 'echo $PPID']);
    expect(Number(again.stdout.trim())).not.toBe(runnerPid);
  });

  it('when the process that started it dies (SIGKILL; the built dist/), the runner stops the commands it runs and exits', async () => {
    const script = `
      import { HostExecutor } from ${JSON.stringify(new URL('../../dist/exec/run.js', import.meta.url).pathname)};
      const e = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 60000 });
      console.log((await e.run('sh', ['-c', 'echo $PPID'])).stdout.trim());
      e.run('sh', ['-c', 'echo $$ > /dev/stderr; exec sleep 60']).catch(() => {});
      setInterval(() => {}, 1000);`;
    const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(createInterface({ input: p.stdout }), 'line')) as [string];
    const runner = Number(line);
    let sleeper = 0;
    await until(() => {
      sleeper = childrenOf(runner).find((c) => cmdline(c).startsWith('sleep')) ?? 0;
      return sleeper > 0;
    });
    p.kill('SIGKILL');
    await until(() => !alive(runner) && !alive(sleeper));
  }, 20_000);
});

describe('CommandRunner on its own', () => {
  it('a runner that cannot start answers undefined (the caller forks itself) and says why, once', async () => {
    const why: string[] = [];
    const r = new CommandRunner('/nonexistent/command_runner.pl', (w) => why.push(w));
    expect(await r.run('true', [], { timeoutMs: 1000, graceMs: 100 })).toBeUndefined();
    expect(await r.run('true', [], { timeoutMs: 1000, graceMs: 100 })).toBeUndefined();
    expect(why).toHaveLength(1);
  });

  it('the script loads with perl-base\'s modules alone (Debian\'s Essential perl, all a slim image has) and says ready', () => {
    // perl-base's own module directory, from dpkg: @INC is cut down to it.
    const dir = spawnSync('dpkg', ['-L', 'perl-base'], { encoding: 'utf8' }).stdout.split('\n').find((l) => /\/perl-base$/.test(l));
    expect(dir, 'dpkg lists no perl-base module directory').toBeTruthy();
    const r = spawnSync('perl', ['-e', `BEGIN { @INC = (${JSON.stringify(dir)}) } do ${JSON.stringify(COMMAND_RUNNER_PATH)}; die $@ if $@`], { input: '', encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('1\n5:ready');
  });

  it('messages survive any split into chunks, with multi-byte text and empty fields', () => {
    const fields = ['7', 'exit', '', 'ü€', 'a:b\n3:c', ''];
    const bytes = Buffer.concat([encode(fields), encode(['ready'])]);
    for (let cut = 0; cut < bytes.length; cut++) {
      const head = decode(bytes.subarray(0, cut));
      if (head) expect(head.fields).toEqual(fields);
    }
    const whole = decode(bytes)!;
    expect(whole.fields).toEqual(fields);
    expect(decode(bytes.subarray(whole.used))!.fields).toEqual(['ready']);
  });

  it('with spawnVia self, commands are forked by this process (execa), as before', async () => {
    const self = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 10_000, spawnVia: 'self' });
    expect(Number((await self.run('sh', ['-c', 'echo $PPID'])).stdout.trim())).toBe(process.pid);
    const e = await self.run('sh', ['-c', 'exit 5']).catch((x: unknown) => x);
    expect((e as ExecError).exitCode).toBe(5);
  });
});
