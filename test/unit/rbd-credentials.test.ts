import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough, Writable } from 'node:stream';
import pino from 'pino';
import { backendRefusal } from '../helpers/config-key.js';
import { describe, expect, it } from 'vitest';
import { AgentConnectError, RbdAgent } from '../../src/backends/rbd/agent.js';
import { CephKeys } from '../../src/backends/rbd/credentials.js';
import type { Backend } from '../../src/backends/backend.js';
import { loadConfig } from '../../src/config/load.js';
import { backendSchema, parseConfig } from '../../src/config/schema.js';
import { gateOnCredentials } from '../../src/controller/credential-gate.js';
import { runInCall } from '../../src/csi/call-context.js';
import { createLogger } from '../../src/csi/logging.js';
import { Code, DomainError } from '../../src/errors/domain-error.js';
import type { DaemonExit, PipedProcess, PipeSpawner } from '../../src/exec/run.js';

const silent = pino({ level: 'silent' });
const KEY = 'AQBQ4DFnAAAAABAAh0Y2nV3u4u5mJ0HfXh8mMQ==';
const OTHER = 'AQBQ4DFnAAAAABAAh0Y2nV3u4u5mJ0HfXh8mMA==';
const inCall = <T>(secrets: Record<string, string> | undefined, fn: () => T): T =>
  runInCall({ deadline: Infinity, cancelled: false, onCancel: () => () => undefined, secrets }, fn);

const rbd = { name: 'ceph', driver: 'rbd', pool: 'kube', monitors: ['10.0.0.1:3300'], user: 'sinter' };
const refusal = backendRefusal;

describe('rbd keyFrom: the config', () => {
  it('takes keyFrom: secrets without keyFile; refuses no key at all, and the gateway without a key file, naming keyFile', () => {
    expect(parseConfig(backendSchema, { ...rbd, keyFrom: 'secrets' })).toMatchObject({ keyFrom: 'secrets' });
    expect(parseConfig(backendSchema, { ...rbd, keyFile: '/k' })).toMatchObject({ keyFrom: 'file', keyFile: '/k' });
    expect(refusal(rbd)).toMatch(/^backends\[0\]\.keyFile: is required unless keyFrom: secrets/);
    expect(refusal({ ...rbd, keyFrom: 'env' })).toMatch(/^backends\[0\]\.keyFrom: must be file or secrets/);
    const gw = { ...rbd, keyFrom: 'secrets', export: 'iscsi', dataDir: '/d', iscsi: { helper: 'tgt', portals: ['127.0.0.1:3260'] } };
    expect(refusal(gw)).toMatch(/^backends\[0\]\.keyFile: is required with export: iscsi/);
  });
  it('the secrets-only example (deploy/config-examples/controller-rbd-secrets.yaml) loads: keyFrom secrets, no key file', () => {
    const c = loadConfig('controller', ['--config', join(import.meta.dirname, '../../deploy/config-examples/controller-rbd-secrets.yaml'), '--node-name', 'n1']);
    expect(c.backends[0]).toMatchObject({ driver: 'rbd', keyFrom: 'secrets', user: 'sinter-controller' });
    expect((c.backends[0] as { keyFile?: string }).keyFile).toBeUndefined();
  });
});

describe('CephKeys: which key a call uses', () => {
  const keys = () => new CephKeys('ceph', { user: 'sinter', keyFrom: 'secrets' }, silent);

  it('no key anywhere: UNAVAILABLE saying how to give one', () => {
    const e = (() => {
      try {
        keys().auth();
      } catch (x) {
        return x as DomainError;
      }
    })()!;
    expect(e.code).toBe(Code.UNAVAILABLE);
    expect(e.message).toMatch(/rbd backend ceph has no cephx key yet: it comes with the provisioner secrets .* or set keyFile/);
  });

  it("the request's key, checked: the user must be the backend's (client. prefix allowed), errors name the secret key and never echo the key", () => {
    const k = keys();
    expect(inCall({ userID: 'sinter', userKey: KEY }, () => k.auth())).toMatchObject({ kind: 'key', key: KEY, fromRequest: true });
    expect(inCall({ userID: 'client.sinter', userKey: KEY }, () => k.auth())).toMatchObject({ key: KEY });
    const cases: [Record<string, string>, RegExp][] = [
      [{ userID: 'admin', userKey: KEY }, /^secrets\["userID"\] names cephx user "admin", not client\.sinter/],
      [{ userKey: KEY }, /^secrets\["userID"\] is missing/],
      [{ userID: 'sinter' }, /^secrets\["userKey"\] is missing/],
      [{ userID: 'sinter', userKey: 'not a key!' }, /^secrets\["userKey"\] is not a cephx key/],
    ];
    for (const [secrets, msg] of cases) {
      let err: DomainError | undefined;
      try {
        inCall(secrets, () => k.auth());
      } catch (e) {
        err = e as DomainError;
      }
      expect(err?.code).toBe(Code.INVALID_ARGUMENT);
      expect(err?.message).toMatch(msg);
      expect(err?.message).not.toContain(KEY);
    }
    // Secrets of another kind (CHAP) are not a key: no key yet.
    expect(() => inCall({ username: 'u', password: 'p' }, () => k.auth())).toThrow(/no cephx key yet/);
  });

  it('an accepted key serves calls without secrets; another request key is used for its own call only until accepted; keyFrom: file ignores secrets', () => {
    const k = keys();
    k.accepted(inCall({ userID: 'sinter', userKey: KEY }, () => k.auth()));
    expect(k.auth()).toMatchObject({ kind: 'key', key: KEY, fromRequest: false });
    expect(inCall({ userID: 'sinter', userKey: OTHER }, () => k.auth())).toMatchObject({ key: OTHER, fromRequest: true });
    expect(k.auth()).toMatchObject({ key: KEY });
    const withFile = new CephKeys('ceph', { user: 'sinter', keyFrom: 'secrets', keyFile: '/etc/k' }, silent);
    expect(withFile.auth()).toMatchObject({ kind: 'file', keyFile: '/etc/k' });
    const fileMode = new CephKeys('ceph', { user: 'sinter', keyFrom: 'file', keyFile: '/etc/k' }, silent);
    expect(inCall({ userID: 'admin', userKey: KEY }, () => fileMode.auth())).toMatchObject({ kind: 'file' });
  });

  it('the CLI key file: 0600 in a 0700 directory on a tmpfs, gone after the call (and after a failed one)', async () => {
    const k = keys();
    const auth = inCall({ userID: 'sinter', userKey: KEY }, () => k.auth());
    let seen = '';
    await k.withKeyFile(auth, async (f) => {
      seen = f;
      expect(readFileSync(f, 'utf8')).toBe(KEY);
      expect(statSync(f).mode & 0o777).toBe(0o600);
      expect(statSync(dirname(f)).mode & 0o777).toBe(0o700);
      expect(f).toMatch(/^\/(dev\/shm|run)\/sinter-cephx-/);
    });
    expect(existsSync(seen)).toBe(false);
    await expect(k.withKeyFile(auth, async (f) => ((seen = f), Promise.reject(new Error('boom'))))).rejects.toThrow('boom');
    expect(existsSync(seen)).toBe(false);
  });
});

/** The agent's side of the protocol, modelled from src/backends/rbd/rbd_agent.py (this repository): the connect line, then requests. */
function fakeAgents(refuse: string[], opts: { muteHello?: boolean } = {}): PipeSpawner & { connects: Record<string, unknown>[]; argv: string[][] } {
  const connects: Record<string, unknown>[] = [];
  const argv: string[][] = [];
  return {
    connects,
    argv,
    async spawnPiped(cmd: string, args: string[]): Promise<PipedProcess> {
      argv.push([cmd, ...args]);
      const stdin = new PassThrough();
      const stdout = new PassThrough();
      let exit: (x: DaemonExit) => void = () => undefined;
      const exited = new Promise<DaemonExit>((r) => (exit = r));
      let first = true;
      const me = connects.length;
      createInterface({ input: stdin }).on('line', (line) => {
        const msg = JSON.parse(line) as Record<string, unknown>;
        if (first) {
          first = false;
          connects.push(msg);
          if (refuse.includes(String(msg.key))) stdout.write(JSON.stringify({ id: 0, ok: false, errno: 110, error: 'connect: timed out' }) + '\n');
          else stdout.write(JSON.stringify({ id: 0, ok: true, result: { instanceId: 4100 + me } }) + '\n');
          return;
        }
        if (opts.muteHello && msg.op === 'hello') return; // a connection that hangs (monitors gone)
        stdout.write(JSON.stringify({ id: msg.id, ok: true, result: { conn: me } }) + '\n');
      });
      stdin.on('end', () => exit({ exitCode: 0, signal: undefined }));
      return { pid: 100 + me, shown: 'python3 rbd_agent.py', stdin, stdout, exited, kill: () => exit({ exitCode: undefined, signal: 'SIGTERM' }) };
    },
  };
}

describe('RbdAgent: one connection per key, the key on stdin only', () => {
  it('a new key gets a new connection that replaces the old once Ceph takes it; a refused key leaves the working one', async () => {
    const keys = new CephKeys('ceph', { user: 'sinter', keyFrom: 'secrets' }, silent);
    const spawner = fakeAgents([OTHER]);
    const agent = new RbdAgent({ monitors: ['10.0.0.1:3300'], user: 'sinter', keys, timeoutMs: 5000 }, spawner, silent);
    try {
      expect(await inCall({ userID: 'sinter', userKey: KEY }, () => agent.call('hello', {}, 'hello'))).toEqual({ conn: 0 });
      expect(spawner.connects[0]).toMatchObject({ user: 'sinter', key: KEY });
      expect(spawner.argv.flat().join(' ')).not.toContain(KEY);
      // Accepted: a call without secrets uses it, on the same connection.
      expect(await agent.call('hello', {}, 'hello')).toEqual({ conn: 0 });
      expect(agent.ownClient()).toBe('client.4100');
      // A key the monitors do not take while the held one works: PERMISSION_DENIED naming the user, not the key.
      const e = (await inCall({ userID: 'sinter', userKey: OTHER }, () => agent.call('hello', {}, 'creating x')).catch((x: unknown) => x)) as DomainError;
      expect(e.code).toBe(Code.PERMISSION_DENIED);
      expect(e.message).toMatch(/Ceph refused client\.sinter .*check userKey in the Secret/);
      expect(e.message).not.toContain(OTHER);
      expect(await agent.call('hello', {}, 'hello')).toEqual({ conn: 0 });
      expect(spawner.connects).toHaveLength(2);
    } finally {
      agent.stop();
    }
  });
});

describe('RbdAgent: a timed-out connect with a new key while the held connection does not answer either', () => {
  it('is not called a refused key: the caller asks the CLI (AgentConnectError)', async () => {
    const keys = new CephKeys('ceph', { user: 'sinter', keyFrom: 'secrets' }, silent);
    const agent = new RbdAgent({ monitors: ['10.0.0.1:3300'], user: 'sinter', keys, timeoutMs: 5000 }, fakeAgents([OTHER], { muteHello: true }), silent);
    try {
      expect(await inCall({ userID: 'sinter', userKey: KEY }, () => agent.call('df', {}, 'df'))).toEqual({ conn: 0 });
      const e = await inCall({ userID: 'sinter', userKey: OTHER }, () => agent.call('df', {}, 'creating x')).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(AgentConnectError);
      expect((e as DomainError).code).toBe(Code.UNAVAILABLE);
    } finally {
      agent.stop();
    }
  });
});

describe('the controller gate: a backend waiting for its key', () => {
  it('a request with the key starts it and re-indexes; requests that concern it without one are UNAVAILABLE; others pass', async () => {
    let ready = false;
    let reindexed = 0;
    const waiting = {
      name: 'ceph',
      isReady: () => ready,
      startDeferred: async () => {
        if (ready) return false;
        const s = (await import('../../src/csi/call-context.js')).currentCall()?.secrets;
        if (!s?.userKey) return false;
        ready = true;
        return true;
      },
      notReadyError: () => new DomainError(Code.UNAVAILABLE, 'rbd backend ceph has no cephx key yet'),
    } as unknown as Backend;
    const file = { name: 'local' } as unknown as Backend;
    const impl = {
      ControllerGetCapabilities: async (_req: object) => 'caps',
      ListVolumes: async (_req: object) => 'list',
      DeleteVolume: async (_req: object) => 'deleted',
      ListSnapshots: async (_req: object) => 'snaps',
    };
    const gated = gateOnCredentials(impl, new Map([['ceph', waiting], ['local', file]]), () => reindexed++);
    const call = (m: keyof typeof impl, req: object) => inCall((req as { secrets?: Record<string, string> }).secrets, () => gated[m](req));
    expect(await call('ControllerGetCapabilities', {})).toBe('caps');
    await expect(call('ListVolumes', {})).rejects.toThrow(/no cephx key yet/);
    await expect(call('DeleteVolume', { volume_id: 'ceph-6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d' })).rejects.toThrow(/no cephx key yet/);
    // Another backend's volume, and a snapshot list filtered to it, do not wait.
    expect(await call('DeleteVolume', { volume_id: 'local-6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d' })).toBe('deleted');
    expect(await call('ListSnapshots', { source_volume_id: 'local-6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d' })).toBe('snaps');
    expect(reindexed).toBe(0);
    expect(await call('DeleteVolume', { volume_id: 'ceph-6f1c2a4e-8d1b-4a57-9a53-2f0f1e7c9b3d', secrets: { userID: 'sinter', userKey: KEY } })).toBe('deleted');
    expect(reindexed).toBe(1);
    expect(await call('ListVolumes', {})).toBe('list');
  });
});

describe('logs: request secrets are redacted wherever a log call puts them', () => {
  it('top level, under req, one level down', () => {
    let out = '';
    const log = createLogger('info', new Writable({ write: (c: Buffer, _e, cb) => ((out += c.toString()), cb()) }));
    log.info({ secrets: { userID: 'sinter', userKey: KEY } }, 'a');
    log.info({ req: { name: 'x', secrets: { userKey: KEY } } }, 'b');
    log.info({ call: { secrets: { userKey: KEY } } }, 'c');
    expect(out).not.toContain(KEY);
    expect(out.match(/\[redacted\]/g)).toHaveLength(3);
  });
});
