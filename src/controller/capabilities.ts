import type { CapabilitySummary } from '../backends/backend.js';
import { invalidArgument } from '../errors/domain-error.js';
import { parseCapability as parseWire } from '../csi/capability.js';

export { isSingleNode, SUPPORTED_FS, type FsType } from '../csi/capability.js';

export type ParsedCapability = CapabilitySummary & { mountFlags: string[] };

/** One capability, validated by the rules the node applies too, reduced to what a volume record keeps. */
export function parseCapability(raw: unknown, field: string): ParsedCapability {
  const c = parseWire(raw, field);
  return c.access === 'block'
    ? { accessType: 'block', accessMode: c.mode, mountFlags: [] }
    : { accessType: 'mount', accessMode: c.mode, fsType: c.fsType, mountFlags: c.mountFlags };
}

export function parseCapabilities(caps: unknown[] | undefined, field: string): ParsedCapability[] {
  if (!caps || caps.length === 0) throw invalidArgument(`${field} is required and must not be empty`);
  return caps.map((c, i) => parseCapability(c, `${field}[${i}]`));
}
