// deploy/kubernetes: rendered with the real `kubectl kustomize` (offline),
// every object validated against strict Kubernetes JSON Schemas kept in
// test/deploy/schemas/, and checked for the invariants issue 5 asks for:
// pinned images, Bidirectional propagation and privilege only on the node
// plugin, least-privilege RBAC, sinter flags and config that sinter accepts.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import { afterAll, describe, expect, it } from 'vitest';
import { FLAG_SPEC, DEFAULT_DRIVER_NAME, loadConfig } from '../../src/config/load.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { SUPPORTED_FS } from '../../src/csi/capability.js';
import { parseStaticAttributes, STATIC_HANDLE_RE } from '../../src/controller/static-volumes.js';
import {
  allContainers,
  container,
  examples,
  expandVars,
  findKubectl,
  flagsOf,
  flagValue,
  gvk,
  idOf,
  type K8sObject,
  type Obj,
  OVERLAYS,
  type PodSpec,
  render,
  ROOT,
  volumeOf,
  workload,
  workloads,
} from './k8s.js';
import { arrayContaining } from '../helpers/matchers.js';

const PKG_VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const SCHEMAS = join(ROOT, 'test', 'deploy', 'schemas');
const CONTROLLER = 'Deployment/sinter-controller';
const NODE = 'DaemonSet/sinter-node';
const NAMESPACE = 'sinter-system';
const DRIVER = 'sinter.csi.io';
const RENDERS = ['base', ...OVERLAYS.map((o) => `overlays/${o}`)] as const;

// ---- schemas ----------------------------------------------------------------

const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
const k8sBundle = JSON.parse(readFileSync(join(SCHEMAS, 'kubernetes.json'), 'utf8')) as { kinds: Record<string, object>; definitions: object };
const snapBundle = JSON.parse(readFileSync(join(SCHEMAS, 'snapshot.storage.k8s.io.json'), 'utf8')) as { kinds: Record<string, object> };
ajv.addSchema({ $id: 'kubernetes.json', definitions: k8sBundle.definitions });
const validators = new Map<string, ValidateFunction>();
for (const [key, schema] of Object.entries(k8sBundle.kinds) as [string, { allOf: { $ref: string }[]; properties: object; required: string[] }][]) {
  // The bundle's refs are local (#/definitions/X); here they point into the added bundle.
  const allOf = schema.allOf.map((s) => ({ $ref: `kubernetes.json${s.$ref}` }));
  validators.set(key, ajv.compile({ type: 'object', allOf, properties: schema.properties, required: schema.required }));
}
for (const [key, schema] of Object.entries(snapBundle.kinds)) validators.set(key, ajv.compile(schema));

function schemaErrors(o: K8sObject): string[] {
  const v = validators.get(gvk(o));
  if (!v) return [`no schema for ${gvk(o)} (add it to test/deploy/schemas/generate.mjs KINDS and regenerate)`];
  if (v(o)) return [];
  return (v.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}${e.params && 'additionalProperty' in e.params ? ` "${String(e.params.additionalProperty)}"` : ''}${e.params && 'allowedValues' in e.params ? ` ${JSON.stringify(e.params.allowedValues)}` : ''}`);
}

const DNS1123_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1123_LABEL = /^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const IANA_SVC_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$/;

describe('rendering: `kubectl kustomize` works offline', () => {
  it('finds a kubectl with kustomize v5', () => {
    const k = findKubectl();
    console.info(`rendering with ${k.path}: kubectl ${k.clientVersion}, kustomize ${k.kustomizeVersion}`);
    expect(k.kustomizeVersion).toMatch(/^v5\./);
  });
  it.each(RENDERS)('%s renders', (dir) => {
    const docs = render(dir);
    expect(docs.length).toBeGreaterThan(10);
    const ids = docs.map((o) => `${gvk(o)}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
    expect(new Set(ids).size, 'duplicate objects').toBe(ids.length);
  });
  it('the overlays differ only where they should: the iscsi overlay adds tgtd, the CHAP class and its Role', () => {
    const names = (dir: string) => new Set(render(dir).map((o) => idOf(o).replace(/^ConfigMap\/sinter-config-.*$/, 'ConfigMap/sinter-config')));
    const single = names('overlays/single-node');
    const iscsi = names('overlays/iscsi');
    expect([...iscsi].filter((n) => !single.has(n)).sort()).toEqual(['Role/sinter-chap-secret', 'RoleBinding/sinter-chap-secret', 'StorageClass/sinter-iscsi-chap']);
    expect([...single].filter((n) => !iscsi.has(n))).toEqual([]);
    expect(workload(render('overlays/iscsi'), CONTROLLER).pod.containers.map((c) => c.name)).toContain('tgtd');
    expect(workload(render('overlays/single-node'), CONTROLLER).pod.containers.map((c) => c.name)).not.toContain('tgtd');
  });
});

describe('every manifest validates against the Kubernetes API schemas (strict: unknown fields are errors)', () => {
  it('the schemas reject what they should (a typo, a wrong type, a missing required field, a bad enum)', () => {
    const good = render('overlays/single-node').find((o) => o.kind === 'DaemonSet')!;
    expect(schemaErrors(good)).toEqual([]);
    const bad = structuredClone(good) as K8sObject & { spec: Obj };
    const pod = (bad.spec.template as Obj).spec as PodSpec & Obj;
    pod.hostNetwrok = true;
    pod.containers[0].volumeMounts![1].mountPropagation = 'bidirectional';
    (pod.containers[0] as unknown as Obj).ports = [{ containerPort: '9840' }];
    delete (bad.spec).selector;
    const errors = schemaErrors(bad).join('\n');
    expect(errors).toContain('"hostNetwrok"');
    expect(errors).toContain('mountPropagation must be equal to one of the allowed values');
    expect(errors).toContain('containerPort must be integer');
    expect(errors).toContain("must have required property 'selector'");
  });
  it.each(RENDERS)('%s', (dir) => {
    const problems = render(dir).flatMap((o) => schemaErrors(o).map((e) => `${gvk(o)} ${o.metadata.name}: ${e}`));
    expect(problems).toEqual([]);
  });
  it('examples/*.yaml', () => {
    const problems = [...examples()].flatMap(([f, docs]) => docs.flatMap((o) => schemaErrors(o).map((e) => `${f}: ${gvk(o)} ${o.metadata.name}: ${e}`)));
    expect(problems).toEqual([]);
  });
  it.each(RENDERS)('%s: names, container names and port names are valid Kubernetes names', (dir) => {
    const problems: string[] = [];
    for (const o of render(dir)) {
      if (!DNS1123_SUBDOMAIN.test(o.metadata.name)) problems.push(`${idOf(o)}: name`);
      for (const [k, v] of Object.entries(o.metadata.labels ?? {})) if (v.length > 63) problems.push(`${idOf(o)}: label ${k} longer than 63`);
    }
    for (const w of workloads(render(dir))) {
      for (const { c } of allContainers(w.pod)) {
        if (!DNS1123_LABEL.test(c.name)) problems.push(`${w.id}/${c.name}: container name`);
        for (const p of c.ports ?? []) if (p.name !== undefined && !IANA_SVC_NAME.test(p.name)) problems.push(`${w.id}/${c.name}: port name ${p.name}`);
      }
    }
    expect(problems).toEqual([]);
  });
});

// ---- images -----------------------------------------------------------------

/** Released versions, each built against CSI spec >= 1.10 (they carry spec v1.11/1.12). */
const SIDECARS: Record<string, string> = {
  'csi-provisioner': 'registry.k8s.io/sig-storage/csi-provisioner:v6.3.0',
  'csi-attacher': 'registry.k8s.io/sig-storage/csi-attacher:v4.12.0',
  'csi-resizer': 'registry.k8s.io/sig-storage/csi-resizer:v2.2.1',
  'csi-snapshotter': 'registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0',
  'node-driver-registrar': 'registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0',
  'liveness-probe': 'registry.k8s.io/sig-storage/livenessprobe:v2.19.0',
  // v0.18.0 reports through PVC events using LIST_VOLUMES/GET_VOLUME + VOLUME_CONDITION
  // (cmd/csi-external-health-monitor-controller/main.go at v0.18.0); v0.19 needs CSI 1.13's health RPCs.
  'csi-external-health-monitor-controller': 'registry.k8s.io/sig-storage/csi-external-health-monitor-controller:v0.18.0',
};

describe('images are pinned', () => {
  it.each(RENDERS)('%s: every image has a full version tag, none is :latest', (dir) => {
    const problems: string[] = [];
    for (const w of workloads(render(dir))) {
      for (const { c } of allContainers(w.pod)) {
        const m = /^(?<repo>[^@]+?)(?::(?<tag>[^:/@]+))?(?:@(?<digest>sha256:[0-9a-f]{64}))?$/.exec(c.image ?? '');
        const tag = m?.groups?.tag;
        if (!m || (!tag && !m.groups?.digest)) problems.push(`${w.id}/${c.name}: ${c.image} has no tag`);
        else if (tag === 'latest' || (tag && !/^v?\d+\.\d+\.\d+$/.test(tag))) problems.push(`${w.id}/${c.name}: ${c.image} is not pinned to a release (vX.Y.Z)`);
      }
    }
    expect(problems).toEqual([]);
  });
  it.each(RENDERS)('%s: sidecars are the pinned registry.k8s.io/sig-storage releases; sinter images carry the package version', (dir) => {
    for (const w of workloads(render(dir))) {
      for (const { c } of allContainers(w.pod)) {
        if (SIDECARS[c.name]) expect(c.image, `${w.id}/${c.name}`).toBe(SIDECARS[c.name]);
        else expect(c.image, `${w.id}/${c.name}`).toMatch(new RegExp(`^sinter-(controller|node):${PKG_VERSION.replace(/\./g, '\\.')}$`));
      }
    }
    const c = workload(render(dir), CONTROLLER).pod;
    expect(c.containers.map((x) => x.name)).toEqual(arrayContaining(['sinter', 'csi-provisioner', 'csi-attacher', 'csi-resizer', 'csi-snapshotter', 'csi-external-health-monitor-controller', 'liveness-probe']));
    const n = workload(render(dir), NODE).pod;
    expect(n.containers.map((x) => x.name).sort()).toEqual(['liveness-probe', 'node-driver-registrar', 'sinter']);
    expect(container(c, 'sinter').image).toMatch(/^sinter-controller:/);
    expect(container(n, 'sinter').image).toMatch(/^sinter-node:/);
  });
});

// ---- privilege and propagation ---------------------------------------------

describe('privilege only where it is needed', () => {
  it.each(RENDERS)('%s: Bidirectional propagation only on the node plugin, on the kubelet directory', (dir) => {
    const found: string[] = [];
    for (const w of workloads(render(dir))) {
      for (const { c } of allContainers(w.pod)) {
        for (const m of c.volumeMounts ?? []) {
          if (m.mountPropagation !== 'Bidirectional') continue;
          found.push(`${w.id}/${c.name}:${m.mountPath}<-${volumeOf(w.pod, m.name).hostPath?.path ?? '(not a hostPath)'}`);
        }
      }
    }
    expect(found).toEqual([`${NODE}/sinter:/var/lib/kubelet<-/var/lib/kubelet`]);
  });
  it.each(RENDERS)('%s: privileged only on the node plugin container', (dir) => {
    const privileged = workloads(render(dir)).flatMap((w) => allContainers(w.pod).filter(({ c }) => c.securityContext?.privileged === true).map(({ c }) => `${w.id}/${c.name}`));
    expect(privileged).toEqual([`${NODE}/sinter`]);
  });
  it.each(RENDERS)('%s: every other container drops all capabilities, cannot escalate, and adds only what it names', (dir) => {
    const ALLOWED_ADDS: Record<string, string[]> = {
      'data-dir-owner': ['CHOWN', 'FOWNER'], // hands the backend directories to uid 65532
      tgtd: ['NET_BIND_SERVICE'], // the iSCSI portal, port 3260
    };
    for (const w of workloads(render(dir))) {
      for (const { c } of allContainers(w.pod)) {
        if (c.securityContext?.privileged) continue;
        const s = c.securityContext;
        expect(s?.allowPrivilegeEscalation, `${w.id}/${c.name}`).toBe(false);
        expect(s?.capabilities?.drop, `${w.id}/${c.name}`).toEqual(['ALL']);
        expect(s?.capabilities?.add ?? [], `${w.id}/${c.name}`).toEqual(ALLOWED_ADDS[c.name] ?? []);
        expect(s?.readOnlyRootFilesystem, `${w.id}/${c.name}`).toBe(true);
      }
    }
  });
  it.each(RENDERS)('%s: host namespaces only for the node plugin (and the iSCSI portal network on the storage host)', (dir) => {
    for (const w of workloads(render(dir))) {
      const isNode = w.id === NODE;
      expect(w.pod.hostPID ?? false, w.id).toBe(isNode);
      expect(w.pod.hostIPC ?? false, w.id).toBe(false);
      expect(w.pod.hostNetwork ?? false, w.id).toBe(isNode || (w.id === CONTROLLER && dir === 'overlays/iscsi'));
    }
  });
  it.each(RENDERS)('%s: hostPath volumes only in the node plugin and the controller data volume', (dir) => {
    const paths = workloads(render(dir)).flatMap((w) => (w.pod.volumes ?? []).filter((v) => v.hostPath).map((v) => `${w.id}:${v.hostPath!.path}`));
    const node = ['/var/lib/kubelet/plugins/sinter.csi.io', '/var/lib/kubelet/plugins_registry', '/var/lib/kubelet', '/var/lib/sinter/node', '/dev', '/sys', '/etc/iscsi', '/run/udev'].map((p) => `${NODE}:${p}`);
    // ceph: the images are in the pool, nothing of them on any host.
    const expected =
      dir === 'base' || dir === 'overlays/ceph'
        ? node
        : dir === 'overlays/single-node'
          ? [...node, `${NODE}:/var/lib/sinter/backends`, `${CONTROLLER}:/var/lib/sinter/backends`]
          : [...node, `${CONTROLLER}:/var/lib/sinter/backends`];
    expect(paths.sort()).toEqual(expected.sort());
  });
  it('the controller runs as uid 65532 (base, single-node); in the iscsi overlay as root, unprivileged, because tgtd only obeys its own uid', () => {
    for (const dir of ['base', 'overlays/single-node']) {
      const pod = workload(render(dir), CONTROLLER).pod;
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532 });
      for (const c of pod.containers) expect(c.securityContext?.runAsUser ?? 65532, c.name).toBe(65532);
    }
    const iscsi = workload(render('overlays/iscsi'), CONTROLLER).pod;
    expect(iscsi.securityContext).toMatchObject({ runAsNonRoot: false, runAsUser: 0, runAsGroup: 0 });
  });
  it('the node plugin mounts no ServiceAccount token (it writes nothing to the API)', () => {
    for (const dir of RENDERS) {
      const w = workload(render(dir), NODE);
      expect(w.pod.automountServiceAccountToken).toBe(false);
      const sa = render(dir).find((o) => o.kind === 'ServiceAccount' && o.metadata.name === w.pod.serviceAccountName);
      expect(sa?.automountServiceAccountToken).toBe(false);
    }
  });
});

// ---- RBAC ------------------------------------------------------------------

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

/** What each role may do, one line per (group, resource): verbs. The sidecars' needs at the pinned versions. */
const EXPECTED_CLUSTER_ROLES: Record<string, string[]> = {
  'sinter-external-provisioner': [
    '/persistentvolumes: get,list,watch,create,patch,delete',
    '/persistentvolumeclaims: get,list,watch,update',
    'storage.k8s.io/storageclasses: get,list,watch',
    '/events: list,watch,create,update,patch',
    'snapshot.storage.k8s.io/volumesnapshots: get,list,watch,update',
    'snapshot.storage.k8s.io/volumesnapshotcontents: get,list',
    'storage.k8s.io/csinodes: get,list,watch',
    '/nodes: get,list,watch',
    'storage.k8s.io/volumeattachments: get,list,watch',
  ],
  'sinter-external-attacher': [
    '/persistentvolumes: get,list,watch,patch',
    'storage.k8s.io/csinodes: get,list,watch',
    'storage.k8s.io/volumeattachments: get,list,watch,patch',
    'storage.k8s.io/volumeattachments/status: patch',
  ],
  'sinter-external-resizer': [
    '/persistentvolumes: get,list,watch,patch',
    '/persistentvolumeclaims: get,list,watch',
    '/persistentvolumeclaims/status: patch',
    '/pods: get,list,watch',
    '/events: list,watch,create,update,patch',
  ],
  // deploy/kubernetes/external-health-monitor-controller/rbac.yaml at v0.18.0.
  'sinter-external-health-monitor': [
    '/persistentvolumes: get,list,watch',
    '/persistentvolumeclaims: get,list,watch',
    '/nodes: get,list,watch',
    '/pods: get,list,watch',
    '/events: get,list,watch,create,patch',
  ],
  'sinter-external-snapshotter': [
    '/events: list,watch,create,update,patch',
    'snapshot.storage.k8s.io/volumesnapshotclasses: get,list,watch',
    'snapshot.storage.k8s.io/volumesnapshotcontents: get,list,watch,update,patch',
    'snapshot.storage.k8s.io/volumesnapshotcontents/status: update,patch',
    'groupsnapshot.storage.k8s.io/volumegroupsnapshotclasses: get,list,watch',
    'groupsnapshot.storage.k8s.io/volumegroupsnapshotcontents: get,list,watch,update,patch',
    'groupsnapshot.storage.k8s.io/volumegroupsnapshotcontents/status: update,patch',
  ],
  // sinter itself: reads the attachment record, CSINodes and Nodes; writes nothing.
  'sinter-controller': ['storage.k8s.io/volumeattachments: get,list,watch', 'storage.k8s.io/csinodes: get,list,watch', '/persistentvolumes: get,list,watch', '/nodes: get'],
};
const EXPECTED_ROLES: Record<string, string[]> = {
  'sinter-leader-election': ['coordination.k8s.io/leases: get,list,watch,create,update,delete'],
  // external-provisioner v6.3.0 --enable-capacity: deploy/kubernetes/rbac.yaml (Role external-provisioner-cfg);
  // pkg/owner/owner.go GETs the pod and, for --capacity-ownerref-level=2, its ReplicaSet (not the Deployment).
  'sinter-storage-capacity': ['storage.k8s.io/csistoragecapacities: get,list,watch,create,update,patch,delete', '/pods: get', 'apps/replicasets: get'],
  'sinter-chap-secret': ['/secrets[sinter-chap]: get'],
  // overlays/ceph: the sidecars pass the controller's cephx Secret in their requests (StorageClass *-secret-name).
  'sinter-ceph-controller-secret': ['/secrets[sinter-ceph-controller]: get'],
};
/** The Role an overlay adds for the one Secret its sidecars read, if any. */
const SECRET_ROLE: Record<string, string | undefined> = { 'overlays/iscsi': 'sinter-chap-secret', 'overlays/ceph': 'sinter-ceph-controller-secret' };
const SECRET_READ: Record<string, string | undefined> = { 'overlays/iscsi': 'sinter-chap', 'overlays/ceph': 'sinter-ceph-controller' };

function ruleLines(rules: Rule[]): string[] {
  return rules.flatMap((r) =>
    (r.apiGroups ?? ['?']).flatMap((g) => (r.resources ?? ['?']).map((res) => `${g}/${res}${r.resourceNames ? `[${r.resourceNames.join(',')}]` : ''}: ${r.verbs.join(',')}`)),
  );
}

describe('RBAC is least privilege', () => {
  it.each(RENDERS)('%s: no wildcards, no escalation verbs, no non-resource URLs', (dir) => {
    for (const o of render(dir).filter((x) => x.kind === 'ClusterRole' || x.kind === 'Role')) {
      for (const r of (o.rules as Rule[]) ?? []) {
        for (const list of [r.apiGroups ?? [], r.resources ?? [], r.verbs, r.resourceNames ?? []]) expect(list, idOf(o)).not.toContain('*');
        expect(r.verbs.filter((v) => ['escalate', 'bind', 'impersonate', 'deletecollection'].includes(v)), idOf(o)).toEqual([]);
        expect(r.nonResourceURLs, idOf(o)).toBeUndefined();
      }
      expect(o.aggregationRule, idOf(o)).toBeUndefined();
    }
  });
  it.each(RENDERS)('%s: no ClusterRole reads secrets; the one Role that does names one Secret in sinter-system', (dir) => {
    for (const o of render(dir).filter((x) => x.kind === 'ClusterRole')) {
      for (const r of (o.rules as Rule[]) ?? []) expect(r.resources ?? [], idOf(o)).not.toContain('secrets');
    }
    for (const o of render(dir).filter((x) => x.kind === 'Role')) {
      for (const r of ((o.rules as Rule[]) ?? []).filter((x) => x.resources?.includes('secrets'))) {
        expect(o.metadata.namespace).toBe(NAMESPACE);
        expect(r.resourceNames).toEqual([SECRET_READ[dir]]);
        expect(r.verbs).toEqual(['get']);
      }
    }
  });
  it.each(RENDERS)('%s: each role grants exactly the rules its sidecar (or sinter) needs', (dir) => {
    const docs = render(dir);
    const got = (kind: string) => Object.fromEntries(docs.filter((o) => o.kind === kind).map((o) => [o.metadata.name, ruleLines((o.rules as Rule[]) ?? [])]));
    expect(got('ClusterRole')).toEqual(EXPECTED_CLUSTER_ROLES);
    const roles = got('Role');
    const secretRoles = new Set(Object.values(SECRET_ROLE));
    expect(roles).toEqual(Object.fromEntries(Object.entries(EXPECTED_ROLES).filter(([n]) => !secretRoles.has(n) || SECRET_ROLE[dir] === n)));
  });
  it.each(RENDERS)('%s: bindings point at roles and ServiceAccounts that exist; only the controller is bound', (dir) => {
    const docs = render(dir);
    const has = (kind: string, name: string, ns?: string) => docs.some((o) => o.kind === kind && o.metadata.name === name && (ns === undefined || o.metadata.namespace === ns));
    for (const b of docs.filter((o) => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding')) {
      const ref = b.roleRef as { kind: string; name: string };
      expect(has(ref.kind, ref.name, ref.kind === 'Role' ? b.metadata.namespace : undefined), `${idOf(b)} -> ${ref.kind}/${ref.name}`).toBe(true);
      for (const s of b.subjects as { kind: string; name: string; namespace?: string }[]) {
        expect(s.kind, idOf(b)).toBe('ServiceAccount');
        expect(has('ServiceAccount', s.name, s.namespace), `${idOf(b)} -> ServiceAccount ${s.namespace}/${s.name}`).toBe(true);
        expect(s.name, idOf(b)).toBe('sinter-controller');
      }
    }
    for (const w of workloads(docs)) expect(has('ServiceAccount', w.pod.serviceAccountName ?? 'default', w.obj.metadata.namespace), w.id).toBe(true);
  });
});

// ---- sinter's own flags and configuration ---------------------------------

const tmp = mkdtempSync(join(tmpdir(), 'sinter-deploy-'));
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** Runs sinter's own loadConfig on a container's args, with its mounted ConfigMap files. */
function loadAsSinter(docs: K8sObject[], pod: PodSpec, name: string) {
  const c = container(pod, name);
  const [role, ...rest] = c.args ?? [];
  const env: Record<string, string> = { NODE_NAME: 'node-a', HOST_IP: '192.0.2.10', NAMESPACE };
  const args = rest.map((a) => expandVars(a, env));
  let configText: string | undefined;
  let configPath: string | undefined;
  const configFlag = flagValue(args, 'config');
  if (configFlag !== undefined) {
    const mount = (c.volumeMounts ?? []).find((m) => configFlag.startsWith(`${m.mountPath}/`));
    expect(mount, `${name}: --config ${configFlag} is not under a mounted volume`).toBeDefined();
    const cmName = volumeOf(pod, mount!.name).configMap?.name;
    const cm = docs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === cmName);
    expect(cm, `${name}: ConfigMap ${cmName} is not in the manifests`).toBeDefined();
    configText = (cm!.data as Record<string, string>)[configFlag.slice(mount!.mountPath.length + 1)];
    expect(configText, `${name}: ${configFlag} is not a key of ConfigMap ${cmName}`).toBeDefined();
  }
  if (configText !== undefined) {
    configPath = join(tmp, `${role}-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(configPath, configText);
  }
  const withFile = args.map((a) => (configFlag !== undefined && a === `--config=${configFlag}` ? `--config=${configPath}` : a));
  // The pod's environment, which sinter reads for `${VAR}` in its config (the portal's host IP).
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    return { role: role as 'controller' | 'node' | 'all', cfg: loadConfig(role as 'controller' | 'node', withFile) };
  } finally {
    for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

describe("sinter's containers use flags and configuration that sinter accepts", () => {
  const known = new Set(Object.keys(FLAG_SPEC));
  it.each(RENDERS)('%s: every flag in the sinter containers is in src/config/load.ts FLAG_SPEC, with a value', (dir) => {
    for (const id of [CONTROLLER, NODE]) {
      const c = container(workload(render(dir), id).pod, 'sinter');
      const [role, ...rest] = c.args ?? [];
      expect(role).toBe(id === CONTROLLER ? 'controller' : 'node');
      for (const a of rest) expect(a, `${id}: "${a}" (use --flag=value)`).toMatch(/^--[a-z-]+=.+$/);
      for (const f of flagsOf(rest)) expect(known.has(f.flag), `${id}: --${f.flag} is not a sinter flag`).toBe(true);
      expect(c.command, `${id}: the image's entrypoint (tini -- node dist/bundle/main.mjs) runs sinter`).toBeUndefined();
    }
  });
  it('overlays/iscsi: tgtd starts on a loopback parking portal only, and sinter opens the portal it hands to nodes (openPortals) once the exports are back', () => {
    const docs = render('overlays/iscsi');
    const pod = workload(docs, CONTROLLER).pod;
    const tgtdArgs = container(pod, 'tgtd').args ?? [];
    const portalArg = tgtdArgs[tgtdArgs.indexOf('--iscsi') + 1] ?? '';
    expect(portalArg).toMatch(/^portal=127\.0\.0\.1:\d+$/);
    const ctl = loadAsSinter(docs, pod, 'sinter');
    const tgtBackends = ctl.cfg.backends.flatMap((b) => (b.driver !== 'rbd' && b.export === 'iscsi' && b.iscsi?.helper === 'tgt' ? [b.iscsi] : []));
    expect(tgtBackends.length).toBeGreaterThan(0);
    for (const i of tgtBackends) {
      expect(i.openPortals).toBe(true);
      expect(i.portals).toEqual(['192.0.2.10:3260']);
      expect(portalArg.endsWith(':3260')).toBe(false);
    }
  });

  it.each(OVERLAYS)('overlays/%s: loadConfig accepts the controller and node args with their mounted config files', (o) => {
    const docs = render(`overlays/${o}`);
    const ctl = loadAsSinter(docs, workload(docs, CONTROLLER).pod, 'sinter');
    const node = loadAsSinter(docs, workload(docs, NODE).pod, 'sinter');
    expect(ctl.cfg.driverName).toBe(DRIVER);
    expect(node.cfg.driverName).toBe(DRIVER);
    expect(ctl.cfg.backends.map((b) => [b.name, b.driver, b.labels.type])).toEqual(
      o === 'ceph'
        ? [['ceph', 'rbd', undefined]]
        : [
            ['ssd', 'file', 'ssd'],
            ['hdd', 'file', 'hdd'],
          ],
    );
    expect(node.cfg.nodeName).toBe('node-a');
    expect(node.cfg.kubeletRoots).toEqual(['/var/lib/kubelet']);
    // The node's state directory is the hostPath it keeps across restarts.
    const nodePod = workload(docs, NODE).pod;
    const stateMount = container(nodePod, 'sinter').volumeMounts!.find((m) => m.mountPath === node.cfg.node.stateDir);
    expect(stateMount, `stateDir ${node.cfg.node.stateDir} is not a mounted volume`).toBeDefined();
    expect(volumeOf(nodePod, stateMount!.name).hostPath?.path).toBe('/var/lib/sinter/node');
    // Every backend's data directory is on the data volume in each container that needs it.
    const dataUsers = o === 'single-node' ? [['controller', workload(docs, CONTROLLER).pod], ['node', nodePod]] : [['controller', workload(docs, CONTROLLER).pod]];
    for (const [what, pod] of dataUsers as [string, PodSpec][]) {
      for (const b of ctl.cfg.backends) {
        if (b.driver !== 'file') continue;
        for (const cname of what === 'controller' && o === 'iscsi' ? ['sinter', 'tgtd'] : ['sinter']) {
          const m = container(pod, cname).volumeMounts!.find((x) => b.dataDir.startsWith(`${x.mountPath}/`));
          expect(m && volumeOf(pod, m.name).hostPath?.path, `${what}/${cname}: ${b.dataDir}`).toBe('/var/lib/sinter/backends');
        }
      }
    }
  });
  it.each(OVERLAYS)("overlays/%s: sinter's socket is where every sidecar and the kubelet look for it", (o) => {
    const docs = render(`overlays/${o}`);
    for (const id of [CONTROLLER, NODE]) {
      const pod = workload(docs, id).pod;
      const sinter = container(pod, 'sinter');
      const endpoint = flagValue(sinter.args ?? [], 'endpoint')!;
      expect(endpoint).toMatch(/^unix:\/\/\//);
      const sock = endpoint.slice('unix://'.length);
      const sockMount = sinter.volumeMounts!.find((m) => sock.startsWith(`${m.mountPath}/`))!;
      for (const c of pod.containers.filter((x) => x.name !== 'sinter' && x.name !== 'tgtd')) {
        expect(flagValue(c.args ?? [], 'csi-address'), `${id}/${c.name}`).toBe(sock);
        expect(c.volumeMounts!.find((m) => m.name === sockMount.name)?.mountPath, `${id}/${c.name}`).toBe(sockMount.mountPath);
      }
      if (id === NODE) {
        const hostDir = volumeOf(pod, sockMount.name).hostPath!.path;
        expect(hostDir).toBe(`/var/lib/kubelet/plugins/${DRIVER}`);
        expect(flagValue(container(pod, 'node-driver-registrar').args ?? [], 'kubelet-registration-path')).toBe(`${hostDir}${sock.slice(sockMount.mountPath.length)}`);
      } else {
        expect(volumeOf(pod, sockMount.name).emptyDir).toBeDefined();
      }
    }
  });
});

// ---- the sidecars' arguments -------------------------------------------------

describe('sidecar arguments', () => {
  // external-snapshotter v8.6.0, pkg/features/features.go: the gate is CSIVolumeGroupSnapshot (Beta, default off);
  // cmd/csi-snapshotter/main.go builds the group snapshotter only with it on.
  it.each(RENDERS)('%s: csi-snapshotter runs with volume group snapshots on (the GroupController rbd backends serve)', (dir) => {
    const args = container(workload(render(dir), CONTROLLER).pod, 'csi-snapshotter').args ?? [];
    expect(args).toContain('--feature-gates=CSIVolumeGroupSnapshot=true');
  });
  it.each(RENDERS)('%s: provisioner has topology and extra-create-metadata on; every controller sidecar elects a leader', (dir) => {
    const pod = workload(render(dir), CONTROLLER).pod;
    const prov = container(pod, 'csi-provisioner').args ?? [];
    expect(prov).toContain('--feature-gates=Topology=true');
    expect(prov).toContain('--extra-create-metadata');
    // CreateVolume's requisite is the selected node's segment only: the segment GetCapacity answered for.
    expect(prov).toContain('--strict-topology');
    for (const name of ['csi-provisioner', 'csi-attacher', 'csi-resizer', 'csi-snapshotter', 'csi-external-health-monitor-controller']) {
      const args = container(pod, name).args ?? [];
      expect(args, name).toContain('--leader-election');
      expect(flagValue(args, 'leader-election-namespace'), name).toBe('$(NAMESPACE)');
      expect(container(pod, name).env?.find((e) => e.name === 'NAMESPACE')?.valueFrom, name).toEqual({ fieldRef: { fieldPath: 'metadata.namespace' } });
    }
  });
  it.each(RENDERS)('%s: provisioner publishes capacity, owned by the controller Deployment (cmd/csi-provisioner v6.3.0: NAMESPACE, POD_NAME, ownerref level)', (dir) => {
    const docs = render(dir);
    const w = workload(docs, CONTROLLER);
    const prov = container(w.pod, 'csi-provisioner');
    const args = prov.args ?? [];
    expect(args).toContain('--enable-capacity');
    // pod -> ReplicaSet -> Deployment: two levels up from the pod.
    expect(flagValue(args, 'capacity-ownerref-level')).toBe('2');
    expect(w.obj.kind).toBe('Deployment');
    expect(flagValue(args, 'capacity-poll-interval')).toMatch(/^\d+s$/);
    const env = Object.fromEntries((prov.env ?? []).map((e) => [e.name, e.valueFrom]));
    expect(env.NAMESPACE).toEqual({ fieldRef: { fieldPath: 'metadata.namespace' } });
    expect(env.POD_NAME).toEqual({ fieldRef: { fieldPath: 'metadata.name' } });
    // The Role that lets it write them is in the namespace the objects go to, bound to the pod's ServiceAccount.
    const binding = docs.find((o) => o.kind === 'RoleBinding' && (o.roleRef as { name: string }).name === 'sinter-storage-capacity');
    expect(binding?.metadata.namespace).toBe(w.obj.metadata.namespace);
    expect((binding?.subjects as { name: string }[])[0]?.name).toBe(w.pod.serviceAccountName);
  });
  it.each(RENDERS)('%s: health ports: --http-endpoint matches a declared port and a liveness probe uses it', (dir) => {
    for (const id of [CONTROLLER, NODE]) {
      const pod = workload(render(dir), id).pod;
      const ports = new Map<string, number>();
      for (const c of pod.containers) for (const p of c.ports ?? []) if (p.name) ports.set(p.name, p.containerPort);
      const declared = new Set(pod.containers.flatMap((c) => (c.ports ?? []).map((p) => p.containerPort)));
      const listened: number[] = [];
      for (const c of pod.containers) {
        const ep = flagValue(c.args ?? [], 'http-endpoint');
        if (ep === undefined) continue;
        const port = Number(/^:(\d+)$/.exec(ep)?.[1]);
        expect(declared.has(port), `${id}/${c.name}: --http-endpoint ${ep} has no containerPort`).toBe(true);
        listened.push(port);
      }
      expect(new Set(listened).size, `${id}: two sidecars on one port`).toBe(listened.length);
      for (const c of pod.containers) {
        const p = c.livenessProbe?.httpGet?.port;
        if (p === undefined) continue;
        const num = typeof p === 'number' ? p : ports.get(p);
        expect(num !== undefined && listened.includes(num), `${id}/${c.name}: liveness probe port ${p} is served by a --http-endpoint`).toBe(true);
      }
      // sinter's own liveness comes from the livenessprobe sidecar's Probe call over the socket.
      const lp = container(pod, 'liveness-probe').args ?? [];
      const sinterProbe = container(pod, 'sinter').livenessProbe?.httpGet;
      expect(sinterProbe?.path).toBe('/healthz');
      expect(`:${ports.get(String(sinterProbe?.port))}`).toBe(flagValue(lp, 'http-endpoint'));
    }
  });
});

describe('metrics', () => {
  it.each(RENDERS)("%s: sinter's --metrics-address port is a declared containerPort named metrics, used by nothing else in the pod", (dir) => {
    const docs = render(dir);
    const seen = new Map<number, string>();
    for (const id of [CONTROLLER, NODE]) {
      const pod = workload(docs, id).pod;
      const sinter = container(pod, 'sinter');
      const addr = flagValue(sinter.args ?? [], 'metrics-address');
      expect(addr, `${id}: metrics are on in the manifests`).toMatch(/^:\d+$/);
      const port = Number(addr!.slice(1));
      // sinter's own parser accepts it (every interface).
      expect(loadConfig(id === CONTROLLER ? 'controller' : 'node', ['--data-dir', '/var/lib/sinter/x', `--metrics-address=${addr}`]).metricsAddress).toMatchObject({ host: '', port });
      expect((sinter.ports ?? []).find((p) => p.name === 'metrics')?.containerPort, id).toBe(port);
      for (const c of pod.containers) {
        if (c.name === 'sinter') continue;
        expect((c.ports ?? []).map((p) => p.containerPort), `${id}/${c.name} declares sinter's metrics port`).not.toContain(port);
        const ep = flagValue(c.args ?? [], 'http-endpoint');
        expect(ep, `${id}/${c.name} listens on sinter's metrics port`).not.toBe(`:${port}`);
      }
      // The node plugin uses the host's network (and so may the controller, on the storage host): one port each.
      expect(seen.has(port), `${id} and ${seen.get(port)} both use port ${port}`).toBe(false);
      seen.set(port, id);
    }
  });
});

// ---- StorageClasses, snapshot class, examples -------------------------------

describe('StorageClasses, VolumeSnapshotClass and examples fit sinter and each other', () => {
  it.each(RENDERS)('%s: the CSIDriver is as issue 5 specifies and matches sinter\'s driver name', (dir) => {
    const d = render(dir).find((o) => o.kind === 'CSIDriver')!;
    expect(d.metadata.name).toBe(DRIVER);
    expect(DEFAULT_DRIVER_NAME).toBe(DRIVER);
    expect(d.spec).toMatchObject({ attachRequired: true, podInfoOnMount: true, fsGroupPolicy: 'File', volumeLifecycleModes: ['Persistent'] });
    // kube-scheduler reads CSIStorageCapacity only for drivers that opt in (binder.go hasEnoughCapacity).
    expect(d.spec).toMatchObject({ storageCapacity: true });
  });
  it.each(RENDERS)('%s: every StorageClass is sinter\'s and its parameters pass sinter\'s own parser', (dir) => {
    const classes = render(dir).filter((o) => o.kind === 'StorageClass');
    expect(classes.map((c) => c.metadata.name)).toEqual(arrayContaining(['sinter-ext4', 'sinter-xfs', 'sinter-block', ...(dir === 'overlays/ceph' ? [] : ['sinter-ssd', 'sinter-hdd'])]));
    for (const sc of classes) {
      expect(sc.provisioner, sc.metadata.name).toBe(DRIVER);
      const params = (sc.parameters ?? {}) as Record<string, string>;
      expect(() => parseParameters(params), sc.metadata.name).not.toThrow();
      expect(sc.volumeBindingMode, sc.metadata.name).toBe('WaitForFirstConsumer');
      expect(sc.allowVolumeExpansion, sc.metadata.name).toBe(true);
      for (const [k, v] of Object.entries(params).filter(([k]) => k.endsWith('-secret-name'))) {
        expect(params[k.replace(/-name$/, '-namespace')], `${sc.metadata.name}: ${k} without its namespace`).toBe(NAMESPACE);
        expect(v).toBe(dir !== 'overlays/ceph' ? 'sinter-chap' : k.includes('node-stage') ? 'sinter-ceph-node' : 'sinter-ceph-controller');
      }
    }
    const types = classes.map((c) => (c.parameters as Record<string, string> | undefined)?.type).filter(Boolean);
    // ceph: one pool, no Cinder volume types; every class reaches it.
    expect(new Set(types)).toEqual(new Set(dir === 'overlays/ceph' ? [] : ['ssd', 'hdd']));
  });
  it('the iscsi overlay has a CHAP class naming controller-publish and node-stage secrets, readable by the attacher', () => {
    const docs = render('overlays/iscsi');
    const sc = docs.find((o) => o.kind === 'StorageClass' && o.metadata.name === 'sinter-iscsi-chap')!;
    expect(Object.keys(sc.parameters as Obj).filter((k) => k.endsWith('-secret-name')).sort()).toEqual([
      'csi.storage.k8s.io/controller-publish-secret-name',
      'csi.storage.k8s.io/node-stage-secret-name',
    ]);
    const chapSecret = examples().get('chap-secret.yaml')![0];
    expect(chapSecret.metadata).toMatchObject({ name: 'sinter-chap', namespace: NAMESPACE });
  });
  it('the VolumeSnapshotClass is for sinter', () => {
    const vsc = render('base').filter((o) => o.kind === 'VolumeSnapshotClass');
    expect(vsc.map((o) => [o.metadata.name, o.driver])).toEqual([['sinter-snapshots', DRIVER]]);
  });
  it('examples use classes, claims and snapshots that exist, and the resize grows the claim', () => {
    const base = render('base');
    const classes = new Set(base.filter((o) => o.kind === 'StorageClass').map((o) => o.metadata.name));
    const ex = examples();
    expect([...ex.keys()]).toEqual([
      'block.yaml',
      'chap-secret.yaml',
      'clone.yaml',
      'pvc-pod.yaml',
      'resize.yaml',
      'restore.yaml',
      'snapshot.yaml',
      'static-fc.yaml',
      'static-iscsi.yaml',
    ]);
    const all = [...ex.values()].flat();
    const size = (o: K8sObject) => ((o.spec as Obj).resources as { requests: { storage: string } }).requests.storage;
    const gi = (s: string) => Number(/^(\d+)Gi$/.exec(s)?.[1]);
    for (const pvc of all.filter((o) => o.kind === 'PersistentVolumeClaim')) {
      // A claim of a static volume binds to its PersistentVolume by name, with no class.
      if ((pvc.spec as Obj).volumeName !== undefined) {
        expect((pvc.spec as Obj).storageClassName, pvc.metadata.name).toBe('');
        expect(all.some((o) => o.kind === 'PersistentVolume' && o.metadata.name === (pvc.spec as Obj).volumeName), pvc.metadata.name).toBe(true);
        continue;
      }
      expect(classes.has((pvc.spec as Obj).storageClassName as string), pvc.metadata.name).toBe(true);
      const ds = (pvc.spec as Obj).dataSource as { kind: string; name: string } | undefined;
      if (ds) expect(all.some((o) => o.kind === ds.kind && o.metadata.name === ds.name), `${pvc.metadata.name} <- ${ds.kind}/${ds.name}`).toBe(true);
    }
    for (const snap of all.filter((o) => o.kind === 'VolumeSnapshot')) {
      const spec = snap.spec as { volumeSnapshotClassName: string; source: { persistentVolumeClaimName: string } };
      expect(base.some((o) => o.kind === 'VolumeSnapshotClass' && o.metadata.name === spec.volumeSnapshotClassName)).toBe(true);
      expect(all.some((o) => o.kind === 'PersistentVolumeClaim' && o.metadata.name === spec.source.persistentVolumeClaimName)).toBe(true);
    }
    for (const pod of all.filter((o) => o.kind === 'Pod')) {
      for (const v of (pod.spec as PodSpec).volumes ?? []) if (v.persistentVolumeClaim) expect(all.some((o) => o.kind === 'PersistentVolumeClaim' && o.metadata.name === v.persistentVolumeClaim!.claimName)).toBe(true);
    }
    const original = ex.get('pvc-pod.yaml')!.find((o) => o.kind === 'PersistentVolumeClaim')!;
    const resized = ex.get('resize.yaml')![0];
    expect(resized.metadata.name).toBe(original.metadata.name);
    expect(gi(size(resized))).toBeGreaterThan(gi(size(original)));
    expect({ ...(resized.spec as Obj), resources: undefined }).toEqual({ ...(original.spec as Obj), resources: undefined });
    for (const f of ['clone.yaml', 'restore.yaml']) {
      const pvc = ex.get(f)!.find((o) => o.kind === 'PersistentVolumeClaim')!;
      expect(gi(size(pvc)), f).toBeGreaterThanOrEqual(gi(size(original)));
    }
  });
  it('static volume examples: sinter\'s handle scheme, attributes sinter accepts, a claim that binds each, no deletion', () => {
    const ex = examples();
    const all = [...ex.values()].flat();
    const pvs = all.filter((o) => o.kind === 'PersistentVolume');
    expect(pvs.map((o) => o.metadata.name).sort()).toEqual(['sinter-static-fc', 'sinter-static-iscsi']);
    const transports = new Set<string>();
    for (const pv of pvs) {
      const spec = pv.spec as {
        csi: { driver: string; volumeHandle: string; fsType?: string; volumeAttributes: Record<string, string>; nodeStageSecretRef?: { name: string; namespace: string } };
        storageClassName: string;
        persistentVolumeReclaimPolicy: string;
        capacity: { storage: string };
        accessModes: string[];
      };
      expect(spec.csi.driver, pv.metadata.name).toBe(DRIVER);
      expect(spec.csi.volumeHandle, pv.metadata.name).toMatch(STATIC_HANDLE_RE);
      const attrs = parseStaticAttributes(spec.csi.volumeAttributes);
      transports.add(attrs.context.transport);
      expect(spec.storageClassName).toBe('');
      expect(spec.persistentVolumeReclaimPolicy, `${pv.metadata.name}: sinter never deletes a static LUN`).toBe('Retain');
      // The kubelet sends a PV's csi.fsType as the capability's fs_type: the node's capability rules judge it.
      if (spec.csi.fsType) expect(SUPPORTED_FS as readonly string[], pv.metadata.name).toContain(spec.csi.fsType);
      if (spec.csi.nodeStageSecretRef) {
        const secret = all.find((o) => o.kind === 'Secret' && o.metadata.name === spec.csi.nodeStageSecretRef!.name);
        expect(secret?.metadata.namespace).toBe(spec.csi.nodeStageSecretRef.namespace);
      }
      const pvc = all.find((o) => o.kind === 'PersistentVolumeClaim' && (o.spec as Obj).volumeName === pv.metadata.name)!;
      expect(pvc, `a claim for ${pv.metadata.name}`).toBeDefined();
      expect(size(pvc)).toBe(spec.capacity.storage);
      expect((pvc.spec as { accessModes: string[] }).accessModes).toEqual(spec.accessModes);
    }
    expect([...transports].sort()).toEqual(['fc', 'iscsi']);
    function size(o: K8sObject) {
      return ((o.spec as Obj).resources as { requests: { storage: string } }).requests.storage;
    }
  });
  it('deploy/README.md names only files and objects that exist', () => {
    const readme = readFileSync(join(ROOT, 'deploy', 'README.md'), 'utf8');
    const paths = [...readme.matchAll(/deploy\/kubernetes\/[\w./-]+/g)].map((m) => m[0].replace(/[.)]+$/, ''));
    expect(paths.length).toBeGreaterThan(5);
    for (const p of paths) expect(() => readFileSync(join(ROOT, p.endsWith('.yaml') ? p : `${p}/kustomization.yaml`)), p).not.toThrow();
    for (const overlay of OVERLAYS) expect(readme).toContain(`kubectl apply -k deploy/kubernetes/overlays/${overlay}`);
    for (const f of ['pvc-pod.yaml', 'snapshot.yaml', 'restore.yaml', 'resize.yaml']) expect(readme).toContain(`kubectl apply -f deploy/kubernetes/examples/${f}`);
    // The object names the README tells you to look at are the examples' and the overlays'.
    const names = new Set([...render('overlays/iscsi'), ...[...examples().values()].flat()].map((o) => o.metadata.name));
    for (const m of readme.matchAll(/kubectl (?:-n sinter-system )?(?:get|exec|logs|describe|wait)[^\n`]*?\b(?:pvc|pod|volumesnapshot|deployment|daemonset)\/([a-z0-9-]+)/g)) expect(names.has(m[1]), m[0]).toBe(true);
  });
});

// ---- the ceph overlay (issue 15: Deploy) ---------------------------------------

describe('overlays/ceph: an existing Ceph cluster, two controller replicas, the cephx Secrets', () => {
  const docs = () => render('overlays/ceph');
  const secret = (name: string): (K8sObject & { stringData?: Record<string, string> }) | undefined =>
    docs().find((o) => o.kind === 'Secret' && o.metadata.name === name && o.metadata.namespace === NAMESPACE);

  it('runs two controller replicas, one at a time out during a rollout, preferably on different nodes; every controller sidecar elects a leader', () => {
    const w = workload(docs(), CONTROLLER);
    const spec = w.obj.spec as { replicas: number; strategy: { type: string; rollingUpdate?: { maxUnavailable: number; maxSurge: number } } };
    expect(spec.replicas).toBe(2);
    expect(spec.strategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    const anti = ((w.pod as PodSpec & { affinity?: Obj }).affinity?.podAntiAffinity as Obj | undefined)?.preferredDuringSchedulingIgnoredDuringExecution as { podAffinityTerm: { topologyKey: string; labelSelector: { matchLabels: Record<string, string> } } }[];
    expect(anti?.[0]?.podAffinityTerm.topologyKey).toBe('kubernetes.io/hostname');
    expect(anti[0].podAffinityTerm.labelSelector.matchLabels).toEqual((w.obj.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels);
    // Every container that acts on the API (all but sinter and the liveness probe) takes a lease first.
    for (const c of w.pod.containers.filter((x) => x.name !== 'sinter' && x.name !== 'liveness-probe')) expect(c.args ?? [], c.name).toContain('--leader-election');
  });

  it('the controller takes its cephx key from the requests\' secrets, and from the Secret mounted as a file its group alone may read for work before the first; the config loader names that file and a writable state directory', () => {
    const all = docs();
    const pod = workload(all, CONTROLLER).pod;
    const { cfg } = loadAsSinter(all, pod, 'sinter');
    const rbd = cfg.backends[0];
    if (rbd.driver !== 'rbd') throw new Error('the ceph overlay\'s backend is not rbd');
    expect(rbd.monitors.length).toBeGreaterThanOrEqual(1);
    expect(rbd.user).toBe('sinter-controller');
    expect(rbd.keyFrom).toBe('secrets');
    const keyFile = rbd.keyFile ?? '';
    const sinter = container(pod, 'sinter');
    const keyMount = sinter.volumeMounts!.find((m) => keyFile.startsWith(`${m.mountPath}/`))!;
    expect(keyMount, `keyFile ${keyFile} is on a mounted volume`).toBeDefined();
    expect(keyMount.readOnly).toBe(true);
    const vol = volumeOf(pod, keyMount.name) as { secret?: { secretName: string; defaultMode?: number; items?: { key: string; path: string }[] } };
    expect(vol.secret?.secretName).toBe('sinter-ceph-controller');
    expect(vol.secret?.defaultMode).toBe(0o440);
    expect(pod.securityContext?.fsGroup).toBe(65532);
    // The key alone is mounted, at the path keyFile names; the Secret is in ceph-csi's layout, its user the backend's.
    expect(vol.secret?.items).toEqual([{ key: 'userKey', path: keyFile.slice(keyMount.mountPath.length + 1) }]);
    const data = secret('sinter-ceph-controller')?.stringData ?? {};
    expect(Object.keys(data).sort()).toEqual(['userID', 'userKey']);
    expect(data.userID).toBe(rbd.user);
    // The root filesystem is read-only: the controller's own state directory (static-volume records) is a mounted scratch volume.
    const stateMount = sinter.volumeMounts!.find((m) => m.mountPath === cfg.controller.stateDir);
    expect(stateMount && volumeOf(pod, stateMount.name).emptyDir, `controller.stateDir ${cfg.controller.stateDir}`).toBeDefined();
    // One Role reads a Secret: the controller's, for the sidecars; the kubelet reads the node's without RBAC.
    const readers = all.filter((o) => (o.kind === 'Role' || o.kind === 'ClusterRole') && ((o.rules as Rule[]) ?? []).some((r) => r.resources?.includes('secrets')));
    expect(readers.map((r) => [r.kind, r.metadata.name, ((r.rules as Rule[])[0].resourceNames ?? []).join(',')])).toEqual([['Role', 'sinter-ceph-controller-secret', 'sinter-ceph-controller']]);
  });

  // The parameter names, modelled from kubernetes-csi/external-provisioner pkg/controller/controller.go at
  // commit 014be4a50b20f7e95da699097e28570a4e22e1d3 (the v3 line: lib-external-provisioner v8): its
  // csiParameterPrefix "csi.storage.k8s.io/" + provisioner-secret-name/-namespace (CreateVolume,
  // DeleteVolume), controller-publish-secret-* (csi-attacher: ControllerPublish/Unpublish),
  // controller-expand-secret-* (csi-resizer), node-stage-secret-* (kubelet); external-snapshotter's
  // VolumeSnapshotClass parameters csi.storage.k8s.io/snapshotter-secret-name/-namespace. A misspelt
  // key under that prefix would reach no sidecar: the RPC would come without its secrets.
  const EXTERNAL_PROVISIONER_SECRET_KEYS = ['provisioner', 'controller-publish', 'controller-expand', 'node-stage', 'node-publish', 'node-expand'].flatMap((p) => [
    `csi.storage.k8s.io/${p}-secret-name`,
    `csi.storage.k8s.io/${p}-secret-namespace`,
  ]);
  it('every class names the controller\'s Secret for provisioner, controller-publish and controller-expand, and the node\'s for node-stage, with external-provisioner\'s parameter names; the snapshot class names the controller\'s for csi-snapshotter', () => {
    const all = docs();
    for (const sc of all.filter((o) => o.kind === 'StorageClass')) {
      const p = sc.parameters as Record<string, string>;
      const secretKeys = Object.keys(p).filter((k) => /secret/.test(k));
      for (const k of secretKeys) expect(EXTERNAL_PROVISIONER_SECRET_KEYS, `${sc.metadata.name}: ${k}`).toContain(k);
      expect(Object.fromEntries(secretKeys.filter((k) => k.endsWith('-name')).map((k) => [k, p[k]]))).toEqual({
        'csi.storage.k8s.io/provisioner-secret-name': 'sinter-ceph-controller',
        'csi.storage.k8s.io/controller-publish-secret-name': 'sinter-ceph-controller',
        'csi.storage.k8s.io/controller-expand-secret-name': 'sinter-ceph-controller',
        'csi.storage.k8s.io/node-stage-secret-name': 'sinter-ceph-node',
      });
      for (const k of secretKeys.filter((x) => x.endsWith('-namespace'))) expect(p[k], `${sc.metadata.name}: ${k}`).toBe(NAMESPACE);
    }
    const vsc = all.find((o) => o.kind === 'VolumeSnapshotClass')!;
    expect(vsc.parameters).toEqual({ 'csi.storage.k8s.io/snapshotter-secret-name': 'sinter-ceph-controller', 'csi.storage.k8s.io/snapshotter-secret-namespace': NAMESPACE });
    // The sidecars that pass those secrets run as the ServiceAccount the Role is bound to.
    const binding = all.find((o) => o.kind === 'RoleBinding' && (o.roleRef as { name: string }).name === 'sinter-ceph-controller-secret')!;
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'sinter-controller', namespace: NAMESPACE }]);
    expect((workload(all, CONTROLLER).pod as PodSpec & { serviceAccountName?: string }).serviceAccountName).toBe('sinter-controller');
  });

  it("every class hands the node the node-stage Secret with the keys sinter's rbd connector reads (userID, userKey); the node config holds no key", () => {
    const all = docs();
    const classes = all.filter((o) => o.kind === 'StorageClass');
    expect(classes.map((c) => c.metadata.name).sort()).toEqual(['sinter-block', 'sinter-ext4', 'sinter-rbd-kernel', 'sinter-rbd-userspace', 'sinter-xfs']);
    // The two attach classes ask for their mode (StorageClass parameter rbdAttach); the others leave it to the node.
    expect(Object.fromEntries(classes.map((c) => [c.metadata.name, (c.parameters as Record<string, string>).rbdAttach]))).toEqual({
      'sinter-block': undefined,
      'sinter-ext4': undefined,
      'sinter-xfs': undefined,
      'sinter-rbd-kernel': 'kernel',
      'sinter-rbd-userspace': 'userspace',
    });
    for (const sc of classes) {
      const p = sc.parameters as Record<string, string>;
      expect(p['csi.storage.k8s.io/node-stage-secret-name'], sc.metadata.name).toBe('sinter-ceph-node');
      expect(p['csi.storage.k8s.io/node-stage-secret-namespace'], sc.metadata.name).toBe(NAMESPACE);
    }
    // src/node/connectors/rbd.ts credentials(): userKey (the bare key), userID (the cephx user without "client.").
    expect(Object.keys(secret('sinter-ceph-node')?.stringData ?? {}).sort()).toEqual(['userID', 'userKey']);
    const { cfg } = loadAsSinter(all, workload(all, NODE).pod, 'sinter');
    expect(cfg.node.rbd.keyFile).toBeUndefined();
  });
});
