// scripts/summary.mjs is the last thing CI prints, and CI keeps only the tail of
// a run: a failure has to be named there, or nobody can tell which test it was
// (stop 26's CI showed "1232 passed, 3 failed" and no name; the three were one
// failed test counted with its file and its describe).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const SCRIPT = new URL('../../scripts/summary.mjs', import.meta.url).pathname;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function run(reports: Record<string, unknown>, extra: string[] = []): { code: number; out: string } {
  const dir = mkdtempSync(join(tmpdir(), 'sinter-summary-'));
  dirs.push(dir);
  const paths = Object.entries(reports).map(([name, body]) => {
    const p = join(dir, name);
    writeFileSync(p, JSON.stringify(body));
    return p;
  });
  try {
    const out = execFileSync(process.execPath, [SCRIPT, ...paths, ...extra.map((e) => join(dir, e))], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { code: 0, out };
  } catch (e) {
    const err = e as { status: number; stdout: string };
    return { code: err.status, out: err.stdout };
  }
}

const passing = (n: number) => ({
  numTotalTests: n,
  numPassedTests: n,
  numFailedTests: 0,
  numPendingTests: 0,
  numTodoTests: 0,
  numFailedTestSuites: 0,
  testResults: [{ name: '/tmp/clone/test/unit/ok.test.ts', status: 'passed', message: '', assertionResults: [{ fullName: 'ok works', status: 'passed', failureMessages: [] }] }],
});

describe('CI summary (scripts/summary.mjs)', () => {
  it('passes and prints one line when everything passed', () => {
    const r = run({ 'host.json': passing(5), 'vm.json': passing(3) });
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe('tests: 8 passed, 0 failed, 0 skipped');
  });

  it('names a failed test, with its error, and counts it once (not with its file and describe)', () => {
    const r = run({
      'host.json': {
        numTotalTests: 2,
        numPassedTests: 1,
        numFailedTests: 1,
        numPendingTests: 0,
        numTodoTests: 0,
        numFailedTestSuites: 2,
        testResults: [
          {
            name: '/tmp/clone/test/integration/tgtd-prestop.test.ts',
            status: 'failed',
            message: '',
            assertionResults: [
              { fullName: 'tgtd preStop hook stops tgtd within 5 s', status: 'failed', failureMessages: ['AssertionError: expected 7012 to be less than 5000\n    at stack'] },
              { fullName: 'tgtd preStop hook renders', status: 'passed', failureMessages: [] },
            ],
          },
        ],
      },
      'vm.json': passing(3),
    });
    expect(r.code).toBe(1);
    expect(r.out).toContain('test/integration/tgtd-prestop.test.ts > tgtd preStop hook stops tgtd within 5 s');
    expect(r.out).toContain('expected 7012 to be less than 5000');
    expect(r.out).not.toContain('/tmp/clone');
    expect(r.out.trim().split('\n').at(-1)).toBe('tests: 4 passed, 1 failed, 0 skipped');
  });

  it('counts a file that failed outside its tests, a skipped test, and a missing report', () => {
    const r = run(
      {
        'host.json': {
          numTotalTests: 2,
          numPassedTests: 1,
          numFailedTests: 0,
          numPendingTests: 1,
          numTodoTests: 0,
          numFailedTestSuites: 1,
          testResults: [
            { name: '/c/test/unit/broken.test.ts', status: 'failed', message: 'Error: Cannot find module ./gone.js', assertionResults: [] },
            { name: '/c/test/unit/s.test.ts', status: 'passed', message: '', assertionResults: [{ fullName: 's later', status: 'skipped' }, { fullName: 's now', status: 'passed' }] },
          ],
        },
      },
      ['vm.json'],
    );
    expect(r.code).toBe(1);
    expect(r.out).toContain('test/unit/broken.test.ts (the file failed outside its tests)');
    expect(r.out).toContain('Cannot find module ./gone.js');
    expect(r.out).toContain('skipped: test/unit/s.test.ts > s later');
    expect(r.out).toMatch(/vm\.json: no test report/);
    expect(r.out.trim().split('\n').at(-1)).toBe('tests: 1 passed, 2 failed, 1 skipped');
  });
});
