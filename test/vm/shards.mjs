// Splitting the VM stage over several guests, and joining their reports.
//
// Under TCG much of a VM test's time is the kernel waiting (logins, timeouts,
// udev) and a guest does not keep two host cores busy: two guests side by side
// on a 2-core CI machine ran the stage in 706 s against 864 s for one.
// Files are dealt out longest first to the guest with the least work so far
// (LPT scheduling), by the durations recorded in test/vm/timings.json.
import { readFileSync } from 'node:fs';

/** What a file costs besides its tests (hooks: daemons started and stopped, vitest's collection), ms. */
export const PER_FILE_OVERHEAD_MS = 15_000;
/** Weight of a file no timing names yet: a middling file. */
export const UNKNOWN_FILE_MS = 30_000;

/**
 * Recorded durations (ms) by checkout-relative path; {} when the file is missing or unreadable,
 * so a bad timings file only makes the split less even, never the stage fail.
 * @param {string} path
 * @returns {Record<string, number>}
 */
export function readTimings(path) {
  try {
    const t = JSON.parse(readFileSync(path, 'utf8'));
    const files = t && typeof t === 'object' ? (t.files ?? t) : {};
    return Object.fromEntries(Object.entries(files).filter(([, v]) => typeof v === 'number' && Number.isFinite(v) && v >= 0));
  } catch {
    return {};
  }
}

/**
 * Deals `files` out to `n` shards, longest first to the lightest shard. Deterministic: ties
 * go by path, then to the lowest shard. Empty shards are dropped (n > files).
 * @param {string[]} files
 * @param {number} n
 * @param {Record<string, number>} timings
 * @returns {{ files: string[], estimateMs: number }[]}
 */
export function splitFiles(files, n, timings) {
  if (!Number.isInteger(n) || n < 1) throw new Error(`shards: the number of guests must be a whole number ≥ 1, not ${n}`);
  const weight = (f) => (timings[f] ?? UNKNOWN_FILE_MS) + PER_FILE_OVERHEAD_MS;
  const order = [...new Set(files)].sort((a, b) => weight(b) - weight(a) || a.localeCompare(b));
  const shards = Array.from({ length: n }, () => ({ files: /** @type {string[]} */ ([]), estimateMs: 0 }));
  for (const f of order) {
    let best = 0;
    for (let i = 1; i < n; i++) if (shards[i].estimateMs < shards[best].estimateMs) best = i;
    shards[best].files.push(f);
    shards[best].estimateMs += weight(f);
  }
  // Within a guest, keep the paths' order: a run reads the same as an unsplit one.
  for (const s of shards) s.files.sort();
  return shards.filter((s) => s.files.length > 0);
}

const COUNTS = [
  'numTotalTestSuites',
  'numPassedTestSuites',
  'numFailedTestSuites',
  'numPendingTestSuites',
  'numTotalTests',
  'numPassedTests',
  'numFailedTests',
  'numPendingTests',
  'numTodoTests',
];

/**
 * One vitest JSON report from the guests' reports. A guest that left no report (it could not
 * boot, crashed or timed out) counts as one failed suite, so the summary can never read a
 * half-run stage as a pass.
 * @param {{ name: string, report?: any }[]} parts
 */
export function mergeReports(parts) {
  /** @type {any} */
  const out = { success: true, startTime: undefined, testResults: [] };
  for (const k of COUNTS) out[k] = 0;
  const missing = [];
  for (const p of parts) {
    if (!p.report) {
      missing.push(p.name);
      out.numTotalTestSuites += 1;
      out.numFailedTestSuites += 1;
      out.success = false;
      continue;
    }
    for (const k of COUNTS) out[k] += Number(p.report[k] ?? 0);
    if (p.report.success === false) out.success = false;
    if (typeof p.report.startTime === 'number') out.startTime = Math.min(out.startTime ?? Infinity, p.report.startTime);
    out.testResults.push(...(p.report.testResults ?? []));
  }
  out.testResults.sort((a, b) => String(a.name).localeCompare(String(b.name)));
  if (missing.length > 0) out.missingShards = missing;
  return out;
}
