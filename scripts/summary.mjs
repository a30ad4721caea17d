// Prints vitest's JSON reports (the host run's and the VM stage's) as one plain
// line CI can read, and fails when anything failed, was skipped, a report is
// missing (a stage that could not run), or nothing ran at all.
//   node scripts/summary.mjs REPORT [REPORT ...]
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2);
let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of files) {
  let r;
  try {
    r = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    failed += 1;
    console.error(`no test report at ${file}: ${e.message} (that stage did not run to the end)`);
    continue;
  }
  passed += r.numPassedTests ?? 0;
  failed += (r.numFailedTests ?? 0) + (r.numFailedTestSuites ?? 0);
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  if ((r.numTotalTests ?? 0) === 0) {
    failed += 1;
    console.error(`${file}: no test ran`);
  }
}
if (files.length === 0) failed += 1;
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
if (skipped > 0) console.error('skipped tests are not allowed: every test must run');
process.exit(failed > 0 || skipped > 0 || passed === 0 ? 1 : 0);
