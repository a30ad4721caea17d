import type { Logger } from 'pino';
import type { IscsiExportConfig } from '../../config/types.js';
import type { Executor } from '../../exec/run.js';
import { LioTargetHelper } from './lio.js';
import type { TargetHelper } from './target-helper.js';
import { TgtTargetHelper, type TgtConfig } from './tgt.js';

/**
 * The one place `iscsi.helper` picks the target helper (Cinder's
 * target_helper): tgt (tgtadm) or lio (configfs); nvmet joins the switch.
 */
export function createTargetHelper(cfg: IscsiExportConfig, exec: Executor, log: Logger, tgtStore?: Pick<TgtConfig, 'backingStoreType' | 'bsopts'>): TargetHelper {
  switch (cfg.helper) {
    case 'tgt':
      return new TgtTargetHelper(
        { controlPort: cfg.controlPort, iqnPrefix: cfg.iqnPrefix, writeCache: cfg.writeCache, blockSize: cfg.blockSize, listenPortals: cfg.openPortals ? cfg.portals : [], ...tgtStore },
        exec,
        log,
      );
    case 'lio':
      return new LioTargetHelper({ iqnPrefix: cfg.iqnPrefix, portals: cfg.portals, writeCache: cfg.writeCache, blockSize: cfg.blockSize, discard: cfg.discard ?? true }, log);
  }
}
