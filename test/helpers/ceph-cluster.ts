import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { freePort } from './tgtd.js';

/**
 * A single-node Ceph cluster owned by one test file, on 127.0.0.1 only (or the one address asked for): one
 * mon, one mgr, one BlueStore OSD on a sparse file (`ceph-osd --mkfs`, no
 * ceph-volume, no LVM), a replicated size-1 pool made with `rbd pool init`,
 * and a cephx user `client.sinter` with the rbd profile on that pool.
 * Debian 12's ceph 16.2 (`ceph-mon ceph-osd ceph-mgr ceph-common`, scripts/setup.sh).
 *
 * Everything lives in one temp dir with its own ceph.conf and keyring: no
 * /etc/ceph, no /var/lib/ceph, no systemd. stop() kills the daemons and
 * removes the dir. A test process killed before stop() leaves an `owner`
 * file naming its pid: the next start sweeps clusters whose owner is gone.
 */
export interface CephCluster {
  dir: string;
  fsid: string;
  /** `ADDRESS:PORT` (msgr2; 127.0.0.1 unless asked): what sinter's config and qemu's rbd driver take. */
  monitors: string;
  pool: string;
  /** cephx user sinter runs as (without `client.`), and a file holding its bare key (0600). */
  user: string;
  keyFile: string;
  key: string;
  /** Admin ceph.conf (client.admin's keyring): for the test's own checks. */
  conf: string;
  /** Milliseconds from the first command to HEALTH_OK with the pool ready. */
  startMs: number;
  /** `ceph` as client.admin; JSON parsed when json is true. */
  ceph(args: string[]): Promise<string>;
  /** `rbd` as client.admin. */
  rbd(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

export const CEPH_TEST_TOOLS: Record<string, string> = {
  'ceph-mon': 'ceph-mon',
  'ceph-mgr': 'ceph-mgr',
  'ceph-osd': 'ceph-osd',
  monmaptool: 'ceph-base',
  ceph: 'ceph-common',
  rbd: 'ceph-common',
};

/** Throws a message naming the packages to install when a tool is missing. */
export function requireCephTools(): void {
  const path = (process.env.PATH ?? '').split(':');
  const missing = Object.keys(CEPH_TEST_TOOLS).filter((t) => !path.some((d) => existsSync(join(d, t))));
  if (missing.length) throw new Error(`the rbd tests need ${missing.join(', ')}: apt-get install ceph-mon ceph-osd ceph-mgr ceph-common (scripts/setup.sh does)`);
}

/** A cephx secret as `ceph-authtool --gen-print-key` writes it: type 1 (AES), creation time, 16 random bytes, base64. */
export function cephxKey(): string {
  const b = Buffer.alloc(2 + 4 + 4 + 2 + 16);
  b.writeUInt16LE(1, 0);
  b.writeUInt32LE(Math.floor(Date.now() / 1000), 2);
  b.writeUInt32LE(0, 6);
  b.writeUInt16LE(16, 10);
  randomBytes(16).copy(b, 12);
  return b.toString('base64');
}

const PREFIX = 'sinter-ceph-';
// The mgr loads every Python module it finds (~1 s each here); these are the ones it always runs, or that rbd and `ceph df` use.
const MGR_MODULES = ['balancer', 'crash', 'devicehealth', 'orchestrator', 'pg_autoscaler', 'progress', 'rbd_support', 'status', 'telemetry', 'volumes', 'iostat', 'restful', 'nfs'];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Clusters of test processes that died without stop(): their daemons killed (pid files), their dirs removed. */
function sweepAbandoned(parent: string): void {
  for (const name of readdirSync(parent).filter((n) => n.startsWith(PREFIX))) {
    // One dir at a time: a dir another process removes meanwhile must not end the sweep.
    try {
      sweepOne(join(parent, name));
    } catch {
      // gone meanwhile
    }
  }
}

function sweepOne(dir: string): void {
  let owner = 0;
  try {
    owner = Number(readFileSync(join(dir, 'owner'), 'utf8').trim()) || 0;
  } catch {
    // not written yet, or the dir went away
  }
  // Another test process (another file, another helper's run) may be starting a cluster right now:
  // its dir exists a moment before its owner file has the pid. Only a dir whose owner is known
  // and dead, or an ownerless one older than a start can take, is abandoned.
  if (owner ? alive(owner) : Date.now() - dirAgeBase(dir) < 10 * 60_000) return;
  killDaemons(dir, 'SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

function dirAgeBase(dir: string): number {
  try {
    return statSync(dir).mtimeMs;
  } catch {
    return Date.now();
  }
}

/** The daemons of one cluster dir, by their pid files, checked to be that cluster's (command line names the dir). */
function daemonPids(dir: string): number[] {
  const run = join(dir, 'run');
  if (!existsSync(run)) return [];
  const out: number[] = [];
  for (const f of readdirSync(run).filter((n) => n.endsWith('.pid'))) {
    const pid = Number(readFileSync(join(run, f), 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) out.push(pid);
    } catch {
      // gone
    }
  }
  return out;
}

function killDaemons(dir: string, sig: NodeJS.Signals): number[] {
  const pids = daemonPids(dir);
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * Kills a cluster's daemons (SIGKILL, by its pid files) and removes its dir, synchronously: for a
 * process 'exit' handler, where nothing asynchronous runs any more.
 */
export function killClusterSync(dir: string): void {
  killDaemons(dir, 'SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

export interface CephClusterOptions {
  pool?: string;
  /** The OSD's sparse block file; default 10 GiB (BlueStore wants a few GiB for its DB and WAL). */
  osdBytes?: number;
  /** Extra mon caps for client.sinter beside `profile rbd` (e.g. `allow command 'osd blocklist'`, which lifting a fence needs). */
  sinterMonCaps?: string;
  /** Where the cluster's dir is made (default the temp dir): the VM guest's /tmp is RAM, its scratch disks are not. */
  parentDir?: string;
  /** How long to wait for HEALTH_OK after the pool is ready (the mgr loading its Python modules); default 90 s. */
  healthTimeoutMs?: number;
  /**
   * The one address the daemons bind and announce (default 127.0.0.1). A VM
   * guest can reach a host address that is not loopback (a /32 added to the
   * host's lo by the test), never the host's 127.0.0.1: the maps the clients
   * get name this address, so host and guest clients meet the same daemons.
   */
  address?: string;
  /** Called with each start step and the milliseconds since the start (where the time goes, e.g. under TCG). */
  onStep?: (step: string, ms: number) => void;
}

export async function startCephCluster(opts: CephClusterOptions = {}): Promise<CephCluster> {
  requireCephTools();
  const t0 = performance.now();
  try {
    sweepAbandoned(opts.parentDir ?? tmpdir());
  } catch {
    // another process's dir vanished while we looked
  }
  const dir = mkdtempSync(join(opts.parentDir ?? tmpdir(), PREFIX));
  const mark = (step: string) => opts.onStep?.(step, Math.round(performance.now() - t0));
  writeFileSync(join(dir, 'owner'), String(process.pid));
  const pool = opts.pool ?? 'sinter';
  const fsid = randomUUID();
  const port = await freePort();
  const address = opts.address ?? '127.0.0.1';
  const monitors = `${address}:${port}`;
  const procs: ResultPromise[] = [];
  const stop = async () => {
    // SIGTERM, then SIGKILL for what is still there after 5 s (an OSD flushing BlueStore).
    const pids = killDaemons(dir, 'SIGTERM');
    for (const p of procs) p.kill('SIGTERM');
    const until = Date.now() + 5000;
    while (Date.now() < until && pids.some(alive)) await new Promise((r) => setTimeout(r, 50));
    killDaemons(dir, 'SIGKILL');
    for (const p of procs) p.kill('SIGKILL');
    await Promise.allSettled(procs);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const d of ['mon/a', 'mgr/x', 'osd/0', 'run', 'log', 'crash', 'mgr-modules']) mkdirSync(join(dir, d), { recursive: true });
    for (const m of MGR_MODULES) if (existsSync(`/usr/share/ceph/mgr/${m}`)) symlinkSync(`/usr/share/ceph/mgr/${m}`, join(dir, 'mgr-modules', m));
    for (const f of ['mgr_module.py', 'mgr_util.py']) symlinkSync(`/usr/share/ceph/mgr/${f}`, join(dir, 'mgr-modules', f));

    const keys = { mon: cephxKey(), admin: cephxKey(), mgr: cephxKey(), osd: cephxKey(), sinter: cephxKey() };
    // The mon imports every key of its mkfs keyring, with its caps: no `ceph auth` round trips.
    const entity = (name: string, key: string, caps: Record<string, string>) =>
      [`[${name}]`, `\tkey = ${key}`, ...Object.entries(caps).map(([k, v]) => `\tcaps ${k} = "${v}"`)].join('\n');
    writeFileSync(
      join(dir, 'keyring'),
      [
        entity('mon.', keys.mon, { mon: 'allow *' }),
        entity('client.admin', keys.admin, { mon: 'allow *', osd: 'allow *', mgr: 'allow *', mds: 'allow *' }),
        entity('mgr.x', keys.mgr, { mon: 'allow profile mgr', osd: 'allow *', mds: 'allow *' }),
        entity('osd.0', keys.osd, { mon: 'allow profile osd', mgr: 'allow profile osd', osd: 'allow *' }),
        entity('client.sinter', keys.sinter, { mon: ['profile rbd', ...(opts.sinterMonCaps ? [opts.sinterMonCaps] : [])].join(', '), osd: `profile rbd pool=${pool}`, mgr: `profile rbd pool=${pool}` }),
      ].join('\n') + '\n',
      { mode: 0o600 },
    );
    const keyFile = join(dir, 'sinter.key');
    writeFileSync(keyFile, keys.sinter, { mode: 0o600 });

    const conf = join(dir, 'ceph.conf');
    writeFileSync(
      conf,
      `[global]
fsid = ${fsid}
mon_host = v2:${monitors}
public_addr = ${address}
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = ${dir}/keyring
run_dir = ${dir}/run
admin_socket = ${dir}/run/$name.asok
pid_file = ${dir}/run/$name.pid
log_file = ${dir}/log/$name.log
crash_dir = ${dir}/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
[mon]
mon_data = ${dir}/mon/$id
[mgr]
mgr_data = ${dir}/mgr/$id
mgr_module_path = ${dir}/mgr-modules
[osd]
osd_data = ${dir}/osd/$id
keyring = ${dir}/keyring
osd_objectstore = bluestore
bluestore_block_size = ${opts.osdBytes ?? 10 * 2 ** 30}
bluestore_block_create = true
osd_memory_target = ${896 * 2 ** 20}
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
`,
    );
    const run = (cmd: string, args: string[], input?: string) => execa(cmd, ['-c', conf, ...args], { input, timeout: 60_000 }).then((r) => r.stdout);
    const daemon = (cmd: string, args: string[]) => {
      const p = execa(cmd, ['-f', '-c', conf, ...args], { reject: false, stdio: 'ignore', cleanup: true });
      void p.catch(() => undefined);
      procs.push(p);
    };
    const ceph = (args: string[]) => run('ceph', ['--connect-timeout', '30', ...args]);

    await execa('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:${monitors}]`, join(dir, 'monmap')]);
    mark('monmap');
    await run('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap'), '--keyring', join(dir, 'keyring')]);
    mark('mon mkfs');
    daemon('ceph-mon', ['-i', 'a']);
    daemon('ceph-mgr', ['-i', 'x']);

    const osdUuid = randomUUID();
    // Where the time goes under TCG (the VM guest): each `ceph` CLI call is a Python start of ~20 s and the
    // OSD's BlueStore mkfs ~23 s. So the mkfs (which needs no monitor with --no-mon-config: the fsid is in
    // the conf) runs while the monitor starts, and the OSD's id and the pool come from ONE `ceph` process
    // (its interactive mode reads the commands from stdin). A pool made before its OSD boots gets its PGs
    // when the OSD joins the CRUSH map at boot.
    const mkfs = execa('ceph-osd', ['-c', conf, '--no-mon-config', '-i', '0', '--mkfs', '--osd-uuid', osdUuid], { timeout: 180_000 }).then(() => mark('osd mkfs (beside the mon start)'));
    // The mon may not listen yet: the ceph client hunts for it (connect-timeout above).
    const monSide = execa('ceph', ['-c', conf, '--connect-timeout', '30'], { input: `osd new ${osdUuid} 0\nosd pool create ${pool} 8 8 replicated\n`, timeout: 120_000 }).then((r) => {
      // Interactive mode exits 0 whatever happened: a failed command prints `Error E…` on stderr.
      const err = /^Error .*$/m.exec(r.stderr);
      if (err) throw new Error(`ceph (osd new; osd pool create ${pool}): ${err[0]}`);
      const id = r.stdout.trim().split('\n')[0]?.trim();
      if (id !== '0') throw new Error(`ceph osd new gave id ${id}, expected 0 (stdout ${r.stdout.slice(0, 200)}; stderr ${r.stderr.slice(0, 200)})`);
      mark('osd new + pool create (one ceph process; the first answer of the mon)');
    });
    await Promise.all([mkfs, monSide]);
    daemon('ceph-osd', ['-i', '0']);
    await run('rbd', ['pool', 'init', pool]);
    mark('rbd pool init (PGs active)');
    // HEALTH_OK (the mgr is up: `ceph df` and PG states come from it).
    let health = '';
    const healthMs = opts.healthTimeoutMs ?? 90_000;
    const until = Date.now() + healthMs;
    while (Date.now() < until) {
      health = (await ceph(['health']).catch((e: Error) => e.message)).trim();
      if (health === 'HEALTH_OK') break;
      await new Promise((r) => setTimeout(r, 500));
    }
    mark('HEALTH_OK');
    if (health !== 'HEALTH_OK') throw new Error(`the test Ceph cluster did not reach HEALTH_OK in ${healthMs / 1000} s: ${health}; ${await ceph(['health', 'detail']).catch(() => '')}`);

    return {
      dir,
      fsid,
      monitors,
      pool,
      user: 'sinter',
      keyFile,
      key: keys.sinter,
      conf,
      startMs: Math.round(performance.now() - t0),
      ceph,
      rbd: (args) => run('rbd', args),
      stop,
    };
  } catch (e) {
    const logs = (() => {
      try {
        return readdirSync(join(dir, 'log'))
          .map((f) => `${f}: ${readFileSync(join(dir, 'log', f), 'utf8').split('\n').slice(-5).join(' | ')}`)
          .join('\n');
      } catch {
        return '';
      }
    })();
    await stop();
    throw new Error(`${(e as Error).message}\n${logs}`);
  }
}
