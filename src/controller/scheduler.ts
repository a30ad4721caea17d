import type { Backend, BackendCapacity } from '../backends/backend.js';
import { AwaitingCredentialsError, DomainError, resourceExhausted } from '../errors/domain-error.js';
import { reaches, reachesAny, type TopologyRequirement } from './topology.js';

/** What a volume asks of its backend, size aside: the StorageClass's choices and where it must be reachable from. */
export interface PlacementFilter {
  type?: string;
  backend?: string;
  topology?: TopologyRequirement;
}

export interface PlacementRequest extends PlacementFilter {
  sizeBytes: number;
}

export interface Candidate {
  backend: Backend;
  capacity: BackendCapacity;
}

/**
 * Cinder's filters other than capacity: backend name, type label, topology.
 * A backend that passes them has its capacity read; one whose capacity cannot
 * be read is out. Returns the capacity, or why the backend is out.
 *
 * CreateVolume (schedule) and GetCapacity (capacityFor) both judge every
 * backend here, so the capacity a CO is told about is exactly the room
 * CreateVolume would place a volume in.
 */
async function judge(b: Backend, f: PlacementFilter): Promise<Candidate | string> {
  if (f.backend !== undefined && b.name !== f.backend) return `${b.name}: not the requested backend`;
  if (f.type !== undefined && b.labels.type !== f.type) return `${b.name}: type is ${b.labels.type ?? 'unset'}, not ${f.type}`;
  const requisite = f.topology?.requisite ?? [];
  if (requisite.length > 0 && !reachesAny(b.topology, requisite)) return `${b.name}: not reachable from the requisite topology`;
  try {
    return { backend: b, capacity: await b.capacity() };
  } catch (e) {
    // A backend that passes the filters but has no credentials yet cannot be judged: not "no room", not left out.
    // Nor can one the request's own secrets are wrong for (a class's secrets are for the backends it picks).
    if (e instanceof AwaitingCredentialsError || (e instanceof DomainError && e.code === 'invalid-argument')) throw e;
    return `${b.name}: capacity unknown (${(e as Error).message})`;
  }
}

/**
 * Cinder's filter scheduler in miniature: filters (backend name, type label,
 * topology, capacity), then the weighers: reachability from the preferred
 * topology first, then free space.
 * Every rejection is kept so an operator reading RESOURCE_EXHAUSTED learns why.
 */
export async function schedule(backends: Backend[], req: PlacementRequest): Promise<Candidate> {
  const reasons: string[] = [];
  const fits: Candidate[] = [];
  // Every backend's capacity is read at once (a statfs or a pool query each); the order of reasons stays the configuration's.
  for (const j of await Promise.all(backends.map((b) => judge(b, req)))) {
    if (typeof j === 'string') reasons.push(j);
    else if (j.capacity.availableBytes < req.sizeBytes) reasons.push(`${j.backend.name}: ${j.capacity.availableBytes} bytes available, ${req.sizeBytes} needed${j.capacity.note ? ` (${j.capacity.note})` : ''}`);
    else fits.push(j);
  }
  if (fits.length === 0) {
    throw resourceExhausted(`no backend can hold a ${req.sizeBytes}-byte volume: ${reasons.join('; ') || 'no backends configured'}`);
  }
  const preferred = req.topology?.preferred ?? [];
  // The first preferred segment is the node the CO picked for the pod (csi-provisioner
  // puts the selected node's segment first): a backend reachable from it wins over free
  // space. A backend without topology is reachable from every segment, the first included;
  // ranking it last would let a backend only another node can reach win for this pod.
  const rank = (c: Candidate) => {
    const i = preferred.findIndex((t) => reaches(c.backend.topology, t));
    return i < 0 ? preferred.length : i;
  };
  fits.sort((a, b) => rank(a) - rank(b) || b.capacity.availableBytes - a.capacity.availableBytes || a.backend.name.localeCompare(b.backend.name));
  return fits[0]!;
}

export interface CapacityReport {
  /** Room on every backend the filter leaves, added up (CSI available_capacity). */
  availableBytes: number;
  /** The most room on any one of them: a volume never spans backends. */
  largestBytes: number;
  /** The backends counted, by name. */
  backends: string[];
}

/** GetCapacity's answer: the same filters as schedule(), without a size. */
export async function capacityFor(backends: Backend[], filter: PlacementFilter): Promise<CapacityReport> {
  const report: CapacityReport = { availableBytes: 0, largestBytes: 0, backends: [] };
  for (const j of await Promise.all(backends.map((b) => judge(b, filter)))) {
    if (typeof j === 'string') continue;
    report.availableBytes += j.capacity.availableBytes;
    report.largestBytes = Math.max(report.largestBytes, j.capacity.availableBytes);
    report.backends.push(j.backend.name);
  }
  return report;
}
