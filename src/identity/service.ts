import type { Logger } from 'pino';
import { answersAtOnce } from '../csi/call-context.js';
import type { IdentityImpl } from '../csi/messages.js';
import type { PluginCapability } from '../csi/generated/csi/v1/PluginCapability.js';

export interface IdentityDeps {
  driverName: string;
  version: string;
  hasController: boolean;
  /** Some backend cuts volume group snapshots: the GroupController is offered. */
  hasGroupController?: boolean;
  /** Resolves when every part the plugin needs answers; rejects naming the part that does not. */
  probe: () => Promise<void>;
  log: Logger;
}

export function identityService(d: IdentityDeps): IdentityImpl {
  // Kubelet and the sidecars probe every few seconds: say why once per change, not on every call.
  let lastWhy: string | undefined;
  return {
    GetPluginInfo: answersAtOnce(async () => ({ name: d.driverName, vendor_version: d.version, manifest: {} })),
    GetPluginCapabilities: answersAtOnce(async () => {
      const caps: PluginCapability[] = [{ volume_expansion: { type: 'ONLINE' } }];
      if (d.hasController) {
        caps.push({ service: { type: 'CONTROLLER_SERVICE' } }, { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } });
        if (d.hasGroupController) caps.push({ service: { type: 'GROUP_CONTROLLER_SERVICE' } });
      }
      return { capabilities: caps };
    }),
    // Backend probes read state; none takes a volume lock.
    Probe: answersAtOnce(async () => {
      try {
        await d.probe();
        if (lastWhy !== undefined) d.log.info('ready again');
        lastWhy = undefined;
        return { ready: { value: true } };
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        if (why !== lastWhy) d.log.warn({ why }, 'not ready');
        lastWhy = why;
        return { ready: { value: false } };
      }
    }),
  };
}
