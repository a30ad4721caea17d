import { statSync } from 'node:fs';
import type { BackendConfig } from '../../config/types.js';
import { startDirSnapshots, type ReadAhead, type SnapshotGroup } from '../../store/dir-snapshot.js';
import { VERSION } from '../../version.js';
import { fileBackendDirs } from './layout.js';

/** Record directories read ahead on a worker, by path, and each backend's digest; FileBackend.start() takes its own. */
export type { ReadAhead };

/**
 * A volumes directory at least this large (bytes, as stat reports a
 * directory: ~500 KiB for 10,000 volumes on ext4, 4 KiB for a few) is worth a
 * worker: starting one costs ~40 ms of CPU, more than reading a few hundred
 * records on the main thread.
 */
export const READ_AHEAD_MIN_DIR_BYTES = 64 * 1024;

/**
 * Starts reading the records of every file backend with many volumes on a
 * worker thread, to overlap with loading the rest of the driver: called by
 * main before it imports the app. Where the last clean shutdown left a digest
 * that still holds (store/dir-digest.ts), the worker reads that one file
 * instead of every record. Undefined when no backend is worth it.
 */
export function readAheadFileBackends(backends: readonly BackendConfig[], minDirBytes = READ_AHEAD_MIN_DIR_BYTES, version = VERSION): ReadAhead | undefined {
  const groups = backends.flatMap((b): SnapshotGroup[] => {
    if (b.driver !== 'file') return [];
    const d = fileBackendDirs(b.dataDir);
    let size = 0;
    try {
      size = statSync(d.volumes, { throwIfNoEntry: false })?.size ?? 0;
    } catch {
      /* start() reports what is wrong with the directory */
    }
    return size >= minDirBytes ? [{ dirs: [d.volumes, d.snapshots], digest: d.digest }] : [];
  });
  return groups.length ? startDirSnapshots(groups, '.json', version) : undefined;
}
