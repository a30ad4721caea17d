import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { Backend, BackendCapacity, VolumeState } from '../backends/backend.js';
import type { ExportLoopStats } from '../controller/export-loop.js';
import type { ReconcilerStats } from '../controller/reconcile.js';
import type { RpcObserver } from '../csi/server.js';
import type { AttachObserver, NodeStats } from '../node/service.js';

// prom-client (https://github.com/siimon/prom-client) writes the text format,
// the default process/nodejs metrics and histogram buckets; this module only
// says which figures exist and where they are read from. Figures that domain
// code already keeps (the reconciler's and export loop's counters, the node's
// staged volumes) are read at scrape time, not copied: prom-client is loaded
// only when --metrics-address is set, so the domain cannot depend on it.

/** Where the figures come from; what a role does not run is left out. */
export interface MetricsSources {
  /** Set to count and time every CSI RPC. */
  setRpcObserver(fn: RpcObserver): void;
  backends?: Map<string, Backend>;
  reconciler?: { readonly stats: ReconcilerStats };
  exportLoop?: { readonly stats: ExportLoopStats };
  node?: { readonly stats: NodeStats; attachObserver?: AttachObserver };
  log: Logger;
}

const VOLUME_STATES: readonly VolumeState[] = ['creating', 'available', 'in-use', 'deleting', 'error', 'error_deleting'];
/** CSI RPCs run from a millisecond (Probe) to minutes (mkfs of a big volume, an iSCSI login that retries). */
const RPC_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const ATTACH_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** Sets a counter that domain code keeps as a plain number (reset, then inc: prom-client counters have no set). */
function setCounter(c: Counter<string>, values: Iterable<[Record<string, string>, number]>): void {
  c.reset();
  for (const [labels, v] of values) c.inc(labels, v);
}

/** The label values `keys` names, each 0 unless `counts` has it, plus any other key `counts` has. */
function zeroFilled(keys: Iterable<string>, ...counts: Record<string, number>[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const k of keys) out.set(k, 0);
  for (const c of counts) for (const [k, v] of Object.entries(c)) out.set(k, (out.get(k) ?? 0) + v);
  return out;
}

/** A registry with sinter's metrics (`sinter_*`) and prom-client's default process metrics. */
export function buildRegistry(src: MetricsSources): Registry {
  const register = new Registry();
  const registers = [register];
  collectDefaultMetrics({ register });

  const rpcs = new Counter({ name: 'sinter_rpc_requests_total', help: 'CSI RPCs finished, by method and gRPC status code.', labelNames: ['method', 'code'], registers });
  const rpcSeconds = new Histogram({
    name: 'sinter_rpc_duration_seconds',
    help: 'Time from a CSI RPC arriving to its answer, by method and gRPC status code.',
    labelNames: ['method', 'code'],
    buckets: RPC_BUCKETS,
    registers,
  });
  src.setRpcObserver((method, code, seconds) => {
    rpcs.inc({ method, code });
    rpcSeconds.observe({ method, code }, seconds);
  });

  if (src.backends) addBackendMetrics(register, src.backends, src.log);
  if (src.exportLoop || src.reconciler) addReconcileMetrics(register, src);
  if (src.node) addNodeMetrics(register, src.node);
  return register;
}

function addBackendMetrics(register: Registry, backends: Map<string, Backend>, log: Logger): void {
  const registers = [register];
  // capacity() is one statfs and in-memory sums: each gauge asks for itself.
  const capacities = async () => {
    const out = new Map<string, BackendCapacity>();
    await Promise.all(
      [...backends].map(async ([name, b]) => {
        try {
          out.set(name, await b.capacity());
        } catch (e) {
          // One unreadable backend leaves its gauges out; the rest of the scrape stands.
          log.warn({ backend: name, err: (e as Error).message }, "metrics: cannot read the backend's capacity");
        }
      }),
    );
    return out;
  };
  const capacityGauge = (name: string, help: string, pick: (c: BackendCapacity) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['backend'],
      registers,
      async collect() {
        this.reset();
        for (const [backend, c] of await capacities()) this.set({ backend }, pick(c));
      },
    });
  capacityGauge('sinter_backend_capacity_bytes', 'Size of the backend: its filesystem, or capacityBytes when that is smaller.', (c) => c.totalBytes);
  capacityGauge('sinter_backend_provisioned_bytes', 'Sum of the sizes of the backend\'s volumes (what thin provisioning has promised).', (c) => c.provisionedBytes);
  capacityGauge(
    'sinter_backend_available_bytes',
    'What the scheduler may still hand out on the backend, after over-subscription and the reserve; a CreateVolume larger than this fails with RESOURCE_EXHAUSTED.',
    (c) => c.availableBytes,
  );
  new Gauge({
    name: 'sinter_backend_used_bytes',
    help: 'Bytes the backend\'s volumes and snapshots really occupy (allocated blocks); counted in the background, from every second (few volumes) to every minute (10,000).',
    labelNames: ['backend'],
    registers,
    async collect() {
      this.reset();
      await Promise.all(
        [...backends].map(async ([backend, b]) => {
          if (!b.usedBytes) return;
          try {
            this.set({ backend }, await b.usedBytes());
          } catch (e) {
            log.warn({ backend, err: (e as Error).message }, 'metrics: cannot read the backend\'s used bytes');
          }
        }),
      );
    },
  });
  new Gauge({
    name: 'sinter_volumes',
    help: 'Volumes on the backend by Cinder state (creating, available, in-use, deleting, error, error_deleting).',
    labelNames: ['backend', 'state'],
    registers,
    collect() {
      this.reset();
      for (const [backend, b] of backends) {
        // The backend's in-memory records: 10,000 volumes are counted in about a millisecond.
        const n = new Map<string, number>(VOLUME_STATES.map((s) => [s, 0]));
        for (const v of b.volumes()) n.set(v.state, (n.get(v.state) ?? 0) + 1);
        for (const [state, count] of n) this.set({ backend, state }, count);
      }
    },
  });
}

function addReconcileMetrics(register: Registry, src: MetricsSources): void {
  const registers = [register];
  const backendNames = [...(src.backends?.keys() ?? [])];
  const ex = src.exportLoop?.stats;
  const rs = src.reconciler?.stats;
  const byBackend = (...counts: (Record<string, number> | undefined)[]) =>
    [...zeroFilled(backendNames, ...counts.filter((c): c is Record<string, number> => c !== undefined))].map(([backend, v]): [Record<string, string>, number] => [{ backend }, v]);
  new Counter({
    name: 'sinter_reconcile_exports_restored_total',
    help: 'Exports (one node\'s access to one volume) a publish record names that the target had lost, put back by the export reconciliation.',
    labelNames: ['backend'],
    registers,
    collect() {
      setCounter(this, byBackend(ex?.restored));
    },
  });
  new Counter({
    name: 'sinter_reconcile_exports_revoked_total',
    help: 'Exports taken away by reconciliation: publishes no VolumeAttachment held for graceSeconds (a lost detach), and target ACLs no publish record explains. backend="static" for static volumes.',
    labelNames: ['backend'],
    registers,
    collect() {
      setCounter(this, byBackend(ex?.revoked, rs?.revokedByBackend));
    },
  });
  if (ex) {
    new Counter({
      name: 'sinter_reconcile_exports_failed_passes_total',
      help: 'Export reconciliation passes that failed (the target daemon did not answer …); each is retried on the next tick.',
      labelNames: ['backend'],
      registers,
      collect() {
        setCounter(this, byBackend(ex.failures));
      },
    });
  }
  if (!rs) return;
  const plain = (name: string, help: string, kind: 'counter' | 'gauge', read: () => number) => {
    if (kind === 'counter')
      new Counter({
        name,
        help,
        registers,
        collect() {
          setCounter(this, [[{}, read()]]);
        },
      });
    else
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
  };
  plain('sinter_reconcile_passes_total', 'Passes that compared the backends\' publishes with the cluster\'s VolumeAttachments.', 'counter', () => rs.passes);
  plain('sinter_reconcile_waits_total', 'Passes skipped because the Kubernetes API was unreachable or not yet listed (nothing is revoked meanwhile).', 'counter', () => rs.waits);
  plain('sinter_reconcile_waiting', '1 while reconciliation waits for the Kubernetes API, else 0.', 'gauge', () => (rs.waiting ? 1 : 0));
  plain('sinter_reconcile_revoke_failures_total', 'Revocations that failed (retried on the next pass).', 'counter', () => rs.revokeFailures);
  plain('sinter_reconcile_pending_revocations', 'Publishes without a holding VolumeAttachment, still within the grace period.', 'gauge', () => rs.pendingRevocations);
  plain('sinter_reconcile_missing_publishes', 'VolumeAttachments that say attached while the backend has no publish for them.', 'gauge', () => rs.missingPublishes);
  plain('sinter_reconcile_missing_publishes_reported_total', 'Times such a missing publish was newly found and reported.', 'counter', () => rs.missingReported);
  plain('sinter_reconcile_last_pass_timestamp_seconds', 'When the last reconciliation pass ran (Unix time; 0 = none yet).', 'gauge', () => (rs.lastPassAt ? Date.parse(rs.lastPassAt) / 1000 : 0));
}

function addNodeMetrics(register: Registry, node: NonNullable<MetricsSources['node']>): void {
  const registers = [register];
  const { stats } = node;
  new Gauge({
    name: 'sinter_node_staged_volumes',
    help: 'Volumes staged on this node now, by transport.',
    labelNames: ['transport'],
    registers,
    collect() {
      this.reset();
      const n = zeroFilled(stats.transports);
      for (const t of stats.staged.values()) n.set(t, (n.get(t) ?? 0) + 1);
      for (const [transport, v] of n) this.set({ transport }, v);
    },
  });
  new Gauge({
    name: 'sinter_node_orphan_sessions',
    help: 'Attachments (iSCSI sessions\' LUNs, loop devices …) found at start that no stage record of this node explains, by transport; see node.orphanSessions.',
    labelNames: ['transport'],
    registers,
    collect() {
      this.reset();
      for (const [transport, v] of zeroFilled(stats.transports, stats.orphanSessions)) this.set({ transport }, v);
    },
  });
  const attach = new Histogram({
    name: 'sinter_node_attach_duration_seconds',
    help: 'Time a successful NodeStage, NodeUnstage, NodePublish or NodeUnpublish took (operation stage|unstage|publish|unpublish), by transport.',
    labelNames: ['transport', 'operation'],
    buckets: ATTACH_BUCKETS,
    registers,
  });
  node.attachObserver = (transport, operation, seconds) => attach.observe({ transport, operation }, seconds);
}
