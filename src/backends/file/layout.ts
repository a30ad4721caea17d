import { join } from 'node:path';

/** Where a file backend keeps its volumes' and snapshots' records and images. */
export const fileBackendDirs = (dataDir: string) => ({ volumes: join(dataDir, 'volumes'), snapshots: join(dataDir, 'snapshots') });
