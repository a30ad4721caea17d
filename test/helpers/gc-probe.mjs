// Test instrumentation, preloaded into a sinter process by the resource-leak
// test (node --expose-gc --import this): on SIGUSR2, two full garbage
// collections, then one line on stderr with the process's memory figures, so
// the test compares what is retained rather than what the collector has not
// reclaimed yet. sinter itself does not handle SIGUSR2.
process.on('SIGUSR2', () => {
  globalThis.gc?.();
  globalThis.gc?.();
  const m = process.memoryUsage();
  process.stderr.write(`${JSON.stringify({ gcProbe: { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external } })}\n`);
});
