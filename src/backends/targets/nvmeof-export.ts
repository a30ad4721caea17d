import { promises as fs } from 'node:fs';
import type { Logger } from 'pino';
import { parseNodeId, type NodeIdentity } from '../../contracts/nodeid.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition, invalidArgument } from '../../errors/domain-error.js';
import type { ExportEntry, VolumeHealth, VolumeRecord } from '../backend.js';
import type { NvmetSubsystem, NvmetTargetHelper } from './nvmet.js';

export interface NvmeofReconcileReport {
  subsystemsCreated: string[];
  hostsRestored: string[];
  hostsRevoked: string[];
  subsystemsRemoved: string[];
  errors: string[];
}

/** DH-HMAC-CHAP secret keys a StorageClass may name; refused with the reason (see NvmeofExport). */
const DHCHAP_KEYS = ['dhchap-secret', 'dhchap-ctrl-secret', 'dhchapSecret'];

/**
 * A backend's NVMe/TCP export (`export: nvmeof`): a subsystem per published
 * volume, allowed_hosts = the publishing nodes' host NQNs, nothing else.
 * nvmet's configfs is empty after the storage host reboots, so the records
 * are the truth and reconcile() rebuilds it — and removes subsystems with
 * this backend's volumes that no publish explains.
 *
 * No DH-HMAC-CHAP: Debian bookworm's 6.1 kernel is built without
 * CONFIG_NVME_TARGET_AUTH and CONFIG_NVME_AUTH (nvmet's hosts/<nqn> has no
 * dhchap_key, the host's controllers no dhchap_secret; recorded in the test
 * guest), although its nvme-cli 2.3 takes --dhchap-secret. Secrets that ask
 * for it are refused rather than ignored: an export the user believes
 * authenticated must not silently be open to every allowed host NQN.
 */
export class NvmeofExport {
  constructor(
    private readonly helper: NvmetTargetHelper,
    private readonly log: Logger,
    /** Whether a subsystem's volume belongs to this backend: several backends may share nvmet. */
    private readonly owns: (volumeId: string) => boolean,
  ) {}

  static hostOf(node: NodeIdentity): string {
    if (!node.nqn)
      throw failedPrecondition(
        `node_id: node "${node.host}" reported no NVMe host NQN; install nvme-cli there (it writes /etc/nvme/hostnqn; or run nvme gen-hostnqn) or set node.nvmeHostNqn`,
      );
    return node.nqn;
  }

  static refuseAuth(secrets: Record<string, string> | undefined): void {
    const asked = DHCHAP_KEYS.filter((k) => secrets?.[k] !== undefined);
    if (asked.length > 0)
      throw invalidArgument(
        `secrets: ${asked.join(', ')} asks for NVMe in-band authentication (DH-HMAC-CHAP), which this storage host's kernel does not offer (nvmet built without CONFIG_NVME_TARGET_AUTH); remove the key or use export: iscsi with CHAP`,
      );
  }

  async export(volumeId: string, devicePath: string, node: NodeIdentity, secrets?: Record<string, string>): Promise<PublishContext> {
    NvmeofExport.refuseAuth(secrets);
    const host = NvmeofExport.hostOf(node);
    const nqn = await this.helper.ensureSubsystem(volumeId, devicePath);
    await this.helper.allowHost(volumeId, host);
    return { transport: 'nvmeof', nqn, portals: this.helper.portalTexts, nsid: 1 };
  }

  /** Fences one node: out of allowed_hosts, its controllers dropped. The subsystem stays for other nodes. */
  async unexport(volumeId: string, node: NodeIdentity): Promise<void> {
    if (!node.nqn) return;
    await this.helper.revokeHost(volumeId, node.nqn);
  }

  async remove(volumeId: string): Promise<void> {
    await this.helper.removeSubsystem(volumeId);
  }

  async refreshSize(volumeId: string): Promise<void> {
    if ((await this.helper.refreshSize(volumeId)) === 'refreshed') this.log.info({ volume_id: volumeId }, 'nvmet namespace size revalidated');
  }

  /** nvmet's view (Probe uses it: it throws when nvmet's configfs is missing). */
  async subsystems(): Promise<NvmetSubsystem[]> {
    return this.helper.listSubsystems();
  }

  async entries(): Promise<ExportEntry[]> {
    return (await this.subsystems()).filter((s) => s.volumeId && this.owns(s.volumeId)).map((s) => ({ volumeId: s.volumeId, target: s.nqn, initiators: s.hosts }));
  }

  async health(v: VolumeRecord, devicePath: string): Promise<VolumeHealth | undefined> {
    if (v.attachments.length === 0) return undefined;
    let s: NvmetSubsystem | undefined;
    try {
      s = (await this.subsystems()).find((x) => x.volumeId === v.id);
    } catch (e) {
      return { abnormal: true, message: `cannot read nvmet: ${(e as Error).message}` };
    }
    if (!s) return { abnormal: true, message: `published, but its NVMe subsystem ${this.helper.nqnFor(v.id)} is missing (reconcile restores it)` };
    if (!s.enabled || s.devicePath !== devicePath) return { abnormal: true, message: `NVMe subsystem ${s.nqn} does not serve this volume as namespace 1` };
    if (s.portals.length < this.helper.portalTexts.length) return { abnormal: true, message: `NVMe subsystem ${s.nqn} listens on ${s.portals.join(', ') || 'no port'}, not on every configured portal (reconcile restores it)` };
    for (const a of v.attachments) {
      const nqn = parseNodeId(a.nodeId)?.nqn;
      if (nqn && !s.hosts.includes(nqn)) return { abnormal: true, message: `published to ${a.nodeId}, but its host NQN ${nqn} is not in the subsystem's allowed_hosts (reconcile restores it)` };
    }
    return undefined;
  }

  /**
   * Makes nvmet match the records: every published volume has its subsystem,
   * namespace, ports and one allowed host per publishing node; subsystems of
   * this backend's volumes that are not published (or gone) are removed, and
   * hosts no publish explains are revoked (and their controllers dropped).
   */
  async reconcile(
    volumes: () => Iterable<VolumeRecord>,
    devicePathOf: (id: string) => string,
    withVolumeLock: <T>(volumeId: string, fn: () => Promise<T>) => Promise<T>,
  ): Promise<NvmeofReconcileReport> {
    const report: NvmeofReconcileReport = { subsystemsCreated: [], hostsRestored: [], hostsRevoked: [], subsystemsRemoved: [], errors: [] };
    const have = new Map((await this.subsystems()).filter((s) => s.volumeId && this.owns(s.volumeId)).map((s) => [s.volumeId!, s]));
    const published = (v: VolumeRecord | undefined) => !!v && v.attachments.length > 0 && (v.state === 'in-use' || v.state === 'available');
    const ids = new Set<string>(have.keys());
    for (const v of volumes()) if (published(v)) ids.add(v.id);
    for (const id of ids) {
      await withVolumeLock(id, async () => {
        const v = [...volumes()].find((x) => x.id === id);
        const s = have.get(id);
        try {
          if (published(v)) {
            if (!s) report.subsystemsCreated.push(id);
            const path = devicePathOf(id);
            await fs.stat(path);
            await this.helper.ensureSubsystem(id, path);
            const hosts = new Set<string>();
            for (const a of v!.attachments) {
              const nqn = parseNodeId(a.nodeId)?.nqn;
              if (!nqn) continue;
              hosts.add(nqn);
              if (!s?.hosts.includes(nqn)) {
                await this.helper.allowHost(id, nqn);
                report.hostsRestored.push(`${id} → ${nqn}`);
              }
            }
            for (const h of s?.hosts ?? []) {
              if (hosts.has(h)) continue;
              await this.helper.revokeHost(id, h);
              report.hostsRevoked.push(`${id} → ${h}`);
            }
          } else if (s) {
            await this.helper.removeSubsystem(id);
            report.subsystemsRemoved.push(id);
            for (const h of s.hosts) report.hostsRevoked.push(`${id} → ${h}`);
          }
        } catch (e) {
          report.errors.push(`${id}: ${(e as Error).message}`);
        }
      });
    }
    const changed = report.subsystemsCreated.length + report.hostsRestored.length + report.hostsRevoked.length + report.subsystemsRemoved.length;
    if (changed > 0 || report.errors.length > 0) this.log.warn({ ...report }, 'NVMe/TCP exports reconciled with the records');
    return report;
  }
}
