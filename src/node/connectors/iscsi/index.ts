import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DaemonSpawner, Executor } from '../../../exec/run.js';
import { KernelIscsiInitiator, type KernelInitiatorConfig } from './kernel.js';
import type { IscsiInitiator } from './types.js';
import { UserspaceIscsiInitiator, type UserspaceInitiatorConfig } from './userspace.js';

export * from './types.js';
export { KernelIscsiInitiator, type KernelInitiatorConfig } from './kernel.js';
export { UserspaceIscsiInitiator, type UserspaceInitiatorConfig, type UserspaceAttachmentInfo } from './userspace.js';

export type InitiatorMode = 'kernel' | 'userspace' | 'auto';

/**
 * Whether this host can run the kernel initiator: the iscsi_tcp transport is
 * loaded (or built in) when sysfs lists it.
 */
export async function kernelIscsiAvailable(sysfsRoot = '/sys'): Promise<boolean> {
  for (const p of [join(sysfsRoot, 'class', 'iscsi_transport', 'tcp'), join(sysfsRoot, 'module', 'iscsi_tcp')]) {
    try {
      await fs.access(p);
      return true;
    } catch {
      // next
    }
  }
  return false;
}

/** The node config's `initiator: kernel | userspace | auto` made into an initiator. */
export async function createIscsiInitiator(
  mode: InitiatorMode,
  cfg: { kernel?: KernelInitiatorConfig; userspace: UserspaceInitiatorConfig },
  exec: Executor & DaemonSpawner,
  log?: Logger,
): Promise<IscsiInitiator> {
  const kernel = mode === 'kernel' || (mode === 'auto' && (await kernelIscsiAvailable(cfg.kernel?.sysfsRoot)));
  log?.info({ mode, chosen: kernel ? 'kernel' : 'userspace' }, 'iSCSI initiator');
  return kernel ? new KernelIscsiInitiator(cfg.kernel ?? {}, exec, log) : new UserspaceIscsiInitiator(cfg.userspace, exec, log);
}
