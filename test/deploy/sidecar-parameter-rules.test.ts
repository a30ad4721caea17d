// Every shipped StorageClass, VolumeSnapshotClass and example held against the
// parameter rules of the sidecar releases the manifests pin — csi-provisioner
// and csi-snapshotter MODELLED FROM THEIR SOURCE (test/deploy/sidecar-model.ts
// names file and release for each rule; no sidecar can run on this machine) —
// and what those sidecars would then send, sent to a real `sinter controller`
// configured with each overlay's backends. Issue 11: the HTTP stand-in never
// modelled the sidecars, and every shipped class was refused by the real one.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { PARAMETER_DOCS, parseParameters } from '../../src/controller/parameters.js';
import { codeOf, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { container, examples, flagsOf, render, workload, type K8sObject } from './k8s.js';
import {
  capacityParameters,
  FSTYPE_KEY,
  MODELLED,
  PREFIX,
  provision,
  PROVISIONER_SECRETS,
  PROVISIONER_STRIPPED,
  PV_NAME_KEY,
  PVC_NAME_KEY,
  PVC_NAMESPACE_KEY,
  SidecarRefusal,
  snapshot,
  SNAPSHOT_CONTENT_NAME_KEY,
  SNAPSHOT_NAME_KEY,
  type Claim,
  type ProvisionerFlags,
  type SnapshotterFlags,
} from './sidecar-model.js';
import { stringMatching } from '../helpers/matchers.js';

// The overlays whose backends the real-sinter check below can stand in with file backends (ceph's rbd pool it cannot).
const OVERLAY_DIRS = ['overlays/single-node', 'overlays/iscsi'] as const;
const RENDERS = ['base', ...OVERLAY_DIRS, 'overlays/ceph'] as const;
const Gi = 1024 ** 3;

type Params = Record<string, string>;
const paramsOf = (o: K8sObject) => ((o as { parameters?: Params }).parameters ?? {});
const classes = (docs: K8sObject[]) => docs.filter((o) => o.kind === 'StorageClass');
const snapshotClasses = (docs: K8sObject[]) => docs.filter((o) => o.kind === 'VolumeSnapshotClass');
const allExamples = () => [...examples().values()].flat();

function quantity(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|Ti)?$/.exec(q);
  if (!m) throw new Error(`unexpected quantity ${q}`);
  return Number(m[1]) * { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: Gi, Ti: 1024 ** 4 }[m[2] ?? '']!;
}

function claimOf(pvc: K8sObject, namespace = 'default'): Claim & { className: string; dataSource?: { kind: string; name: string } } {
  const spec = pvc.spec as { storageClassName: string; accessModes: string[]; volumeMode?: 'Filesystem' | 'Block'; resources: { requests: { storage: string } }; dataSource?: { kind: string; name: string } };
  return {
    name: pvc.metadata.name,
    namespace: pvc.metadata.namespace ?? namespace,
    annotations: pvc.metadata.annotations,
    accessModes: spec.accessModes,
    volumeMode: spec.volumeMode,
    storage: quantity(spec.resources.requests.storage),
    className: spec.storageClassName,
    dataSource: spec.dataSource,
  };
}

/** The flags a sidecar container runs with, from the rendered controller Deployment. */
function sidecar(docs: K8sObject[], name: 'csi-provisioner' | 'csi-snapshotter') {
  const c = container(workload(docs, 'Deployment/sinter-controller').pod, name);
  const [image, tag] = c.image!.split(':') as [string, string];
  const flags = flagsOf(c.args ?? []);
  // flagsOf gives names without their dashes.
  const has = (f: string) => flags.some((x) => x.flag === f && (x.value === undefined || x.value === 'true'));
  const value = (f: string) => flags.find((x) => x.flag === f)?.value ?? '';
  return { image, tag, has, value };
}

function provisionerFlags(docs: K8sObject[]): ProvisionerFlags {
  const p = sidecar(docs, 'csi-provisioner');
  return { extraCreateMetadata: p.has('extra-create-metadata'), defaultFsType: p.value('default-fstype') };
}
function snapshotterFlags(docs: K8sObject[]): SnapshotterFlags {
  return { extraCreateMetadata: sidecar(docs, 'csi-snapshotter').has('extra-create-metadata') };
}

describe('the sidecars the manifests pin are the releases the model was read from', () => {
  it.each(RENDERS)('%s', (dir) => {
    const docs = render(dir);
    for (const name of ['csi-provisioner', 'csi-snapshotter'] as const) {
      const s = sidecar(docs, name);
      expect(s.tag, `${name}: the model (test/deploy/sidecar-model.ts) was read from ${MODELLED[s.image]}; read the source of ${s.tag} and update it`).toBe(MODELLED[s.image]);
    }
    // What the provisioner adds or defaults depends on these flags; the checks below use them as read.
    expect(provisionerFlags(docs)).toEqual({ extraCreateMetadata: true, defaultFsType: 'ext4' });
    expect(snapshotterFlags(docs)).toEqual({ extraCreateMetadata: true });
  });
});

describe('the modelled rules, on the cases that matter to sinter (and that the model can refuse)', () => {
  const claim: Claim = { name: 'data', namespace: 'team-a', accessModes: ['ReadWriteOnce'], storage: Gi, annotations: { 'example.com/secret': 'mine' } };
  const flags: ProvisionerFlags = { extraCreateMetadata: true, defaultFsType: 'ext4' };

  it('the classes sinter shipped before issue 11 are refused exactly as the real provisioner refused them', () => {
    expect(() => provision({ fsType: 'ext4', [FSTYPE_KEY]: 'ext4' }, [], claim, 'pvc-1', flags)).toThrow(
      new SidecarRefusal('fstype specified in parameters with both "fstype" and "csi.storage.k8s.io/fstype" keys'),
    );
    // Any key that lower-cases to "fstype" is the legacy key; the prefixed one is compared exactly.
    for (const k of ['fstype', 'FSType', 'FSTYPE']) expect(() => provision({ [k]: 'xfs', [FSTYPE_KEY]: 'ext4' }, [], claim, 'pvc-1', flags)).toThrow(/both "fstype"/);
    expect(() => provision({ 'csi.storage.k8s.io/fsType': 'xfs' }, [], claim, 'pvc-1', flags)).toThrow(/unknown parameter key "csi\.storage\.k8s\.io\/fsType"/);
  });

  it('strips the prefixed keys it knows, passes every other key unchanged (no case folding), adds the PVC/PV metadata', () => {
    const r = provision({ type: 'ssd', mkfsOptions: '-m 0', MkfsOptions: 'x', [FSTYPE_KEY]: 'xfs', [`${PREFIX}node-stage-secret-name`]: 's', [`${PREFIX}node-stage-secret-namespace`]: 'ns' }, ['noatime'], claim, 'pvc-1', flags);
    expect(r.parameters).toEqual({ type: 'ssd', mkfsOptions: '-m 0', MkfsOptions: 'x', [PVC_NAME_KEY]: 'data', [PVC_NAMESPACE_KEY]: 'team-a', [PV_NAME_KEY]: 'pvc-1' });
    expect(r.volume_capabilities).toEqual([{ mount: { fs_type: 'xfs', mount_flags: ['noatime'] }, access_mode: { mode: 'SINGLE_NODE_MULTI_WRITER' } }]);
    // The legacy key alone is honoured as the filesystem AND still sent on: the driver sees it.
    const legacy = provision({ fsType: 'xfs' }, [], claim, 'pvc-1', { ...flags, extraCreateMetadata: false });
    expect(legacy.parameters).toEqual({ fsType: 'xfs' });
    expect(legacy.fsType).toBe('xfs');
    expect(provision({}, [], claim, 'pvc-1', flags).fsType).toBe('ext4');
    expect(provision({}, [], { ...claim, volumeMode: 'Block', accessModes: ['ReadWriteOncePod'] }, 'pvc-1', flags).volume_capabilities).toEqual([
      { block: {}, access_mode: { mode: 'SINGLE_NODE_SINGLE_WRITER' } },
    ]);
    expect(PROVISIONER_STRIPPED).toContain(`${PREFIX}controller-publish-secret-name`);
  });

  it('resolves secret templates with the tokens each half allows, falls back to the default secret, and refuses half a reference', () => {
    const p = (params: Params) => provision(params, [], claim, 'pvc-1', flags).secrets;
    expect(p({ [`${PREFIX}node-stage-secret-name`]: "${pvc.name}-${pvc.annotations['example.com/secret']}", [`${PREFIX}node-stage-secret-namespace`]: '${pvc.namespace}' }).NodeStage).toEqual({
      name: 'data-mine',
      namespace: 'team-a',
    });
    // The namespace may not depend on what the PVC's user controls (its name, its annotations).
    expect(() => p({ [`${PREFIX}node-stage-secret-name`]: 'x', [`${PREFIX}node-stage-secret-namespace`]: '${pvc.name}' })).toThrow(/invalid tokens: \["pvc\.name"\]/);
    expect(() => p({ [`${PREFIX}node-stage-secret-name`]: 'x' })).toThrow(/Both must be specified/);
    expect(() => p({ [`${PREFIX}node-stage-secret-name`]: 'x', csiNodeStageSecretName: 'y', [`${PREFIX}node-stage-secret-namespace`]: 'n' })).toThrow(/both "csi" and/);
    expect(() => p({ [`${PREFIX}node-stage-secret-name`]: 'Bad_Name', [`${PREFIX}node-stage-secret-namespace`]: 'n' })).toThrow(/not a valid secret name/);
    const all = p({ [`${PREFIX}secret-name`]: '${pv.name}', [`${PREFIX}secret-namespace`]: 'vault' });
    expect(Object.keys(all).sort()).toEqual(PROVISIONER_SECRETS.map((s) => s.name).sort());
    expect(all.ControllerPublish).toEqual({ name: 'pvc-1', namespace: 'vault' });
    // The snapshotter's tokens are the snapshot's; it has no default secret and no deprecated keys.
    const snap = (params: Params) => snapshot(params, { name: 'snap-1', namespace: 'team-a' }, 'snapcontent-1', { extraCreateMetadata: true });
    expect(snap({ [`${PREFIX}snapshotter-secret-name`]: '${volumesnapshot.name}', [`${PREFIX}snapshotter-secret-namespace`]: '${volumesnapshot.namespace}' }).secrets.Snapshotter).toEqual({
      name: 'snap-1',
      namespace: 'team-a',
    });
    expect(() => snap({ [`${PREFIX}snapshotter-secret-name`]: 'x', [`${PREFIX}snapshotter-secret-namespace`]: '${volumesnapshot.name}' })).toThrow(/invalid tokens/);
    // The provisioner's default-secret keys mean nothing to the snapshotter: reserved and unknown there.
    expect(() => snap({ [`${PREFIX}secret-name`]: 'x', [`${PREFIX}secret-namespace`]: 'y' })).toThrow(/unknown parameter key "csi\.storage\.k8s\.io\/secret-name"/);
    expect(() => snap({ [FSTYPE_KEY]: 'ext4' })).toThrow(/unknown parameter key "csi\.storage\.k8s\.io\/fstype"/);
    expect(snap({}).parameters).toEqual({ [SNAPSHOT_NAME_KEY]: 'snap-1', [`${PREFIX}volumesnapshot/namespace`]: 'team-a', [SNAPSHOT_CONTENT_NAME_KEY]: 'snapcontent-1' });
  });

  it("sinter's own parameter names stay clear of the sidecars': none folds to fstype, none is reserved, none is a deprecated secret key", () => {
    for (const k of Object.keys(PARAMETER_DOCS)) {
      expect(k.toLowerCase(), k).not.toBe('fstype');
      expect(k.startsWith(PREFIX), k).toBe(false);
      expect(PROVISIONER_SECRETS.flatMap((s) => (s.deprecated ? [`${s.deprecated}Name`, `${s.deprecated}Namespace`] : [])), k).not.toContain(k);
    }
  });
});

describe.each(RENDERS)('%s: every StorageClass and VolumeSnapshotClass passes the pinned sidecars', (dir) => {
  it('the provisioner prepares a CreateVolume for every class and every example claim of it; the snapshotter a CreateSnapshot for every snapshot class', () => {
    const docs = render(dir);
    const flags = provisionerFlags(docs);
    const scs = classes(docs);
    expect(scs.length).toBeGreaterThan(0);
    for (const sc of scs) {
      const claims = allExamples().filter((o) => o.kind === 'PersistentVolumeClaim' && (o.spec as { storageClassName?: string }).storageClassName === sc.metadata.name);
      const shapes: Claim[] = claims.length ? claims.map((c) => claimOf(c)) : [{ name: 'c', namespace: 'default', accessModes: ['ReadWriteOnce'], storage: Gi }];
      for (const c of shapes) {
        let r: ReturnType<typeof provision>;
        try {
          r = provision(paramsOf(sc), sc.mountOptions as string[] | undefined, c, 'pvc-x', flags);
        } catch (e) {
          throw new Error(`${dir}: csi-provisioner ${MODELLED['registry.k8s.io/sig-storage/csi-provisioner']} refuses claim ${c.name} of StorageClass ${sc.metadata.name}: ${(e as Error).message}`);
        }
        // What is left for sinter: its own keys and the PVC/PV metadata, nothing the provisioner reserves for itself.
        for (const k of Object.keys(r.parameters)) expect(!k.startsWith(PREFIX) || [PVC_NAME_KEY, PVC_NAMESPACE_KEY, PV_NAME_KEY].includes(k), `${sc.metadata.name}: ${k}`).toBe(true);
        // Every Secret a class names is one the manifests ship, in the namespace the reference resolves to.
        for (const [which, ref] of Object.entries(r.secrets)) {
          const shipped = [...docs, ...allExamples()].find((o) => o.kind === 'Secret' && o.metadata.name === ref.name && o.metadata.namespace === ref.namespace);
          expect(shipped, `${sc.metadata.name}: the ${which} secret ${ref.namespace}/${ref.name}`).toBeDefined();
        }
      }
    }
    for (const vsc of [...snapshotClasses(docs), ...allExamples().filter((o) => o.kind === 'VolumeSnapshotClass')])
      expect(() => snapshot(paramsOf(vsc), { name: 's', namespace: 'default' }, 'snapcontent-x', snapshotterFlags(docs))).not.toThrow();
  });
});

describe.each(OVERLAY_DIRS)('%s: sinter accepts what the pinned sidecars send (a real sinter controller with the overlay\'s backends)', (dir) => {
  let s: SinterProcess;
  let base: string;
  const docs = () => render(dir);
  const ctl = () => s.client.controller;

  beforeAll(async () => {
    base = mkdtempSync(join(tmpdir(), 'sinter-sidecar-'));
    // The overlay's own controller configuration, with its backends' data under the test's directory.
    // Exports are local: what is checked here is parameters and scheduling, not how nodes reach the images.
    const cm = docs().find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('sinter-config'))!;
    const cfg = parseYaml((cm as unknown as { data: Record<string, string> }).data['controller.yaml']) as { backends: Record<string, unknown>[] };
    for (const b of cfg.backends) {
      b.dataDir = join(base, String(b.name));
      delete b.iscsi;
      b.export = 'local';
    }
    writeFileSync(join(base, 'controller.yaml'), toYaml(cfg));
    s = await startSinter({ role: 'controller', base, args: ['--config', join(base, 'controller.yaml')] });
  }, 60_000);
  afterAll(async () => {
    await s?.cleanup();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  it('every StorageClass: CreateVolume with the parameters and capabilities the provisioner sends succeeds with the class\'s filesystem; GetCapacity takes the class as it is', async () => {
    const flags = provisionerFlags(docs());
    let n = 0;
    for (const sc of classes(docs())) {
      const shapes: Claim[] = [
        { name: `${sc.metadata.name}-fs`, namespace: 'default', accessModes: ['ReadWriteOnce'], volumeMode: 'Filesystem', storage: Gi },
        { name: `${sc.metadata.name}-rwop`, namespace: 'default', accessModes: ['ReadWriteOncePod'], volumeMode: 'Filesystem', storage: Gi },
        { name: `${sc.metadata.name}-blk`, namespace: 'default', accessModes: ['ReadWriteOnce'], volumeMode: 'Block', storage: Gi },
      ];
      for (const c of shapes) {
        const pvName = `pvc-${sc.metadata.name}-${c.name}`;
        const r = provision(paramsOf(sc), sc.mountOptions as string[] | undefined, c, pvName, flags);
        const res = await ctl()
          .CreateVolume({ name: pvName, capacity_range: { required_bytes: c.storage }, volume_capabilities: r.volume_capabilities, parameters: r.parameters, secrets: {} })
          .catch((e: { details?: string }) => {
            throw new Error(`${dir} ${sc.metadata.name} (${c.name}): sinter refused what csi-provisioner sends: ${e.details}`);
          });
        const want = (paramsOf(sc)[FSTYPE_KEY] ?? flags.defaultFsType) || 'ext4';
        if (c.volumeMode !== 'Block') expect(res.volume!.volume_context.fsType, `${sc.metadata.name}: the filesystem`).toBe(want);
        await ctl().DeleteVolume({ volume_id: res.volume!.volume_id });
        n++;
      }
      const caps = provision(paramsOf(sc), [], shapes[0], 'pvc-cap', flags).volume_capabilities;
      expect(await codeOf(ctl().GetCapacity({ volume_capabilities: caps, parameters: capacityParameters(paramsOf(sc)) })), `${sc.metadata.name}: GetCapacity`).toBe('OK');
    }
    expect(n).toBeGreaterThanOrEqual(15);
  });

  it('the examples: claim, snapshot, restore and clone go through the sidecars\' hands and sinter\'s', async () => {
    const flags = provisionerFlags(docs());
    const byName = new Map(classes(docs()).map((c) => [c.metadata.name, c]));
    const claims = allExamples()
      .filter((o) => o.kind === 'PersistentVolumeClaim' && (o.spec as { storageClassName?: string }).storageClassName)
      .map((o) => claimOf(o));
    const made = new Map<string, string>();
    const snapshots = new Map<string, string>();
    const createClaim = async (c: ReturnType<typeof claimOf>) => {
      const had = made.get(c.name);
      if (had) {
        // The same claim applied again with a larger request (resize.yaml): csi-resizer's ControllerExpandVolume.
        const res = await ctl().ControllerExpandVolume({ volume_id: had, capacity_range: { required_bytes: c.storage } });
        expect(Number(res.capacity_bytes), `${c.name} grown`).toBeGreaterThanOrEqual(c.storage);
        return;
      }
      const sc = byName.get(c.className);
      expect(sc, `example claim ${c.name}: class ${c.className} is shipped`).toBeDefined();
      const r = provision(paramsOf(sc!), sc!.mountOptions as string[] | undefined, c, `pvc-${c.name}`, flags);
      let volume_content_source: object | undefined;
      if (c.dataSource?.kind === 'VolumeSnapshot') volume_content_source = { snapshot: { snapshot_id: snapshots.get(c.dataSource.name) } };
      if (c.dataSource?.kind === 'PersistentVolumeClaim') volume_content_source = { volume: { volume_id: made.get(c.dataSource.name) } };
      const res = await ctl().CreateVolume({ name: `pvc-${c.name}`, capacity_range: { required_bytes: c.storage }, volume_capabilities: r.volume_capabilities, parameters: r.parameters, volume_content_source });
      made.set(c.name, res.volume!.volume_id!);
    };
    // Sources first: plain claims, then the snapshots of them, then the claims made from snapshots and clones.
    for (const c of claims.filter((c) => !c.dataSource)) await createClaim(c);
    for (const vs of allExamples().filter((o) => o.kind === 'VolumeSnapshot')) {
      const spec = vs.spec as { volumeSnapshotClassName: string; source: { persistentVolumeClaimName: string } };
      const vsc = [...snapshotClasses(docs()), ...allExamples()].find((o) => o.kind === 'VolumeSnapshotClass' && o.metadata.name === spec.volumeSnapshotClassName);
      expect(vsc, `snapshot ${vs.metadata.name}: class ${spec.volumeSnapshotClassName} is shipped`).toBeDefined();
      const source = made.get(spec.source.persistentVolumeClaimName);
      expect(source, `snapshot ${vs.metadata.name}: its claim ${spec.source.persistentVolumeClaimName} is an example`).toBeDefined();
      const r = snapshot(paramsOf(vsc!), { name: vs.metadata.name, namespace: vs.metadata.namespace ?? 'default' }, `snapcontent-${vs.metadata.name}`, snapshotterFlags(docs()));
      const res = await ctl().CreateSnapshot({ name: `snapshot-${vs.metadata.name}`, source_volume_id: source, parameters: r.parameters, secrets: {} });
      snapshots.set(vs.metadata.name, res.snapshot!.snapshot_id!);
    }
    for (const c of claims.filter((c) => c.dataSource)) await createClaim(c);
    expect(made.size).toBe(new Set(claims.map((c) => c.name)).size);
    expect(snapshots.size).toBeGreaterThan(0);
  });

  it('and refuses what the provisioner would pass on from a class with the legacy fsType key alone, pointing at csi.storage.k8s.io/fstype', async () => {
    const r = provision({ fsType: 'xfs' }, [], { name: 'legacy', namespace: 'default', accessModes: ['ReadWriteOnce'], storage: Gi }, 'pvc-legacy', provisionerFlags(docs()));
    const call = () => ctl().CreateVolume({ name: 'pvc-legacy', capacity_range: { required_bytes: Gi }, volume_capabilities: r.volume_capabilities, parameters: r.parameters });
    expect(await codeOf(call())).toBe('INVALID_ARGUMENT');
    await expect(call()).rejects.toMatchObject({ details: stringMatching(/parameters\.fsType .*csi\.storage\.k8s\.io\/fstype/) });
    expect(() => parseParameters({ MkfsOptions: '-m 0' })).toThrow(/unknown key "MkfsOptions"/);
  });
});
