import { describe, expect, it } from 'vitest';
import { mergeReports as merge, splitFiles as split, PER_FILE_OVERHEAD_MS, UNKNOWN_FILE_MS } from '../vm/shards.mjs';

describe('VM stage split over several guests (test/vm/shards.mjs)', () => {
  const timings = { 'a.vm.test.ts': 200_000, 'b.vm.test.ts': 80_000, 'c.vm.test.ts': 55_000, 'd.vm.test.ts': 45_000, 'e.vm.test.ts': 40_000, 'f.vm.test.ts': 30_000, 'g.vm.test.ts': 1_000 };
  const files = Object.keys(timings);

  it('runs every file exactly once, in one guest or another', () => {
    const shards = split(files, 2, timings);
    expect(shards).toHaveLength(2);
    expect(shards.flatMap((s) => s.files).sort()).toEqual([...files].sort());
  });

  it('puts the long file alone against the rest, so the slowest guest is as short as the split allows', () => {
    const shards = split(files, 2, timings);
    const withA = shards.find((s) => s.files.includes('a.vm.test.ts'))!;
    // LPT: a (200 s) fills guest 1; b..g (251 s) go to guest 2 until it passes guest 1, then alternate.
    const est = shards.map((s) => s.estimateMs).sort((x, y) => y - x);
    expect(est[0] - est[1]).toBeLessThanOrEqual(80_000 + PER_FILE_OVERHEAD_MS);
    expect(withA.files.length).toBeLessThan(files.length - 2);
    // The estimates are what the files weigh, overhead included.
    const total = files.reduce((n, f) => n + timings[f as keyof typeof timings] + PER_FILE_OVERHEAD_MS, 0);
    expect(shards.reduce((n, s) => n + s.estimateMs, 0)).toBe(total);
  });

  it('is deterministic, keeps path order inside a guest, and drops empty guests', () => {
    expect(split(files, 2, timings)).toEqual(split([...files].reverse(), 2, timings));
    for (const s of split(files, 3, timings)) expect(s.files).toEqual([...s.files].sort());
    expect(split(['x.vm.test.ts'], 4, {})).toEqual([{ files: ['x.vm.test.ts'], estimateMs: UNKNOWN_FILE_MS + PER_FILE_OVERHEAD_MS }]);
    expect(() => split(files, 0, timings)).toThrow(/whole number/);
  });

  it('gives a file with no recorded time a middling weight, so new files still spread', () => {
    const shards = split(['n1', 'n2', 'n3', 'n4'], 2, {});
    expect(shards.map((s) => s.files.length)).toEqual([2, 2]);
  });

  it('joins the guests\' reports, and a guest with no report is a failed suite, never a pass', () => {
    const rep = (name: string, passed: number, failed: number) => ({
      success: failed === 0, startTime: 10, numTotalTestSuites: 1, numPassedTestSuites: failed ? 0 : 1, numFailedTestSuites: failed ? 1 : 0,
      numTotalTests: passed + failed, numPassedTests: passed, numFailedTests: failed, numPendingTests: 0, numTodoTests: 0,
      testResults: [{ name }],
    });
    const ok = merge([{ name: 'vm1', report: rep('/x/b', 3, 0) }, { name: 'vm2', report: rep('/x/a', 2, 0) }]);
    expect(ok).toMatchObject({ success: true, numPassedTests: 5, numFailedTests: 0, numFailedTestSuites: 0, numTotalTests: 5 });
    expect(ok.testResults.map((t) => t.name)).toEqual(['/x/a', '/x/b']);
    const lost = merge([{ name: 'vm1', report: rep('/x/b', 3, 0) }, { name: 'vm2' }]);
    expect(lost).toMatchObject({ success: false, numPassedTests: 3, numFailedTestSuites: 1, missingShards: ['vm2'] });
    const failed = merge([{ name: 'vm1', report: rep('/x/b', 3, 1) }, { name: 'vm2', report: rep('/x/a', 2, 0) }]);
    expect(failed).toMatchObject({ success: false, numFailedTests: 1 });
  });
});
