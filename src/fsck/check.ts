import { pino, type Logger } from 'pino';
import type { Backend } from '../backends/backend.js';
import { createBackend } from '../backends/create.js';
import type { Config } from '../config/types.js';
import type { Finding, Remedy } from '../contracts/finding.js';
import { HostExecutor, type Executor } from '../exec/run.js';
import { nodeIdFor, nodeServiceFor } from '../node/wiring.js';
import type { NodeService } from '../node/service.js';
import type { Orphan } from '../node/orphans.js';
import { StageState } from '../node/stage-state.js';
import { checkExports } from './exports.js';

export type FsckScope = 'controller' | 'node' | 'all';

export interface FsckFinding extends Finding {
  /** `backend <name>`, `node` or `exports <backend>`. */
  area: string;
}

export interface FsckSection {
  area: string;
  /** What was looked at, one line. */
  checked: string;
  findings: FsckFinding[];
}

export interface FsckReport {
  clean: boolean;
  sections: FsckSection[];
  findings: FsckFinding[];
  counts: Record<Remedy, number>;
}

export interface FsckOptions {
  scope: FsckScope;
  exec?: HostExecutor;
  log?: Logger;
}

export async function backendsOf(cfg: Config, exec: Executor, log: Logger): Promise<Backend[]> {
  return Promise.all(cfg.backends.map((b) => createBackend(b, exec, log)));
}

/** The node service `sinter node|all` would build from cfg, never started: only its read-only orphan report is used. */
export function nodeServiceOf(cfg: Config, exec: HostExecutor, log: Logger): NodeService {
  return nodeServiceFor(cfg, nodeIdFor(cfg), exec, log);
}

function orphanSubject(o: Orphan): string {
  switch (o.kind) {
    case 'unreadable-record':
    case 'stray-temp':
      return o.file;
    case 'untracked-device':
      return o.device;
    case 'untracked-mount':
      return o.mountPoint;
    default:
      return `volume ${o.volumeId}`;
  }
}

function failed(area: string, what: string, e: unknown): FsckFinding {
  return { area, kind: 'check-failed', subject: what, detail: `could not check: ${(e as Error)?.message ?? String(e)}`, remedy: 'operator' };
}

/**
 * `sinter fsck`: checks every backend's records and images, the node's stage
 * records against the host's mounts and loop devices, and exports against
 * publishes. Read-only: it changes nothing, so it is safe on a live system
 * (an operation in flight may then show as interrupted).
 */
export async function runFsck(cfg: Config, opts: FsckOptions): Promise<FsckReport> {
  const log = opts.log ?? pino({ level: 'silent' });
  const exec = opts.exec ?? new HostExecutor({ mode: cfg.exec.mode, hostRoot: cfg.exec.hostRoot, nsenterTarget: cfg.exec.nsenterTarget, spawnVia: cfg.exec.spawnVia, defaultTimeoutMs: cfg.exec.timeoutSeconds * 1000 });
  const sections: FsckSection[] = [];

  if (opts.scope !== 'node') {
    for (const b of await backendsOf(cfg, exec, log)) {
      const area = `backend ${b.name}`;
      try {
        const ins = await b.inspect();
        sections.push({ area, checked: ins.summary, findings: ins.findings.map((f) => ({ area, ...f })) });
        const exArea = `exports ${b.name}`;
        if (!b.listExports) {
          sections.push({ area: exArea, checked: 'nothing to check: this backend exports nothing (local transport)', findings: [] });
        } else {
          const exports = await b.listExports();
          sections.push({ area: exArea, checked: `${exports.length} exports`, findings: checkExports(b.name, exports, ins.volumes, b.reconcileExports !== undefined).map((f) => ({ area: exArea, ...f })) });
        }
      } catch (e) {
        sections.push({ area, checked: 'check failed', findings: [failed(area, b.name, e)] });
      }
    }
  }

  if (opts.scope !== 'controller') {
    const area = 'node';
    try {
      const { records } = await new StageState(cfg.node.stateDir).list();
      const orphans = await nodeServiceOf(cfg, exec, log).orphans();
      sections.push({
        area,
        checked: `${records.length} stage records in ${cfg.node.stateDir}, against the mount table and the loop devices`,
        findings: orphans.map((o) => ({ area, kind: o.kind, subject: orphanSubject(o), detail: o.detail, remedy: o.remedy })),
      });
    } catch (e) {
      sections.push({ area, checked: 'check failed', findings: [failed(area, cfg.node.stateDir, e)] });
    }
  }

  const findings = sections.flatMap((s) => s.findings);
  const counts: Record<Remedy, number> = { restart: 0, retry: 0, operator: 0 };
  for (const f of findings) counts[f.remedy]++;
  return { clean: findings.length === 0, sections, findings, counts };
}
