// The configuration file's shape, its defaults and its per-key rules, in one
// place: the types in types.ts are inferred from these schemas, and every map
// is strict (an unknown key is refused, named). Rules that belong to a contract
// (portals, IQNs, the node topology key, endpoints) are called, not restated.
//
// valibot, not zod: zod 4 (core + classic, dozens of ESM files) costs 60–150 ms to
// import on this (loaded) machine, zod/mini as much, against a ~400 ms start-up; valibot is
// one tree-shakeable file that imports in ~5 ms with the same API shape.
import { isAbsolute, normalize } from 'node:path';
import { hostname } from 'node:os';
import * as v from 'valibot';
import { DEFAULT_IQN_PREFIX, isValidIqn, NODE_TOPOLOGY_KEY } from '../contracts/nodeid.js';
import { parsePortal } from '../contracts/publish-context.js';
import { parseEndpoint } from '../csi/endpoint.js';
import { issueKey } from '../store/check.js';
import { ConfigError } from './error.js';

export const DEFAULT_DRIVER_NAME = 'sinter.csi.io';
export const BACKEND_NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/;
const DRIVER_NAME_RE = /^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$/;
const IQN_PREFIX_RE = /^(?:iqn\.\d{4}-\d{2}\.[A-Za-z0-9.:-]+[:.]|eui\.|naa\.)$/;
const METRICS_ADDRESS_RE = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/;
export const DEFAULT_RESYNC_SECONDS = 60;
export const DEFAULT_GRACE_SECONDS = 120;

// ---- building blocks ------------------------------------------------------

/** A map whose keys are exactly `entries`' (anything else: "unknown key", named by the key). */
export function strict<const E extends v.ObjectEntries>(entries: E) {
  const allowed = Object.keys(entries).join(', ');
  // valibot takes an array for an object (its indexes as keys); a list is not a map here.
  return v.pipe(isMap('must be a map'), v.strictObject(entries, (issue) => (issue.expected === 'never' ? `unknown key (allowed: ${allowed})` : 'must be a map')));
}

const isMap = (message: string) => v.custom<Record<string, unknown>>((x) => typeof x === 'object' && x !== null && !Array.isArray(x), message);

/** A strict map that may be left out (its defaults apply). */
export const section = <const E extends v.ObjectEntries>(entries: E) => v.optional(strict(entries), {} as never);

const MUST_STR = 'must be a non-empty string';
export const str = v.pipe(v.string(MUST_STR), v.nonEmpty(MUST_STR));

/** Absolute, normalized, without a trailing slash. */
export const absPath = v.pipe(
  str,
  v.check(isAbsolute, (i) => `"${String(i.input)}" must be an absolute path`),
  v.transform((s) => {
    const n = normalize(s);
    return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
  }),
);

const numeric = (msg: string) =>
  v.pipe(
    v.custom<number | string>((x) => typeof x === 'number' || (typeof x === 'string' && x.trim() !== ''), msg),
    v.transform((x) => Number(x)),
  );

/** A number (YAML may quote it) from min to max. */
export const num = (min: number, max: number) => {
  const msg = `must be a number from ${min} to ${max}`;
  return v.pipe(numeric(msg), v.check((n) => Number.isFinite(n) && n >= min && n <= max, msg));
};

export const int = (min: number, max: number) => v.pipe(num(min, max), v.integer('must be a whole number'));

export const oneOf = <const T extends readonly [string, ...string[]]>(options: T) => v.picklist(options, `must be one of ${options.join(', ')}`);

export const bool = v.boolean('must be true or false');

/** A map of strings (numbers and booleans are written as strings); absent or null = {}. */
export const strMap = v.nullish(
  v.pipe(isMap('must be a map of strings'), v.record(v.string(), v.pipe(v.union([v.string(), v.number(), v.boolean()], 'must be a string'), v.transform(String)))),
  {},
);

/** A rule that throws (a contract's parser) as a check whose message is the rule's own. */
const rule = <T>(fn: (x: T) => unknown) =>
  v.rawCheck<T>(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    try {
      fn(dataset.value);
    } catch (e) {
      addIssue({ message: (e as Error).message });
    }
  });

const prefixMsg = (i: v.BaseIssue<unknown>) => `${JSON.stringify(i.input)} must look like iqn.YYYY-MM.reversed.domain: (ending in : or .)`;
const iqnPrefix = v.pipe(str, v.regex(IQN_PREFIX_RE, prefixMsg));

// ---- sections ---------------------------------------------------------------

/** `${VAR}` in a portal comes from the environment, as Kubernetes hands a pod its host IP. */
const expandEnv = v.rawTransform<string, string>(({ dataset, addIssue, NEVER }) => {
  let missing: string | undefined;
  const out = dataset.value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
    const val = process.env[name];
    if (!val) missing ??= name;
    return val ?? '';
  });
  if (missing === undefined) return out;
  addIssue({ message: `environment variable ${missing} is not set` });
  return NEVER;
});

/** Cinder's iscsi_helper settings for a backend with `export: iscsi`. */
export const iscsiSchema = strict({
  helper: v.optional(oneOf(['tgt']), 'tgt'),
  /** Portals handed to nodes in publish_context (`host:port`); `${VAR}` is read from the environment. */
  portals: v.pipe(
    v.array(v.pipe(str, expandEnv, rule(parsePortal)), 'must list at least one portal (host:port)'),
    v.minLength(1, 'must list at least one portal (host:port)'),
  ),
  /** Target names: this prefix + volume id. */
  iqnPrefix: v.optional(iqnPrefix, DEFAULT_IQN_PREFIX),
  /** tgtd's management port (`tgtd -C N`); 0 = its default. */
  controlPort: v.optional(int(0, 32767), 0),
  writeCache: v.optional(bool, true),
  blockSize: v.optional(v.pipe(int(512, 4096), v.check((n): n is 512 | 4096 => n === 512 || n === 4096, 'must be 512 or 4096'), v.transform((n) => n as 512 | 4096)), 512),
  /** How often the exports are checked against the records (tgtd forgets everything when it restarts). */
  reconcileSeconds: v.optional(num(1, 86400), 30),
});

export const backendSchema = v.pipe(
  strict({
    name: v.pipe(
      str,
      v.regex(BACKEND_NAME_RE, (i) => `"${String(i.input)}" must be lower-case letters, digits and '-', at most 32 characters`),
      // Volume ids are `<backend>-<uuid>`; `static-<name>` is the static volumes' handle (src/controller/static-volumes.ts).
      v.check((n) => n !== 'static' && !n.startsWith('static-'), (i) => `"${String(i.input)}" is reserved: volume handles starting with "static-" name static (pre-provisioned) volumes`),
    ),
    driver: v.optional(oneOf(['file']), 'file'),
    dataDir: absPath,
    /** Labels the scheduler's filters match against StorageClass parameters (`type: ssd`). */
    labels: strMap,
    /** Topology segments of the nodes that can reach this backend; empty = every node (`sinter all`: this node). */
    topology: strMap,
    /** Cinder's max_over_subscription_ratio for thin (sparse) images. */
    overSubscriptionRatio: v.optional(num(1, 1000), 1),
    /** Cinder's reserved_percentage: part of the physical space never handed out. */
    reservedPercent: v.optional(num(0, 99), 0),
    /** Caps the backend below its filesystem's size; 0 = the filesystem's size. */
    capacityBytes: v.optional(int(0, Number.MAX_SAFE_INTEGER), 0),
    /** How nodes reach the images: `local` (loop-attach the file, same host) or `iscsi` (tgtd exports). */
    export: v.optional(oneOf(['local', 'iscsi']), 'local'),
    iscsi: v.optional(iscsiSchema),
  }),
  v.forward(
    v.check((b) => (b.export === 'iscsi') === (b.iscsi !== undefined), (i) => (i.input.export === 'iscsi' ? 'is required with export: iscsi (at least portals)' : 'only applies with export: iscsi')),
    ['iscsi'],
  ),
);

export const fcSchema = section({
  /** How long connecting an FC LUN keeps scanning and waiting for it (and its multipath map). */
  scanTimeoutSeconds: v.optional(num(1, 600), 30),
  /** How long disconnecting waits for deleted paths to disappear. */
  removeTimeoutSeconds: v.optional(num(1, 600), 30),
});

/** The kernel iSCSI initiator's waits (initiator: kernel). */
export const iscsiNodeSchema = section({
  /** How long staging waits for the LUN's block device after login and scan. */
  deviceTimeoutSeconds: v.optional(num(1, 600), 30),
  /** With several portals: how long staging waits for multipathd to build the map over the paths (then uses one path, with a warning). */
  multipathWaitSeconds: v.optional(num(0, 600), 5),
});

const notRoot = v.check((p: string) => p !== '/', 'must not be "/"');

export const nodeSchema = section({
  maxVolumesPerNode: v.optional(int(0, 1_000_000), 0),
  /** The controller reads the node segment from the node id (its host): a different value here would make the two disagree. */
  topology: v.pipe(
    strMap,
    v.rawCheck(({ dataset, addIssue }) => {
      if (dataset.typed && NODE_TOPOLOGY_KEY in dataset.value)
        addIssue({
          message: 'is always the node name (the host part of the node id); remove it',
          path: [{ type: 'object', origin: 'value', input: dataset.value, key: NODE_TOPOLOGY_KEY, value: dataset.value[NODE_TOPOLOGY_KEY] }],
        });
    }),
  ),
  /** Default: `<first backend's dataDir>/node-state` for `sinter all`, else /var/lib/sinter/node. */
  stateDir: v.optional(absPath),
  iscsiInitiatorName: v.optional(v.pipe(str, v.check(isValidIqn, (i) => `"${String(i.input)}" is not a valid iSCSI name`))),
  initiatorNameFile: v.optional(absPath, '/etc/iscsi/initiatorname.iscsi'),
  /** `kernel` (iscsiadm + iscsid), `userspace` (libiscsi: qemu-nbd, nbdfuse, loop), `auto` (kernel when iscsi_tcp is there). */
  initiator: v.optional(oneOf(['kernel', 'userspace', 'auto']), 'auto'),
  /** Where sysfs is mounted (FC HBAs, SCSI disks, multipath maps); /sys on a node. */
  sysfsRoot: v.optional(v.pipe(absPath, notRoot), '/sys'),
  /** Where device nodes live (disk/by-path, mapper/); /dev on a node. */
  devRoot: v.optional(v.pipe(absPath, notRoot), '/dev'),
  fc: fcSchema,
  iscsi: iscsiNodeSchema,
  /**
   * What start-up does with an iSCSI attachment (session + LUN device) that no
   * stage record explains and nothing uses: `report` it only (the default: it
   * may be an administrator's), or `clean` it up (tear it down through the
   * connector). One that is in use is only ever reported.
   */
  orphanSessions: v.optional(oneOf(['report', 'clean']), 'report'),
  /** Targets whose orphan sessions `clean` may tear down (sinter's own); default: the default prefix and every iSCSI backend's. */
  orphanTargetPrefixes: v.optional(
    v.pipe(
      v.array(v.pipe(v.string(prefixMsg), v.regex(IQN_PREFIX_RE, prefixMsg)), 'must be a non-empty list of target name prefixes such as "iqn.2026-11.io.sinter:"'),
      v.minLength(1, 'must be a non-empty list of target name prefixes such as "iqn.2026-11.io.sinter:"'),
    ),
  ),
});

/** The controller's own state (not a backend's): records of static volumes' publishes. Default: `<first backend's dataDir>/controller-state`. */
export const controllerSchema = section({ stateDir: v.optional(absPath) });

export const execSchema = section({
  mode: v.optional(oneOf(['direct', 'nsenter', 'chroot']), 'direct'),
  hostRoot: v.optional(absPath, '/host'),
  timeoutSeconds: v.optional(num(1, 3600), 120),
  /** With mode nsenter: whose namespaces to enter, the host's (PID 1) or iscsid's (where it runs in a container of its own). */
  nsenterTarget: v.optional(oneOf(['host', 'iscsid']), 'host'),
});

/** The controller's Kubernetes API access (VolumeAttachment / CSINode / PersistentVolume reads); `enabled` is resolved in kubernetes.ts. */
export const kubernetesSchema = section({
  enabled: v.optional(
    v.pipe(
      v.union([v.picklist(['auto', 'true', 'false']), v.boolean()], 'must be auto, true or false'),
      v.transform((e) => (e === 'true' ? true : e === 'false' ? false : e)),
    ),
    'auto',
  ),
  /** A kubeconfig file; absent = the pod's service account (in-cluster). */
  kubeconfig: v.optional(absPath),
  /** How often the reconciler compares backend publishes with VolumeAttachments. */
  resyncSeconds: v.optional(num(0.1, 86_400), DEFAULT_RESYNC_SECONDS),
  /** How long a publish may lack a VolumeAttachment before it is revoked. */
  graceSeconds: v.optional(num(0.1, 86_400), DEFAULT_GRACE_SECONDS),
});

/** `host:port`, `[v6]:port` or `:port` (every interface; port 0 picks a free one); empty or null = no metrics endpoint. */
const metricsAddress = v.pipe(
  v.nullish(v.string(MUST_STR)),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    const s = dataset.value;
    if (s === undefined || s === null || s === '') return undefined;
    const m = METRICS_ADDRESS_RE.exec(s);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port > 65535) {
      addIssue({ message: `"${s}" must be host:port, [ipv6]:port or :port (every interface), port 0-65535` });
      return NEVER;
    }
    /** `host` empty = every interface; `raw` as written, for logs and errors. */
    return { host: m[1] ?? m[2] ?? '', port, raw: s };
  }),
);

/** The whole file (and the flags, merged in by load.ts under the keys they set). */
export const fileSchema = strict({
  driverName: v.optional(v.pipe(str, v.regex(DRIVER_NAME_RE, (i) => `"${String(i.input)}" must be a DNS-style name of at most 63 characters`)), DEFAULT_DRIVER_NAME),
  endpoint: v.optional(v.pipe(str, rule(parseEndpoint)), 'unix:///csi/csi.sock'),
  logLevel: v.optional(oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']), 'info'),
  nodeName: v.optional(str, () => process.env.NODE_NAME || hostname()),
  /** Explicit node id; otherwise built from nodeName + initiator properties. */
  nodeId: v.optional(str),
  kubeletRoots: v.optional(
    v.pipe(
      v.array(absPath, 'must be a non-empty list of absolute paths'),
      v.minLength(1, 'must be a non-empty list of absolute paths'),
      v.check((r) => !r.includes('/'), '"/" cannot be a kubelet root: every path on the host would be fair game'),
    ),
    ['/var/lib/kubelet'],
  ),
  backends: v.optional(v.array(backendSchema, 'must be a list'), []),
  node: nodeSchema,
  controller: controllerSchema,
  exec: execSchema,
  shutdownGraceSeconds: v.optional(num(0, 600), 10),
  kubernetes: kubernetesSchema,
  /** Where /metrics (Prometheus text format) is served over HTTP; absent = no metrics endpoint, no port opened. */
  metricsAddress: v.optional(metricsAddress),
});

// ---- parsing ------------------------------------------------------------------

/** Parses `raw` with `schema`; the first problem is thrown as a ConfigError naming its key (under `prefix`). */
export function parseConfig<S extends v.GenericSchema>(schema: S, raw: unknown, prefix = '', rename?: (key: string) => string): v.InferOutput<S> {
  const r = v.safeParse(schema, raw, { abortEarly: true });
  if (r.success) return r.output;
  const issue = r.issues[0];
  const key = issueKey(issue, prefix);
  throw new ConfigError(rename ? rename(key) : key || 'config', issue.message);
}
