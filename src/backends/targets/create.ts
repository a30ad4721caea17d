import type { Logger } from 'pino';
import type { IscsiExportConfig } from '../../config/types.js';
import type { Executor } from '../../exec/run.js';
import type { TargetHelper } from './target-helper.js';
import { TgtTargetHelper } from './tgt.js';

/**
 * The one place `iscsi.helper` picks the target helper (Cinder's
 * target_helper): tgt now; lio and nvmet join the switch.
 */
export function createTargetHelper(cfg: IscsiExportConfig, exec: Executor, log: Logger): TargetHelper {
  switch (cfg.helper) {
    case 'tgt':
      return new TgtTargetHelper({ controlPort: cfg.controlPort, iqnPrefix: cfg.iqnPrefix, writeCache: cfg.writeCache, blockSize: cfg.blockSize }, exec, log);
  }
}
