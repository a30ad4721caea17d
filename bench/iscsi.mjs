// 6. iSCSI: ControllerPublishVolume + ControllerUnpublishVolume of a backend
// with `export: iscsi` (tgt), and NodeStageVolume + NodeUnstageVolume (block
// access) through the user-space initiator, each against the raw host
// commands sinter's helpers run for the same thing, started by this process
// through the same executor (the command runner, same options) in the same run.
//
// The section owns everything it uses: a tgtd on 127.0.0.1 with a private
// control port and portal, a `sinter controller` and a `sinter node`; all of
// it (and every qemu-nbd, nbdfuse, FUSE mount and loop device either side
// made) is torn down at the end, on failure, and on SIGINT/SIGTERM.
import { spawn } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { tgtdShow } from '../dist/backends/targets/tgt-ipc.js';
import { base, GiB, hostExec, load, onCleanup, openDir, percentile, removeFileDurable, runnerCpuMs, sleep, sparseImage, startSinter, track, writeFileAtomic } from './lib.mjs';

const NODE_IQN = 'iqn.2026-11.io.sinter.bench:node-1';
const SINTER_PREFIX = 'iqn.2026-11.io.sinter.bench:';
/** The raw side's own target name, outside the controller's prefix, so its reconcile never touches it. */
const RAW_IQN = 'iqn.2026-11.io.sinter.benchraw:volume-1';
const RAW_TID = 900;
const CHAP = { 'node.session.auth.username': 'sinter-bench', 'node.session.auth.password': 'Bench-chap-secret-1' };
/** tgt's caching mode page with WCE set, as src/backends/targets/tgt.ts sends it (writeCache: true, the default). */
const CACHING_PAGE_ON = '8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0';
const blockCap = () => ({ block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } });

export const RAW_PUBLISH =
  'tgtadm --op new --mode target --tid T --targetname IQN; --op new --mode logicalunit --lun 1 --backing-store IMG --bstype rdwr --blocksize 512; ' +
  '--op update --mode logicalunit --params vendor_id=…,product_id=…,scsi_sn=…; --op update --mode logicalunit --params mode_page=(caching); ' +
  '--op bind --mode target --initiator-name NODE [CHAP: --op new --mode account; --op bind --mode account]; ' +
  'then --op delete --mode target --force [CHAP: --op delete --mode account]';
export const RAW_STAGE =
  'qemu-nbd --image-opts driver=iscsi,…,initiator-name=NODE --socket S --persistent --pid-file P (until P); nbdfuse -P P2 MNT/disk --unix S (until P2); ' +
  'losetup --find --show --direct-io=on MNT/disk; mount --bind DEV FILE; then umount FILE; blockdev --flushbufs DEV; losetup --detach DEV; fusermount3 -u MNT; ' +
  'nbdfuse exits; SIGTERM qemu-nbd, until it exits';

const TOOLS = ['tgtd', 'tgtadm', 'qemu-nbd', 'nbdfuse', 'fusermount3', 'losetup', 'blockdev'];

function requireTools() {
  const path = (process.env.PATH ?? '').split(':');
  const missing = TOOLS.filter((t) => !path.some((d) => existsSync(join(d, t))));
  if (missing.length) throw new Error(`the iSCSI bench needs ${missing.join(', ')}: apt-get install tgt qemu-utils qemu-block-extra libnbd-bin fuse3`);
  const arch = readdirSync('/usr/lib').filter((d) => d.endsWith('-linux-gnu'));
  if (!arch.some((d) => existsSync(join('/usr/lib', d, 'qemu', 'block-iscsi.so')))) throw new Error('qemu-nbd has no iSCSI driver: apt-get install qemu-block-extra');
}

// ---------------------------------------------------------------- tgtd

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(a.port));
    });
  });
}

const tgtSockets = (cp) => [`/var/run/tgtd/socket.${cp}`, `/var/run/tgtd/socket.${cp}.lock`];

/** A private tgtd: foreground, its own control port (a unix socket name) and portal on 127.0.0.1. */
async function startTgtd(dir) {
  let cp;
  do cp = 20000 + Math.floor(Math.random() * 12000);
  while (tgtSockets(cp).some((f) => existsSync(f)));
  const port = await freePort();
  const logFile = join(dir, 'tgtd.log');
  const fd = openSync(logFile, 'a');
  const child = track(spawn('tgtd', ['-f', '-C', String(cp), '--iscsi', `portal=127.0.0.1:${port}`], { stdio: ['ignore', fd, fd] }));
  closeSync(fd);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      await hostExec.run('tgtadm', ['-C', String(cp), '--op', 'delete', '--mode', 'system'], { timeoutMs: 5000 }).catch(() => undefined);
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
    for (const f of tgtSockets(cp)) rmSync(f, { force: true });
  };
  const deadline = performance.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`tgtd exited at start: ${readFileSync(logFile, 'utf8').slice(-400)}`);
    const ok = await hostExec.run('tgtadm', ['-C', String(cp), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']).then(
      () => true,
      () => false,
    );
    if (ok && (await canConnect(port))) break;
    if (performance.now() > deadline) {
      await stop();
      throw new Error(`tgtd did not come up: ${readFileSync(logFile, 'utf8').slice(-400)}`);
    }
    await sleep(50);
  }
  return { controlPort: cp, portal: `127.0.0.1:${port}`, stop };
}

async function canConnect(port) {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const c = connect({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

// ---------------------------------------------------------------- cleanup of user-space attachments

function mountsUnder(dir) {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const f = l.split(' ');
      return { at: f[4].replace(/\\040/g, ' '), fsType: l.split(' - ')[1]?.split(' ')[0] ?? '' };
    })
    .filter((m) => m.at === dir || m.at.startsWith(`${dir}/`))
    .sort((a, b) => b.at.length - a.at.length);
}

/** Whatever an interrupted run left under dir: bind mounts, loop devices on FUSE files, FUSE mounts, qemu-nbd/nbdfuse by their pid files. */
async function scrubUserspace(dir, rawPids) {
  for (const m of mountsUnder(dir).filter((m) => !m.fsType.startsWith('fuse'))) await hostExec.run('umount', ['-l', m.at]).catch(() => undefined);
  for (const n of readdirSync('/sys/block').filter((x) => /^loop\d+$/.test(x))) {
    let back = '';
    try {
      back = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim();
    } catch {
      continue;
    }
    if (back.startsWith(`${dir}/`)) await hostExec.run('losetup', ['--detach', `/dev/${n}`]).catch(() => undefined);
  }
  for (const m of mountsUnder(dir).filter((m) => m.fsType.startsWith('fuse'))) await hostExec.run('fusermount3', ['-u', '-z', m.at]).catch(() => undefined);
  const pids = new Set(rawPids);
  const walk = (d, depth) => {
    let names = [];
    try {
      names = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of names) {
      const p = join(d, e.name);
      if (e.isDirectory() && depth < 6 && e.name !== 'mnt') walk(p, depth + 1);
      else if (e.isFile() && e.name.endsWith('.pid')) {
        const pid = Number(readFileSync(p, 'utf8').trim());
        if (Number.isInteger(pid) && pid > 1) pids.add(pid);
      }
    }
  };
  walk(dir, 0);
  // A daemon killed before it wrote its pid file: qemu-nbd / nbdfuse whose command line names our directory.
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (/(^|\/)(qemu-nbd|nbdfuse)$/.test(argv[0]) && argv.some((a) => a.includes(dir))) pids.add(Number(e));
    } catch {
      /* gone */
    }
  }
  for (const pid of pids) {
    try {
      // Only a process whose command line names our directory is ours.
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

// ---------------------------------------------------------------- the raw sides

function rawTgt(controlPort) {
  const tgtadm = (args, secrets) => hostExec.run('tgtadm', ['-C', String(controlPort), '--lld', 'iscsi', ...args], { timeoutMs: 30_000, secrets });
  const tid = String(RAW_TID);
  return {
    async publish(img, chap) {
      await tgtadm(['--op', 'new', '--mode', 'target', '--tid', tid, '--targetname', RAW_IQN]);
      await tgtadm(['--op', 'new', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--backing-store', img, '--bstype', 'rdwr', '--blocksize', '512']);
      await tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--params', 'vendor_id=SINTER,product_id=volume,scsi_sn=0b5e1c2a-9d7f-4e31-8a2b-6c4d3e2f1a0b']);
      await tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--params', `mode_page=${CACHING_PAGE_ON}`]);
      await tgtadm(['--op', 'bind', '--mode', 'target', '--tid', tid, '--initiator-name', NODE_IQN]);
      if (chap) {
        const user = chap['node.session.auth.username'];
        const pw = chap['node.session.auth.password'];
        await tgtadm(['--op', 'new', '--mode', 'account', '--user', user, '--password', pw], [pw]);
        await tgtadm(['--op', 'bind', '--mode', 'account', '--tid', tid, '--user', user]);
      }
    },
    async unpublish(chap) {
      await tgtadm(['--op', 'delete', '--mode', 'target', '--tid', tid, '--force']);
      if (chap) await tgtadm(['--op', 'delete', '--mode', 'account', '--user', chap['node.session.auth.username']]);
    },
    /**
     * The read sinter's unpublish needs before it deletes (which tid is the volume's target), timed raw; not in the floor.
     * sinter reads over tgtd's control socket (src/backends/targets/tgt-ipc.ts), so this does too.
     */
    async readTargets() {
      const t = performance.now();
      const text = await tgtdShow(`/var/run/tgtd/socket.${controlPort}`, 30_000);
      if (text === undefined) throw new Error(`tgtd did not answer a show on its control socket ${controlPort}`);
      return performance.now() - t;
    },
  };
}

/** Polls for a pid file every 5 ms (the floor's readiness signal); throws if the daemon exits first. */
async function untilPidFile(file, daemon, what, timeoutMs = 30_000) {
  let gone = false;
  void daemon.exited.then(() => (gone = true));
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const pid = await fs.readFile(file, 'utf8').then(
      (s) => Number(s.trim()),
      () => 0,
    );
    if (pid > 1) return pid;
    if (gone) throw new Error(`${what} exited before it was ready`);
    if (performance.now() > deadline) throw new Error(`${what} was not ready within ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** The user-space initiator's host sequence for one block stage and unstage, run directly. */
function rawUserspace(portal, iqn, rawPids) {
  return {
    async stage(dir) {
      if (rawPids.aborted) throw new Error('interrupted');
      await fs.mkdir(join(dir, 'mnt'), { recursive: true, mode: 0o700 });
      const sock = join(dir, 'nbd.sock');
      const qPid = join(dir, 'qemu-nbd.pid');
      const fPid = join(dir, 'nbdfuse.pid');
      const image = ['driver=iscsi', 'transport=tcp', `portal=${portal}`, `target=${iqn}`, 'lun=1', `initiator-name=${NODE_IQN}`].join(',');
      const q = await hostExec.spawnDaemon('qemu-nbd', ['--image-opts', image, '--socket', sock, '--persistent', '--pid-file', qPid], { logFile: join(dir, 'qemu-nbd.log') });
      rawPids.add(q.pid);
      await untilPidFile(qPid, q, 'qemu-nbd');
      if (rawPids.aborted) throw new Error('interrupted');
      const f = await hostExec.spawnDaemon('nbdfuse', ['-P', fPid, join(dir, 'mnt', 'disk'), '--unix', sock], { logFile: join(dir, 'nbdfuse.log') });
      rawPids.add(f.pid);
      await untilPidFile(fPid, f, 'nbdfuse');
      const dev = (await hostExec.run('losetup', ['--find', '--show', '--direct-io=on', join(dir, 'mnt', 'disk')])).stdout.trim();
      const file = join(dir, 'staging-file');
      await (await fs.open(file, 'a', 0o600)).close();
      await hostExec.run('mount', ['--bind', dev, file]);
      return { dev, file, q, f, mnt: join(dir, 'mnt') };
    },
    async unstage(s) {
      await hostExec.run('umount', [s.file]);
      await hostExec.run('blockdev', ['--flushbufs', s.dev]);
      await hostExec.run('losetup', ['--detach', s.dev]);
      await hostExec.run('fusermount3', ['-u', s.mnt]);
      await s.f.exited; // nbdfuse exits once unmounted
      process.kill(s.q.pid, 'SIGTERM');
      await s.q.exited;
      rawPids.delete(s.q.pid);
      rawPids.delete(s.f.pid);
    },
  };
}

// ---------------------------------------------------------------- figures

const p50 = (v) => percentile(v, 0.5);
const p95 = (v) => percentile(v, 0.95);
const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);

async function timeSteps(steps) {
  const ms = {};
  for (const [name, fn] of steps) {
    const t = performance.now();
    await fn();
    ms[name] = performance.now() - t;
  }
  return ms;
}

/** Runs both sides `reps` times, alternating which goes first; returns per-rep step timings and the load average around the figure. */
async function interleave(reps, warm, sides, log, tag) {
  for (let i = 0; i < warm; i++) for (const fn of Object.values(sides)) await fn();
  const got = { sinter: [], raw: [] };
  const loadStart = load();
  for (let r = 0; r < reps; r++) {
    const order = r % 2 === 0 ? ['raw', 'sinter'] : ['sinter', 'raw'];
    for (const who of order) got[who].push(await sides[who]());
    if ((r + 1) % 10 === 0 || r === reps - 1) {
      const s = got.sinter.map(sum);
      const w = got.raw.map(sum);
      log(`  ${tag} ${r + 1}/${reps}: sinter p50 ${p50(s).toFixed(1)} ms, raw p50 ${p50(w).toFixed(1)} ms, ${(p50(s) / p50(w)).toFixed(2)}× (load ${load().toFixed(2)})`);
    }
  }
  return { ...got, load: { start: loadStart, end: load() } };
}

function rowsFor(section, idBase, label, got, steps) {
  const s = got.sinter.map(sum);
  const w = got.raw.map(sum);
  const perRep = s.map((v, i) => v / w[i]);
  const detail = { load: got.load, reps: s.length };
  const rows = [
    { id: `${idBase}.p50`, section, label: `${label} p50`, unit: 'ms', value: p50(s), floor: p50(w), ratio: p50(s) / p50(w), ratios: perRep, detail },
    { id: `${idBase}.p95`, section, label: `${label} p95`, unit: 'ms', value: p95(s), floor: p95(w), ratio: p95(s) / p95(w), detail },
  ];
  for (const k of steps) {
    const sv = got.sinter.map((m) => m[k]);
    const wv = got.raw.map((m) => m[k]);
    rows.push({ id: `${idBase}.${k}.p50`, section, label: `  ${k} p50`, unit: 'ms', value: p50(sv), floor: p50(wv), ratio: p50(sv) / p50(wv) });
  }
  return rows;
}

export async function iscsiBench({ publishReps, stageReps, log }) {
  requireTools();
  const dir = join(base, 'iscsi');
  mkdirSync(dir, { recursive: true });
  const rawPids = new Set();
  let tgtd;
  let ctl;
  let node;
  const cleanup = async () => {
    await scrubUserspace(dir, rawPids);
    await tgtd?.stop();
  };
  // On SIGINT/SIGTERM the measuring loop is still running: stop both sides from starting daemons first.
  const unregister = onCleanup(async () => {
    rawPids.aborted = true;
    for (const p of [node, ctl]) p?.child.kill('SIGKILL');
    await sleep(200);
    await cleanup();
  });
  const rows = [];
  try {
    tgtd = await startTgtd(dir);
    log(`  tgtd on ${tgtd.portal}, control port ${tgtd.controlPort}`);
    const dataDir = join(dir, 'data');
    ctl = await startSinter({
      role: 'controller',
      dir: join(dir, 'controller'),
      config: [
        'backends:',
        '  - name: san',
        `    dataDir: ${dataDir}`,
        '    overSubscriptionRatio: 1000',
        '    export: iscsi',
        '    iscsi:',
        `      portals: ["${tgtd.portal}"]`,
        `      controlPort: ${tgtd.controlPort}`,
        `      iqnPrefix: "${SINTER_PREFIX}"`,
        '',
      ].join('\n'),
    });
    node = await startSinter({
      role: 'node',
      dir: join(dir, 'node'),
      config: ['node:', `  iscsiInitiatorName: ${NODE_IQN}`, '  initiator: userspace', `  stateDir: ${join(dir, 'node', 'state')}`, ''].join('\n'),
    });
    const { node_id: nodeId } = await node.client.node.NodeGetInfo({});
    const { volume } = await ctl.client.controller.CreateVolume({ name: 'iscsi-bench', capacity_range: { required_bytes: GiB }, volume_capabilities: [blockCap()] });
    const id = volume.volume_id;
    const rawImg = join(dir, 'raw.img');
    await sparseImage(rawImg, GiB);
    const tgt = rawTgt(tgtd.controlPort);
    const c = ctl.client.controller;

    // ---- Figure 1: ControllerPublishVolume + ControllerUnpublishVolume (a fresh target each time: the last node leaving removes it).
    const section1 = '6a. iSCSI export (tgt): ControllerPublish+Unpublish';
    const recDir = join(dir, 'raw-records');
    mkdirSync(recDir, { recursive: true });
    const recDh = await openDir(recDir);
    const volRecord = JSON.stringify({ ...volume, attachments: [{ nodeId, accessMode: 'SINGLE_NODE_WRITER', readonly: false, at: new Date().toISOString() }], state: 'in-use', updatedAt: new Date().toISOString() });
    for (const chap of [undefined, CHAP]) {
      const secrets = chap ?? {};
      const tag = chap ? 'publish (CHAP)' : 'publish';
      // What safety costs, timed raw beside each repetition and kept out of the floor: the reads
      // unpublish needs (the target's tid before 'delete --force'; with CHAP, the daemon again before
      // deleting an account another target may share) and the two durable attachment records.
      const reads = [];
      const records = [];
      // CPU time of the process doing the work, summed over the measured repetitions: sinter's controller
      // (from /proc, 10 ms ticks) and this one's for the raw tgtadm calls (their spawns; tgtd's work is the same for both).
      const cpuMs = { sinter: 0, raw: 0 };
      const WARM = 2;
      const runs = { sinter: 0, raw: 0 };
      const selfCpu = () => {
        const u = process.cpuUsage();
        return (u.user + u.system) / 1000 + runnerCpuMs(process.pid);
      };
      const got = await interleave(
        publishReps,
        WARM,
        {
          sinter: async () => {
            const c0 = ctl.cpu();
            const ms = await timeSteps([
              ['ControllerPublishVolume', () => c.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: blockCap(), secrets })],
              ['ControllerUnpublishVolume', () => c.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId })],
            ]);
            if (runs.sinter++ >= WARM) cpuMs.sinter += ctl.cpu() - c0;
            return ms;
          },
          raw: async () => {
            const c0 = selfCpu();
            const ms = await timeSteps([
              ['ControllerPublishVolume', () => tgt.publish(rawImg, chap)],
              ['ControllerUnpublishVolume', () => tgt.unpublish(chap)],
            ]);
            if (runs.raw++ >= WARM) cpuMs.raw += selfCpu() - c0;
            // Same daemon state as sinter's reads: the target there (then gone, for CHAP's second read).
            await tgt.publish(rawImg, undefined);
            let read = await tgt.readTargets();
            await tgt.unpublish(undefined);
            if (chap) read += await tgt.readTargets();
            reads.push(read);
            const t = performance.now();
            for (let i = 0; i < 2; i++) await writeFileAtomic(join(recDir, 'volume.json'), volRecord, recDh);
            if (chap) {
              // The CHAP secret sinter keeps for reconcile (a 0600 record) is written on publish and removed on unpublish.
              await writeFileAtomic(join(recDir, 'chap.json'), JSON.stringify({ id: 'x', chap: { user: 'sinter-bench', password: 'x'.repeat(19) } }), recDh);
              await removeFileDurable(join(recDir, 'chap.json'), recDh);
            }
            records.push(performance.now() - t);
            return ms;
          },
        },
        log,
        tag,
      );
      // interleave's warm-up runs add to reads/records first: keep the measured repetitions only.
      reads.splice(0, reads.length - got.raw.length);
      records.splice(0, records.length - got.raw.length);
      const idBase = chap ? 'iscsi.publish.chap' : 'iscsi.publish';
      const label = chap ? 'Publish+Unpublish, one-way CHAP' : 'Publish+Unpublish';
      const s = got.sinter.map(sum);
      const w = got.raw.map(sum);
      // Per repetition for the range; the figure itself from the medians (a difference of single
      // repetitions measured moments apart is noisier than either).
      const remainder = s.map((v, i) => (v - reads[i] - records[i]) / w[i]);
      const own = p50(s) - p50(reads) - p50(records);
      rows.push(
        ...rowsFor(section1, idBase, label, got, ['ControllerPublishVolume', 'ControllerUnpublishVolume']),
        {
          id: `${idBase}.reads`,
          section: section1,
          label: `  of which: unpublish's ${chap ? 'reads (show target ×2 over tgtd\'s socket: tid, shared accounts)' : 'read (show target over tgtd\'s socket: the tid)'}; raw`,
          unit: 'ms',
          value: p50(reads),
        },
        {
          id: `${idBase}.cpu`,
          section: section1,
          label: '  CPU per Publish+Unpublish (sinter\'s controller; floor: the raw side\'s process)',
          unit: 'ms',
          value: cpuMs.sinter / got.sinter.length,
          floor: cpuMs.raw / got.raw.length,
          ratio: cpuMs.sinter / got.sinter.length / (cpuMs.raw / got.raw.length),
        },
        { id: `${idBase}.records`, section: section1, label: `  of which: 2 durable attachment records${chap ? ', the CHAP record and its removal' : ''}; raw`, unit: 'ms', value: p50(records) },
        {
          id: `${idBase}.remainder.p50`,
          section: section1,
          label: `${label} p50 less those (sinter's own)`,
          unit: 'ms',
          value: own,
          floor: p50(w),
          ratio: own / p50(w),
          ratios: remainder,
        },
      );
    }
    await recDh.close();

    // ---- Figure 2: NodeStageVolume + NodeUnstageVolume, block access, over one published target that both sides log in to in turn.
    const { publish_context: ctx } = await c.ControllerPublishVolume({ volume_id: id, node_id: nodeId, volume_capability: blockCap() });
    const staging = join(node.kubeletRoot, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount');
    mkdirSync(staging, { recursive: true });
    const n = node.client.node;
    const raw = rawUserspace(ctx.portals.split(',')[0], ctx.iqn, rawPids);
    let k = 0;
    const section2 = '6b. iSCSI user-space initiator: NodeStage+Unstage (block)';
    const got = await interleave(
      stageReps,
      1,
      {
        sinter: () =>
          timeSteps([
            ['NodeStageVolume', () => n.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: blockCap(), publish_context: ctx })],
            ['NodeUnstageVolume', () => n.NodeUnstageVolume({ volume_id: id, staging_target_path: staging })],
          ]),
        raw: async () => {
          const d = join(dir, 'raw-attach', String(k++));
          let s;
          const ms = await timeSteps([
            ['NodeStageVolume', async () => (s = await raw.stage(d))],
            ['NodeUnstageVolume', () => raw.unstage(s)],
          ]);
          rmSync(d, { recursive: true, force: true });
          return ms;
        },
      },
      log,
      'stage',
    );
    rows.push(...rowsFor(section2, 'iscsi.stage', 'Stage+Unstage', got, ['NodeStageVolume', 'NodeUnstageVolume']));
    await c.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await c.DeleteVolume({ volume_id: id });
  } finally {
    await node?.stop();
    await ctl?.stop();
    // BENCH_LOGS_TO=DIR keeps both sinter logs (with BENCH_LOG_LEVEL=debug: every host command and its duration).
    if (process.env.BENCH_LOGS_TO) {
      mkdirSync(process.env.BENCH_LOGS_TO, { recursive: true });
      for (const [who, p] of [['controller', ctl], ['node', node]]) if (p) copyFileSync(p.logFile, join(process.env.BENCH_LOGS_TO, `iscsi-${who}.log`));
    }
    await cleanup();
    unregister();
  }
  return rows;
}

/**
 * 7b. Attach at scale over the user-space iSCSI initiator: N volumes (fewer
 * than section 7's local ones: each staged volume is a qemu-nbd, an nbdfuse
 * and a loop device) exported by `sinter controller` on the section's own
 * tgtd, staged and published (block access) by `sinter node`, torn down last
 * in, first out; the same figures as section 7 (bench/attach-scale.mjs).
 */
export async function iscsiScaleBench({ volumes = 32, log }) {
  requireTools();
  const { runScale, undoScale } = await import('./attach-scale.mjs');
  const dir = join(base, 'iscsi-scale');
  mkdirSync(dir, { recursive: true });
  const rawPids = new Set();
  let tgtd;
  let ctl;
  let node;
  const made = [];
  let failed = true;
  const cleanup = async () => {
    await scrubUserspace(dir, rawPids);
    await tgtd?.stop();
  };
  const unregister = onCleanup(async () => {
    for (const p of [node, ctl]) p?.child.kill('SIGKILL');
    await sleep(200);
    await cleanup();
  });
  let rows;
  try {
    tgtd = await startTgtd(dir);
    ctl = await startSinter({
      role: 'controller',
      dir: join(dir, 'controller'),
      config: [
        'backends:',
        '  - name: san',
        `    dataDir: ${join(dir, 'data')}`,
        '    overSubscriptionRatio: 1000',
        '    export: iscsi',
        '    iscsi:',
        `      portals: ["${tgtd.portal}"]`,
        `      controlPort: ${tgtd.controlPort}`,
        `      iqnPrefix: "${SINTER_PREFIX}"`,
        '',
      ].join('\n'),
    });
    node = await startSinter({
      role: 'node',
      dir: join(dir, 'node'),
      config: ['node:', `  iscsiInitiatorName: ${NODE_IQN}`, '  initiator: userspace', `  stateDir: ${join(dir, 'node', 'state')}`, ''].join('\n'),
    });
    rows = await runScale({
      ctl,
      node,
      cap: blockCap(),
      sizeBytes: 64 * 1024 * 1024,
      volumes,
      pathsFor: (id, name) => ({
        staging: join(node.kubeletRoot, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount'),
        target: join(node.kubeletRoot, 'pods', `pod-${name}`, 'volumeDevices/kubernetes.io~csi', id),
      }),
      section: `7b. Attach at scale (user-space iSCSI initiator over tgt, block, 64 MiB, ${volumes} volumes on one node)`,
      idBase: 'iscsiScale',
      tag: 'iscsi-scale',
      made,
      log,
    });
    failed = false;
  } finally {
    if (failed && node) await undoScale(node, made);
    await node?.stop();
    await ctl?.stop();
    if (process.env.BENCH_LOGS_TO) {
      mkdirSync(process.env.BENCH_LOGS_TO, { recursive: true });
      for (const [who, p] of [['controller', ctl], ['node', node]]) if (p) copyFileSync(p.logFile, join(process.env.BENCH_LOGS_TO, `iscsi-scale-${who}.log`));
    }
    await cleanup();
    unregister();
  }
  return rows;
}
