import { invalidArgument, shown } from '../errors/domain-error.js';

/**
 * csi.v1.VolumeCapability validation shared by the controller and the node,
 * so both halves accept and refuse exactly the same capabilities.
 */

export const SUPPORTED_FS = ['ext4', 'xfs', 'btrfs'] as const;
export type FsType = (typeof SUPPORTED_FS)[number];
export const DEFAULT_FS: FsType = 'ext4';

export function isSupportedFs(s: string): s is FsType {
  return (SUPPORTED_FS as readonly string[]).includes(s);
}

export const ACCESS_MODES = [
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'MULTI_NODE_READER_ONLY',
  'MULTI_NODE_SINGLE_WRITER',
  'MULTI_NODE_MULTI_WRITER',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
] as const;
export type AccessMode = (typeof ACCESS_MODES)[number];

export type Capability =
  | { access: 'mount'; fsType?: string; mountFlags: string[]; mode: AccessMode }
  | { access: 'block'; mode: AccessMode };

export function isReadOnlyMode(mode: string): boolean {
  return mode === 'SINGLE_NODE_READER_ONLY' || mode === 'MULTI_NODE_READER_ONLY';
}

export function isSingleNode(mode: string): boolean {
  return mode.startsWith('SINGLE_NODE_');
}

// Options that would turn the mount into something else than mounting this
// device here (bind/move/remount), or attach other files.
const FORBIDDEN_FLAGS = new Set(['bind', 'rbind', 'remount', 'move', 'loop', 'x-mount.mkdir']);
const FLAG_RE = /^[A-Za-z0-9_.=:+/@,-]+$/;

export function checkMountFlags(flags: unknown, field: string): string[] {
  if (flags === undefined || flags === null) return [];
  if (!Array.isArray(flags)) throw invalidArgument(`${field} must be a list of strings`);
  const out: string[] = [];
  for (const f of flags) {
    if (typeof f !== 'string' || f === '') throw invalidArgument(`${field} has an empty entry`);
    if (!FLAG_RE.test(f)) throw invalidArgument(`${field} entry ${shown(f)} has characters other than letters, digits and _ . = : + / @ , -`);
    for (const part of f.split(',')) {
      if (part === '' || FORBIDDEN_FLAGS.has(part) || part.startsWith('make-'))
        throw invalidArgument(`${field} entry ${shown(f)} is not allowed (sinter decides how the volume is mounted; remove "${part}")`);
    }
    out.push(f);
  }
  return out;
}

function modeOf(raw: unknown, field: string): AccessMode {
  const m = (raw as { mode?: unknown } | undefined)?.mode;
  if (m === undefined || m === null || m === 'UNKNOWN' || m === 0) throw invalidArgument(`${field}.access_mode.mode is required`);
  const name = typeof m === 'number' ? ['UNKNOWN', ...ACCESS_MODES][m] : m;
  if (typeof name !== 'string' || !(ACCESS_MODES as readonly string[]).includes(name))
    throw invalidArgument(`${field}.access_mode.mode ${shown(typeof m === 'string' || typeof m === 'number' ? String(m) : JSON.stringify(m))} is not a CSI access mode`);
  return name as AccessMode;
}

/** Validates a VolumeCapability as the loader delivers it (snake_case, enums as strings). */
export function parseCapability(raw: unknown, field = 'volume_capability'): Capability {
  if (!raw || typeof raw !== 'object') throw invalidArgument(`${field} is required`);
  const c = raw as { access_type?: string; mount?: Record<string, unknown> | null; block?: unknown; access_mode?: unknown };
  const kind = c.access_type ?? (c.mount ? 'mount' : c.block ? 'block' : undefined);
  const mode = modeOf(c.access_mode, field);
  if (kind === 'block') return { access: 'block', mode };
  if (kind !== 'mount') throw invalidArgument(`${field} needs an access_type: mount or block`);
  if (mode === 'MULTI_NODE_MULTI_WRITER' || mode === 'MULTI_NODE_SINGLE_WRITER')
    throw invalidArgument(`${field}.access_mode ${mode} cannot be served with mount access: ${SUPPORTED_FS.join('/')} must not be mounted writable on several nodes; use block access or a single-node mode`);
  const m = c.mount ?? {};
  const fsType = typeof m.fs_type === 'string' && m.fs_type !== '' ? m.fs_type : undefined;
  if (fsType !== undefined && !isSupportedFs(fsType))
    throw invalidArgument(`${field}.mount.fs_type ${shown(fsType)} is not supported; use one of ${SUPPORTED_FS.join(', ')}`);
  return { access: 'mount', fsType, mountFlags: checkMountFlags(m.mount_flags, `${field}.mount.mount_flags`), mode };
}

/** The filesystem to use: the capability's fs_type, else volume_context fsType, else ext4. */
export function resolveFsType(cap: Extract<Capability, { access: 'mount' }>, volumeContext: Record<string, string> | undefined): FsType {
  if (cap.fsType && isSupportedFs(cap.fsType)) return cap.fsType;
  const fromCtx = volumeContext?.fsType;
  if (fromCtx !== undefined && fromCtx !== '') {
    if (!isSupportedFs(fromCtx)) throw invalidArgument(`volume_context.fsType ${shown(fromCtx)} is not supported; use one of ${SUPPORTED_FS.join(', ')}`);
    return fromCtx;
  }
  return DEFAULT_FS;
}

export function sameFlags(a: string[], b: string[]): boolean {
  const x = [...a].sort();
  const y = [...b].sort();
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
