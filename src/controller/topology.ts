/** csi.v1.Topology: segments a node or backend sits in. */
export interface Topology {
  segments?: Record<string, string>;
}

export interface TopologyRequirement {
  requisite?: Topology[];
  preferred?: Topology[];
}

/**
 * A backend with no topology is reachable from every node. Otherwise it
 * reaches a topology when every segment the backend declares has the same
 * value there.
 */
export function reaches(backendTopology: Readonly<Record<string, string>>, t: Topology): boolean {
  const seg = t.segments ?? {};
  return Object.entries(backendTopology).every(([k, v]) => seg[k] === v);
}

export function reachesAny(backendTopology: Readonly<Record<string, string>>, ts: Topology[]): boolean {
  return Object.keys(backendTopology).length === 0 || ts.some((t) => reaches(backendTopology, t));
}
