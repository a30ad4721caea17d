import type { AccessType, CapabilitySummary } from '../backends/backend.js';
import { invalidArgument } from '../csi/errors.js';

export const SUPPORTED_FS = ['ext4', 'xfs', 'btrfs'] as const;
export type FsType = (typeof SUPPORTED_FS)[number];

const SINGLE_NODE_MODES = new Set(['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER']);
const ALL_MODES = new Set([...SINGLE_NODE_MODES, 'MULTI_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER']);
const READ_ONLY_MODES = new Set(['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY']);
const MOUNT_FLAG_RE = /^[A-Za-z0-9_=,.:/+-]{1,256}$/;

/** The wire shape of csi.v1.VolumeCapability as the loader hands it to us. */
export interface WireCapability {
  access_type?: 'mount' | 'block';
  mount?: { fs_type?: string; mount_flags?: string[]; volume_mount_group?: string };
  block?: Record<string, never>;
  access_mode?: { mode?: string };
}

export const isSingleNode = (mode: string) => SINGLE_NODE_MODES.has(mode);
export const isReadOnlyMode = (mode: string) => READ_ONLY_MODES.has(mode);

/**
 * Checks one capability and reduces it to what sinter keeps. Multi-node
 * writers are only offered for raw block: no filesystem sinter formats can be
 * mounted read-write by two kernels at once.
 */
export function parseCapability(cap: WireCapability | undefined, field: string): CapabilitySummary & { mountFlags: string[] } {
  if (!cap) throw invalidArgument(`${field} is required`);
  const mode = cap.access_mode?.mode;
  if (!mode || mode === 'UNKNOWN') throw invalidArgument(`${field}.access_mode is required`);
  if (!ALL_MODES.has(mode)) throw invalidArgument(`${field}.access_mode ${mode} is not supported`);
  const accessType: AccessType | undefined = cap.access_type ?? (cap.mount ? 'mount' : cap.block ? 'block' : undefined);
  if (!accessType) throw invalidArgument(`${field}.access_type is required: set mount or block`);
  if (accessType === 'block') {
    return { accessType, accessMode: mode, mountFlags: [] };
  }
  if (mode === 'MULTI_NODE_MULTI_WRITER' || mode === 'MULTI_NODE_SINGLE_WRITER')
    throw invalidArgument(`${field}: access mode ${mode} needs a cluster filesystem; sinter offers it for block access only`);
  const fsType = cap.mount?.fs_type || undefined;
  if (fsType !== undefined && !(SUPPORTED_FS as readonly string[]).includes(fsType))
    throw invalidArgument(`${field}.mount.fs_type "${fsType}" is not supported (use ${SUPPORTED_FS.join(', ')})`);
  const mountFlags = cap.mount?.mount_flags ?? [];
  for (const f of mountFlags) if (!MOUNT_FLAG_RE.test(f)) throw invalidArgument(`${field}.mount.mount_flags: "${f.slice(0, 64)}" is not a valid mount option`);
  return { accessType, accessMode: mode, fsType, mountFlags };
}

export function parseCapabilities(caps: WireCapability[] | undefined, field: string): (CapabilitySummary & { mountFlags: string[] })[] {
  if (!caps || caps.length === 0) throw invalidArgument(`${field} is required and must not be empty`);
  return caps.map((c, i) => parseCapability(c, `${field}[${i}]`));
}
