import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LioTargetHelper } from '../../src/backends/targets/lio.js';
import { hbaIndex } from '../../src/backends/targets/lio-plan.js';
import { blockCap, MiB, mountCap, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import { exportYaml, Lab } from './fixtures/lab.js';
import { initiatorName, kernelSessions, nodeRecords, requireGuest, scsiDisks } from './guest.js';

const PREFIX = 'iqn.2026-12.io.sinter.lio:';
const CFS = '/sys/kernel/config/target';
const CHAP = { 'node.session.auth.username': 'sinter-node', 'node.session.auth.password': 'Right-chap-secret-1' };
const MUTUAL = { ...CHAP, 'node.session.auth.username_in': 'sinter-target', 'node.session.auth.password_in': 'Target-chap-secret-2' };
// open-iscsi include/iscsi_err.h: LIO answers a login it refuses (bad CHAP, or an
// initiator with no ACL: "not authorized to access iSCSI target portal group")
// at once with a login reject, which iscsiadm 2.1.8 reports as 24.
const ISCSI_ERR_LOGIN_AUTH_FAILED = 24;
const HBA = hbaIndex(PREFIX);

/** Tears down everything under the kernel's target tree, children first, as a reboot leaves it. */
const WIPE = `cd ${'/sys/kernel/config/target'} || exit 1
for t in iscsi/iqn.*; do
  [ -d "$t" ] || continue
  for g in "$t"/tpgt_*; do
    echo 0 > "$g/enable" 2>/dev/null
    for a in "$g"/acls/*/; do for m in "$a"lun_*; do find "$m" -maxdepth 1 -type l -delete; rmdir "$m"; done; rmdir "$a"; done
    for l in "$g"/lun/lun_*; do find "$l" -maxdepth 1 -type l -delete; rmdir "$l"; done
    for n in "$g"/np/*; do rmdir "$n"; done
    rmdir "$g"
  done
  rmdir "$t"
done
for h in core/fileio_* core/iblock_*; do [ -d "$h" ] || continue; for b in "$h"/*/; do rmdir "$b"; done; rmdir "$h"; done
true`;
let t0 = Date.now();
/** Elapsed time per step in the guest's output: the file must stay within its 90 s. */
const step = (what: string) => {
  console.log(`[lio.vm] +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  t0 = Date.now();
};

const cfs = (rel: string) => readFileSync(join(CFS, rel), 'utf8').trim();
const cfsHas = (rel: string) => existsSync(join(CFS, rel));

/**
 * The kernel's own iSCSI target (LIO) driven by sinter through configfs, on
 * Debian's 6.1 kernel: `sinter controller` (file backend, `iscsi.helper: lio`)
 * and `sinter node` (`initiator: kernel`), plus hand-run iscsiadm logins for
 * what a node would see (the fence, CHAP refusals), and the helper on its own
 * for an iblock (block device) backstore.
 */
describe('LIO target helper in the VM: sinter controller (helper: lio, configfs) + sinter node (kernel initiator)', () => {
  requireGuest();
  const lab = new Lab({
    name: 'lio',
    iqnPrefix: PREFIX,
    modules: true,
    iscsid: true,
    lioPortal: true,
    controllerYaml: (l) => [
      'backends:',
      '  - name: san',
      '    driver: file',
      `    dataDir: ${join(l.dir, 'data')}`,
      ...exportYaml('lio', { portal: l.lioPortal, prefix: PREFIX, reconcileSeconds: 1 }),
    ],
  });
  const t = { dir: lab.dir };
  let ctl: SinterProcess;
  let node: SinterProcess;
  let nodeId: string;
  let iqn: string;
  let portal: string;
  let lio: LioTargetHelper;
  const dataDir = join(t.dir, 'data');
  const OTHER_NODE = 'other-node;iqn.2005-03.org.open-iscsi:other-node;';

  beforeAll(async () => {
    iqn = initiatorName();
    await lab.start();
    ({ ctl, node, nodeId, lioPortal: portal } = lab);
    lio = lab.lio!;
    step('started');
  });

  afterAll(async () => {
    await execa('bash', ['-c', `losetup -j ${join(t.dir, 'lv.img')} | cut -d: -f1 | xargs -r losetup -d`], { reject: false });
    await lab.stop();
  });

  afterEach(async () => {
    const left = { sessions: await kernelSessions(), records: await nodeRecords(), disks: scsiDisks() };
    if (left.sessions.length + left.records.length + left.disks.length > 0) {
      await execa('iscsiadm', ['-m', 'node', '--logoutall=all'], { reject: false, timeout: 120_000 });
      await execa('iscsiadm', ['-m', 'node', '-o', 'delete'], { reject: false });
    }
    expect(left).toEqual({ sessions: [], records: [], disks: [] });
  });

  const provision = async (name: string, mib: number, cap: object) =>
    (await ctl.client.controller.CreateVolume({ name, capacity_range: { required_bytes: mib * MiB }, volume_capabilities: [cap] })).volume!.volume_id!;
  const publish = async (id: string, cap: object, secrets: Record<string, string> = {}, to = nodeId) =>
    (await ctl.client.controller.ControllerPublishVolume({ volume_id: id, node_id: to, volume_capability: cap, secrets })).publish_context as Record<string, string>;
  const image = (id: string) => join(dataDir, 'volumes', `${id}.img`);
  const tpg = (volIqn: string) => `iscsi/${volIqn}/tpgt_1`;

  /** A login by hand, as the node's initiator; node.session.initial_login_retry_max 1 so a refusal does not wait minutes. */
  const handLogin = async (volIqn: string, auth: Record<string, string> = {}, retry: Record<string, string> = {}) => {
    const rec = ['-m', 'node', '-T', volIqn, '-p', portal];
    await execa('iscsiadm', [...rec, '-o', 'new']);
    const set = { ...(Object.keys(auth).length ? { 'node.session.auth.authmethod': 'CHAP' } : {}), ...auth, ...retry };
    for (const [k, v] of Object.entries(set)) await execa('iscsiadm', [...rec, '-o', 'update', '-n', k, '-v', v]);
    return execa('iscsiadm', [...rec, '--login'], { reject: false });
  };
  const handLogout = async (volIqn: string) => {
    await execa('iscsiadm', ['-m', 'node', '-T', volIqn, '-p', portal, '--logout'], { reject: false });
    await execa('iscsiadm', ['-m', 'node', '-T', volIqn, '-p', portal, '-o', 'delete'], { reject: false });
  };
  /** The SCSI disk of a kernel session to `volIqn` (waits for the LUN to appear). */
  const diskOf = (volIqn: string) =>
    waitFor(`the disk of ${volIqn}`, () => {
      for (const s of readdirSync('/sys/class/iscsi_session')) {
        if (readFileSync(`/sys/class/iscsi_session/${s}/targetname`, 'utf8').trim() !== volIqn) continue;
        const dev = readdirSync(`/sys/class/iscsi_session/${s}/device`).find((d) => d.startsWith('target'));
        if (!dev) continue;
        for (const lun of readdirSync(`/sys/class/iscsi_session/${s}/device/${dev}`).filter((d) => /^\d+:\d+:\d+:\d+$/.test(d))) {
          const b = `/sys/class/iscsi_session/${s}/device/${dev}/${lun}/block`;
          if (existsSync(b)) return readdirSync(b)[0];
        }
      }
      return undefined;
    }, 30_000);
  const sizeOf = async (dev: string) => Number((await execa('blockdev', ['--getsize64', `/dev/${dev}`])).stdout);
  const sessionState = async () => (await execa('iscsiadm', ['-m', 'session', '-P', '1'], { reject: false })).stdout;

  it('file image → fileio backstore: publish (CHAP) builds the target in configfs, stage mounts it, online growth reaches the node, unpublish removes it all', async () => {
    step('lifecycle: start');
    const id = await provision('lio-mount', 16, mountCap());
    const ctx = await publish(id, mountCap(), CHAP);
    const volIqn = `${PREFIX}${id}`;
    expect(ctx).toEqual({ transport: 'iscsi', portals: portal, iqn: volIqn, lun: '1' });
    // What sinter wrote, read back from the kernel.
    const so = `core/fileio_${HBA}/${id}`;
    expect(cfs(`${tpg(volIqn)}/enable`)).toBe('1');
    expect([cfs(`${tpg(volIqn)}/attrib/authentication`), cfs(`${tpg(volIqn)}/attrib/generate_node_acls`), cfs(`${tpg(volIqn)}/attrib/demo_mode_write_protect`)]).toEqual(['1', '0', '1']);
    expect(readdirSync(join(CFS, tpg(volIqn), 'np'))).toEqual([portal]);
    // configfs shows links relative to the link's directory.
    expect(resolve(join(CFS, tpg(volIqn), 'lun/lun_1'), readlinkSync(join(CFS, tpg(volIqn), 'lun/lun_1/sinter')))).toBe(join(CFS, so));
    expect(cfs(`${so}/info`)).toMatch(new RegExp(`File: ${image(id)}\\s+Size: ${16 * MiB}\\s+Mode: Buffered-WCE`));
    expect([cfs(`${so}/attrib/emulate_write_cache`), cfs(`${so}/attrib/emulate_tpu`)]).toEqual(['1', '1']);
    expect(cfs(`${so}/wwn/vpd_unit_serial`)).toContain(id.slice(-36));
    expect(readdirSync(join(CFS, tpg(volIqn), 'acls'))).toEqual([iqn]);
    expect(cfs(`${tpg(volIqn)}/acls/${iqn}/auth/userid`)).toBe('sinter-node');

    const staging = join(node.kubeletRoot, 'staging', id);
    const target = join(node.kubeletRoot, 'pods', id, 'mount');
    mkdirSync(staging, { recursive: true });
    mkdirSync(join(target, '..'), { recursive: true });
    await node.client.node.NodeStageVolume({ volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: ctx, secrets: CHAP });
    await node.client.node.NodePublishVolume({ volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: ctx });
    expect((await lio.listTargets()).find((x) => x.iqn === volIqn)?.sessions.map((s) => s.initiator)).toEqual([iqn]);
    step('lifecycle: staged + published');
    writeFileSync(join(target, 'over-lio.txt'), 'bytes that crossed LIO');
    const dev = await diskOf(volIqn);
    expect(await sizeOf(dev)).toBe(16 * MiB);

    // Online growth: the backstore serves the new size at once; the node sees it after its rescan.
    const r = await ctl.client.controller.ControllerExpandVolume({ volume_id: id, capacity_range: { required_bytes: 32 * MiB }, volume_capability: mountCap() });
    expect(r).toMatchObject({ capacity_bytes: 32 * MiB, node_expansion_required: true });
    expect(cfs(`${so}/info`)).toMatch(new RegExp(`Size: ${32 * MiB}\\s`));
    expect(await sizeOf(dev)).toBe(16 * MiB);
    const grown = await node.client.node.NodeExpandVolume({ volume_id: id, volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 32 * MiB }, volume_capability: mountCap() });
    expect(Number(grown.capacity_bytes)).toBe(32 * MiB);
    expect(await sizeOf(dev)).toBe(32 * MiB);
    expect(readFileSync(join(target, 'over-lio.txt'), 'utf8')).toBe('bytes that crossed LIO');
    step('lifecycle: grown');

    await node.client.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await node.client.node.NodeUnstageVolume({ volume_id: id, staging_target_path: staging });
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    expect(readFileSync(image(id)).includes(Buffer.from('bytes that crossed LIO'))).toBe(true);
    // The last publish gone: target and backstore too.
    expect([cfsHas(`iscsi/${volIqn}`), cfsHas(so)]).toEqual([false, false]);
    for (const p of [ctl, node]) expect(p.logs()).not.toContain(CHAP['node.session.auth.password']);
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('mutual CHAP and the fence: a wrong secret is refused (exit 24); unpublish removes the node\'s ACL and the kernel ends its live session; its new login is refused (exit 24) while another node keeps the target', async () => {
    const cap = blockCap('MULTI_NODE_MULTI_WRITER');
    const id = await provision('lio-fence', 16, cap);
    const volIqn = `${PREFIX}${id}`;
    step('fence: start');
    await publish(id, cap, {}, OTHER_NODE);
    await publish(id, cap, MUTUAL);
    step('fence: published twice');
    expect(readdirSync(join(CFS, tpg(volIqn), 'acls')).sort()).toEqual([iqn, 'iqn.2005-03.org.open-iscsi:other-node'].sort());
    expect(cfs(`${tpg(volIqn)}/acls/${iqn}/auth/userid_mutual`)).toBe('sinter-target');

    const wrong = await handLogin(volIqn, { ...MUTUAL, 'node.session.auth.password': 'Wrong-chap-secret-3' });
    expect(wrong.exitCode).toBe(ISCSI_ERR_LOGIN_AUTH_FAILED);
    step('fence: wrong secret refused');
    expect(await kernelSessions()).toEqual([]);
    const ok = await handLogin(volIqn, MUTUAL);
    expect(ok.exitCode).toBe(0);
    await diskOf(volIqn);
    step('fence: logged in');
    expect((await lio.listTargets()).find((x) => x.iqn === volIqn)?.sessions.map((s) => s.initiator)).toEqual([iqn]);

    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    step('fence: unpublished');
    // The ACL is gone and the kernel dropped the session with it: the initiator is in recovery, refused on every retry.
    expect(readdirSync(join(CFS, tpg(volIqn), 'acls'))).toEqual(['iqn.2005-03.org.open-iscsi:other-node']);
    expect((await lio.listTargets()).find((x) => x.iqn === volIqn)?.sessions).toEqual([]);
    await waitFor('the kernel initiator to see its session fail', async () => (/iSCSI Session State: FAILED/.test(await sessionState()) ? true : undefined), 30_000);
    step('fence: initiator saw the session fail');
    await handLogout(volIqn);
    step('fence: logged out');
    // One login attempt, not iscsid's default of minutes of retries (a target that did not answer would hold it that long).
    const fenced = await handLogin(volIqn, MUTUAL, { 'node.session.initial_login_retry_max': '1' });
    expect(fenced.exitCode).toBe(ISCSI_ERR_LOGIN_AUTH_FAILED);
    step('fence: new login refused');
    await handLogout(volIqn);

    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: OTHER_NODE });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
    for (const s of [MUTUAL['node.session.auth.password'], MUTUAL['node.session.auth.password_in']]) expect(ctl.logs()).not.toContain(s);
  });

  it('configfs wiped behind sinter\'s back (as a reboot leaves it): reconcile rebuilds the export with its CHAP and removes a target no record explains', async () => {
    step('reconcile: start');
    const id = await provision('lio-reboot', 16, blockCap());
    const volIqn = `${PREFIX}${id}`;
    await publish(id, blockCap(), CHAP);
    // A stray of sinter's prefix (a volume that has no record), made with the same helper.
    const stray = 'san-00000000-0000-4000-8000-0000000000aa';
    writeFileSync(join(t.dir, 'stray.img'), '');
    await execa('truncate', ['-s', '8M', join(t.dir, 'stray.img')]);
    // The controller's reconcile may remove it while it is being made (another process, no shared lock): either way it must end gone.
    await lio.ensureTarget(stray, join(t.dir, 'stray.img')).catch(() => undefined);
    step('reconcile: stray made');
    await waitFor('reconcile to remove the stray target and backstore', () => (!cfsHas(`iscsi/${PREFIX}${stray}`) && !cfsHas(`core/fileio_${HBA}/${stray}`) ? true : undefined), 30_000);

    // Everything in the kernel's target, torn down the way a reboot leaves it (empty), by a script
    // that is not sinter; sinter's 1 s reconcile may start rebuilding while it still runs.
    const restored = () => ctl.logs().split(`"${id} → ${iqn}"`).length - 1;
    const before = restored();
    step('wipe');
    await execa('bash', ['-c', WIPE], { reject: false });
    step('wiped');
    await waitFor('reconcile to rebuild the export', () => (restored() > before && cfsHas(`${tpg(volIqn)}/enable`) && cfs(`${tpg(volIqn)}/enable`) === '1' && cfsHas(`${tpg(volIqn)}/acls/${iqn}/lun_1`) ? true : undefined), 30_000).catch((e: Error) => {
      throw new Error(`${e.message}; controller log: ${ctl.logs().split('\n').filter((l) => /reconcil|LIO/.test(l)).slice(-5).join('\n')}`);
    });
    step('rebuilt');
    expect(cfs(`${tpg(volIqn)}/acls/${iqn}/auth/userid`)).toBe('sinter-node');
    expect(cfs(`${tpg(volIqn)}/attrib/authentication`)).toBe('1');
    const wrong = await handLogin(volIqn, { ...CHAP, 'node.session.auth.password': 'Wrong-chap-secret-3' });
    expect(wrong.exitCode).toBe(ISCSI_ERR_LOGIN_AUTH_FAILED);
    const ok = await handLogin(volIqn, CHAP);
    expect(ok.exitCode).toBe(0);
    expect(await sizeOf((await diskOf(volIqn)))).toBe(16 * MiB);
    await handLogout(volIqn);
    await ctl.client.controller.ControllerUnpublishVolume({ volume_id: id, node_id: nodeId });
    await ctl.client.controller.DeleteVolume({ volume_id: id });
  });

  it('block device → iblock backstore (the helper alone, on a loop device): served at the device\'s size, and growth of the device reaches the initiator with no write to LIO', async () => {
    step('iblock: start');
    const img = join(t.dir, 'lv.img');
    writeFileSync(img, '');
    await execa('truncate', ['-s', '32M', img]);
    const loop = (await execa('losetup', ['--find', '--show', img])).stdout.trim();
    // Another backend's name: the controller's reconcile leaves it alone.
    const vol = 'lvm-00000000-0000-4000-8000-0000000000bb';
    const volIqn = `${PREFIX}${vol}`;
    try {
      const ref = await lio.ensureTarget(vol, loop);
      expect(ref).toEqual({ iqn: volIqn, lun: 1, tid: 1 });
      await lio.ensureTarget(vol, loop); // idempotent
      await lio.allowInitiator(vol, iqn);
      expect(cfs(`core/iblock_${HBA}/${vol}/info`)).toContain(`UDEV PATH: ${loop}`);
      expect(cfs(`${tpg(volIqn)}/attrib/authentication`)).toBe('0');
      const ok = await handLogin(volIqn);
      expect(ok.exitCode).toBe(0);
      const dev = (await diskOf(volIqn));
      expect(await sizeOf(dev)).toBe(32 * MiB);
      await execa('truncate', ['-s', '48M', img]);
      await execa('losetup', ['-c', loop]);
      expect(await lio.refreshLunSize(vol, loop)).toBe('current');
      writeFileSync(`/sys/block/${dev}/device/rescan`, '1');
      await waitFor('the initiator to see the grown device', async () => ((await sizeOf(dev)) === 48 * MiB ? true : undefined), 15_000);
      await handLogout(volIqn);
      await lio.revokeInitiator(vol, iqn);
      await lio.removeTarget(vol);
      await lio.removeTarget(vol); // idempotent
      expect([cfsHas(`iscsi/${volIqn}`), cfsHas(`core/iblock_${HBA}/${vol}`)]).toEqual([false, false]);
    } finally {
      await handLogout(volIqn);
      await lio.removeTarget(vol).catch(() => undefined);
      await execa('losetup', ['-d', loop], { reject: false });
    }
  });
});
