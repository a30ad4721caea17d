import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiClient, type CsiClient } from '../../src/csi/client.js';
import { KeyedLock } from '../../src/csi/locks.js';
import { loadCsi } from '../../src/csi/proto.js';
import { CsiServer } from '../../src/csi/server.js';
import { DomainError, notFound } from '../../src/errors/domain-error.js';
import { stringContaining } from '../helpers/matchers.js';

/** The one place domain errors become gRPC statuses, seen from a real gRPC client. */
describe('domain errors over gRPC', () => {
  let dir: string;
  let server: CsiServer;
  let client: CsiClient;
  const lines: Record<string, unknown>[] = [];
  const lock = new KeyedLock();
  let release!: () => void;
  let ran = 0;
  let addr = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sinter-errors-'));
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    server = new CsiServer(
      {
        identity: {
          GetPluginInfo: async () => {
            throw new Error("ENOENT: no such file or directory, open '/var/lib/sinter/secret-dir/volumes/x.json'");
          },
          Probe: async () => {
            throw notFound('volume_id: volume "v1" does not exist');
          },
          GetPluginCapabilities: () => lock.run('busy', async () => {
            ran++;
            return { capabilities: [] };
          }),
        },
      },
      pino({ level: 'info' }, sink),
    );
    addr = await server.listen(`unix://${join(dir, 'csi.sock')}`);
    client = csiClient(addr);
  });
  afterAll(async () => {
    client?.close();
    await server?.shutdown(100);
    await rm(dir, { recursive: true, force: true });
  });

  it('a domain error keeps its code and message', async () => {
    await expect(client.identity.Probe({})).rejects.toMatchObject({ code: 5, details: 'volume_id: volume "v1" does not exist' });
  });

  it('an unexpected error is INTERNAL with a short ref and no host path; the log has the whole error under that ref', async () => {
    const err = (await client.identity.GetPluginInfo({}).catch((e: unknown) => e)) as { code: number; details: string };
    expect(err.code).toBe(13);
    expect(err.details).not.toMatch(/\/var\/lib|ENOENT/);
    const ref = /\(ref ([0-9a-f]{8})\)/.exec(err.details)?.[1];
    expect(ref).toBeDefined();
    const line = lines.find((l) => l.ref === ref);
    expect(line).toMatchObject({ rpc: 'Identity.GetPluginInfo', code: 'INTERNAL', err: stringContaining('/var/lib/sinter/secret-dir') });
  });

  it("a call whose deadline passes while it waits for a lock is DEADLINE_EXCEEDED and does no work", async () => {
    const holder = lock.run('busy', () => new Promise<void>((r) => (release = r)));
    // 1.5 s, not less: on a loaded machine a shorter deadline can pass before the call reaches the server at all, and then there is no server line to wait for.
    await expect(client.identity.GetPluginCapabilities({}, { deadlineMs: 1500 })).rejects.toMatchObject({ code: 4 });
    // The server gives up on its own when the deadline passes (grpc-js cancels the call): wait for its log line, then let the lock go.
    for (let i = 0; i < 800 && !lines.some((l) => l.rpc === 'Identity.GetPluginCapabilities' && l.code === 'DEADLINE_EXCEEDED'); i++)
      await new Promise((r) => setTimeout(r, 25));
    expect(lines.some((l) => l.rpc === 'Identity.GetPluginCapabilities' && l.code === 'DEADLINE_EXCEEDED')).toBe(true);
    release();
    await holder;
    await new Promise((r) => setTimeout(r, 20));
    expect(ran).toBe(0);
    expect(await client.identity.GetPluginCapabilities({})).toMatchObject({ capabilities: [] });
    expect(ran).toBe(1);
  });

  it('a call its client cancels while it waits for a lock is CANCELLED and does no work; answered calls before and after are not', async () => {
    expect(await client.identity.GetPluginCapabilities({})).toMatchObject({ capabilities: [] });
    const before = ran;
    const holder = lock.run('busy', () => new Promise<void>((r) => (release = r)));
    const raw = new (loadCsi().Identity)(addr, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      GetPluginCapabilities(req: object, cb: (e: grpc.ServiceError | null) => void): grpc.ClientUnaryCall;
    };
    const gotErr = new Promise<grpc.ServiceError | null>((resolve) => {
      const call = raw.GetPluginCapabilities({}, (e) => resolve(e));
      // Cancelled once the server has it queued behind the lock.
      setTimeout(() => call.cancel(), 300);
    });
    expect((await gotErr)?.code).toBe(grpc.status.CANCELLED);
    for (let i = 0; i < 400 && !lines.some((l) => l.rpc === 'Identity.GetPluginCapabilities' && l.code === 'CANCELLED'); i++) await new Promise((r) => setTimeout(r, 25));
    expect(lines.some((l) => l.rpc === 'Identity.GetPluginCapabilities' && l.code === 'CANCELLED')).toBe(true);
    release();
    await holder;
    await new Promise((r) => setTimeout(r, 20));
    expect(ran).toBe(before);
    expect(await client.identity.GetPluginCapabilities({})).toMatchObject({ capabilities: [] });
    expect(ran).toBe(before + 1);
    raw.close();
  });

  it('DomainError carries a transport-free code', () => {
    expect(new DomainError('aborted', 'x').code).toBe('aborted');
  });
});
