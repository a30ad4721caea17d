// Test instrumentation, preloaded into a sinter process by the resource-leak
// test (node --expose-gc --import this): on SIGUSR2, two full garbage
// collections, then one line on stderr with the process's memory figures, so
// the test compares what is retained rather than what the collector has not
// reclaimed yet. sinter itself does not handle SIGUSR2.
// newSpace: the resident size of V8's young generation, which V8 grows under
// allocation pressure (from 1 MiB towards 16 MiB per semi-space) and keeps
// however little survives: a step in RSS that holds no data.
import { getHeapSpaceStatistics } from 'node:v8';

process.on('SIGUSR2', () => {
  globalThis.gc?.();
  globalThis.gc?.();
  const m = process.memoryUsage();
  const newSpace = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.physical_space_size ?? 0;
  process.stderr.write(`${JSON.stringify({ gcProbe: { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, newSpace } })}\n`);
});
