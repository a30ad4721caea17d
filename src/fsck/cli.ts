import { connect } from 'node:net';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadConfig } from '../config/load.js';
import type { Config, Role } from '../config/types.js';
import { ConfigError } from '../config/error.js';
import { parseEndpoint } from '../csi/endpoint.js';
import { HostExecutor } from '../exec/run.js';
import { backendsOf, nodeServiceOf, runFsck, type FsckReport, type FsckScope } from './check.js';

export const FSCK_USAGE = `Usage: sinter fsck [all|controller|node] [flags]

Checks sinter's state against the disk and the host, read-only:
  backends  every volume and snapshot record: state, image present and large enough,
            interrupted creates/deletes/expands, orphan images, stray temp files,
            unreadable records; exports against publishes (transports that export)
  node      stage records against the mount table and the loop devices: records whose
            mount or device is gone, devices from sinter's roots or iSCSI attachments
            or mounts of them that no record explains, interrupted stages/unstages
            (an unused iSCSI attachment is "restart" only with --orphan-sessions clean
            or node.orphanSessions: clean, as the node runs with; else "operator")
The role (default all) and the flags give the same defaults as the command that
serves, so pass what that one was given (--config, --data-dir, --state-dir, …).

Each finding names its remedy:
  restart   the next start of sinter repairs it by itself
  retry     the CO's retry of the interrupted RPC finishes it (kubelet/sidecars retry)
  operator  sinter leaves it alone; a person must look

Flags (besides the serving flags):
  --json      one JSON document on stdout
  --repair    do now what a start would (roll back/forward interrupted operations,
              remove temp files, detach unused devices no record explains), then
              check again; refused while something answers on --endpoint
Exit status: 0 clean, 1 something found (or a check failed), 2 usage error.
`;

const FSCK_FLAGS = { json: { type: 'boolean' }, repair: { type: 'boolean' } } as const;

function isServing(endpoint: string): Promise<boolean> {
  const ep = parseEndpoint(endpoint);
  return new Promise((resolve) => {
    const sock = ep.kind === 'unix' ? connect(ep.path) : connect(ep.port, ep.host);
    const done = (v: boolean) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export function formatReport(r: FsckReport): string {
  const lines: string[] = [];
  for (const s of r.sections) {
    lines.push(`${s.area}: ${s.checked}`);
    for (const f of s.findings) lines.push(`  ${f.remedy.padEnd(8)}  ${f.kind}  ${f.subject}: ${f.detail}`);
  }
  if (r.clean) lines.push('clean: nothing is out of step');
  else
    lines.push(
      `${r.findings.length} finding${r.findings.length === 1 ? '' : 's'}: ${r.counts.restart} a restart repairs, ${r.counts.retry} the CO's retry finishes, ${r.counts.operator} need${r.counts.operator === 1 ? 's' : ''} an operator`,
    );
  return `${lines.join('\n')}\n`;
}

/** `sinter fsck …`; returns the exit status. */
export async function fsckMain(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(FSCK_USAGE);
    return 0;
  }
  let role: Role = 'all';
  let rest = argv;
  if (rest[0] === 'all' || rest[0] === 'controller' || rest[0] === 'node') {
    role = rest[0];
    rest = rest.slice(1);
  }
  // Our own flags out, the serving flags to the config loader.
  const own: string[] = [];
  const serving: string[] = [];
  for (const a of rest) (a === '--json' || a === '--repair' ? own : serving).push(a);
  const flags = parseArgs({ args: own, options: FSCK_FLAGS, strict: true, allowPositionals: false }).values;

  let cfg: Config;
  try {
    cfg = loadConfig(role, serving);
  } catch (e) {
    if (e instanceof ConfigError) {
      const hint = role === 'all' && e.message.includes('at least one backend') ? ' (for a node-only configuration, run `sinter fsck node …`)' : '';
      process.stderr.write(`sinter fsck: configuration error: ${e.message}${hint}\n\n${FSCK_USAGE}`);
      return 2;
    }
    throw e;
  }
  const scope: FsckScope = role;
  const exec = new HostExecutor({ mode: cfg.exec.mode, hostRoot: cfg.exec.hostRoot, nsenterTarget: cfg.exec.nsenterTarget, spawnVia: cfg.exec.spawnVia, defaultTimeoutMs: cfg.exec.timeoutSeconds * 1000 });
  const log = pino({ level: 'silent' });

  let repaired: FsckReport | undefined;
  if (flags.repair) {
    if (await isServing(cfg.endpoint)) {
      process.stderr.write(`sinter fsck: something answers on ${cfg.endpoint}; a repair must not race a running sinter (restarting it repairs the same things)\n`);
      return 2;
    }
    repaired = await runFsck(cfg, { scope, exec, log });
    // Exactly what a start does, without serving.
    if (scope !== 'node')
      for (const b of await backendsOf(cfg, exec, log)) {
        await b.start();
        // Nothing else runs (checked above), so no lock is needed around each volume.
        await b.reconcileExports?.((_id, fn) => fn());
      }
    if (scope !== 'controller') await nodeServiceOf(cfg, exec, log).start();
  }

  const report = await runFsck(cfg, { scope, exec, log });
  if (flags.json) {
    const fixed = repaired?.findings.filter((f) => !report.findings.some((g) => g.kind === f.kind && g.subject === f.subject && g.area === f.area));
    process.stdout.write(`${JSON.stringify({ ...report, ...(fixed ? { repaired: fixed } : {}) }, null, 2)}\n`);
  } else {
    if (repaired) {
      process.stdout.write(`before the repair:\n${formatReport(repaired)}\nafter the repair:\n`);
    }
    process.stdout.write(formatReport(report));
  }
  return report.clean ? 0 : 1;
}
