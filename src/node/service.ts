import { realpath } from 'node:fs/promises';
import type { Logger } from 'pino';
import { answersAtOnce } from '../csi/call-context.js';
import { decodePublishContext, encodePublishContext, parseRbdAttach, PublishContextError, RBD_ATTACH_KEY, type PublishContext } from '../contracts/publish-context.js';
import { failedPrecondition, invalidArgument } from '../errors/domain-error.js';
import { KeyedLock } from '../csi/locks.js';
import type { NodeImpl } from '../csi/messages.js';
import type { Executor } from '../exec/run.js';
import { parseCapability } from '../csi/capability.js';
import { Connectors, type Connector } from './connectors/connector.js';
import { FcConnector, type FcConnectorOptions } from './connectors/fc.js';
import { LocalConnector } from './connectors/local.js';
import { SysfsTree } from './connectors/sysfs.js';
import type { NodeDeps } from './context.js';
import { expandVolume } from './expand.js';
import type { LuksPbkdf } from './encryption.js';
import { Mounter } from './mount.js';
import { cleanOrphans, findOrphans, type Orphan, type OrphanSessions } from './orphans.js';
import { KubeletPaths } from './paths.js';
import { publishVolume, unpublishVolume } from './publish.js';
import { ReadOnlyBlock } from './readonly-block.js';
import { stageVolume, unstageVolume } from './stage.js';
import { StageState } from './stage-state.js';
import { volumeStats } from './stats.js';
import { checkVolumeId } from './volume-id.js';

export interface NodeServiceConfig {
  driverName: string;
  nodeName: string;
  nodeId: string;
  /** 0 = unlimited (left out of NodeGetInfo). */
  maxVolumesPerNode: number;
  topology: Record<string, string>;
  /** Directories staging and target paths must be inside (kubelet's root dir). */
  kubeletRoots: string[];
  /** Directories whose image files the local connector may attach. */
  localRoots: string[];
  /** Where per-volume stage records live; must survive plugin restarts. */
  stateDir: string;
  /** sysfs and /dev as the SAN connectors see them; default /sys and /dev. */
  sysfsRoot?: string;
  devRoot?: string;
  fc?: { scanTimeoutSeconds: number; removeTimeoutSeconds: number };
  /** iSCSI attachments no record explains and nothing uses: only reported (default), or torn down at start. */
  orphanSessions?: OrphanSessions;
  /** Key-derivation cost of new LUKS headers (encrypted volumes); unset: cryptsetup's defaults. */
  luksPbkdf?: LuksPbkdf;
}

export interface NodeServiceDeps {
  config: NodeServiceConfig;
  exec: Executor;
  log: Logger;
  /** Transports beyond `local` (iscsi, fc), built by the caller from the node config. */
  connectors?: Connector[];
  /** Mount table to read; /proc/1/mountinfo when host commands run through nsenter. Default /proc/self/mountinfo. */
  mountInfoPath?: string;
  /** Overrides for the fc connector (a simulated sysfs tree, shorter backoff in tests). */
  fc?: Partial<FcConnectorOptions>;
}

export type AttachOperation = 'stage' | 'unstage' | 'publish' | 'unpublish';

/** What the metrics endpoint (src/metrics) reads of this node; kept here because the service sees every stage and unstage. */
export interface NodeStats {
  /** Transports this node's connectors serve (local, fc, iscsi …). */
  readonly transports: string[];
  /** volume id → transport, for every volume whose stage record says `staged`. */
  readonly staged: Map<string, string>;
  /** Attachments the last orphan scan (at start) found that no stage record explains, by transport. */
  orphanSessions: Record<string, number>;
}

/** Told how long each successful stage, unstage, publish and unpublish took; must not throw. */
export type AttachObserver = (transport: string, operation: AttachOperation, seconds: number) => void;

const CAPABILITIES = ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'EXPAND_VOLUME', 'VOLUME_CONDITION'] as const;

function publishContextOf(raw: unknown): PublishContext {
  try {
    return decodePublishContext((raw ?? {}) as Record<string, string>);
  } catch (e) {
    if (e instanceof PublishContextError) throw invalidArgument(`${e.message}; it comes from ControllerPublishVolume of this driver`);
    throw e;
  }
}

/**
 * The attach mode the StorageClass asks for (volume_context rbdAttach, from
 * its parameter) joins an rbd connection: the stage record keeps it, so
 * unstage, expand and the orphan scan reach the attachment the way it was made.
 */
function withRbdAttach(ctx: PublishContext, volumeContext: Record<string, string>): PublishContext {
  if (ctx.transport !== 'rbd') return ctx;
  const attach = parseRbdAttach(volumeContext[RBD_ATTACH_KEY], `volume_context.${RBD_ATTACH_KEY}`, (m) => invalidArgument(`${m} (StorageClass parameter ${RBD_ATTACH_KEY})`));
  return attach ? { ...ctx, attach } : ctx;
}

/** publish_context as recorded at stage time (already validated then). */
function recordedContext(raw: Record<string, string>): PublishContext {
  try {
    return decodePublishContext(raw);
  } catch (e) {
    throw failedPrecondition(`the node's record of this volume has an unusable connection (${(e as Error).message}); unstage and stage it again`);
  }
}

function mapOf(raw: unknown): Record<string, string> {
  return raw && typeof raw === 'object' ? (raw as Record<string, string>) : {};
}

function bytesOf(raw: unknown, field: string): number | undefined {
  if (raw === undefined || raw === null) return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw invalidArgument(`${field} must be a non-negative number of bytes`);
  return n === 0 ? undefined : n;
}

/**
 * The CSI Node service. Each handler checks the request's fields, takes the
 * volume's lock (and the path's), and hands the work to one module; it holds
 * no storage logic of its own.
 */
export class NodeService {
  private readonly cfg: NodeServiceConfig;
  private readonly log: Logger;
  private readonly deps: NodeDeps;
  private readonly locks = new KeyedLock();
  readonly stats: NodeStats;
  /** Set by the metrics endpoint when it is configured. */
  attachObserver?: AttachObserver;

  constructor(deps: NodeServiceDeps) {
    const { config, exec, log } = deps;
    if (!config.nodeId) throw new Error('node service: nodeId is empty');
    if (!config.kubeletRoots.length) throw new Error('node service: no kubelet roots configured');
    if (!config.stateDir.startsWith('/')) throw new Error(`node service: stateDir "${config.stateDir}" is not absolute`);
    this.cfg = config;
    this.log = log;
    const fc = new FcConnector(exec, {
      sysfs: new SysfsTree(config.sysfsRoot ?? '/sys', config.devRoot ?? '/dev'),
      scanTimeoutMs: (config.fc?.scanTimeoutSeconds ?? 30) * 1000,
      removeTimeoutMs: (config.fc?.removeTimeoutSeconds ?? 30) * 1000,
      mountInfoPath: deps.mountInfoPath,
      log: log.child({ connector: 'fc' }),
      ...deps.fc,
    });
    this.deps = {
      exec,
      log,
      mounter: new Mounter(exec, deps.mountInfoPath),
      state: new StageState(config.stateDir),
      connectors: new Connectors([new LocalConnector(exec, config.localRoots), fc, ...(deps.connectors ?? [])]),
      paths: new KubeletPaths(config.kubeletRoots),
      roBlock: new ReadOnlyBlock(exec),
      devices: new KeyedLock(),
      sysfsRoot: config.sysfsRoot,
      devRoot: config.devRoot,
      luksPbkdf: config.luksPbkdf,
    };
    this.stats = { transports: this.deps.connectors.all().map((c) => c.transport), staged: new Map(), orphanSessions: {} };
  }

  /**
   * Follows the volume's stage record after a stage or unstage that failed (its record may say anything) for the
   * staged-volumes gauge. One that succeeded needs no read: a stage leaves the record staged, an unstage none.
   */
  private async track(volumeId: string): Promise<void> {
    const rec = await this.deps.state.get(volumeId).catch(() => undefined);
    if (rec?.phase === 'staged') this.stats.staged.set(volumeId, rec.publishContext.transport ?? 'unknown');
    else this.stats.staged.delete(volumeId);
  }

  /** Runs one attach operation, timing it for attachObserver when it succeeds. */
  private async timed<T>(operation: AttachOperation, transport: (out: T) => string | undefined, fn: () => Promise<T>): Promise<T> {
    const started = performance.now();
    const out = await fn();
    const t = this.attachObserver && transport(out);
    if (t) this.attachObserver!(t, operation, (performance.now() - started) / 1000);
    return out;
  }

  /** Loads the node's records, drops temp files of interrupted writes, and logs anything out of step with the host. */
  async start(): Promise<void> {
    await this.deps.state.init();
    const { records, strayTemps } = await this.deps.state.list();
    await this.deps.state.removeStrayTemps(strayTemps);
    this.deps.state.seed(records);
    let orphans = await this.orphans();
    // Devices from sinter's roots (and, with orphanSessions: clean, iSCSI attachments) that no record
    // explains and nothing uses are leftovers: tear them down.
    const detached = await cleanOrphans(this.deps, orphans, recordedContext);
    for (const r of detached)
      this.log.warn({ device: r.device, source: r.source, transport: r.transport }, 'tore down a device no record of this node explains and nothing used');
    if (detached.length) orphans = await this.orphans();
    this.stats.orphanSessions = {};
    for (const o of orphans) if (o.kind === 'untracked-device') this.stats.orphanSessions[o.transport] = (this.stats.orphanSessions[o.transport] ?? 0) + 1;
    for (const r of records) if (r.phase === 'staged') this.stats.staged.set(r.volumeId, r.publishContext.transport ?? 'unknown');
    for (const o of orphans) this.log.warn({ orphan: o.kind, ...o }, 'node state out of step with the host');
    this.log.info({ volumes: records.length, orphans: orphans.length, detached: detached.length, stateDir: this.cfg.stateDir }, 'node service started');
  }

  /** The current orphan report (see findOrphans); read-only. `sinter fsck` uses it on a service that was never started. */
  orphans(): Promise<Orphan[]> {
    return findOrphans(this.deps, recordedContext, this.cfg.orphanSessions ?? 'report');
  }

  /** The RPC's own locks: ABORTED at once while another call holds the volume or the path. */
  private volumeLock<T>(volumeId: string, paths: string[], fn: () => Promise<T>): Promise<T> {
    return this.locks.exclusive([`volume:${volumeId}`, ...paths.map((p) => `path:${p}`)], fn, describeNodeKey);
  }

  handlers(): NodeImpl {
    const d = this.deps;
    return {
      NodeGetCapabilities: answersAtOnce(async () => ({ capabilities: CAPABILITIES.map((type) => ({ rpc: { type } })) })),

      NodeGetInfo: answersAtOnce(async () => ({
        node_id: this.cfg.nodeId,
        ...(this.cfg.maxVolumesPerNode > 0 ? { max_volumes_per_node: this.cfg.maxVolumesPerNode } : {}),
        ...(Object.keys(this.cfg.topology).length ? { accessible_topology: { segments: { ...this.cfg.topology } } } : {}),
      })),

      NodeStageVolume: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        if (!req.staging_target_path) throw invalidArgument('staging_target_path is required');
        const capability = parseCapability(req.volume_capability);
        const checked = await d.paths.check('staging_target_path', req.staging_target_path);
        const publishContext = withRbdAttach(publishContextOf(req.publish_context), mapOf(req.volume_context));
        await this.volumeLock(volumeId, [checked.resolved], async () => {
          // Looked at again under the lock: an unstage that held it may have removed the directory meanwhile.
          const staging = await d.paths.check('staging_target_path', req.staging_target_path);
          try {
            await this.timed('stage', () => publishContext.transport, () =>
              stageVolume(d, {
                volumeId,
                stagingPath: staging.path,
                stagingResolved: staging.resolved,
                stagingExists: staging.exists,
                capability,
                publishContext,
                volumeContext: mapOf(req.volume_context),
                secrets: mapOf(req.secrets),
              }),
            );
          } catch (e) {
            await this.track(volumeId);
            throw e;
          }
          // The record stageVolume wrote last says staged, from this connection.
          this.stats.staged.set(volumeId, encodePublishContext(publishContext).transport ?? 'unknown');
        });
        return {};
      },

      NodeUnstageVolume: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        const staging = await d.paths.check('staging_target_path', req.staging_target_path);
        await this.volumeLock(volumeId, [staging.resolved], async () => {
          try {
            // unstageVolume answers the transport of the record it removed (undefined: there was none).
            await this.timed('unstage', (transport) => transport, () =>
              unstageVolume(d, { volumeId, stagingPath: staging.path, stagingResolved: staging.resolved }, recordedContext),
            );
          } catch (e) {
            await this.track(volumeId);
            throw e;
          }
          this.stats.staged.delete(volumeId);
        });
        return {};
      },

      NodePublishVolume: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        if (!req.target_path) throw invalidArgument('target_path is required');
        const capability = parseCapability(req.volume_capability);
        const target = await d.paths.check('target_path', req.target_path);
        if (!req.staging_target_path)
          throw failedPrecondition('staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME); call NodeStageVolume first and pass its path');
        const staging = await d.paths.check('staging_target_path', req.staging_target_path);
        if (target.resolved === staging.resolved || target.resolved.startsWith(`${staging.resolved}/`) || staging.resolved.startsWith(`${target.resolved}/`))
          throw invalidArgument('target_path and staging_target_path must be separate paths, neither inside the other');
        // The staging path too: a call on another volume id that names it (an unpublish or unstage) must not take
        // the stage away between the check that it is mounted and the bind from it.
        await this.volumeLock(volumeId, [target.resolved, staging.resolved], async () => {
          // Looked at again under the lock: an unstage that held it may have removed the directory meanwhile.
          const stagingNow = await d.paths.check('staging_target_path', req.staging_target_path);
          return this.timed('publish', () => this.stats.staged.get(volumeId), () => publishVolume(d, {
            volumeId,
            stagingPath: stagingNow.path,
            stagingResolved: stagingNow.resolved,
            targetPath: target.path,
            targetResolved: target.resolved,
            capability,
            readonly: req.readonly === true,
          }));
        });
        return {};
      },

      NodeUnpublishVolume: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        const checked = await d.paths.check('target_path', req.target_path);
        await this.volumeLock(volumeId, [checked.resolved], async () => {
          // Looked at again under the lock: a publish that held it may have created the target meanwhile.
          const target = await d.paths.check('target_path', req.target_path);
          return this.timed('unpublish', () => this.stats.staged.get(volumeId), () =>
            unpublishVolume(
              d,
              { volumeId, targetPath: target.path, targetResolved: target.resolved, targetExists: target.exists },
              (rec) => realpath(rec.stagingPath).catch(() => rec.stagingPath),
            ),
          );
        });
        return {};
      },

      NodeGetVolumeStats: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        const where = await d.paths.lookup('volume_path', req.volume_path);
        // Read-only and short: waits for a stage or publish in progress rather than failing kubelet's poll.
        const s = await this.locks.run(`volume:${volumeId}`, () =>
          volumeStats(d, { volumeId, volumePath: where.path, resolved: where.resolved }, recordedContext),
        );
        return { usage: s.usage, volume_condition: s.condition };
      },

      NodeExpandVolume: async (req) => {
        const volumeId = checkVolumeId(req.volume_id);
        if (!req.volume_path) throw invalidArgument('volume_path is required');
        const capability = req.volume_capability ? parseCapability(req.volume_capability) : undefined;
        const requiredBytes = bytesOf(req.capacity_range?.required_bytes, 'capacity_range.required_bytes');
        const limitBytes = bytesOf(req.capacity_range?.limit_bytes, 'capacity_range.limit_bytes');
        if (requiredBytes && limitBytes && requiredBytes > limitBytes)
          throw invalidArgument('capacity_range.required_bytes is larger than capacity_range.limit_bytes');
        const where = await d.paths.lookup('volume_path', req.volume_path);
        const capacity = await this.volumeLock(volumeId, [], () =>
          expandVolume(d, { volumeId, volumePath: where.path, requiredBytes, access: capability?.access }, recordedContext),
        );
        return { capacity_bytes: capacity };
      },
    };
  }
}

const describeNodeKey = (key: string) =>
  key.startsWith('volume:') ? `volume ${key.slice('volume:'.length)}` : `path ${JSON.stringify(key.slice('path:'.length))}`;
