#!/usr/bin/env node
// `npm run bench:vm`: the LVM backend's target helpers on a real kernel, INSIDE the VM guest
// (test/vm/run.mjs boots it; this file is what runs there), every figure a ratio to the raw
// operation measured in the same run:
//
// 1. Data path: fio (libaio, O_DIRECT, read-only) 4k random read IOPS (iodepth 16) and sequential
//    read throughput (1 MiB, iodepth 8) through tgt (open-iscsi), LIO (open-iscsi) and nvmet
//    (nvme-tcp) on the guest's loopback, against the same fio on the raw LV. The exports are made
//    with the raw sequences of part 2 (not through sinter: sinter is not on the data path).
// 2. Control path: ControllerPublishVolume + ControllerUnpublishVolume through `sinter controller`
//    (an LVM backend per helper, each on its own VG) against the raw target writes for the same
//    export of the same kind of LV: tgtadm calls (tgt), configfs mkdir/write/symlink (LIO, nvmet),
//    done by this process.
//
// 3. Attach at scale on a real kernel (issue 16): `sinter node` (kernel initiators) stages and publishes N
//    volumes (default 32, --scale-volumes N; thick LVs of 16 MiB, ext4) one after another through kernel
//    iSCSI (tgt) and through NVMe/TCP (nvmet), keeps them all, then tears them down last in, first out
//    (bench/attach-scale.mjs, as sections 7 and 7b on the host): the cost of volume N against volumes 1-8.
//    --scale-volumes 0 skips it; --scale-transports tgt,nvmet (the default) picks the transports. Each VG is
//    one scratch disk: past ~100 volumes give the guest bigger ones (test/vm/run.mjs --disk-mb 8192 for 256).
//
// Rounds alternate which side goes first; each ratio is the median of per-round ratios. Under TCG
// the absolute figures are slow; the ratios are what to read. Prints a table and writes
// .tmp/bench-vm-targets.json (the checkout is shared with the host).
//
//   npm run build && node test/vm/run.mjs --disks 4 --timeout 3600 -- node bench/vm-targets.mjs [--rounds N] [--reps N] [--seconds S] [--scale-volumes N] [--scale-only]
import { existsSync, mkdirSync, promises as fs, readFileSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { base, cleanupAll, hostExec, median, mountCap, onCleanup, sleep, startSinter, track } from './lib.mjs';
import { runScale, undoScale } from './attach-scale.mjs';

if (process.env.SINTER_IN_VM !== '1') {
  process.stderr.write('bench/vm-targets.mjs runs inside the VM guest: npm run bench:vm\n');
  process.exit(2);
}
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg('rounds', 3);
const REPS = arg('reps', 5);
const SECONDS = arg('seconds', 5);
const SCALE_VOLUMES = arg('scale-volumes', 32);
/** --scale-only: part 3 alone (parts 1 and 2 take ~10 min under TCG). */
const SCALE_ONLY = process.argv.includes('--scale-only');
const SCALE_TRANSPORTS = (process.argv.includes('--scale-transports') ? process.argv[process.argv.indexOf('--scale-transports') + 1] : 'tgt,nvmet').split(',');

const sh = (cmd, opts) => hostExec.run('sh', ['-c', cmd], opts);
const log = (m) => process.stderr.write(`bench:vm ${m}\n`);
const MiB = 1024 * 1024;
const CFS = '/sys/kernel/config';
const INITIATOR = /^InitiatorName=(\S+)/m.exec(readFileSync('/etc/iscsi/initiatorname.iscsi', 'utf8'))[1];
const HOSTNQN = readFileSync('/etc/nvme/hostnqn', 'utf8').trim();
const NODE_ID = `vm-bench;${INITIATOR};;${HOSTNQN}`;
const RAW_IQN = 'iqn.2026-12.io.sinter.benchraw:lv';
const RAW_NQN = 'nqn.2026-12.io.sinter.benchraw:lv';
const SINTER_IQN = 'iqn.2026-12.io.sinter.benchvm:';
const SINTER_NQN = 'nqn.2026-12.io.sinter.benchvm:';
const HBA = 'iblock_4242';
const disks = readdirSync('/sys/block').filter((d) => /^vd[b-z]$/.test(d)).sort().map((d) => `/dev/${d}`);
if (disks.length < 4) throw new Error('needs 4 scratch disks: node test/vm/run.mjs --disks 4 -- node bench/vm-targets.mjs');
const VGS = { raw: 'bvm-raw', tgt: 'bvm-tgt', lio: 'bvm-lio', nvmet: 'bvm-nvmet' };

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// ---------------------------------------------------------------- raw exports (the floors)

/** tgt: what src/backends/targets/tgt.ts asks tgtd for an LV published to one initiator. */
function rawTgt(ctl, tid) {
  const adm = (...a) => hostExec.run('tgtadm', ['-C', String(ctl), '--lld', 'iscsi', ...a]);
  return {
    async publish(dev, iqn) {
      await adm('--op', 'new', '--mode', 'target', '--tid', tid, '--targetname', iqn);
      await adm('--op', 'new', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--backing-store', dev, '--bstype', 'rdwr', '--blocksize', '512');
      await adm('--op', 'update', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--params', 'vendor_id=SINTER,product_id=volume,scsi_sn=benchraw');
      await adm('--op', 'update', '--mode', 'logicalunit', '--tid', tid, '--lun', '1', '--params', 'mode_page=8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0');
      await adm('--op', 'bind', '--mode', 'target', '--tid', tid, '--initiator-name', INITIATOR);
    },
    async unpublish() {
      await adm('--op', 'delete', '--mode', 'target', '--tid', tid, '--force');
    },
  };
}

/** LIO: the configfs objects src/backends/targets/lio.ts makes for an iblock export to one initiator, written directly. */
function rawLio(portal) {
  const so = `${CFS}/target/core/${HBA}/lv`;
  const tpg = `${CFS}/target/iscsi/${RAW_IQN}/tpgt_1`;
  const acl = `${tpg}/acls/${INITIATOR}`;
  return {
    async publish(dev) {
      await fs.mkdir(`${CFS}/target/core/${HBA}`, { recursive: true });
      await fs.mkdir(so);
      await fs.writeFile(`${so}/control`, `udev_path=${dev}`);
      await fs.writeFile(`${so}/udev_path`, dev);
      await fs.writeFile(`${so}/enable`, '1');
      await fs.mkdir(tpg, { recursive: true });
      await fs.writeFile(`${tpg}/attrib/authentication`, '0');
      await fs.mkdir(`${tpg}/np/${portal}`);
      await fs.mkdir(`${tpg}/lun/lun_1`);
      await fs.symlink(so, `${tpg}/lun/lun_1/lv`);
      await fs.mkdir(acl);
      await fs.mkdir(`${acl}/lun_1`);
      await fs.symlink(`${tpg}/lun/lun_1`, `${acl}/lun_1/lun`);
      await fs.writeFile(`${tpg}/enable`, '1');
    },
    async unpublish() {
      await fs.writeFile(`${tpg}/enable`, '0');
      await fs.unlink(`${acl}/lun_1/lun`);
      await fs.rmdir(`${acl}/lun_1`);
      await fs.rmdir(acl);
      await fs.unlink(`${tpg}/lun/lun_1/lv`);
      await fs.rmdir(`${tpg}/lun/lun_1`);
      await fs.rmdir(`${tpg}/np/${portal}`);
      await fs.rmdir(tpg);
      await fs.rmdir(`${CFS}/target/iscsi/${RAW_IQN}`);
      await fs.rmdir(so);
    },
    async cleanup() {
      await sh(`[ -d ${tpg} ] && { echo 0 > ${tpg}/enable; rm -f ${acl}/lun_1/lun ${tpg}/lun/lun_1/lv; rmdir ${acl}/lun_1 ${acl} ${tpg}/lun/lun_1 ${tpg}/np/* ${tpg} ${CFS}/target/iscsi/${RAW_IQN}; }; rmdir ${so} ${CFS}/target/core/${HBA}; true`).catch(() => undefined);
    },
  };
}

/** nvmet: the subsystem src/backends/targets/nvmet.ts makes for an LV allowed to one host, linked into a port that exists already. */
function rawNvmet(portId) {
  const sub = `${CFS}/nvmet/subsystems/${RAW_NQN}`;
  return {
    async publish(dev) {
      await fs.mkdir(sub);
      await fs.writeFile(`${sub}/attr_allow_any_host`, '0');
      await fs.mkdir(`${sub}/namespaces/1`);
      await fs.writeFile(`${sub}/namespaces/1/device_path`, dev);
      await fs.writeFile(`${sub}/namespaces/1/buffered_io`, '0');
      await fs.writeFile(`${sub}/namespaces/1/enable`, '1');
      await fs.symlink(sub, `${CFS}/nvmet/ports/${portId}/subsystems/${RAW_NQN}`);
      if (!existsSync(`${CFS}/nvmet/hosts/${HOSTNQN}`)) await fs.mkdir(`${CFS}/nvmet/hosts/${HOSTNQN}`);
      await fs.symlink(`${CFS}/nvmet/hosts/${HOSTNQN}`, `${sub}/allowed_hosts/${HOSTNQN}`);
    },
    async unpublish() {
      await fs.unlink(`${sub}/allowed_hosts/${HOSTNQN}`);
      await fs.unlink(`${CFS}/nvmet/ports/${portId}/subsystems/${RAW_NQN}`);
      await fs.writeFile(`${sub}/namespaces/1/enable`, '0');
      await fs.rmdir(`${sub}/namespaces/1`);
      await fs.rmdir(sub);
    },
    async cleanup() {
      await sh(`[ -d ${sub} ] && { rm -f ${sub}/allowed_hosts/* ${CFS}/nvmet/ports/*/subsystems/${RAW_NQN}; echo 0 > ${sub}/namespaces/1/enable; rmdir ${sub}/namespaces/1 ${sub}; }; true`).catch(() => undefined);
    },
  };
}

// ---------------------------------------------------------------- fio and initiators

async function fio(dev, kind) {
  const job = kind === 'rand' ? ['--rw=randread', '--bs=4k', '--iodepth=16'] : ['--rw=read', '--bs=1M', '--iodepth=8'];
  const r = await hostExec.run('fio', ['--name=b', `--filename=${dev}`, '--direct=1', '--ioengine=libaio', '--readonly', '--time_based', `--runtime=${SECONDS}`, '--ramp_time=1', '--output-format=json', ...job], { timeoutMs: 120_000 });
  const read = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0].read;
  return kind === 'rand' ? read.iops : read.bw_bytes / MiB;
}

async function waitForPath(p, what) {
  for (let i = 0; i < 600; i++) {
    if (existsSync(p)) return p;
    await sleep(100);
  }
  throw new Error(`${what}: ${p} did not appear`);
}

async function iscsiLogin(iqn, portal) {
  const rec = ['-m', 'node', '-T', iqn, '-p', portal];
  await hostExec.run('iscsiadm', [...rec, '-o', 'new']);
  await hostExec.run('iscsiadm', [...rec, '--login']);
  const [ip, port] = portal.split(':');
  // The device itself: fio splits --filename at ':', which the by-path name is full of.
  return realpathSync(await waitForPath(`/dev/disk/by-path/ip-${ip}:${port}-iscsi-${iqn}-lun-1`, `login to ${iqn}`));
}
async function iscsiLogout(iqn, portal) {
  const rec = ['-m', 'node', '-T', iqn, '-p', portal];
  await hostExec.run('iscsiadm', [...rec, '--logout']).catch(() => undefined);
  await hostExec.run('iscsiadm', [...rec, '-o', 'delete']).catch(() => undefined);
}
async function nvmeConnect(nqn, portal) {
  const [ip, port] = portal.split(':');
  await hostExec.run('nvme', ['connect', '-t', 'tcp', '-a', ip, '-s', port, '-n', nqn, '--hostnqn', HOSTNQN]);
  // The namespace's block device hangs off its subsystem (native NVMe multipath: nvmeXnY per subsystem).
  for (let i = 0; i < 600; i++) {
    for (const sub of existsSync('/sys/class/nvme-subsystem') ? readdirSync('/sys/class/nvme-subsystem') : []) {
      const dir = `/sys/class/nvme-subsystem/${sub}`;
      if (readFileSync(`${dir}/subsysnqn`, 'utf8').trim() !== nqn) continue;
      const blk = readdirSync(dir).find((d) => /^nvme\d+n\d+$/.test(d));
      if (blk && existsSync(`/dev/${blk}`)) return `/dev/${blk}`;
    }
    // Without native multipath the namespace hangs off the controller.
    for (const c of existsSync('/sys/class/nvme') ? readdirSync('/sys/class/nvme') : []) {
      if (readFileSync(`/sys/class/nvme/${c}/subsysnqn`, 'utf8').trim() !== nqn) continue;
      const blk = readdirSync(`/sys/class/nvme/${c}`).find((d) => /^nvme\d+n\d+$/.test(d));
      if (blk && existsSync(`/dev/${blk}`)) return `/dev/${blk}`;
    }
    await sleep(100);
  }
  throw new Error(`nvme connect ${nqn}: no namespace appeared`);
}

// ---------------------------------------------------------------- the run

const tgtCtl = 3300 + Math.floor(Math.random() * 500);
const tgtPortal = `127.0.0.1:${await freePort()}`;
const lioPortal = `127.0.0.1:${await freePort()}`;
const nvmePortal = '127.0.0.1:4420';
const rawPortal = '127.0.0.2:4420';
let tgtd;
let iscsid;
let lio;
let nvm;
const results = { when: new Date().toISOString(), rounds: ROUNDS, reps: REPS, fioSeconds: SECONDS, data: {}, control: {} };
onCleanup(async () => {
  await sh(`iscsiadm -m node --logoutall=all; iscsiadm -m node -o delete; true`).catch(() => undefined);
  for (const nqn of [RAW_NQN]) await hostExec.run('nvme', ['disconnect', '-n', nqn]).catch(() => undefined);
  await lio?.cleanup();
  await nvm?.cleanup();
  await sh(`for p in ${CFS}/nvmet/ports/*; do [ -z "$(ls $p/subsystems 2>/dev/null)" ] && rmdir $p; done; rmdir ${CFS}/nvmet/hosts/* 2>/dev/null; true`).catch(() => undefined);
  if (tgtd) await hostExec.run('tgtadm', ['-C', String(tgtCtl), '--op', 'delete', '--mode', 'system']).catch(() => undefined);
  await sh(`vgremove -qy -f ${Object.values(VGS).join(' ')}; pvremove -qy ${disks.slice(0, 4).join(' ')}; true`).catch(() => undefined);
  iscsid?.kill('SIGTERM');
});

try {
  log('modules, VGs, daemons');
  await sh('modprobe -a dm_snapshot target_core_mod iscsi_target_mod target_core_iblock nvmet nvmet-tcp nvme-tcp iscsi_tcp && (mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config)');
  await sh(`pvcreate -qy ${disks.slice(0, 4).join(' ')} && ` + Object.values(VGS).map((vg, i) => `vgcreate -q ${vg} ${disks[i]}`).join(' && '));
  // The LV the data path reads: 256 MiB, written once so the reads find allocated blocks.
  await sh(`lvcreate -qy -L 256m -n lv ${VGS.raw} && dd if=/dev/zero of=/dev/${VGS.raw}/lv bs=1M count=256 oflag=direct status=none`, { timeoutMs: 600_000 });
  const lv = realpathSync(`/dev/${VGS.raw}/lv`);
  // Its own process group: iscsid's shutdown signals its whole group.
  iscsid = track(spawn('iscsid', ['-f'], { stdio: 'ignore', detached: true }));
  tgtd = track(spawn('tgtd', ['-f', '-C', String(tgtCtl), '--iscsi', `portal=${tgtPortal}`], { stdio: 'ignore' }));
  for (let i = 0; ; i++) {
    const ok = (await hostExec.run('tgtadm', ['-C', String(tgtCtl), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']).then(() => true, () => false)) && (await hostExec.run('iscsiadm', ['-m', 'session']).then(() => true, (e) => e.exitCode === 21));
    if (ok) break;
    if (i > 300) throw new Error('tgtd or iscsid did not start');
    await sleep(100);
  }
  // The raw side's nvmet port, as an administrator would have it before any export.
  const rawPortId = '4242';
  await fs.mkdir(`${CFS}/nvmet/ports/${rawPortId}`);
  for (const [k, v] of [['addr_trtype', 'tcp'], ['addr_adrfam', 'ipv4'], ['addr_traddr', rawPortal.split(':')[0]], ['addr_trsvcid', rawPortal.split(':')[1]]]) await fs.writeFile(`${CFS}/nvmet/ports/${rawPortId}/${k}`, v);
  const tgt = rawTgt(tgtCtl, '900');
  lio = rawLio(lioPortal);
  nvm = rawNvmet(rawPortId);

  // ---- 1. data path
  log(`data path: ${ROUNDS} rounds × fio ${SECONDS} s per path and pattern`);
  const paths = {
    tgt: { up: async () => (await tgt.publish(lv, RAW_IQN), iscsiLogin(RAW_IQN, tgtPortal)), down: async () => (await iscsiLogout(RAW_IQN, tgtPortal), tgt.unpublish()) },
    lio: { up: async () => (await lio.publish(lv), iscsiLogin(RAW_IQN, lioPortal)), down: async () => (await iscsiLogout(RAW_IQN, lioPortal), lio.unpublish()) },
    nvmet: { up: async () => (await nvm.publish(lv), nvmeConnect(RAW_NQN, rawPortal)), down: async () => (await hostExec.run('nvme', ['disconnect', '-n', RAW_NQN]), nvm.unpublish()) },
  };
  for (const [name, p] of Object.entries(SCALE_ONLY ? {} : paths)) {
    const dev = await p.up();
    const per = { rand: [], seq: [], raw: { rand: [], seq: [] }, via: { rand: [], seq: [] } };
    for (let r = 0; r < ROUNDS; r++) {
      for (const kind of ['rand', 'seq']) {
        const first = r % 2 === 0;
        const a = first ? await fio(lv, kind) : undefined;
        const b = await fio(dev, kind);
        const c = first ? a : await fio(lv, kind);
        per.raw[kind].push(c);
        per.via[kind].push(b);
        per[kind].push(b / c);
      }
    }
    await p.down();
    results.data[name] = {
      randReadIopsRatio: median(per.rand),
      seqReadRatio: median(per.seq),
      raw: { randReadIops: median(per.raw.rand), seqReadMiBs: median(per.raw.seq) },
      through: { randReadIops: median(per.via.rand), seqReadMiBs: median(per.via.seq) },
    };
    log(`${name}: ${JSON.stringify(results.data[name])}`);
  }

  // ---- 2. control path
  log('control path: sinter controller with an LVM backend per helper');
  const backend = (name, vg, exp) => [`  - name: ${name}`, '    driver: lvm', `    dataDir: ${join(base, 'data', name)}`, `    volumeGroup: ${vg}`, '    lvmType: thick', ...exp];
  const config = [
    'backends:',
    ...backend('tgt', VGS.tgt, ['    export: iscsi', '    iscsi:', `      portals: ["${tgtPortal}"]`, `      controlPort: ${tgtCtl}`, `      iqnPrefix: "${SINTER_IQN}"`]),
    ...backend('lio', VGS.lio, ['    export: iscsi', '    iscsi:', '      helper: lio', `      portals: ["${lioPortal}"]`, `      iqnPrefix: "${SINTER_IQN}"`]),
    ...backend('nvmet', VGS.nvmet, ['    export: nvmeof', '    nvmeof:', `      portals: ["${nvmePortal}"]`, `      nqnPrefix: "${SINTER_NQN}"`]),
  ].join('\n');
  const ctl = await startSinter({ role: 'controller', config, readyTimeoutMs: 600_000 });
  onCleanup(async () => {
    for (const vol of Object.values(vols)) await ctl.client.controller.ControllerUnpublishVolume({ volume_id: vol, node_id: NODE_ID }).catch(() => undefined);
    await ctl.stop();
  });
  const vols = {};
  const cap = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
  for (const name of ['tgt', 'lio', 'nvmet'])
    vols[name] = (await ctl.client.controller.CreateVolume({ name: `bench-${name}`, parameters: { backend: name }, capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap] })).volume.volume_id;
  // The raw side exports an LV of the same kind, on the same VG.
  for (const name of ['tgt', 'lio', 'nvmet']) await sh(`lvcreate -qy -L 16m -n rawlv ${VGS[name]}`);
  const raws = { tgt, lio, nvmet: nvm };
  for (const name of SCALE_ONLY ? [] : ['tgt', 'lio', 'nvmet']) {
    const dev = `/dev/${VGS[name]}/rawlv`;
    const sinterSide = async () => {
      const t = performance.now();
      await ctl.client.controller.ControllerPublishVolume({ volume_id: vols[name], node_id: NODE_ID, volume_capability: cap });
      await ctl.client.controller.ControllerUnpublishVolume({ volume_id: vols[name], node_id: NODE_ID });
      return performance.now() - t;
    };
    const rawSide = async () => {
      const t = performance.now();
      await raws[name].publish(dev, RAW_IQN);
      await raws[name].unpublish();
      return performance.now() - t;
    };
    // One of each first: the helper's first call makes what stays (nvmet's port, LIO's HBA).
    await sinterSide();
    await rawSide();
    const s = [];
    const r = [];
    const ratio = [];
    for (let i = 0; i < REPS; i++) {
      const a = i % 2 === 0 ? [await sinterSide(), await rawSide()] : [await rawSide(), await sinterSide()].reverse();
      s.push(a[0]);
      r.push(a[1]);
      ratio.push(a[0] / a[1]);
    }
    results.control[name] = { publishUnpublishRatio: median(ratio), sinterMs: median(s), rawMs: median(r) };
    log(`${name}: ${JSON.stringify(results.control[name])}`);
  }

  // ---- 3. attach at scale, kernel initiators
  results.scale = {};
  if (SCALE_VOLUMES > 0) {
    const node = await startSinter({
      role: 'node',
      dir: join(base, 'scale-node'),
      config: ['node:', '  initiator: kernel', `  stateDir: ${join(base, 'scale-node', 'state')}`, ''].join('\n'),
      readyTimeoutMs: 600_000,
    });
    onCleanup(() => node.stop());
    const transports = [['tgt', 'kernel iSCSI (open-iscsi) over tgt'], ['nvmet', 'NVMe/TCP (nvme-tcp) over nvmet']].filter(([name]) => SCALE_TRANSPORTS.includes(name));
    for (const [name, transport] of transports) {
      log(`attach at scale: ${SCALE_VOLUMES} volumes through ${transport}`);
      const made = [];
      let done = false;
      try {
        const rows = await runScale({
          ctl,
          node,
          cap: mountCap('ext4'),
          sizeBytes: 16 * MiB,
          volumes: SCALE_VOLUMES,
          parameters: { backend: name },
          pathsFor: (id, vname) => ({
            staging: join(node.kubeletRoot, 'plugins/kubernetes.io/csi/sinter.csi.io', id, 'globalmount'),
            target: join(node.kubeletRoot, 'pods', `pod-${vname}`, 'volumes/kubernetes.io~csi', id, 'mount'),
          }),
          section: `3. Attach at scale (${transport}, LVM thick, ext4, 16 MiB, ${SCALE_VOLUMES} volumes on one node)`,
          idBase: `vmScale.${name}`,
          tag: `scale-${name}`,
          made,
          log,
          window: Math.min(8, Math.max(1, Math.floor(SCALE_VOLUMES / 4))),
        });
        done = true;
        results.scale[name] = rows.map((r) => ({ label: r.label, value: r.value, floor: r.floor, ratio: r.ratio }));
      } finally {
        if (!done) await undoScale(node, made);
      }
    }
  }

  mkdirSync('.tmp', { recursive: true });
  writeFileSync('.tmp/bench-vm-targets.json', JSON.stringify(results, null, 2) + '\n');
  const f = (x, d = 2) => (x === undefined ? '-' : x.toFixed(d));
  console.log('\n| helper | 4k rand read IOPS / raw LV | seq read MiB/s / raw LV | Publish+Unpublish sinter / raw writes |');
  console.log('| --- | --- | --- | --- |');
  for (const name of ['tgt', 'lio', 'nvmet']) {
    const d = results.data[name];
    const c = results.control[name];
    console.log(`| ${name} | ${f(d?.randReadIopsRatio)} (${f(d?.through.randReadIops, 0)} / ${f(d?.raw.randReadIops, 0)}) | ${f(d?.seqReadRatio)} (${f(d?.through.seqReadMiBs, 1)} / ${f(d?.raw.seqReadMiBs, 1)}) | ${f(c?.publishUnpublishRatio)} (${f(c?.sinterMs, 0)} / ${f(c?.rawMs, 0)} ms) |`);
  }
  for (const [name, rows] of Object.entries(results.scale)) {
    console.log(`\n| attach at scale through ${name} | volume N | first window | ratio |`);
    console.log('| --- | --- | --- | --- |');
    for (const r of rows) console.log(`| ${r.label} | ${f(r.value, 1)} | ${f(r.floor, 1)} | ${f(r.ratio)} |`);
  }

} finally {
  await cleanupAll();
}
