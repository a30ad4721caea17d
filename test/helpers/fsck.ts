import { execa } from 'execa';
import type { FsckReport } from '../../src/fsck/check.js';
import { MAIN, type SinterProcess } from './sinter-process.js';

export interface FsckRun {
  code: number;
  report: FsckReport;
  stdout: string;
  stderr: string;
}

/** Runs the real `sinter fsck --json` over the directories of a sinter started by startSinter. */
export async function fsckCli(s: Pick<SinterProcess, 'dataDir' | 'kubeletRoot' | 'socket'>, extra: string[] = []): Promise<FsckRun> {
  const r = await execa('node', [MAIN, 'fsck', '--data-dir', s.dataDir, '--kubelet-root', s.kubeletRoot, '--endpoint', `unix://${s.socket}`, '--json', ...extra], {
    reject: false,
  });
  let report: FsckReport;
  try {
    report = JSON.parse(String(r.stdout)) as FsckReport;
  } catch {
    throw new Error(`sinter fsck exited ${r.exitCode} without a JSON report: ${String(r.stderr).slice(-500)}`);
  }
  return { code: r.exitCode ?? -1, report, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** `kind remedy` of each finding, sorted: compact to compare. */
export const kinds = (r: FsckReport): string[] => r.findings.map((f) => `${f.kind} ${f.remedy}`).sort();

export function describe(r: FsckReport): string {
  return r.findings.map((f) => `[${f.remedy}] ${f.area} ${f.kind} ${f.subject}: ${f.detail}`).join('\n');
}
