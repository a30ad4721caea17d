import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { Writable } from 'node:stream';
import { ExportLoop } from '../../src/controller/export-loop.js';
import { identityService } from '../../src/identity/service.js';
import type { Backend } from '../../src/backends/backend.js';
import type { VolumeManager } from '../../src/controller/volumes.js';

function memoryLog() {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

describe('export loop', () => {
  it('keeps one pending timer per backend however many passes have run', async () => {
    let passes = 0;
    const backends = [
      { name: 'a', reconcileExports: true, reconcileIntervalMs: 2 },
      { name: 'b', reconcileExports: true, reconcileIntervalMs: 3 },
    ] as unknown as Backend[];
    const volumes = { reconcileExports: async () => void passes++ } as unknown as VolumeManager;
    const loop = new ExportLoop(backends, volumes, memoryLog().log);
    loop.start();
    while (passes < 60) await new Promise((r) => setTimeout(r, 5));
    expect(loop.pendingTimers()).toBe(2);
    await loop.stop();
    expect(loop.pendingTimers()).toBe(0);
    const after = passes;
    await new Promise((r) => setTimeout(r, 30));
    expect(passes).toBe(after);
  });
});

describe('Probe', () => {
  it('says why it is not ready, once per change of reason, and when it is ready again', async () => {
    const { log, lines } = memoryLog();
    let why: string | undefined = 'backend "fast": data directory is not writable';
    const svc = identityService({
      driverName: 'sinter.csi.io',
      version: 't',
      hasController: true,
      log,
      probe: async () => {
        if (why) throw new Error(why);
      },
    });
    const probe = svc.Probe as (req: unknown) => Promise<{ ready: { value: boolean } }>;
    expect((await probe({})).ready.value).toBe(false);
    expect((await probe({})).ready.value).toBe(false);
    why = undefined;
    expect((await probe({})).ready.value).toBe(true);
    await new Promise((r) => setImmediate(r));
    const said = lines.map((l) => [l.msg, l.why]);
    expect(said).toEqual([
      ['not ready', 'backend "fast": data directory is not writable'],
      ['ready again', undefined],
    ]);
  });
});
