import type { Backend, BackendCapacity } from '../backends/backend.js';
import { resourceExhausted } from '../errors/domain-error.js';
import { reaches, reachesAny, type TopologyRequirement } from './topology.js';

export interface PlacementRequest {
  sizeBytes: number;
  type?: string;
  backend?: string;
  topology?: TopologyRequirement;
}

export interface Candidate {
  backend: Backend;
  capacity: BackendCapacity;
}

/**
 * Cinder's filter scheduler in miniature: filters (backend name, type label,
 * topology, capacity), then the free-space weigher picks the roomiest.
 * Every rejection is kept so an operator reading RESOURCE_EXHAUSTED learns why.
 */
export async function schedule(backends: Backend[], req: PlacementRequest): Promise<Candidate> {
  const reasons: string[] = [];
  const fits: Candidate[] = [];
  const requisite = req.topology?.requisite ?? [];
  for (const b of backends) {
    if (req.backend !== undefined && b.name !== req.backend) {
      reasons.push(`${b.name}: not the requested backend`);
      continue;
    }
    if (req.type !== undefined && b.labels.type !== req.type) {
      reasons.push(`${b.name}: type is ${b.labels.type ?? 'unset'}, not ${req.type}`);
      continue;
    }
    if (requisite.length > 0 && !reachesAny(b.topology, requisite)) {
      reasons.push(`${b.name}: not reachable from the requisite topology`);
      continue;
    }
    let capacity: BackendCapacity;
    try {
      capacity = await b.capacity();
    } catch (e) {
      reasons.push(`${b.name}: capacity unknown (${(e as Error).message})`);
      continue;
    }
    if (capacity.availableBytes < req.sizeBytes) {
      reasons.push(`${b.name}: ${capacity.availableBytes} bytes available, ${req.sizeBytes} needed`);
      continue;
    }
    fits.push({ backend: b, capacity });
  }
  if (fits.length === 0) {
    throw resourceExhausted(`no backend can hold a ${req.sizeBytes}-byte volume: ${reasons.join('; ') || 'no backends configured'}`);
  }
  const preferred = req.topology?.preferred ?? [];
  // A backend in the first preferred topology wins over free space; then the free-space weigher.
  const rank = (c: Candidate) => {
    const i = preferred.findIndex((t) => Object.keys(c.backend.topology).length > 0 && reaches(c.backend.topology, t));
    return i < 0 ? preferred.length : i;
  };
  fits.sort((a, b) => rank(a) - rank(b) || b.capacity.availableBytes - a.capacity.availableBytes || a.backend.name.localeCompare(b.backend.name));
  return fits[0]!;
}
