import { invalidArgument } from '../csi/errors.js';
import { SUPPORTED_FS, type FsType } from './capabilities.js';

/**
 * StorageClass parameters sinter understands. Keys under `csi.storage.k8s.io/`
 * belong to the Kubernetes sidecars (secret references, PVC metadata) and pass
 * through unvalidated; any other unknown key is a typo we refuse loudly.
 */
export const PARAMETER_DOCS: Record<string, string> = {
  type: 'volume type; only backends whose `type` label equals it are considered (Cinder volume type)',
  backend: 'pin the volume to one named backend',
  fsType: 'filesystem made on first stage: ext4 (default), xfs or btrfs',
  mkfsOptions: 'extra mkfs arguments, space-separated, letters/digits/=,.:_- only',
  encrypted: '"true": LUKS2 on the node, passphrase from the node-stage secret key encryptionPassphrase (default "false")',
};

export interface VolumeParameters {
  type?: string;
  backend?: string;
  fsType?: FsType;
  mkfsOptions?: string;
  encrypted?: boolean;
  /** Everything the CO sent, minus the sidecars' keys: compared for name idempotency. */
  own: Record<string, string>;
}

const MKFS_OPTIONS_RE = /^[A-Za-z0-9=,.:_ -]{0,256}$/;
export const K8S_PREFIX = 'csi.storage.k8s.io/';

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
      case 'fsType':
        if (!(SUPPORTED_FS as readonly string[]).includes(v)) throw invalidArgument(`${field}.fsType "${v}" is not supported (use ${SUPPORTED_FS.join(', ')})`);
        out.fsType = v as FsType;
        break;
      case 'mkfsOptions':
        if (!MKFS_OPTIONS_RE.test(v)) throw invalidArgument(`${field}.mkfsOptions may hold only letters, digits, spaces and =,.:_- (at most 256 characters)`);
        out.mkfsOptions = v;
        break;
      case 'encrypted':
        if (v !== 'true' && v !== 'false') throw invalidArgument(`${field}.encrypted must be "true" or "false", not "${v.slice(0, 16)}"`);
        out.encrypted = v === 'true';
        break;
      default:
        throw invalidArgument(`${field}: unknown key "${k.slice(0, 64)}" (known: ${Object.keys(PARAMETER_DOCS).join(', ')})`);
    }
    own[k] = v;
  }
  return out;
}

export function sameParameters(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}
