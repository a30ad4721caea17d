import type { Logger } from 'pino';
import type { BackendConfig } from '../config/types.js';
import type { Executor } from '../exec/run.js';
import type { Backend } from './backend.js';
import type { ReadAhead } from './file/read-ahead.js';

/**
 * The one place a backend's `driver` picks its implementation (Cinder's
 * volume_driver): file, lvm, rbd. Each driver's modules are loaded only when
 * a backend uses it: a file-only controller does not pay for LVM's and
 * Ceph's at start-up.
 */
export async function createBackend(cfg: BackendConfig, exec: Executor, log: Logger, readAhead?: ReadAhead): Promise<Backend> {
  switch (cfg.driver) {
    case 'file': {
      const { FileBackend } = await import('./file/backend.js');
      return new FileBackend(cfg, exec, log.child({ backend: cfg.name }), readAhead);
    }
    case 'rbd': {
      const { RbdBackend } = await import('./rbd/backend.js');
      return new RbdBackend(cfg, exec, log.child({ backend: cfg.name }));
    }
    case 'lvm': {
      const { LvmBackend } = await import('./lvm/backend.js');
      return new LvmBackend(cfg, exec, log.child({ backend: cfg.name }));
    }
  }
}
