// Static (pre-provisioned) volumes over the socket: a hand-written PV's
// volumeHandle `static-<name>` and volumeAttributes reach the controller as
// volume_id and volume_context. The real-tgtd end to end (stage a static iSCSI
// LUN on a node) needs the iSCSI connector from issue 4 and is added with it.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { blockCap, codeOf, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { arrayContaining } from '../helpers/matchers.js';

const WWPN_A = '21000024ff3a1b2c';
const NODE_A = `node-a;iqn.2026-11.io.sinter:node-a;${WWPN_A}`;
const NODE_B = 'node-b;iqn.2026-11.io.sinter:node-b;21000024ff3a1b2d';
const NODE_NO_FC = 'node-c;iqn.2026-11.io.sinter:node-c;';
const NODE_NO_ISCSI = 'node-d;;21000024ff3a1b2e';

const FC = { transport: 'fc', wwns: '0x50:06:01:60:3B:A0:2C:1F, 500601683ba02c1f', lun: '3' };
const FC_CTX = { transport: 'fc', wwns: '500601603ba02c1f,500601683ba02c1f', lun: '3' };
const ISCSI = { transport: 'iscsi', portals: '192.0.2.10:3260,[2001:db8::10]:3260,san.example.org', iqn: 'iqn.2001-05.com.example:array.lun7', lun: '7' };

/** The gRPC status code and message of a call ('OK' and '' when it succeeded). */
async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
    return { code: 'OK', message: '' };
  } catch (e) {
    return { code: await codeOf(Promise.reject(e)), message: (e as { details?: string }).details ?? '' };
  }
}

describe('static volumes (sinter controller)', () => {
  let s: SinterProcess;
  const ctl = () => s.client.controller;
  const publish = (id: string, node: string, ctx: Record<string, string>, cap: object = mountCap(), readonly = false) =>
    ctl().ControllerPublishVolume({ volume_id: id, node_id: node, volume_capability: cap, volume_context: ctx, readonly });
  const published = async (id: string) => ((await ctl().ControllerGetVolume({ volume_id: id })).status!.published_node_ids ?? []).sort();

  beforeAll(async () => {
    s = await startSinter({ role: 'controller' });
  });
  afterAll(async () => s?.cleanup());

  it('ControllerPublishVolume returns the attributes as publish_context (normalized), without any backend, idempotently', async () => {
    const a = await publish('static-fc-lun3', NODE_A, FC);
    expect(a.publish_context).toEqual(FC_CTX);
    const again = await publish('static-fc-lun3', NODE_A, FC);
    expect(again.publish_context).toEqual(FC_CTX);
    expect(await published('static-fc-lun3')).toEqual([NODE_A]);
    const i = await publish('static-iscsi-lun7', NODE_A, ISCSI);
    expect(i.publish_context).toEqual(ISCSI);
    // No backend volume was made for them.
    expect(existsSync(join(s.dataDir, 'volumes', 'static-fc-lun3.json'))).toBe(false);
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-fc-lun3', node_id: NODE_A });
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-iscsi-lun7', node_id: NODE_A });
  });

  it.each([
    ['no attributes at all', {}, 'volume_context.transport'],
    ['an unknown transport', { ...FC, transport: 'nvme' }, 'volume_context.transport'],
    ['no wwns', { transport: 'fc', lun: '1' }, 'volume_context.wwns'],
    ['a WWN that is not one', { ...FC, wwns: '5006016x3ba02c1f' }, 'volume_context.wwns'],
    ['a WWN twice', { ...FC, wwns: '500601603ba02c1f,0x500601603BA02C1F' }, 'volume_context.wwns'],
    ['no lun', { transport: 'fc', wwns: '500601603ba02c1f' }, 'volume_context.lun'],
    ['a LUN that is not a number', { ...FC, lun: '3a' }, 'volume_context.lun'],
    ['a LUN out of range', { ...FC, lun: '16384' }, 'volume_context.lun'],
    ['an iSCSI key on an FC volume', { ...FC, iqn: 'iqn.2001-05.com.example:x' }, 'volume_context.iqn'],
    ['an unknown key', { ...FC, lunn: '3' }, '"lunn"'],
    ['a bad fsType', { ...FC, fsType: 'ntfs' }, 'volume_context.fsType'],
    ['bad mkfsOptions', { ...FC, mkfsOptions: '-O ^has_journal; rm -rf /' }, 'volume_context.mkfsOptions'],
    ['no portals', { transport: 'iscsi', iqn: ISCSI.iqn, lun: '1' }, 'volume_context.portals'],
    ['a portal that is not one', { ...ISCSI, portals: '192.0.2.10:99999' }, 'volume_context.portals'],
    ['a portal list with a blank', { ...ISCSI, portals: '192.0.2.10,,192.0.2.11' }, 'volume_context.portals'],
    ['no iqn', { transport: 'iscsi', portals: '192.0.2.10', lun: '1' }, 'volume_context.iqn'],
    ['an iqn that is not one', { ...ISCSI, iqn: 'target7' }, 'volume_context.iqn'],
    ['an FC key on an iSCSI volume', { ...ISCSI, wwns: '500601603ba02c1f' }, 'volume_context.wwns'],
  ])('INVALID_ARGUMENT naming the key for %s', async (_what, ctx, key) => {
    const f = await failure(publish('static-bad', NODE_A, ctx));
    expect(f.code).toBe('INVALID_ARGUMENT');
    expect(f.message).toContain(key);
    expect(await published('static-bad')).toEqual([]);
  });

  it('Kubernetes\' own attribute keys pass through; fsType and mkfsOptions are accepted', async () => {
    const ctx = { ...FC, 'storage.kubernetes.io/csiProvisionerIdentity': 'x', 'csi.storage.k8s.io/pv/name': 'pv1', fsType: 'xfs', mkfsOptions: '-m reflink=1' };
    expect((await publish('static-passthrough', NODE_A, ctx)).publish_context).toEqual(FC_CTX);
    const got = await ctl().ControllerGetVolume({ volume_id: 'static-passthrough' });
    expect(got.volume!.volume_context).toEqual({ ...FC_CTX, fsType: 'xfs', mkfsOptions: '-m reflink=1' });
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-passthrough', node_id: NODE_A });
  });

  it('a malformed static handle is NOT_FOUND; an unknown node is NOT_FOUND', async () => {
    expect(await codeOf(publish('static-Bad_Name', NODE_A, FC))).toBe('NOT_FOUND');
    expect(await codeOf(publish('static-', NODE_A, FC))).toBe('NOT_FOUND');
    expect(await codeOf(publish(`static-${'x'.repeat(64)}`, NODE_A, FC))).toBe('NOT_FOUND');
    expect(await codeOf(ctl().ControllerGetVolume({ volume_id: 'static-Bad_Name' }))).toBe('NOT_FOUND');
    expect(await codeOf(publish('static-ok', 'not-a-node-id', FC))).toBe('NOT_FOUND');
  });

  it('refuses a node that cannot reach the LUN: FC without WWPNs, iSCSI without an initiator name', async () => {
    const fc = await failure(publish('static-reach', NODE_NO_FC, FC));
    expect(fc.code).toBe('FAILED_PRECONDITION');
    expect(fc.message).toContain('WWPN');
    const iscsi = await failure(publish('static-reach', NODE_NO_ISCSI, ISCSI));
    expect(iscsi.code).toBe('FAILED_PRECONDITION');
    expect(iscsi.message).toContain('initiator name');
  });

  it('the single-node rule holds across nodes; a multi-node mode may publish to several', async () => {
    await publish('static-rwo', NODE_A, FC);
    const second = await failure(publish('static-rwo', NODE_B, FC));
    expect(second.code).toBe('FAILED_PRECONDITION');
    expect(second.message).toContain(NODE_A);
    expect(await codeOf(publish('static-rwo', NODE_A, FC, mountCap(), true))).toBe('ALREADY_EXISTS');
    expect(await codeOf(publish('static-rwo', NODE_A, FC, mountCap('SINGLE_NODE_READER_ONLY')))).toBe('ALREADY_EXISTS');
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-rwo', node_id: NODE_A });
    expect(await codeOf(publish('static-rwo', NODE_B, FC))).toBe('OK');
    expect(await published('static-rwo')).toEqual([NODE_B]);
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-rwo', node_id: NODE_B });

    const shared = blockCap('MULTI_NODE_MULTI_WRITER');
    await publish('static-shared', NODE_A, FC, shared);
    await publish('static-shared', NODE_B, FC, shared);
    expect(await published('static-shared')).toEqual([NODE_A, NODE_B].sort());
    // A single-node publish cannot join them.
    expect(await codeOf(publish('static-shared', 'node-e;;21000024ff3a1b2f', FC))).toBe('FAILED_PRECONDITION');
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-shared' });
    expect(await published('static-shared')).toEqual([]);
  });

  it('one handle always names one LUN: other attributes while published are refused', async () => {
    const shared = blockCap('MULTI_NODE_MULTI_WRITER');
    await publish('static-same', NODE_A, FC, shared);
    expect(await codeOf(publish('static-same', NODE_A, { ...FC, lun: '4' }, shared))).toBe('ALREADY_EXISTS');
    const f = await failure(publish('static-same', NODE_B, { ...FC, lun: '4' }, shared));
    expect(f.code).toBe('FAILED_PRECONDITION');
    expect(f.message).toContain('lun=3');
    // Spelled differently, the same LUN is the same.
    expect(await codeOf(publish('static-same', NODE_B, { ...FC, wwns: '500601603ba02c1f,0x500601683BA02C1F' }, shared))).toBe('OK');
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-same' });
  });

  it('DeleteVolume never touches a static LUN: success, also while published, and the publish record stays', async () => {
    await publish('static-del', NODE_A, FC);
    expect(await codeOf(ctl().DeleteVolume({ volume_id: 'static-del' }))).toBe('OK');
    expect(await published('static-del')).toEqual([NODE_A]);
    expect(await codeOf(publish('static-del', NODE_B, FC))).toBe('FAILED_PRECONDITION');
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-del', node_id: NODE_A });
    expect(await codeOf(ctl().DeleteVolume({ volume_id: 'static-del' }))).toBe('OK');
    expect(await codeOf(ctl().DeleteVolume({ volume_id: 'static-Not_Even_Valid' }))).toBe('OK');
    // Unpublish is idempotent, also for handles never published.
    expect(await codeOf(ctl().ControllerUnpublishVolume({ volume_id: 'static-never', node_id: NODE_A }))).toBe('OK');
  });

  it('ControllerGetVolume, ValidateVolumeCapabilities and ControllerExpandVolume answer for static handles', async () => {
    const got = await ctl().ControllerGetVolume({ volume_id: 'static-unpublished' });
    expect(got.volume!.volume_id).toBe('static-unpublished');
    expect(got.status!.published_node_ids ?? []).toEqual([]);
    expect(got.status!.volume_condition!.abnormal).toBe(false);

    const ok = await ctl().ValidateVolumeCapabilities({ volume_id: 'static-v', volume_context: FC, volume_capabilities: [mountCap(), blockCap('MULTI_NODE_MULTI_WRITER')] });
    expect(ok.confirmed!.volume_capabilities).toHaveLength(2);
    const bad = await failure(ctl().ValidateVolumeCapabilities({ volume_id: 'static-v', volume_context: { ...FC, lun: 'x' }, volume_capabilities: [mountCap()] }));
    expect(bad.code).toBe('INVALID_ARGUMENT');
    expect(bad.message).toContain('volume_context.lun');
    expect(await codeOf(ctl().ValidateVolumeCapabilities({ volume_id: 'static-Bad', volume_capabilities: [mountCap()] }))).toBe('NOT_FOUND');

    // The array grows the LUN; the node rescans and grows the filesystem.
    const grown = await ctl().ControllerExpandVolume({ volume_id: 'static-v', capacity_range: { required_bytes: 2 * 1024 * MiB } });
    expect(grown).toMatchObject({ capacity_bytes: 2 * 1024 * MiB, node_expansion_required: true });
  });

  it('sinter does not snapshot or clone a static LUN (INVALID_ARGUMENT)', async () => {
    const snap = await failure(ctl().CreateSnapshot({ name: 'snap-of-static', source_volume_id: 'static-x' }));
    expect(snap.code).toBe('INVALID_ARGUMENT');
    expect(snap.message).toContain('static volume');
    const clone = await failure(
      ctl().CreateVolume({ name: 'clone-of-static', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()], volume_content_source: { volume: { volume_id: 'static-x' } } }),
    );
    expect(clone.code).toBe('INVALID_ARGUMENT');
  });

  it('ListVolumes lists published static volumes among the backend volumes, id-sorted, page by page', async () => {
    const made: string[] = [];
    for (const n of ['lv1', 'lv2']) made.push((await ctl().CreateVolume({ name: n, capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!);
    await publish('static-list-a', NODE_A, FC, blockCap());
    await publish('static-list-b', NODE_B, ISCSI, blockCap());
    const all = await ctl().ListVolumes({});
    const ids = all.entries.map((e) => e.volume!.volume_id);
    expect(ids).toEqual([...ids].sort());
    expect(ids).toEqual(arrayContaining([...made, 'static-list-a', 'static-list-b']));
    const a = all.entries.find((e) => e.volume!.volume_id === 'static-list-a');
    expect(a!.status!.published_node_ids).toEqual([NODE_A]);
    expect(a!.volume!.volume_context).toEqual(FC_CTX);

    const paged: string[] = [];
    let token = '';
    for (let i = 0; i < 20; i++) {
      const page = await ctl().ListVolumes({ max_entries: 1, starting_token: token });
      paged.push(...page.entries.map((e) => e.volume!.volume_id!));
      token = page.next_token ?? '';
      if (!token) break;
    }
    expect(paged).toEqual(ids);
    expect(await codeOf(ctl().ListVolumes({ starting_token: 'static-Bad' }))).toBe('ABORTED');
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-list-a' });
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-list-b' });
    const after = (await ctl().ListVolumes({})).entries.map((e) => e.volume!.volume_id);
    expect(after).not.toContain('static-list-a');
  });

  it('publishes survive a controller restart (crash-safe records in controller.stateDir)', async () => {
    await publish('static-restart', NODE_A, ISCSI);
    const record = join(s.dataDir, 'controller-state', 'static-volumes', 'static-restart.json');
    expect(existsSync(record)).toBe(true);
    await s.stop('SIGKILL');
    s.client.close();
    const again = await startSinter({ role: 'controller', base: s.base });
    const old = s;
    s = { ...again, cleanup: async () => { await again.cleanup(); await old.cleanup(); } };
    expect(await published('static-restart')).toEqual([NODE_A]);
    expect(await codeOf(publish('static-restart', NODE_B, ISCSI))).toBe('FAILED_PRECONDITION');
    expect((await publish('static-restart', NODE_A, ISCSI)).publish_context).toEqual(ISCSI);
    await ctl().ControllerUnpublishVolume({ volume_id: 'static-restart', node_id: NODE_A });
    expect(existsSync(record)).toBe(false);
  });
});

describe('static volumes in sinter all: the node id, the attach limit, a configured state dir', () => {
  let s: SinterProcess;
  let base: string;
  beforeAll(async () => {
    base = mkdtempSync(join(tmpdir(), 'sinter-it-'));
    // A node with one online FC HBA port (and one offline), seen through node.sysfsRoot.
    const sys = join(base, 'sys');
    for (const [h, wwpn, state] of [['host3', '0x21000024ff3a1b2c', 'Online'], ['host4', '0x21000024ff3a1b2d', 'Linkdown']] as const) {
      mkdirSync(join(sys, 'class/fc_host', h), { recursive: true });
      writeFileSync(join(sys, 'class/fc_host', h, 'port_name'), `${wwpn}\n`);
      writeFileSync(join(sys, 'class/fc_host', h, 'port_state'), `${state}\n`);
    }
    const config = join(base, 'sinter.yaml');
    writeFileSync(
      config,
      stringify({
        backends: [{ name: 'default', dataDir: join(base, 'data') }],
        // The host NQN is given, not read from /etc/nvme/hostnqn: a machine with nvme-cli has one, a fresh one may not.
        node: { maxVolumesPerNode: 1, iscsiInitiatorName: 'iqn.2026-11.io.sinter:all-node', nvmeHostNqn: 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001', sysfsRoot: sys },
        controller: { stateDir: join(base, 'ctl-state') },
      }),
    );
    s = await startSinter({ base, args: ['--config', config] });
  });
  afterAll(async () => {
    await s?.cleanup();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  it('NodeGetInfo carries the online WWPNs; the controller publishes static volumes to that node id and counts them against its limit', async () => {
    const info = await s.client.node.NodeGetInfo({});
    expect(info.node_id).toBe('test-node;iqn.2026-11.io.sinter:all-node;21000024ff3a1b2c;nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001');
    const pub = await s.client.controller.ControllerPublishVolume({ volume_id: 'static-all', node_id: info.node_id, volume_capability: mountCap(), volume_context: FC });
    expect(pub.publish_context).toEqual(FC_CTX);
    expect(existsSync(join(base, 'ctl-state', 'static-volumes', 'static-all.json'))).toBe(true);
    const v = (await s.client.controller.CreateVolume({ name: 'lim', capacity_range: { required_bytes: MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id;
    expect(await codeOf(s.client.controller.ControllerPublishVolume({ volume_id: v, node_id: info.node_id, volume_capability: blockCap() }))).toBe('RESOURCE_EXHAUSTED');
    expect(await codeOf(s.client.controller.ControllerPublishVolume({ volume_id: 'static-all-2', node_id: info.node_id, volume_capability: mountCap(), volume_context: ISCSI }))).toBe('RESOURCE_EXHAUSTED');
    await s.client.controller.ControllerUnpublishVolume({ volume_id: 'static-all', node_id: info.node_id });
    expect(await codeOf(s.client.controller.ControllerPublishVolume({ volume_id: v, node_id: info.node_id, volume_capability: blockCap() }))).toBe('OK');
    // The controller in `all` knows its one node only.
    expect(await codeOf(s.client.controller.ControllerPublishVolume({ volume_id: 'static-all', node_id: NODE_B, volume_capability: mountCap(), volume_context: FC }))).toBe('NOT_FOUND');
  });
});
