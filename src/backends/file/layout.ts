import { join } from 'node:path';

/**
 * Where a file backend keeps its volumes' and snapshots' records and images,
 * and the digest of both record directories a clean shutdown leaves for the
 * next start (store/dir-digest.ts): beside them, not in them, so that writing
 * it does not change the stamps it records.
 */
export const fileBackendDirs = (dataDir: string) => ({ volumes: join(dataDir, 'volumes'), snapshots: join(dataDir, 'snapshots'), digest: join(dataDir, 'records.digest') });
