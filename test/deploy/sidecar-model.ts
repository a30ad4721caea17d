// A model of what the kubernetes-csi sidecars the manifests pin do with a
// StorageClass's or VolumeSnapshotClass's parameters before sinter sees them,
// written from their source (no sidecar can run here: no API server, no
// container runtime). Every rule names the file and release it comes from;
// when a manifest moves to another release, MODELLED below no longer matches
// and the test says to read that release's source again.
//
//   P = kubernetes-csi/external-provisioner v6.3.0, pkg/controller/controller.go
//   A = same release, vendor/github.com/kubernetes-csi/csi-lib-utils/accessmodes/access_modes.go
//   C = same release, pkg/capacity/capacity.go
//   S = kubernetes-csi/external-snapshotter v8.6.0, pkg/utils/util.go
//   T = same release, pkg/sidecar-controller/snapshot_controller.go

/** The sidecar releases this model was read from, by image name. */
export const MODELLED: Record<string, string> = {
  'registry.k8s.io/sig-storage/csi-provisioner': 'v6.3.0',
  'registry.k8s.io/sig-storage/csi-snapshotter': 'v8.6.0',
};

/** P: csiParameterPrefix. */
export const PREFIX = 'csi.storage.k8s.io/';
/** P: prefixedFsTypeKey. */
export const FSTYPE_KEY = `${PREFIX}fstype`;

/** P: the secretParamsMap values (provisionerSecretParams … controllerModifySecretParams, defaultSecretParams). */
interface SecretParams {
  name: string;
  key: string;
  /** The pre-prefix key the provisioner still honours (P: deprecatedSecretNameKey / …NamespaceKey). */
  deprecated?: string;
}
const secret = (name: string, stem: string, deprecated?: string): SecretParams => ({ name, key: `${PREFIX}${stem}`, deprecated });
export const PROVISIONER_SECRETS: SecretParams[] = [
  secret('Provisioner', 'provisioner-secret', 'csiProvisionerSecret'),
  secret('ControllerPublish', 'controller-publish-secret', 'csiControllerPublishSecret'),
  secret('NodeStage', 'node-stage-secret', 'csiNodeStageSecret'),
  secret('NodePublish', 'node-publish-secret', 'csiNodePublishSecret'),
  secret('ControllerExpand', 'controller-expand-secret'),
  secret('NodeExpand', 'node-expand-secret'),
  secret('ControllerModify', 'controller-modify-secret'),
];
const DEFAULT_SECRET = secret('Default', 'secret');

/** P: removePrefixedParameters — the prefixed keys it knows and strips; any other prefixed key fails the claim. */
export const PROVISIONER_STRIPPED = [FSTYPE_KEY, ...[...PROVISIONER_SECRETS, DEFAULT_SECRET].flatMap((s) => [`${s.key}-name`, `${s.key}-namespace`])];

/** P: pvcNameKey, pvcNamespaceKey, pvNameKey — added with --extra-create-metadata. */
export const PVC_NAME_KEY = `${PREFIX}pvc/name`;
export const PVC_NAMESPACE_KEY = `${PREFIX}pvc/namespace`;
export const PV_NAME_KEY = `${PREFIX}pv/name`;

/** S: SnapshotterSecretParams, SnapshotterListSecretParams (the group ones are not used by sinter's classes). */
export const SNAPSHOTTER_SECRETS: SecretParams[] = [secret('Snapshotter', 'snapshotter-secret'), secret('SnapshotterList', 'snapshotter-list-secret')];
/** S: RemovePrefixedParameters. */
export const SNAPSHOTTER_STRIPPED = [...SNAPSHOTTER_SECRETS, secret('GroupSnapshotterGet', 'group-snapshotter-get-secret'), secret('GroupSnapshotter', 'group-snapshotter-secret')].flatMap((s) => [
  `${s.key}-name`,
  `${s.key}-namespace`,
]);
/** S: PrefixedVolumeSnapshotNameKey, …NamespaceKey, PrefixedVolumeSnapshotContentNameKey — added by T with --extra-create-metadata. */
export const SNAPSHOT_NAME_KEY = `${PREFIX}volumesnapshot/name`;
export const SNAPSHOT_NAMESPACE_KEY = `${PREFIX}volumesnapshot/namespace`;
export const SNAPSHOT_CONTENT_NAME_KEY = `${PREFIX}volumesnapshotcontent/name`;

/** The sidecar refused the object; `message` is the sidecar's own text. */
export class SidecarRefusal extends Error {}

// k8s.io/apimachinery validation.IsDNS1123Label / IsDNS1123Subdomain, as P and S call them.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const isLabel = (s: string) => s.length <= 63 && DNS1123_LABEL.test(s);
const isSubdomain = (s: string) => s.length <= 253 && DNS1123_SUBDOMAIN.test(s);

/**
 * P/S resolveTemplate: Go's os.Expand over `${name}` and `$name`; every token
 * must be one the caller offers, else "invalid tokens".
 */
export function resolveTemplate(template: string, params: Record<string, string>): string {
  const missing: string[] = [];
  const out = template.replace(/\$\{([^}]*)\}|\$([A-Za-z0-9_]+)/g, (_m, braced: string | undefined, bare: string | undefined) => {
    const k = braced ?? bare!;
    if (!(k in params)) missing.push(k);
    return params[k] ?? '';
  });
  if (missing.length) throw new SidecarRefusal(`invalid tokens: ${JSON.stringify([...new Set(missing)].sort())}`);
  return out;
}

/** P/S verifyAndGetSecretNameAndNamespaceTemplate. */
function templates(s: SecretParams, params: Record<string, string>, withDeprecated: boolean): { name: string; namespace: string } | undefined {
  let name: string | undefined;
  let namespace: string | undefined;
  let nName = 0;
  let nNs = 0;
  if (withDeprecated && s.deprecated) {
    if (`${s.deprecated}Name` in params) {
      name = params[`${s.deprecated}Name`];
      nName++;
    }
    if (`${s.deprecated}Namespace` in params) {
      namespace = params[`${s.deprecated}Namespace`];
      nNs++;
    }
  }
  if (`${s.key}-name` in params) {
    name = params[`${s.key}-name`];
    nName++;
  }
  if (`${s.key}-namespace` in params) {
    namespace = params[`${s.key}-namespace`];
    nNs++;
  }
  if (nName > 1 || nNs > 1) throw new SidecarRefusal(`${s.name} secrets specified in parameters with both "csi" and "${PREFIX}" keys`);
  if (nName !== nNs) throw new SidecarRefusal(`either name and namespace for ${s.name} secrets specified, Both must be specified`);
  if (nName === 0) return undefined;
  if (!name || !namespace) throw new SidecarRefusal(`${s.name} secrets specified in parameters but value of either namespace or name is empty`);
  return { name, namespace };
}

export interface SecretRef {
  name: string;
  namespace: string;
}

function resolveRef(t: { name: string; namespace: string }, nsParams: Record<string, string>, nameParams: Record<string, string>): SecretRef {
  const namespace = resolveTemplate(t.namespace, nsParams);
  if (!isLabel(namespace)) throw new SidecarRefusal(`"${t.namespace}" is not a valid namespace name`);
  const name = resolveTemplate(t.name, nameParams);
  if (!isSubdomain(name)) throw new SidecarRefusal(`"${t.name}" is not a valid secret name`);
  return { name, namespace };
}

export interface Claim {
  name: string;
  namespace: string;
  annotations?: Record<string, string>;
  accessModes: string[];
  volumeMode?: 'Filesystem' | 'Block';
  storage: number;
}

export interface ProvisionerFlags {
  extraCreateMetadata: boolean;
  defaultFsType: string;
}

/** A: toSingleNodeMultiWriterCapableCSIAccessMode (sinter advertises SINGLE_NODE_MULTI_WRITER). */
export function csiAccessMode(modes: string[]): string {
  const m = new Set(modes);
  if (m.has('ReadWriteOncePod')) {
    if (m.size > 1) throw new SidecarRefusal('Kubernetes does not support use of ReadWriteOncePod with other access modes on the same PersistentVolume');
    return 'SINGLE_NODE_SINGLE_WRITER';
  }
  if (m.has('ReadWriteMany')) return 'MULTI_NODE_MULTI_WRITER';
  if (m.has('ReadOnlyMany') && m.has('ReadWriteOnce')) throw new SidecarRefusal('CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume');
  if (m.has('ReadOnlyMany')) return 'MULTI_NODE_READER_ONLY';
  if (m.has('ReadWriteOnce')) return 'SINGLE_NODE_MULTI_WRITER';
  throw new SidecarRefusal(`unsupported AccessMode combination: ${modes.join(',')}`);
}

export interface ProvisionResult {
  /** CreateVolumeRequest.parameters as sinter receives them. */
  parameters: Record<string, string>;
  volume_capabilities: object[];
  /** The secret references the PV will carry (controllerPublishSecretRef, nodeStageSecretRef, …) and the provisioner's own. */
  secrets: Record<string, SecretRef>;
  fsType: string;
}

/**
 * P: csiProvisioner.prepareProvision for a claim of a class: the fstype
 * rule, the access modes → capabilities, the secret references with their
 * templates, then removePrefixedParameters and --extra-create-metadata.
 */
export function provision(scParams: Record<string, string>, mountOptions: string[] | undefined, claim: Claim, pvName: string, flags: ProvisionerFlags): ProvisionResult {
  // P: "fsTypesFound": every key that lower-cases to "fstype", and the prefixed key (compared exactly).
  let fsType = '';
  let found = 0;
  for (const [k, v] of Object.entries(scParams)) {
    if (k.toLowerCase() === 'fstype' || k === FSTYPE_KEY) {
      fsType = v;
      found++;
    }
  }
  if (found > 1) throw new SidecarRefusal(`fstype specified in parameters with both "fstype" and "${FSTYPE_KEY}" keys`);
  if (fsType === '' && flags.defaultFsType !== '') fsType = flags.defaultFsType;

  // P: getVolumeCapabilities / getVolumeCapability: one capability per access mode; Block claims get no filesystem.
  const volume_capabilities = claim.accessModes.map((am) => {
    const access_mode = { mode: csiAccessMode([am]) };
    return claim.volumeMode === 'Block' ? { block: {}, access_mode } : { mount: { fs_type: fsType, mount_flags: mountOptions ?? [] }, access_mode };
  });

  // P: getSecretReference — namespace tokens ${pv.name}, ${pvc.namespace};
  // name tokens ${pv.name}, ${pvc.name}, ${pvc.namespace}, ${pvc.annotations['KEY']};
  // a secret with no keys of its own falls back to csi.storage.k8s.io/secret-name/-namespace.
  const nsParams = { 'pv.name': pvName, 'pvc.namespace': claim.namespace };
  const nameParams: Record<string, string> = { 'pv.name': pvName, 'pvc.name': claim.name, 'pvc.namespace': claim.namespace };
  for (const [k, v] of Object.entries(claim.annotations ?? {})) nameParams[`pvc.annotations['${k}']`] = v;
  const secrets: Record<string, SecretRef> = {};
  for (const s of PROVISIONER_SECRETS) {
    const t = templates(s, scParams, true) ?? templates(DEFAULT_SECRET, scParams, false);
    if (t) secrets[s.name] = resolveRef(t, nsParams, nameParams);
  }

  // P: removePrefixedParameters — known prefixed keys are stripped (exact match), unknown ones refused, the rest passed on as they are.
  const parameters: Record<string, string> = {};
  for (const [k, v] of Object.entries(scParams)) {
    if (k.startsWith(PREFIX)) {
      if (!PROVISIONER_STRIPPED.includes(k))
        throw new SidecarRefusal(`failed to strip CSI Parameters of prefixed keys: found unknown parameter key "${k}" with reserved namespace ${PREFIX}`);
      continue;
    }
    parameters[k] = v;
  }
  if (flags.extraCreateMetadata) {
    parameters[PVC_NAME_KEY] = claim.name;
    parameters[PVC_NAMESPACE_KEY] = claim.namespace;
    parameters[PV_NAME_KEY] = pvName;
  }
  return { parameters, volume_capabilities, secrets, fsType };
}

/** C: GetCapacity is asked with the class's parameters as they are (`Parameters: sc.Parameters`), nothing stripped. */
export function capacityParameters(scParams: Record<string, string>): Record<string, string> {
  return { ...scParams };
}

export interface SnapshotterFlags {
  extraCreateMetadata: boolean;
}

/**
 * T: createSnapshotWrapper — S RemovePrefixedParameters on the class's
 * parameters, then the snapshot metadata with --extra-create-metadata; S
 * GetSecretReference for the snapshotter secrets (namespace tokens
 * ${volumesnapshotcontent.name}, ${volumesnapshot.namespace}; name tokens
 * those and ${volumesnapshot.name}; no deprecated keys, no default secret).
 */
export function snapshot(
  classParams: Record<string, string>,
  snap: { name: string; namespace: string },
  contentName: string,
  flags: SnapshotterFlags,
): { parameters: Record<string, string>; secrets: Record<string, SecretRef> } {
  const secrets: Record<string, SecretRef> = {};
  const nsParams = { 'volumesnapshotcontent.name': contentName, 'volumesnapshot.namespace': snap.namespace };
  const nameParams = { ...nsParams, 'volumesnapshot.name': snap.name };
  for (const s of SNAPSHOTTER_SECRETS) {
    const t = templates(s, classParams, false);
    if (t) secrets[s.name] = resolveRef(t, nsParams, nameParams);
  }
  const parameters: Record<string, string> = {};
  for (const [k, v] of Object.entries(classParams)) {
    if (k.startsWith(PREFIX)) {
      if (!SNAPSHOTTER_STRIPPED.includes(k)) throw new SidecarRefusal(`failed to remove CSI Parameters of prefixed keys: found unknown parameter key "${k}" with reserved namespace ${PREFIX}`);
      continue;
    }
    parameters[k] = v;
  }
  if (flags.extraCreateMetadata) {
    parameters[SNAPSHOT_NAME_KEY] = snap.name;
    parameters[SNAPSHOT_NAMESPACE_KEY] = snap.namespace;
    parameters[SNAPSHOT_CONTENT_NAME_KEY] = contentName;
  }
  return { parameters, secrets };
}
