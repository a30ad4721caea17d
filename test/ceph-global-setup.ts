import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { killClusterSync, startCephCluster, type CephCluster } from './helpers/ceph-cluster.js';
import type { SharedCephInfo } from './helpers/ceph-shared.js';

/**
 * One Ceph cluster for the whole host run, shared by every file that needs one
 * (test/helpers/ceph-shared.ts), started lazily: a run without an rbd file
 * never starts it.
 *
 * vitest's globalSetup runs in the main process, before any file and without
 * knowing which files need what, and its provide() values are fixed before
 * the first file starts. So it provides the path of a unix socket served from
 * this process: the first file that asks gets the cluster started (~20 s),
 * later files get the same one. The daemons are children of this process:
 * the teardown stops them when the run ends, failed tests or not; an
 * interrupted run (SIGINT/SIGTERM) kills them with it (execa's cleanup), and
 * the 'exit' handler removes the cluster's dir; a run killed outright leaves
 * an owner file naming this dead pid, which the next start sweeps.
 */
function ownerAlive(dir: string): boolean {
  try {
    process.kill(Number(readFileSync(join(dir, 'owner'), 'utf8')), 0);
    return true;
  } catch (e) {
    // EPERM: alive, someone else's; no owner file yet: being set up.
    return (e as NodeJS.ErrnoException).code === 'EPERM' || (e as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

export default function setup(project: TestProject): () => Promise<void> {
  // Socket dirs of runs killed outright (their owner gone): an empty dir and a dead socket each.
  for (const n of readdirSync(tmpdir()).filter((d) => d.startsWith('sinter-ceph-fixture-'))) {
    const d = join(tmpdir(), n);
    if (!ownerAlive(d)) rmSync(d, { recursive: true, force: true });
  }
  const sockDir = mkdtempSync(join(tmpdir(), 'sinter-ceph-fixture-'));
  writeFileSync(join(sockDir, 'owner'), String(process.pid));
  const socket = join(sockDir, 'sock');
  let cluster: Promise<CephCluster> | undefined;
  let started: CephCluster | undefined;
  const onExit = () => {
    if (started) killClusterSync(started.dir);
    rmSync(sockDir, { recursive: true, force: true });
  };
  process.once('exit', onExit);

  const server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/cluster') {
      res.writeHead(404).end();
      return;
    }
    // A failed start is kept: every later file fails at once with the same message rather than waiting 90 s again.
    cluster ??= startCephCluster({ pool: 'sinter-shared' }).then((c) => (started = c));
    cluster.then(
      (c) => {
        const info: SharedCephInfo = { dir: c.dir, fsid: c.fsid, monitors: c.monitors, conf: c.conf, startMs: c.startMs };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(info));
      },
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(e.message),
    );
  });
  // Every request waits for the start; a start is at most ~2 min (HEALTH_OK wait included).
  server.requestTimeout = 0;
  server.listen(socket);
  project.provide('sinterCephSocket', socket);

  return async () => {
    server.close();
    const c = await cluster?.catch(() => undefined);
    await c?.stop();
    started = undefined;
    process.removeListener('exit', onExit);
    rmSync(sockDir, { recursive: true, force: true });
  };
}
