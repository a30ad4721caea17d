import type { FileBackendConfig } from '../../src/config/types.js';

/** A file backend's configuration with the loader's defaults, for tests that build a FileBackend directly. */
export function fileBackendConfig(name: string, dataDir: string, extra: Partial<FileBackendConfig> = {}): FileBackendConfig {
  return { name, driver: 'file', dataDir, labels: {}, topology: {}, overSubscriptionRatio: 1, reservedPercent: 0, capacityBytes: 0, export: 'local', ...extra };
}

/** The `export: iscsi` part for a test tgtd (its portal and private control port). */
export function iscsiExport(tgtd: { portal: string; controlPort: number }, iqnPrefix: string): Partial<FileBackendConfig> {
  return {
    export: 'iscsi',
    iscsi: { helper: 'tgt', portals: [tgtd.portal], iqnPrefix, controlPort: tgtd.controlPort, writeCache: true, blockSize: 512, reconcileSeconds: 60, openPortals: false },
  };
}
