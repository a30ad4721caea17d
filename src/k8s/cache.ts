import { Watch, type KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { unavailable } from '../errors/domain-error.js';
import { abortable, makeApis, type KubeApis } from './client.js';
import { Reflector, type ReflectorOptions } from './reflector.js';
import {
  csiNodeKind,
  persistentVolumeKind,
  volumeAttachmentKind,
  type CsiNodeInfo,
  type PersistentVolumeInfo,
  type VolumeAttachmentInfo,
} from './resources.js';

/** A VolumeAttachment of our driver with its volume and node resolved to CSI ids. */
export interface AttachmentView {
  /** The VolumeAttachment's name. */
  name: string;
  /** The CSI volume id (the PV's spec.csi.volumeHandle); undefined while its PV is not known. */
  volumeId?: string;
  /** spec.nodeName */
  nodeName: string;
  /** Our driver's node id on that node (its CSINode); undefined while the node has no CSINode entry for us. */
  nodeId?: string;
  /** status.attached */
  attached: boolean;
  /** metadata.deletionTimestamp is set. */
  deleting: boolean;
}

export interface KubeCacheOptions {
  driverName: string;
  kubeConfig: KubeConfig;
  log: Logger;
  reflector?: Omit<ReflectorOptions, 'log'>;
}

type Health = 'starting' | 'up' | 'down';

/**
 * The controller's picture of the cluster: watch-backed mirrors of our
 * driver's VolumeAttachments, the CSINodes (node name → our node id) and our
 * PersistentVolumes (PV name → volume handle). Reads never touch the network;
 * the mirrors keep themselves current and survive API server outages.
 */
export class KubeCache {
  readonly volumeAttachments: Reflector<VolumeAttachmentInfo>;
  readonly csiNodes: Reflector<CsiNodeInfo>;
  readonly persistentVolumes: Reflector<PersistentVolumeInfo>;
  private readonly reflectors: Reflector<unknown>[];
  private readonly listeners = new Set<() => void>();
  private health: Health = 'starting';
  private everUp = false;
  private nodeIdIndex: Set<string> | undefined;

  private readonly apis: KubeApis;

  constructor(private readonly opts: KubeCacheOptions) {
    const apis = makeApis(opts.kubeConfig);
    this.apis = apis;
    const watch = new Watch(opts.kubeConfig);
    const ropts = (kind: string): ReflectorOptions => ({ ...opts.reflector, log: opts.log.child({ resource: kind }) });
    this.volumeAttachments = new Reflector(volumeAttachmentKind(apis, opts.driverName), watch, ropts('volumeattachments'));
    this.csiNodes = new Reflector(csiNodeKind(apis, opts.driverName), watch, ropts('csinodes'));
    this.persistentVolumes = new Reflector(persistentVolumeKind(apis, opts.driverName), watch, ropts('persistentvolumes'));
    this.reflectors = [this.volumeAttachments, this.csiNodes, this.persistentVolumes] as Reflector<unknown>[];
    this.csiNodes.onChange(() => (this.nodeIdIndex = undefined));
    for (const r of this.reflectors) {
      r.onChange(() => this.notify());
      r.onState(() => this.stateChanged());
    }
  }

  start(): void {
    for (const r of this.reflectors) r.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.reflectors.map((r) => r.stop()));
  }

  /** Every mirror has listed at least once. */
  get synced(): boolean {
    return this.reflectors.every((r) => r.state.synced);
  }

  /** Synced, and every mirror's last request succeeded (its watch is open or reopening). */
  get live(): boolean {
    return this.reflectors.every((r) => r.state.synced && r.state.live);
  }

  /** Called after any object change and any change of `synced`/`live`. */
  onChange(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  private notify(): void {
    for (const cb of this.listeners) cb();
  }

  /** Logs once per change of overall health, never per retry. */
  private stateChanged(): void {
    const next: Health = this.live ? 'up' : this.reflectors.some((r) => !r.state.live && r.state.error !== undefined && r.state.error !== 'stopped') ? 'down' : this.health;
    if (next !== this.health) {
      this.health = next;
      if (next === 'up') {
        this.opts.log.info(
          { volumeAttachments: this.volumeAttachments.size, csiNodes: this.csiNodes.size, persistentVolumes: this.persistentVolumes.size },
          this.everUp ? 'Kubernetes API reachable again; caches current' : 'Kubernetes caches synced',
        );
        this.everUp = true;
      } else {
        const err = this.reflectors.map((r) => r.state.error).find((e) => e !== undefined);
        this.opts.log.warn(
          { err, synced: this.synced },
          'Kubernetes API unreachable: CSI calls are still served; VolumeAttachment checks use the last known state and reconciliation waits; retrying with backoff',
        );
      }
    }
    this.notify();
  }

  /** The CSINode side alone, for KubeNodeRegistry: it needs only that mirror to have synced. */
  nodeDirectory(): { readonly synced: boolean; hasNodeId(nodeId: string): boolean } {
    const csiNodes = this.csiNodes;
    return {
      get synced() {
        return csiNodes.state.synced;
      },
      hasNodeId: (nodeId) => this.hasNodeId(nodeId),
    };
  }

  /** The CSINode entry that carries this node id for our driver. */
  csiNodeOfId(nodeId: string): CsiNodeInfo | undefined {
    for (const n of this.csiNodes.values()) if (n.nodeId === nodeId) return n;
    return undefined;
  }

  /**
   * A Node's labels, read fresh from the API server (one GET; Node objects are
   * too large to mirror for the few publishes that need a zone).
   */
  async nodeLabels(nodeName: string, timeoutMs = 10_000): Promise<Record<string, string>> {
    const node = await this.apis.core.readNode({ name: nodeName }, abortable(AbortSignal.timeout(timeoutMs)));
    return { ...(node.metadata?.labels ?? {}) };
  }

  /** Our driver's node id on a node, from its CSINode. */
  nodeIdOf(nodeName: string): string | undefined {
    return this.csiNodes.get(nodeName)?.nodeId;
  }

  /** Whether some CSINode carries this node id for our driver. */
  hasNodeId(nodeId: string): boolean {
    if (!this.nodeIdIndex) this.nodeIdIndex = new Set([...this.csiNodes.values()].map((n) => n.nodeId));
    return this.nodeIdIndex.has(nodeId);
  }

  private resolve(va: VolumeAttachmentInfo): AttachmentView {
    const volumeId = va.inlineVolumeHandle ?? (va.pvName ? this.persistentVolumes.get(va.pvName)?.volumeHandle : undefined);
    return { name: va.name, volumeId, nodeName: va.nodeName, nodeId: this.nodeIdOf(va.nodeName), attached: va.attached, deleting: va.deleting };
  }

  /** Every VolumeAttachment of our driver, resolved. */
  attachments(): AttachmentView[] {
    return [...this.volumeAttachments.values()].map((va) => this.resolve(va));
  }

  attachmentsOfVolume(volumeId: string): AttachmentView[] {
    return this.attachments().filter((a) => a.volumeId === volumeId);
  }

  /**
   * DeleteVolume's question: on which nodes does a VolumeAttachment for this
   * volume exist (attaching, attached or detaching alike)? UNAVAILABLE while
   * the mirrors have never synced: "no VolumeAttachment" cannot be known yet.
   * After that the last known state answers, even while the API is down.
   */
  volumeAttachmentNodes(volumeId: string): string[] {
    if (!this.synced) throw unavailable(`cannot confirm that volume ${volumeId} has no VolumeAttachment: the Kubernetes API has not been read yet; retry later`);
    return this.attachmentsOfVolume(volumeId).map((a) => a.nodeName || a.name);
  }
}
