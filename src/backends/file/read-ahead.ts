import type { BackendConfig } from '../../config/types.js';
import { startDirSnapshots, type DirSnapshot } from '../../store/dir-snapshot.js';
import { fileBackendDirs } from './layout.js';

/** Record directories read ahead on a worker, by path; FileBackend.start() takes its two. */
export type ReadAhead = Map<string, Promise<DirSnapshot | undefined>>;

/**
 * Starts reading every file backend's records on a worker thread, to overlap
 * with loading the rest of the driver: called by main before it imports the
 * app. Undefined when there is no file backend.
 */
export function readAheadFileBackends(backends: readonly BackendConfig[]): ReadAhead | undefined {
  const dirs = backends.flatMap((b) => (b.driver === 'file' ? Object.values(fileBackendDirs(b.dataDir)) : []));
  return dirs.length ? startDirSnapshots(dirs, '.json') : undefined;
}
