import { parseRbdAttach, RBD_ATTACH_KEY, type RbdAttach } from '../contracts/publish-context.js';
import { invalidArgument } from '../errors/domain-error.js';

/**
 * StorageClass parameters sinter understands. Keys under `csi.storage.k8s.io/`
 * belong to the Kubernetes sidecars (secret references, the filesystem, PVC
 * metadata) and pass through unvalidated; any other unknown key is a typo we
 * refuse loudly.
 *
 * The filesystem is not among them: csi-provisioner reads it from
 * `csi.storage.k8s.io/fstype` (and from any key that lower-cases to `fstype`,
 * refusing a class that has both) and hands it over as the capability's
 * `mount.fs_type`. A sinter key of that name would collide with the sidecar's.
 */
export const PARAMETER_DOCS: Record<string, string> = {
  type: 'volume type; only backends whose `type` label equals it are considered (Cinder volume type)',
  backend: 'pin the volume to one named backend',
  mkfsOptions: 'extra mkfs arguments, space-separated, letters/digits/=,.:_- only',
  encrypted: '"true": LUKS2 on the node, passphrase from the node-stage secret key encryptionPassphrase (default "false")',
  [RBD_ATTACH_KEY]: 'rbd volumes: how nodes attach them, kernel | userspace | auto (default auto: the node\'s node.rbd.attach); a node that cannot answers FAILED_PRECONDITION',
};

export interface VolumeParameters {
  type?: string;
  backend?: string;
  mkfsOptions?: string;
  encrypted?: boolean;
  /** rbdAttach: kernel or userspace (auto and absent leave it to the node). */
  rbdAttach?: RbdAttach;
  /** Everything the CO sent, minus the sidecars' keys: compared for name idempotency. */
  own: Record<string, string>;
}

const MKFS_OPTIONS_RE = /^[A-Za-z0-9=,.:_ -]{0,256}$/;
export const K8S_PREFIX = 'csi.storage.k8s.io/';
export const K8S_FSTYPE_KEY = `${K8S_PREFIX}fstype`;

/**
 * csi-provisioner's deprecated secret keys (before the csi.storage.k8s.io/
 * prefix): it still honours them and, unlike the prefixed ones, sends them
 * on to CreateVolume.
 */
const DEPRECATED_SECRET_KEYS: Record<string, string> = {
  csiProvisionerSecretName: 'provisioner-secret-name',
  csiProvisionerSecretNamespace: 'provisioner-secret-namespace',
  csiControllerPublishSecretName: 'controller-publish-secret-name',
  csiControllerPublishSecretNamespace: 'controller-publish-secret-namespace',
  csiNodeStageSecretName: 'node-stage-secret-name',
  csiNodeStageSecretNamespace: 'node-stage-secret-namespace',
  csiNodePublishSecretName: 'node-publish-secret-name',
  csiNodePublishSecretNamespace: 'node-publish-secret-namespace',
};

function unknownKey(field: string, k: string): Error {
  const shownKey = k.slice(0, 64);
  if (k.toLowerCase() === 'fstype')
    return invalidArgument(
      `${field}.${shownKey} is not a sinter parameter: set the filesystem with ${K8S_FSTYPE_KEY} (csi-provisioner passes it as the capability's fs_type; a class with both keys is refused by the provisioner)`,
    );
  const prefixed = DEPRECATED_SECRET_KEYS[k];
  if (prefixed) return invalidArgument(`${field}.${shownKey} is a deprecated csi-provisioner key that reaches the driver unstripped: use ${K8S_PREFIX}${prefixed} instead`);
  return invalidArgument(`${field}: unknown key "${shownKey}" (known: ${Object.keys(PARAMETER_DOCS).join(', ')}; the filesystem is ${K8S_FSTYPE_KEY})`);
}

export function parseParameters(params: Record<string, string> | undefined, field = 'parameters'): VolumeParameters {
  const own: Record<string, string> = {};
  const out: VolumeParameters = { own };
  for (const [k, v] of Object.entries(params ?? {})) {
    if (k.startsWith(K8S_PREFIX)) continue;
    switch (k) {
      case 'type':
      case 'backend':
        if (!v) throw invalidArgument(`${field}.${k} must not be empty`);
        out[k] = v;
        break;
      case 'mkfsOptions':
        if (!MKFS_OPTIONS_RE.test(v)) throw invalidArgument(`${field}.mkfsOptions may hold only letters, digits, spaces and =,.:_- (at most 256 characters)`);
        out.mkfsOptions = v;
        break;
      case 'encrypted':
        if (v !== 'true' && v !== 'false') throw invalidArgument(`${field}.encrypted must be "true" or "false", not "${v.slice(0, 16)}"`);
        out.encrypted = v === 'true';
        break;
      case RBD_ATTACH_KEY: {
        const a = parseRbdAttach(v, `${field}.${RBD_ATTACH_KEY}`, invalidArgument);
        if (a) out.rbdAttach = a;
        break;
      }
      default:
        throw unknownKey(field, k);
    }
    own[k] = v;
  }
  return out;
}

export { sameStringMap as sameParameters } from '../contracts/string-map.js';
