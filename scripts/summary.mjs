// Prints vitest's JSON reports (the host run's, the guest-driven run's and the
// VM stage's) as one plain line CI can read, and fails when anything failed,
// was skipped, a report is missing (a stage that could not run), or nothing ran
// at all.
//   node scripts/summary.mjs REPORT [REPORT ...]
//
// CI keeps only the tail of a run's output, and the guest lane's output is
// printed after the host run's, so a host failure's own report scrolls out of
// sight. Each failure is therefore named again here, last, with the first lines
// of its error. "failed" counts tests, plus files that failed without a failed
// test (an import error, a failing hook); vitest's numFailedTestSuites counts
// the file and every describe around a failed test too, which read as three
// failures for one.
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2);
let passed = 0;
let failed = 0;
let skipped = 0;
const failures = [];

function firstLines(text, n) {
  return String(text ?? '')
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.trim() !== '')
    .slice(0, n)
    .map((l) => `      ${l.length > 300 ? `${l.slice(0, 300)}…` : l}`);
}

for (const file of files) {
  let r;
  try {
    r = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    failed += 1;
    failures.push([`${file}: no test report (${e.message}); that stage did not run to the end`]);
    continue;
  }
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  for (const t of r.testResults ?? []) {
    const name = String(t.name ?? '').replace(/^.*?\/(test\/)/, '$1');
    const failedTests = (t.assertionResults ?? []).filter((a) => a.status === 'failed');
    for (const a of failedTests) {
      failures.push([`${name} > ${a.fullName ?? a.title}`, ...firstLines((a.failureMessages ?? []).join('\n'), 8)]);
    }
    if (t.status === 'failed' && failedTests.length === 0) {
      failed += 1;
      failures.push([`${name} (the file failed outside its tests)`, ...firstLines(t.message, 8)]);
    }
    for (const a of t.assertionResults ?? []) {
      if (a.status === 'skipped' || a.status === 'pending' || a.status === 'todo') failures.push([`skipped: ${name} > ${a.fullName ?? a.title}`]);
    }
  }
  if ((r.numTotalTests ?? 0) === 0) {
    failed += 1;
    failures.push([`${file}: no test ran`]);
  }
}
if (files.length === 0) failed += 1;
if (failures.length > 0) {
  console.log('what failed or was skipped:');
  for (const [head, ...rest] of failures) console.log([`  ${head}`, ...rest].join('\n'));
}
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
if (skipped > 0) console.error('skipped tests are not allowed: every test must run');
process.exit(failed > 0 || skipped > 0 || passed === 0 ? 1 : 0);
