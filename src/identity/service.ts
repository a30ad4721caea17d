import type { ServiceImpl } from '../csi/server.js';

export interface IdentityDeps {
  driverName: string;
  version: string;
  hasController: boolean;
  /** Resolves when every part the plugin needs answers; rejects naming the part that does not. */
  probe: () => Promise<void>;
}

export function identityService(d: IdentityDeps): ServiceImpl {
  return {
    async GetPluginInfo() {
      return { name: d.driverName, vendor_version: d.version, manifest: {} };
    },
    async GetPluginCapabilities() {
      const caps: unknown[] = [{ volume_expansion: { type: 'ONLINE' } }];
      if (d.hasController) {
        caps.push({ service: { type: 'CONTROLLER_SERVICE' } }, { service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } });
      }
      return { capabilities: caps };
    },
    async Probe() {
      try {
        await d.probe();
        return { ready: { value: true } };
      } catch {
        return { ready: { value: false } };
      }
    },
  };
}
