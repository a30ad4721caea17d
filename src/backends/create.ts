import type { Logger } from 'pino';
import type { BackendConfig } from '../config/types.js';
import type { Executor } from '../exec/run.js';
import type { Backend } from './backend.js';
import { FileBackend } from './file/backend.js';
import type { ReadAhead } from './file/read-ahead.js';
import { LvmBackend } from './lvm/backend.js';
import { RbdBackend } from './rbd/backend.js';

/**
 * The one place a backend's `driver` picks its implementation (Cinder's
 * volume_driver): file, lvm, rbd.
 */
export function createBackend(cfg: BackendConfig, exec: Executor, log: Logger, readAhead?: ReadAhead): Backend {
  switch (cfg.driver) {
    case 'file':
      return new FileBackend(cfg, exec, log.child({ backend: cfg.name }), readAhead);
    case 'rbd':
      return new RbdBackend(cfg, exec, log.child({ backend: cfg.name }));
    case 'lvm':
      return new LvmBackend(cfg, exec, log.child({ backend: cfg.name }));
  }
}
