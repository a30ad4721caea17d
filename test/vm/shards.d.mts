/** Types of shards.mjs (the VM stage split over several guests; see test/vm/README.md). */

export declare const PER_FILE_OVERHEAD_MS: number;
export declare const UNKNOWN_FILE_MS: number;

export interface Shard {
  /** Checkout-relative paths, in path order. */
  files: string[];
  /** Recorded durations plus the per-file overhead, ms. */
  estimateMs: number;
}

export declare function readTimings(path: string): Record<string, number>;
export declare function splitFiles(files: string[], n: number, timings: Record<string, number>): Shard[];

export interface VitestJsonReport {
  success?: boolean;
  startTime?: number;
  numTotalTestSuites?: number;
  numPassedTestSuites?: number;
  numFailedTestSuites?: number;
  numPendingTestSuites?: number;
  numTotalTests?: number;
  numPassedTests?: number;
  numFailedTests?: number;
  numPendingTests?: number;
  numTodoTests?: number;
  testResults?: { name: string; startTime?: number; endTime?: number }[];
  /** Guests that left no report (set only when some did). */
  missingShards?: string[];
}

export declare function mergeReports(parts: { name: string; report?: VitestJsonReport }[]): VitestJsonReport & { success: boolean; testResults: { name: string }[] };
