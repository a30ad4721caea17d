// Storage capacity tracking end to end, against a running `sinter controller`
// with several file backends of different types, topologies and sizes:
// modelled csi-provisioner v6.3.0 (capacity controller) writes
// CSIStorageCapacity objects into the API stand-in from sinter's real gRPC
// GetCapacity, and modelled kube-scheduler v1.26 (volumebinding) reads them
// back to place claims. The models, and the source files they follow, are in
// test/helpers/capacity-models.ts. The shipped CSIDriver, StorageClasses and
// RBAC are loaded from deploy/kubernetes/base.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { V1CSIStorageCapacity } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadKubeConfig } from '../../src/k8s/client.js';
import {
  binarySI,
  DRIVER_NAME_LABEL,
  ERR_REASON_NOT_ENOUGH_SPACE,
  labelMap,
  MANAGED_BY_LABEL,
  provisionClaim,
  ProvisionerCapacityModel,
  quantityValue,
  SchedulerVolumeBindingModel,
} from '../helpers/capacity-models.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { codeOf, MiB, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { arrayContaining } from '../helpers/matchers.js';

const BASE = join(import.meta.dirname, '..', '..', 'deploy', 'kubernetes', 'base');
const NS = 'sinter-system';
const NODE_KEY = 'topology.sinter.csi.io/node';
const ZONE_KEY = 'topology.sinter.csi.io/zone';
const Mi = (n: number) => n * MiB;

type Doc = { kind: string; metadata: { name: string; namespace?: string }; [k: string]: unknown };
const shipped = (file: string): Doc[] =>
  parseAllDocuments(readFileSync(join(BASE, file), 'utf8'))
    .map((d) => d.toJSON() as Doc | null)
    .filter((d): d is Doc => d !== null);

describe('storage capacity: modelled csi-provisioner v6.3.0 and kube-scheduler v1.26 against a running sinter controller', () => {
  const fx = new KubeFixture();
  let s: SinterProcess;
  let provisioner: ProvisionerCapacityModel;
  let scheduler: SchedulerVolumeBindingModel;
  let kcProvisioner: ReturnType<typeof loadKubeConfig>;
  const DEPLOYMENT_UID = 'uid-deployment-sinter-controller';

  beforeAll(async () => {
    const cfg = join(fx.dir, 'sinter.yaml');
    writeFileSync(
      cfg,
      [
        'backends:',
        // Two ssd pools, one per zone, of different sizes; one hdd pool every node reaches.
        `  - { name: fast-z1, driver: file, dataDir: ${fx.dir}/fast-z1, labels: { type: ssd }, topology: { ${ZONE_KEY}: z1 }, capacityBytes: ${Mi(400)} }`,
        `  - { name: fast-z2, driver: file, dataDir: ${fx.dir}/fast-z2, labels: { type: ssd }, topology: { ${ZONE_KEY}: z2 }, capacityBytes: ${Mi(100)} }`,
        `  - { name: bulk, driver: file, dataDir: ${fx.dir}/bulk, labels: { type: hdd }, capacityBytes: ${Mi(300)} }`,
      ].join('\n'),
    );
    mkdirSync(join(fx.dir, 'run'));
    s = await startSinter({ role: 'controller', base: join(fx.dir, 'run'), args: ['--config', cfg] });
    fx.onCleanup(() => s.cleanup());
    await fx.setUp();
    const st = fx.standin;
    st.extraTokens.add('csi-provisioner');
    st.extraTokens.add('kube-scheduler');
    kcProvisioner = loadKubeConfig({ kubeconfig: st.writeKubeconfig(fx.dir, st.port, 'csi-provisioner') });

    // The shipped CSIDriver and StorageClasses, and classes that must get no objects or an error.
    for (const d of shipped('csidriver.yaml')) st.create('csidrivers', d);
    for (const sc of shipped('storageclasses.yaml')) {
      // sinter's old `fsType` key beside csi.storage.k8s.io/fstype makes csi-provisioner refuse every claim (issue 11,
      // defect 1; provisionClaim models that check). Its removal is another branch's; until then the test drops it.
      const p = sc.parameters as Record<string, string> | undefined;
      if (p) delete p.fsType;
      st.create('storageclasses', sc);
    }
    const sc = (name: string, parameters: Record<string, string>, extra: object = {}) =>
      st.create('storageclasses', { metadata: { name }, provisioner: DRIVER, parameters, reclaimPolicy: 'Delete', volumeBindingMode: 'WaitForFirstConsumer', ...extra });
    sc('pinned-bulk', { backend: 'bulk', 'csi.storage.k8s.io/fstype': 'ext4' });
    sc('typo', { tpye: 'ssd' });
    sc('immediate-ssd', { type: 'ssd' }, { volumeBindingMode: 'Immediate' });
    sc('someone-elses', { type: 'ssd' }, { provisioner: 'other.csi.example.com' });

    // n1..n3 run sinter's node plugin in zones z1, z2, z3; n4 runs only another driver; n5's zone label has not arrived yet.
    const node = (name: string, zone: string | undefined, drivers: { name: string; topologyKeys: string[] }[]) => {
      st.create('nodes', { metadata: { name, labels: { 'kubernetes.io/hostname': name, [NODE_KEY]: name, ...(zone ? { [ZONE_KEY]: zone } : {}) } } });
      st.create('csinodes', { metadata: { name }, spec: { drivers: drivers.map((d) => ({ ...d, nodeID: `${name};;` })) } });
    };
    const sinterOn = [{ name: DRIVER, topologyKeys: [ZONE_KEY, NODE_KEY] }];
    node('n1', 'z1', sinterOn);
    node('n2', 'z2', sinterOn);
    node('n3', 'z3', sinterOn);
    node('n4', 'z1', [{ name: 'other.csi.example.com', topologyKeys: [ZONE_KEY] }]);
    node('n5', undefined, sinterOn);

    // The provisioner's pod, its ReplicaSet, owned by the Deployment (which the owner walk never reads).
    st.create('replicasets', {
      metadata: { name: 'sinter-controller-7d9c', namespace: NS, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'Deployment', name: 'sinter-controller', uid: DEPLOYMENT_UID, controller: true }] },
    });
    st.create('pods', {
      metadata: { name: 'sinter-controller-7d9c-x2x4q', namespace: NS, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'sinter-controller-7d9c', uid: 'uid-rs', controller: true }] },
    });

    provisioner = new ProvisionerCapacityModel({ kubeConfig: kcProvisioner, driverName: DRIVER, namespace: NS, podName: 'sinter-controller-7d9c-x2x4q', ownerrefLevel: 2, controller: s.client.controller });
    scheduler = new SchedulerVolumeBindingModel(loadKubeConfig({ kubeconfig: st.writeKubeconfig(fx.dir, st.port, 'kube-scheduler') }));
  }, 60_000);
  afterAll(async () => {
    await fx.cleanup();
    rmSync(fx.dir, { recursive: true, force: true });
  });

  /** class -> node -> [capacity, maximumVolumeSize] in MiB, from the objects in the API. */
  async function table(): Promise<Record<string, Record<string, [number, number | undefined]>>> {
    const out: Record<string, Record<string, [number, number | undefined]>> = {};
    for (const c of await provisioner.managed()) {
      const node = c.nodeTopology!.matchLabels![NODE_KEY];
      (out[c.storageClassName] ??= {})[node] = [quantityValue(c.capacity!) / MiB, c.maximumVolumeSize === undefined ? undefined : quantityValue(c.maximumVolumeSize) / MiB];
    }
    return out;
  }
  const fits = async (storageClassName: string, mib: number) => {
    const r = await scheduler.filter({ storageClassName, request: `${mib}Mi` });
    return [...r.entries()].filter(([, why]) => why === undefined).map(([n]) => n).sort();
  };
  let pvc = 0;
  const provision = (storageClassName: string, mib: number, selectedNode: string) =>
    provisionClaim(kcProvisioner, s.client.controller, DRIVER, { storageClassName, sizeBytes: Mi(mib), pvcName: `data-${++pvc}`, pvcNamespace: 'default', pvcUid: `0000000${pvc}-aaaa-4bbb-8ccc-dddddddddddd`, selectedNode });
  const backendOf = (id: string) => id.replace(/-[0-9a-f-]{36}$/, '');

  // What sinter should report, from the backends above: [available, largest] per class and node segment.
  const INITIAL = {
    // type ssd: the zone's ssd pool only; z3 has none.
    'sinter-ssd': { n1: [400, 400], n2: [100, 100], n3: [0, 0] },
    // type hdd, and a class pinned to bulk: the one pool every node reaches.
    'sinter-hdd': { n1: [300, 300], n2: [300, 300], n3: [300, 300] },
    'pinned-bulk': { n1: [300, 300], n2: [300, 300], n3: [300, 300] },
    // No type: every pool reachable from the segment, added up; the largest single pool is what one volume can get.
    'sinter-ext4': { n1: [700, 400], n2: [400, 300], n3: [300, 300] },
    'sinter-xfs': { n1: [700, 400], n2: [400, 300], n3: [300, 300] },
    'sinter-block': { n1: [700, 400], n2: [400, 300], n3: [300, 300] },
  };

  it('modelled capacity controller: one object per (node segment x WaitForFirstConsumer class of sinter), owned by the Deployment, valued by sinter GetCapacity', async () => {
    await provisioner.start();
    expect(provisioner.owner).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: 'sinter-controller', uid: DEPLOYMENT_UID, controller: true });

    const results = await provisioner.sync();
    // Segments: n1, n2, n3 (n4 has no sinter, n5 lacks its zone label); classes: the five shipped, pinned-bulk, typo.
    expect(new Set(results.map((r) => JSON.stringify(labelMap(r.segment))))).toEqual(
      new Set(['n1', 'n2', 'n3'].map((n) => JSON.stringify({ [NODE_KEY]: n, [ZONE_KEY]: `z${n.slice(1)}` }))),
    );
    expect(results).toHaveLength(3 * 7);
    // An unknown parameter is refused as CreateVolume refuses it: the controller retries, writes nothing, the scheduler finds no room.
    const failed = results.filter((r) => r.error);
    expect(failed.map((r) => r.storageClassName)).toEqual(['typo', 'typo', 'typo']);
    for (const f of failed) expect(f.error).toMatch(/^3 INVALID_ARGUMENT: parameters: unknown key "tpye"/);

    const objs = await provisioner.managed();
    expect(objs).toHaveLength(3 * 6);
    for (const c of objs) {
      expect(c.metadata!.name).toMatch(/^csisc-/);
      expect(c.metadata!.namespace).toBe(NS);
      expect(c.metadata!.labels).toEqual({ [DRIVER_NAME_LABEL]: DRIVER, [MANAGED_BY_LABEL]: 'external-provisioner' });
      expect(c.metadata!.ownerReferences).toEqual([{ apiVersion: 'apps/v1', kind: 'Deployment', name: 'sinter-controller', uid: DEPLOYMENT_UID, controller: true }]);
      expect(Object.keys(c.nodeTopology!.matchLabels!).sort()).toEqual([NODE_KEY, ZONE_KEY]);
    }
    expect(await table()).toEqual(INITIAL);
    // Quantities as the provisioner writes them (resource.NewQuantity(n, BinarySI)).
    expect(objs.find((c) => c.storageClassName === 'sinter-ext4' && c.nodeTopology!.matchLabels![NODE_KEY] === 'n1')).toMatchObject({ capacity: '700Mi', maximumVolumeSize: '400Mi' });
    // The reserved keys reach GetCapacity as the class has them; sinter ignores them as it does in CreateVolume.
    expect(provisioner.getCapacityCalls.some((c) => c.parameters['csi.storage.k8s.io/fstype'] === 'ext4')).toBe(true);

    // A second pass with nothing changed writes nothing.
    const writes = () => fx.standin.requests.filter((r) => r.token === 'csi-provisioner' && r.method !== 'GET').length;
    const before = writes();
    await provisioner.sync();
    expect(writes()).toBe(before);
  });

  it('modelled scheduler: a claim goes only to nodes whose segment has one backend with room for it, and CreateVolume agrees on both sides', async () => {
    // 200 MiB of ssd: only z1's pool holds it; n2's has 100 MiB, n3 has no ssd pool.
    const r = await scheduler.filter({ storageClassName: 'sinter-ssd', request: '200Mi' });
    expect(Object.fromEntries(r)).toEqual({ n1: undefined, n2: ERR_REASON_NOT_ENOUGH_SPACE, n3: ERR_REASON_NOT_ENOUGH_SPACE, n4: ERR_REASON_NOT_ENOUGH_SPACE, n5: ERR_REASON_NOT_ENOUGH_SPACE });
    // 350 MiB with no type: n2 sees 400 MiB in all, but no single pool over 300 MiB; a volume never spans pools.
    expect(await fits('sinter-ext4', 350)).toEqual(['n1']);
    expect(await fits('sinter-hdd', 250)).toEqual(['n1', 'n2', 'n3']);
    expect(await fits('sinter-ssd', 500)).toEqual([]);

    // Where the scheduler says no, sinter says no: the same claim placed on n2 is refused.
    expect(await codeOf(provision('sinter-ssd', 200, 'n2'))).toBe('RESOURCE_EXHAUSTED');
    // Where it says yes, the volume lands on the backend that made room: z1's ssd pool, reachable from n1 only through zone z1.
    const { volume, pvNodeAffinityTerms } = await provision('sinter-ssd', 200, 'n1');
    expect(backendOf(volume.volume_id)).toBe('fast-z1');
    expect(pvNodeAffinityTerms).toEqual([[[ZONE_KEY, 'z1']]]);
    expect(volume.capacity_bytes).toBe(Mi(200));
  });

  it('capacity is live: objects drop as volumes are created and return when they are deleted (by the refresh after a provision, or by the poll)', async () => {
    // provision.go refreshes the items whose segment equals the PV's node affinity term: {zone: z1}
    // is not a node segment {node, zone}, so nothing is refreshed now; the poll will do it.
    const refreshed = await provisioner.refreshAfterProvision([[[ZONE_KEY, 'z1']]], 'sinter-ssd');
    expect(refreshed).toEqual([]);
    expect((await table())['sinter-ssd'].n1).toEqual([400, 400]);

    await provisioner.sync(); // --capacity-poll-interval
    const t = await table();
    expect(t['sinter-ssd']).toEqual({ n1: [200, 200], n2: [100, 100], n3: [0, 0] });
    expect(t['sinter-ext4'].n1).toEqual([500, 300]);
    expect(t['sinter-ext4'].n2).toEqual([400, 300]);
    // The next 250 MiB ssd claim fits nowhere now, and sinter would refuse it on n1 too.
    expect(await fits('sinter-ssd', 250)).toEqual([]);
    expect(await codeOf(provision('sinter-ssd', 250, 'n1'))).toBe('RESOURCE_EXHAUSTED');
    expect(await fits('sinter-ssd', 200)).toEqual(['n1']);

    // A volume on the pool without topology: its PV has no node affinity, so the class's objects are refreshed at once.
    const bulk = await provision('pinned-bulk', 100, 'n3');
    expect(backendOf(bulk.volume.volume_id)).toBe('bulk');
    expect(bulk.pvNodeAffinityTerms).toBeUndefined();
    expect(await provisioner.refreshAfterProvision(bulk.pvNodeAffinityTerms, 'pinned-bulk')).toHaveLength(3);
    const t2 = await table();
    expect(t2['pinned-bulk']).toEqual({ n1: [200, 200], n2: [200, 200], n3: [200, 200] });
    // Other classes on the same pool wait for the poll.
    expect(t2['sinter-hdd'].n3).toEqual([300, 300]);
    await provisioner.sync();
    // sinter-hdd makes xfs, which needs 300 MiB whatever the claim asks: 200 MiB left is room for no hdd volume.
    expect((await table())['sinter-hdd']).toEqual({ n1: [200, 0], n2: [200, 0], n3: [200, 0] });
    expect(await fits('sinter-hdd', 100)).toEqual([]);
    expect(await codeOf(provision('sinter-hdd', 100, 'n3'))).toBe('RESOURCE_EXHAUSTED');
    expect(await fits('pinned-bulk', 200)).toEqual(['n1', 'n2', 'n3']);
    expect(await fits('pinned-bulk', 201)).toEqual([]);
    // The same for sinter-xfs: n1 and n2 reach 400 and 300 MiB in all, but no pool with 300 MiB free.
    expect((await table())['sinter-xfs']).toEqual({ n1: [400, 0], n2: [300, 0], n3: [200, 0] });
    expect(await fits('sinter-xfs', 100)).toEqual([]);
    expect(await codeOf(provision('sinter-xfs', 100, 'n1'))).toBe('RESOURCE_EXHAUSTED');
    expect(await fits('sinter-ext4', 100)).toEqual(['n1', 'n2', 'n3']);

    // Deleting gives the room back.
    await s.client.controller.DeleteVolume({ volume_id: bulk.volume.volume_id });
    const ssd = (await s.client.controller.ListVolumes({})).entries.map((e) => e.volume!.volume_id);
    for (const id of ssd) await s.client.controller.DeleteVolume({ volume_id: id });
    await provisioner.sync();
    expect(await table()).toEqual(INITIAL);
  });

  it('maximumVolumeSize is exact: in every segment and class, a claim of that size is created on a backend the node reaches, one MiB more is refused', async () => {
    const reach = async (node: string) => {
      const labels = fx.standin.get('nodes', node)!.metadata.labels as Record<string, string>;
      return (b: string) => b === 'bulk' || (b === 'fast-z1' && labels[ZONE_KEY] === 'z1') || (b === 'fast-z2' && labels[ZONE_KEY] === 'z2');
    };
    const objs: V1CSIStorageCapacity[] = await provisioner.managed();
    for (const c of objs) {
      const node = c.nodeTopology!.matchLabels![NODE_KEY];
      const max = quantityValue(c.maximumVolumeSize!) / MiB;
      const what = `${c.storageClassName} on ${node} (max ${max} MiB)`;
      expect(await codeOf(provision(c.storageClassName, max + 1, node)), what).toBe('RESOURCE_EXHAUSTED');
      if (max === 0) continue;
      const { volume } = await provision(c.storageClassName, max, node);
      expect((await reach(node))(backendOf(volume.volume_id)), what).toBe(true);
      await s.client.controller.DeleteVolume({ volume_id: volume.volume_id });
    }
  });

  it("every API request the modelled provisioner made is allowed by the shipped RBAC (ClusterRoles and sinter-system Roles bound to sinter-controller)", () => {
    type Rule = { apiGroups: string[]; resources: string[]; verbs: string[] };
    const docs = shipped('rbac-controller.yaml');
    const bound = new Set(
      docs
        .filter((d) => (d.kind === 'ClusterRoleBinding' || d.kind === 'RoleBinding') && (d.subjects as { name: string }[]).some((x) => x.name === 'sinter-controller'))
        .map((d) => `${(d.roleRef as { kind: string }).kind}/${(d.roleRef as { name: string }).name}`),
    );
    const roles = docs.filter((d) => (d.kind === 'ClusterRole' || d.kind === 'Role') && bound.has(`${d.kind}/${d.metadata.name}`));
    const GROUP: Record<string, string> = { csistoragecapacities: 'storage.k8s.io', storageclasses: 'storage.k8s.io', csinodes: 'storage.k8s.io', nodes: '', pods: '', replicasets: 'apps' };
    const reqs = fx.standin.requests.filter((r) => r.token === 'csi-provisioner');
    expect(reqs.length).toBeGreaterThan(0);
    const seen = new Set<string>();
    for (const r of reqs) {
      const verb = r.method === 'POST' ? 'create' : r.method === 'PUT' ? 'update' : r.method === 'DELETE' ? 'delete' : r.watch ? 'watch' : r.name ? 'get' : 'list';
      const group = GROUP[r.resource!];
      expect(group, `${r.method} ${r.path}`).toBeDefined();
      const allowed = roles.some(
        (role) =>
          (role.kind === 'ClusterRole' || (role.metadata.namespace === r.namespace && r.namespace !== undefined)) &&
          (role.rules as Rule[]).some((x) => x.apiGroups.includes(group) && x.resources.includes(r.resource!) && x.verbs.includes(verb)),
      );
      expect(allowed, `${verb} ${group}/${r.resource} in ${r.namespace ?? '(cluster)'}`).toBe(true);
      seen.add(`${verb} ${r.resource}`);
    }
    // The owner walk read the pod and the ReplicaSet, never the Deployment.
    expect([...seen]).toEqual(arrayContaining(['get pods', 'get replicasets', 'create csistoragecapacities', 'update csistoragecapacities', 'list csistoragecapacities']));
    expect(reqs.some((r) => r.path?.includes('deployments'))).toBe(false);
  });

  it('objects follow classes and nodes: a deleted class and a node without sinter take their objects with them', async () => {
    fx.standin.remove('storageclasses', 'pinned-bulk');
    fx.standin.update('csinodes', 'n3', (o) => void ((o.spec as { drivers: unknown[] }).drivers = []));
    try {
      await provisioner.sync();
      const t = await table();
      expect(t['pinned-bulk']).toBeUndefined();
      for (const cls of Object.keys(t)) expect(Object.keys(t[cls]).sort(), cls).toEqual(['n1', 'n2']);
      expect(await provisioner.managed()).toHaveLength(2 * 5);
      // With n3's objects gone, n3 is no longer offered for any claim.
      expect(await fits('sinter-hdd', 1)).toEqual(['n1', 'n2']);
    } finally {
      fx.standin.update('csinodes', 'n3', (o) => void ((o.spec as { drivers: unknown[] }).drivers = [{ name: DRIVER, nodeID: 'n3;;', topologyKeys: [ZONE_KEY, NODE_KEY] }]));
    }
  });

  it('without storageCapacity in the CSIDriver (as shipped before) the scheduler ignores the objects and sends the claim where no backend fits', async () => {
    fx.standin.update('csidrivers', DRIVER, (o) => void ((o.spec as Record<string, unknown>).storageCapacity = false));
    try {
      expect(await fits('sinter-ssd', 300)).toEqual(['n1', 'n2', 'n3', 'n4', 'n5']);
      expect(await codeOf(provision('sinter-ssd', 300, 'n2'))).toBe('RESOURCE_EXHAUSTED');
    } finally {
      fx.standin.update('csidrivers', DRIVER, (o) => void ((o.spec as Record<string, unknown>).storageCapacity = true));
    }
    expect(await fits('sinter-ssd', 300)).toEqual(['n1']);
    expect(binarySI(Mi(300))).toBe('300Mi');
  });
});
