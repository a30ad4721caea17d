// The configuration file's shape, its defaults and its per-key rules, in one
// place: the types in types.ts are inferred from these schemas, and every map
// is strict (an unknown key is refused, named). Rules that belong to a contract
// (portals, IQNs, the node topology key, endpoints) are called, not restated.
//
// valibot, not zod: zod 4 (core + classic, dozens of ESM files) costs 60–150 ms to
// import on this (loaded) machine, zod/mini as much, against a ~400 ms start-up; valibot is
// one tree-shakeable file that imports in ~5 ms with the same API shape.
import { isAbsolute, normalize } from 'node:path';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import * as v from 'valibot';
import { DEFAULT_IQN_PREFIX, DEFAULT_NQN_PREFIX, isValidIqn, isValidNqn, NODE_TOPOLOGY_KEY, validateNqnPrefix } from '../contracts/nodeid.js';
import { NVME_TCP_PORT, parsePortal, RBD_MONITOR_RE } from '../contracts/publish-context.js';
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
export const iscsiSchema = v.pipe(
  strict({
  /** `tgt` (user-space tgtd, driven by tgtadm) or `lio` (the kernel's target, written through configfs). */
  helper: v.optional(oneOf(['tgt', 'lio']), 'tgt'),
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
  /** LIO only: advertise UNMAP (`emulate_tpu`) so discards free space in the image or device; default true. */
  discard: v.optional(bool),
  /** How often the exports are checked against the records (tgtd forgets everything when it restarts, LIO at reboot). */
  reconcileSeconds: v.optional(num(1, 86400), 30),
  /**
   * tgt only: sinter opens tgtd's portals (`portals`) itself, and only once
   * every backend exporting through that tgtd has restored its exports, each
   * time tgtd starts; tgtd is started on a parking portal (e.g.
   * `--iscsi portal=127.0.0.1:3259`). Without it, initiators logging in again
   * to a restarted tgtd before the restore are refused, and open-iscsi can
   * stall on that until its replacement timeout fails their I/O.
   */
  openPortals: v.optional(bool, false),
  }),
  v.forward(
    v.check((i) => !i.openPortals || i.helper === 'tgt', 'only applies with helper: tgt (lio binds its portals with each target)'),
    ['openPortals'],
  ),
  v.forward(
    v.check((i) => !i.openPortals || i.portals.every((p) => isIP(parsePortal(p).host) !== 0), 'openPortals: tgtd binds these portals itself: each must be an IP literal (host:port or [IPv6]:port), not a host name'),
    ['portals'],
  ),
  v.forward(
    v.check((i) => i.discard === undefined || i.helper === 'lio', 'only applies with helper: lio (tgt has no such switch)'),
    ['discard'],
  ),
  v.forward(
    v.check((i) => i.helper !== 'lio' || i.portals.every((p) => isIP(parsePortal(p).host) !== 0), 'helper: lio binds its portals itself: each must be an IP literal (host:port or [IPv6]:port), not a host name'),
    ['portals'],
  ),
);

/** nvmet listens on an address, not a name: an NVMe/TCP portal is an IPv4 or IPv6 literal and a port. */
function nvmePortal(raw: string): void {
  const p = parsePortal(raw, NVME_TCP_PORT);
  if (!/^[0-9.]+$/.test(p.host) && !p.host.includes(':')) throw new Error(`portal "${raw}" must be an IP address (nvmet listens on an address, not a host name)`);
}

/** The nvmet target helper's settings for a backend with `export: nvmeof` (NVMe over TCP). */
export const nvmeofSchema = strict({
  /** Where nvmet listens and what nodes connect to (`address:port`, port 4420 by default); several give native NVMe multipath. */
  portals: v.pipe(
    v.array(v.pipe(str, expandEnv, rule(nvmePortal)), 'must list at least one portal (address:port)'),
    v.minLength(1, 'must list at least one portal (address:port)'),
  ),
  /** Subsystem NQNs: this prefix + volume id. */
  nqnPrefix: v.optional(v.pipe(str, rule(validateNqnPrefix)), DEFAULT_NQN_PREFIX),
  /** Where configfs is mounted (nvmet's tree is `<root>/nvmet`). */
  configfsRoot: v.optional(absPath, '/sys/kernel/config'),
  /** How often the exports are checked against the records (nvmet's configfs is empty after a reboot). */
  reconcileSeconds: v.optional(num(1, 86400), 30),
});

const backendName = v.pipe(
  str,
  v.regex(BACKEND_NAME_RE, (i) => `"${String(i.input)}" must be lower-case letters, digits and '-', at most 32 characters`),
  // Volume ids are `<backend>-<uuid>`; `static-<name>` is the static volumes' handle (src/controller/static-volumes.ts).
  v.check((n) => n !== 'static' && !n.startsWith('static-'), (i) => `"${String(i.input)}" is reserved: volume handles starting with "static-" name static (pre-provisioned) volumes`),
);

/** Cinder's max_over_subscription_ratio for thin (sparse) images. */
const overSubscriptionRatio = v.optional(num(1, 1000), 1);
/** Cinder's reserved_percentage: part of the physical space never handed out. */
const reservedPercent = v.optional(num(0, 99), 0);

/** The keys a backend that exports (file, lvm) has: `export` names the transport, its section configures it. */
// A type, not an interface: valibot's forward() wants a Record, and only a type alias is one implicitly.
type ExportSections = { export: string; iscsi?: unknown; nvmeof?: unknown };

/**
 * `schema` with its `iscsi:` and `nvmeof:` sections required exactly when
 * `export` names them (the error names the section's key). Generic over the
 * whole schema, not over the checked value: the result's output stays the
 * schema's own (a check typed for ExportSections alone would make the pipe's
 * output ExportSections, and FileBackendConfig lose its keys' types).
 */
function withExportSections<const S extends v.GenericSchema<unknown, ExportSections>>(schema: S) {
  type Out = v.InferOutput<S>;
  const exactlyWhen = (key: 'iscsi' | 'nvmeof') =>
    v.forward<Out, v.CheckIssue<Out>, ['iscsi'] | ['nvmeof']>(
      v.check(
        (b: Out) => (b.export === key) === (b[key] !== undefined),
        (i) => (i.input.export === key ? `is required with export: ${key} (at least portals)` : `only applies with export: ${key}`),
      ),
      // ValidPath cannot see through the generic Out; the section keys are in ExportSections.
      [key] as never,
    );
  return v.pipe(schema, exactlyWhen('iscsi'), exactlyWhen('nvmeof'));
}

export const fileBackendSchema = withExportSections(
  strict({
    name: backendName,
    driver: v.optional(v.literal('file'), 'file'),
    dataDir: absPath,
    /** Labels the scheduler's filters match against StorageClass parameters (`type: ssd`). */
    labels: strMap,
    /** Topology segments of the nodes that can reach this backend; empty = every node (`sinter all`: this node). */
    topology: strMap,
    overSubscriptionRatio,
    reservedPercent,
    /** Caps the backend below its filesystem's size; 0 = the filesystem's size. */
    capacityBytes: v.optional(int(0, Number.MAX_SAFE_INTEGER), 0),
    /** How nodes reach the images: `local` (loop-attach the file, same host), `iscsi` (tgt or LIO, `iscsi:`) or `nvmeof` (nvmet, `nvmeof:`). */
    export: v.optional(oneOf(['local', 'iscsi', 'nvmeof']), 'local'),
    iscsi: v.optional(iscsiSchema),
    nvmeof: v.optional(nvmeofSchema),
  }),
);

// Ceph names: a pool or cephx user is letters, digits and . _ - (no '/', '@', spaces or ',' that would
// change what an `rbd` or qemu option means).
const CEPH_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const cephName = (what: string) => v.pipe(str, v.regex(CEPH_NAME_RE, (i) => `"${String(i.input)}" is not a ${what} name (letters, digits, '.', '_', '-')`));
export const RBD_DEFAULT_FEATURES = ['layering', 'exclusive-lock', 'object-map', 'fast-diff', 'deep-flatten'] as const;
const RBD_FEATURES = [...RBD_DEFAULT_FEATURES, 'journaling', 'striping'] as const;

/** A Ceph RBD pool (src/backends/rbd): volumes are images, their records live in image metadata. */
export const rbdBackendSchema = v.pipe(
  strict({
    name: backendName,
    driver: v.literal('rbd'),
    /** The pool holding the images (and their metadata: the records). */
    pool: cephName('pool'),
    /** An erasure-coded pool for the data objects (`rbd create --data-pool`); the images' headers stay in `pool`. */
    dataPool: v.optional(cephName('pool')),
    /** Monitor addresses; every Ceph call gets them explicitly (never a DNS lookup, never /etc/ceph). */
    monitors: v.pipe(
      v.array(v.pipe(str, v.regex(RBD_MONITOR_RE, (i) => `"${String(i.input)}" is not a monitor address (host, host:port, [IPv6]:port, optionally v1:/v2:)`)), 'must list at least one monitor (host:port)'),
      v.minLength(1, 'must list at least one monitor (host:port)'),
    ),
    /** cephx user (without `client.`). */
    user: v.optional(cephName('cephx user'), 'admin'),
    /**
     * A file holding the user's bare cephx key (`ceph auth get-key`); read at each call, never put on a command line.
     * Required with keyFrom: file; with keyFrom: secrets, the key for work no request brings a key to until one has.
     */
    keyFile: v.optional(absPath),
    /**
     * Where the controller's cephx key comes from: `file` (keyFile), or `secrets`: each request's CSI secrets
     * (ceph-csi's `userID`/`userKey`, from the StorageClass's provisioner, controller-publish,
     * controller-expand and snapshotter secrets); work that carries no secrets (ListVolumes, GetCapacity,
     * the start-up scan, the client scan) uses the last key a request brought, held in memory only.
     */
    keyFrom: v.optional(v.picklist(['file', 'secrets'], 'must be file or secrets'), 'file'),
    /** Features of new images (`rbd create --image-feature`). */
    imageFeatures: v.optional(
      v.pipe(v.array(v.picklist(RBD_FEATURES, `must be among ${RBD_FEATURES.join(', ')}`), 'must be a list of image features'), v.minLength(1, 'must list at least layering')),
      [...RBD_DEFAULT_FEATURES],
    ),
    labels: strMap,
    topology: strMap,
    overSubscriptionRatio,
    reservedPercent,
    /** A clone chain this deep (ancestors) is flattened in the background after the create (ceph-csi's rbdsoftmaxclonedepth). */
    cloneDepthSoftLimit: v.optional(int(1, 64), 4),
    /** A clone chain this deep is flattened before the create returns (ceph-csi's rbdhardmaxclonedepth). */
    cloneDepthHardLimit: v.optional(int(1, 64), 8),
    /** Seconds a single rbd/ceph command may take (librados' client_mount_timeout and rados_mon_op_timeout follow). */
    commandTimeoutSeconds: v.optional(num(1, 3600), 60),
    /**
     * How long a fenced client instance stays on the OSD blocklist (`ceph osd blocklist add … SECONDS`):
     * longer than a lost node can stay away and still have the old client running. Lifted sooner when
     * the volume is published to that node again.
     */
    fenceSeconds: v.optional(int(60, 30 * 86400), 86400),
    /** How often the controller notes which client instances watch each published image (they are fenced when the publish ends). */
    clientScanSeconds: v.optional(int(1, 3600), 30),
    /**
     * An image with no record yet is another controller's create in progress; once older than this, its
     * controller died and the next create or lookup of that name removes it (longer than a create takes).
     */
    staleCreateSeconds: v.optional(int(5, 86400), 300),
    /**
     * How nodes reach the images: `rbd` (their own Ceph client: kernel rbd or qemu-nbd's librbd), or
     * `iscsi` (a gateway for nodes with no Ceph client: tgtd on the controller's host serves each
     * published image through tgt-rbd, with the usual ACL, CHAP and fence).
     */
    export: v.optional(v.picklist(['rbd', 'iscsi'], 'must be rbd or iscsi'), 'rbd'),
    /** The gateway's target helper settings (export: iscsi); helper tgt only (LIO has no rbd backing store here). */
    iscsi: v.optional(iscsiSchema),
    /** Local files of the iSCSI gateway only: tgtd's Ceph conf and the CHAP secrets of published volumes. */
    dataDir: v.optional(absPath),
    /**
     * Frequent Ceph calls through one long-lived librados connection (src/backends/rbd/rbd_agent.py, needs
     * python3-rbd); false: every call through the rbd CLI (a process and a cluster connect each, ~100-200 ms).
     */
    agent: v.optional(v.boolean('must be true or false'), true),
  }),
  v.forward(
    v.check((b) => b.cloneDepthSoftLimit <= b.cloneDepthHardLimit, 'must not exceed cloneDepthHardLimit'),
    ['cloneDepthSoftLimit'],
  ),
  v.forward(
    v.check((b) => b.export !== 'iscsi' || (b.iscsi !== undefined && b.iscsi.helper === 'tgt' && b.dataDir !== undefined), 'export: iscsi needs an iscsi section with helper: tgt (tgt-rbd), and dataDir'),
    ['export'],
  ),
  v.forward(
    v.check((b) => b.keyFrom !== 'file' || b.keyFile !== undefined, 'is required unless keyFrom: secrets (the key then comes with each request\'s CSI secrets, userID and userKey)'),
    ['keyFile'],
  ),
  v.forward(
    // tgtd's librbd reads the key itself, from a file, for as long as it serves an image.
    v.check((b) => b.export !== 'iscsi' || b.keyFile !== undefined, 'is required with export: iscsi (tgtd reads the key from it while it serves the images)'),
    ['keyFile'],
  ),
);

/** LVM names: VG and LV names allow letters, digits and `+_.-`, and may not start with '-'. */
const LVM_NAME_RE = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$/;
const lvmName = (what: string) => v.pipe(str, v.regex(LVM_NAME_RE, (i) => `"${String(i.input)}" is not a valid ${what} name (letters, digits, '+', '_', '.', '-'; not starting with '-')`));

/**
 * Cinder's LVM driver (cinder/volume/drivers/lvm.py): volumes are LVs in one
 * existing volume group, thin (in a thin pool) or thick, exported through the
 * target helper (tgt or LIO over iSCSI, nvmet over NVMe/TCP). Records live in
 * the LVs' tags; `dataDir` keeps only the CHAP secrets of published volumes.
 */
export const lvmBackendSchema = v.pipe(
  isMap('must be a map'),
  // The default local-state directory is named after the backend.
  v.transform((m: Record<string, unknown>) => (m.dataDir === undefined && typeof m.name === 'string' ? { ...m, dataDir: `/var/lib/sinter/${m.name}` } : m)),
  withExportSections(strict({
    name: backendName,
    driver: v.literal('lvm'),
    /** Local state only (CHAP secrets of published volumes); default /var/lib/sinter/<name>. */
    dataDir: absPath,
    labels: strMap,
    topology: strMap,
    /** An existing volume group; sinter touches only the LVs it named in it (and reads the thin pool). */
    volumeGroup: lvmName('volume group'),
    /** Cinder's lvm_type: `auto` = thin when the volume group has `thinPool`, else thick. */
    lvmType: v.optional(oneOf(['thin', 'thick', 'auto']), 'auto'),
    /** The thin pool LV in volumeGroup (made by the administrator: `lvcreate --type thin-pool`). */
    thinPool: v.optional(lvmName('thin pool'), 'sinter-pool'),
    /**
     * The volume group's physical volumes (`/dev/...`). Every LVM command sinter runs is given
     * `--devices` with the VG's PVs, so it opens no other disk: on a hyperconverged host (the
     * controller beside a node that logs into its own exports) LVM would otherwise read the
     * node's iSCSI disks, whose reads hang while a thick snapshot suspends the LV behind them,
     * and LVM and tgtd wait on each other (why Cinder tells operators to set a global_filter on
     * storage hosts). Left out, sinter asks `pvs` once at start (one scan of every disk, before
     * anything is suspended) and again when LVM says the list is stale (the VG grew, a disk was
     * renamed). Given, it is used as it is and never scanned for: update it when the VG changes.
     */
    devices: v.optional(
      v.pipe(
        v.array(
          v.pipe(
            absPath,
            v.check((p) => p.startsWith('/dev/') && !p.includes(','), (i) => `"${String(i.input)}" is not a device path under /dev/ (without commas)`),
          ),
          'must be a list of the volume group\'s physical volumes (/dev/... paths)',
        ),
        v.minLength(1, 'must list at least one physical volume of the volume group (or be left out: sinter then finds them with pvs)'),
      ),
    ),
    /** Cinder's max_over_subscription_ratio for thin volumes (default 20.0). */
    maxOverSubscriptionRatio: v.optional(num(1, 1000), 20),
    /** Cinder's reserved_percentage: part of the pool (thin) or volume group (thick) never handed out. */
    reservedPercent: v.optional(num(0, 99), 0),
    /** New volumes are refused (RESOURCE_EXHAUSTED) once the thin pool's data or metadata use reaches this percentage. */
    thinPoolHighWaterPercent: v.optional(num(1, 100), 90),
    /** Cinder's volume_clear: what a thick volume's extents get before they return to the VG (thin LVs read back zeros and need none). */
    volumeClear: v.optional(oneOf(['zero', 'none']), 'zero'),
    /** Cinder's volume_clear_size: MiB cleared from the start of the volume; 0 = all of it. */
    volumeClearSizeMiB: v.optional(int(0, 1_000_000_000), 0),
    /** A thick volume's snapshot: a classic copy-on-write LV this percentage of the volume's size (100 never overflows), or 0 to refuse snapshots. */
    thickSnapshotPercent: v.optional(num(0, 100), 100),
    /** How nodes reach the LVs: `iscsi` (the tgt or LIO helper, `iscsi:`) or `nvmeof` (nvmet, NVMe/TCP, `nvmeof:`). */
    export: v.optional(oneOf(['iscsi', 'nvmeof']), 'iscsi'),
    iscsi: v.optional(iscsiSchema),
    nvmeof: v.optional(nvmeofSchema),
  })),
);

const DRIVERS = { file: fileBackendSchema, lvm: lvmBackendSchema, rbd: rbdBackendSchema } as const;
type BackendOutput = v.InferOutput<typeof fileBackendSchema> | v.InferOutput<typeof lvmBackendSchema> | v.InferOutput<typeof rbdBackendSchema>;
/** A backend: `driver` (default file) picks the schema its other keys are checked against. */
export const backendSchema = v.pipe(
  isMap('must be a map'),
  v.rawTransform<Record<string, unknown>, BackendOutput>(({ dataset, addIssue, NEVER }) => {
    const d = dataset.value.driver ?? 'file';
    const schema = typeof d === 'string' && Object.hasOwn(DRIVERS, d) ? DRIVERS[d as keyof typeof DRIVERS] : undefined;
    if (!schema) {
      addIssue({ message: `must be one of ${Object.keys(DRIVERS).join(', ')}`, path: [{ type: 'object', origin: 'value', input: dataset.value, key: 'driver', value: d }] });
      return NEVER;
    }
    const r = v.safeParse(schema, dataset.value, { abortEarly: true });
    if (r.success) return r.output;
    for (const i of r.issues) addIssue({ message: i.message, path: i.path as never });
    return NEVER;
  }),
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

/** One `rbd device map -o` option: `name` or `name=value`. */
const MAP_OPTION_RE = /^[a-z][a-z0-9_]{0,40}(=[A-Za-z0-9._:/+-]{1,200})?$/;
/** Map options sinter sets itself, or that would carry a secret or change what is mapped and how sinter finds it. */
const FORBIDDEN_MAP_OPTIONS = ['secret', 'key', 'name', 'fsid', 'read_only', 'ro', 'rw', 'ip'];

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
  /** The NVMe host NQN nvmet's allowed_hosts names this node by; default: read from hostNqnFile. */
  nvmeHostNqn: v.optional(v.pipe(str, v.check(isValidNqn, (i) => `"${String(i.input)}" is not a valid NVMe NQN (nqn.yyyy-mm.domain:name, at most 223 bytes)`))),
  /** nvme-cli's host NQN file (written when the package is installed; `nvme gen-hostnqn` makes one). */
  hostNqnFile: v.optional(absPath, '/etc/nvme/hostnqn'),
  /** `kernel` (iscsiadm + iscsid), `userspace` (libiscsi: qemu-nbd, nbdfuse, loop), `auto` (kernel when iscsi_tcp is there). */
  initiator: v.optional(oneOf(['kernel', 'userspace', 'auto']), 'auto'),
  /** Where sysfs is mounted (FC HBAs, SCSI disks, multipath maps); /sys on a node. */
  sysfsRoot: v.optional(v.pipe(absPath, notRoot), '/sys'),
  /** Where device nodes live (disk/by-path, mapper/); /dev on a node. */
  devRoot: v.optional(v.pipe(absPath, notRoot), '/dev'),
  fc: fcSchema,
  /** This node's cephx identity for rbd volumes and how it attaches them; a StorageClass node-stage secret (userID, userKey) takes precedence. */
  rbd: section({
    user: v.optional(cephName('cephx user'), 'admin'),
    /** A file holding the bare cephx key (0600). */
    keyFile: v.optional(absPath),
    /** `kernel` (rbd device map), `userspace` (qemu-nbd's librbd, nbdfuse, loop), `auto` (kernel when the rbd module is loaded or loads). */
    attach: v.optional(oneOf(['kernel', 'userspace', 'auto']), 'auto'),
    /**
     * Kernel attach: `rbd device map -o` options, e.g. `ms_mode=secure`, `queue_depth=256`, `noudev` (a node without udev).
     * Without an ms_mode, monitors given as v2 addresses get `ms_mode=prefer-crc`; `noshare` unless `share` is
     * given (one Ceph client per mapping: a fence blocklists one volume's client only). Options that carry a key or
     * change what is mapped (secret, key, name, fsid, ro, rw, read_only, ip) are refused.
     */
    mapOptions: v.optional(
      v.array(
        v.pipe(
          str,
          v.regex(MAP_OPTION_RE, 'must be a krbd map option such as "queue_depth=128" or "noudev" (letters, digits and _ ; a value without "," or spaces)'),
          v.check((o: string) => !FORBIDDEN_MAP_OPTIONS.includes(o.split('=')[0]!), 'is set by sinter itself (the key, the user and the mode come from node.rbd and the publish)'),
        ),
        'must be a list of krbd map options',
      ),
      [],
    ),
  }),
  iscsi: iscsiNodeSchema,
  /**
   * What start-up does with an iSCSI attachment (session + LUN device) that no
   * stage record explains and nothing uses: `report` it only (the default: it
   * may be an administrator's), or `clean` it up (tear it down through the
   * connector). One that is in use is only ever reported.
   */
  orphanSessions: v.optional(oneOf(['report', 'clean']), 'report'),
  /** NVMe subsystems whose orphan controllers `clean` may disconnect (sinter's own); default: the default NQN prefix and every nvmeof backend's. */
  orphanNqnPrefixes: v.optional(
    v.pipe(
      v.array(v.pipe(str, rule(validateNqnPrefix)), 'must be a non-empty list of subsystem NQN prefixes such as "nqn.2026-11.io.sinter:"'),
      v.minLength(1, 'must be a non-empty list of subsystem NQN prefixes such as "nqn.2026-11.io.sinter:"'),
    ),
  ),
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
  /** Who forks host commands: the command runner (a small perl co-process; src/exec/command-runner.ts) or sinter itself. */
  spawnVia: v.optional(oneOf(['runner', 'self']), 'runner'),
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
