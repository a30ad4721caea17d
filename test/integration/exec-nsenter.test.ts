import { copyFileSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { ExecError, HostExecutor } from '../../src/exec/run.js';
import { keyOf } from '../helpers/config-key.js';
import { waitFor } from '../helpers/sinter-process.js';

/**
 * exec.mode nsenter with exec.nsenterTarget iscsid: host commands run in the
 * mount and net namespaces of the process named iscsid. A stand-in "iscsid"
 * (a copy of sleep under that name) runs in network and mount namespaces of
 * its own, so a command that lands in them is told apart from one that runs
 * in ours.
 */
describe('exec nsenter into iscsid\'s namespaces (a stand-in process named iscsid in its own net and mount namespaces)', () => {
  let dir: string;
  let iscsid: ResultPromise | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sinter-nsenter-'));
    copyFileSync('/bin/sleep', join(dir, 'iscsid'));
  });
  afterAll(async () => {
    iscsid?.kill('SIGKILL');
    await iscsid?.catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('with no iscsid running, a command fails with an error saying so and naming exec.nsenterTarget', async () => {
    const exec = new HostExecutor({ mode: 'nsenter', nsenterTarget: 'iscsid', defaultTimeoutMs: 10_000 });
    const err = await exec.run('true', []).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect((err as ExecError).message).toMatch(/iscsid is not running.*exec\.nsenterTarget/);
  });

  it('runs commands in the net and mount namespaces of iscsid, not ours, and follows an iscsid restart', async () => {
    const ourNet = readlinkSync('/proc/self/ns/net');
    const start = async () => {
      iscsid = execa('unshare', ['--net', '--mount', join(dir, 'iscsid'), '600'], { reject: false });
      return waitFor('the stand-in iscsid in its own namespaces', async () => {
        const r = await execa('pgrep', ['-x', 'iscsid'], { reject: false });
        const pid = Number(r.stdout.split('\n')[0]);
        try {
          return r.exitCode === 0 && readlinkSync(`/proc/${pid}/ns/net`) !== ourNet ? pid : undefined;
        } catch {
          return undefined;
        }
      }, 5000);
    };
    const pid1 = await start();
    const exec = new HostExecutor({ mode: 'nsenter', nsenterTarget: 'iscsid', defaultTimeoutMs: 10_000 });
    const net1 = (await exec.run('readlink', ['/proc/self/ns/net'])).stdout.trim();
    expect(net1).toBe(readlinkSync(`/proc/${pid1}/ns/net`));
    expect(net1).not.toBe(ourNet);
    expect((await exec.run('readlink', ['/proc/self/ns/mnt'])).stdout.trim()).toBe(readlinkSync(`/proc/${pid1}/ns/mnt`));
    // Its network namespace has only a loopback interface.
    expect((await exec.run('ip', ['-o', 'link'])).stdout.trim().split('\n')).toHaveLength(1);

    // iscsid restarted (new pid, new namespaces): the next command follows it.
    iscsid!.kill('SIGKILL');
    await iscsid!.catch(() => undefined);
    const pid2 = await start();
    expect(pid2).not.toBe(pid1);
    expect((await exec.run('readlink', ['/proc/self/ns/net'])).stdout.trim()).toBe(readlinkSync(`/proc/${pid2}/ns/net`));

    // The default target stays the host's, PID 1. (This sandbox may refuse to enter PID 1's namespaces; the refusal then names it.)
    const host = new HostExecutor({ mode: 'nsenter', defaultTimeoutMs: 10_000 });
    const r = await host.run('readlink', ['/proc/self/ns/net']).then(
      (x) => x.stdout.trim(),
      (e: ExecError) => e.message,
    );
    if (r.startsWith('net:')) expect(r).toBe(readlinkSync('/proc/1/ns/net'));
    else expect(r).toMatch(/nsenter: cannot open \/proc\/1\/ns\//);
  });

  it('config: exec.nsenterTarget is host (default) or iscsid; anything else names the key', () => {
    expect(loadConfig('node', []).exec.nsenterTarget).toBe('host');
    expect(keyOf(() => loadConfig('node', ['--config', writeYaml('exec: { mode: nsenter, nsenterTarget: multipathd }\n')]))).toBe('exec.nsenterTarget');
    expect(loadConfig('node', ['--config', writeYaml('exec: { mode: nsenter, nsenterTarget: iscsid }\n')]).exec.nsenterTarget).toBe('iscsid');
  });

  function writeYaml(text: string): string {
    const f = join(dir, `c-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(f, text);
    return f;
  }
});

