import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { execa } from 'execa';
import { inject } from 'vitest';
import { startCephCluster, type CephCluster, type CephClusterOptions } from './ceph-cluster.js';

/** What test/ceph-global-setup.ts hands a file about the run's shared cluster. */
export interface SharedCephInfo {
  dir: string;
  fsid: string;
  monitors: string;
  /** Admin ceph.conf (client.admin's keyring in the cluster dir). */
  conf: string;
  startMs: number;
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** The unix socket of the host run's shared-cluster server (test/ceph-global-setup.ts); absent in other projects. */
    sinterCephSocket?: string;
  }
}

/** One file's share of a Ceph cluster: a CephCluster whose pool and cephx user are this file's alone. */
export interface FileCeph extends CephCluster {
  /** True when the cluster is the run's shared one (stop() then drops only this file's pool and user). */
  shared: boolean;
}

function askServer(socketPath: string): Promise<SharedCephInfo> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: 'POST', path: '/cluster' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body) as SharedCephInfo) : reject(new Error(`the shared test Ceph cluster did not start: ${body}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * A Ceph cluster for one test file: the host run's shared one (started on the
 * first file's request by test/ceph-global-setup.ts), with a pool and a cephx
 * user (`profile rbd` on that pool only, plus `sinterMonCaps`) made for this
 * file, so files see none of each other's images, snapshots, groups or
 * trash. The OSD blocklist is cluster-wide: it is cleared for each file
 * (files run one at a time), so a file that failed mid-fence leaves nothing
 * for the next. Outside the host project (no shared server), the file
 * starts a cluster of its own, as before.
 *
 * stop() removes the pool (images, trash and all) and the user, and the
 * file's key dir; with an own cluster, the whole cluster.
 */
export async function cephForFile(label: string, opts: CephClusterOptions = {}): Promise<FileCeph> {
  const socket = inject('sinterCephSocket');
  if (!socket) return { ...(await startCephCluster(opts)), shared: false };
  const t0 = performance.now();
  const info = await askServer(socket);
  const run = (cmd: string, args: string[]) => execa(cmd, ['-c', info.conf, ...args], { timeout: 60_000 }).then((r) => r.stdout);
  const ceph = (args: string[]) => run('ceph', ['--connect-timeout', '30', ...args]);
  const rbd = (args: string[]) => run('rbd', args);
  const suffix = randomBytes(3).toString('hex');
  const pool = `${label}-${suffix}`;
  const user = `sinter-${label}-${suffix}`;
  // Inside the cluster's dir: a run killed before stop() leaves it to the sweep that removes that dir.
  const keyDir = mkdtempSync(join(info.dir, 'file-'));
  // Each `ceph` call is a ~1 s Python start here: the independent steps run at once (a pool in ~4 s, not ~9).
  const stop = async () => {
    await Promise.all([
      ceph(['osd', 'pool', 'rm', pool, pool, '--yes-i-really-really-mean-it']).catch(() => undefined),
      ceph(['auth', 'rm', `client.${user}`]).catch(() => undefined),
    ]);
    rmSync(keyDir, { recursive: true, force: true });
  };
  try {
    const monCaps = ['profile rbd', ...(opts.sinterMonCaps ? [opts.sinterMonCaps] : [])].join(', ');
    const [, key] = await Promise.all([
      ceph(['osd', 'pool', 'create', pool, '8', '8', 'replicated']).then(() => rbd(['pool', 'init', pool])),
      ceph(['auth', 'get-or-create-key', `client.${user}`, 'mon', monCaps, 'osd', `profile rbd pool=${pool}`, 'mgr', `profile rbd pool=${pool}`]).then((k) => k.trim()),
      ceph(['osd', 'blocklist', 'clear']),
    ]);
    const keyFile = join(keyDir, `${user}.key`);
    writeFileSync(keyFile, key, { mode: 0o600 });
    return { dir: info.dir, fsid: info.fsid, monitors: info.monitors, conf: info.conf, pool, user, key, keyFile, startMs: Math.round(performance.now() - t0), ceph, rbd, stop, shared: true };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * The YAML of a sinter config with one rbd backend (`ceph` unless named) on this file's pool
 * as its user: `backend` lines go into the backend's entry, `node` adds the
 * node half (user-space rbd attach with the same key, state under stateDir),
 * `extra` lines go at the top level.
 */
export function rbdSinterConfig(
  c: CephCluster,
  o: { name?: string; controllerStateDir: string; nodeStateDir?: string; backend?: string[]; nodeRbd?: string[]; extra?: string[] },
): string {
  return [
    'backends:',
    `  - name: ${o.name ?? 'ceph'}`,
    '    driver: rbd',
    `    pool: ${c.pool}`,
    `    monitors: ["${c.monitors}"]`,
    `    user: ${c.user}`,
    `    keyFile: ${c.keyFile}`,
    ...(o.backend ?? []).map((l) => `    ${l}`),
    ...(o.nodeStateDir ? ['node:', `  stateDir: ${o.nodeStateDir}`, '  rbd:', `    user: ${c.user}`, `    keyFile: ${c.keyFile}`, ...(o.nodeRbd ?? []).map((l) => `    ${l}`)] : []),
    `controller: { stateDir: ${o.controllerStateDir} }`,
    ...(o.extra ?? []),
  ].join('\n');
}
