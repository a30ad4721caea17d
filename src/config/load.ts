import { parsePortal } from '../contracts/publish-context.js';
import { DEFAULT_IQN_PREFIX } from '../contracts/nodeid.js';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import { NODE_TOPOLOGY_KEY } from '../contracts/nodeid.js';
import { parseEndpoint } from '../csi/endpoint.js';
import { kubernetesFrom } from './kubernetes.js';
import type { BackendConfig, Config, FileBackendConfig, IscsiExportConfig, LogLevel, MetricsAddress, Role } from './types.js';
import { absPath, ConfigError, int, isObj, num, type Obj, oneOf, onlyKeys, str, strMap } from './validate.js';

// The YAML parser is loaded only when a --config file is given (it is ~30 ms
// of start-up otherwise spent for nothing). `require` loads the same file an
// `import` does under Node (the package's "node" export, CommonJS).
const require = createRequire(import.meta.url);
const parseYaml = (text: string): unknown => (require('yaml') as typeof import('yaml')).parse(text);

export const DEFAULT_DRIVER_NAME = 'sinter.csi.io';
export { NODE_TOPOLOGY_KEY };
export const BACKEND_NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/;
const DRIVER_NAME_RE = /^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$/;
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export const FLAG_SPEC = {
  endpoint: { type: 'string' },
  config: { type: 'string' },
  'data-dir': { type: 'string' },
  'node-id': { type: 'string' },
  'node-name': { type: 'string' },
  'kubelet-root': { type: 'string', multiple: true },
  'driver-name': { type: 'string' },
  'log-level': { type: 'string' },
  'state-dir': { type: 'string' },
  'max-volumes-per-node': { type: 'string' },
  'orphan-sessions': { type: 'string' },
  'metrics-address': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const TOP_KEYS = ['driverName', 'endpoint', 'logLevel', 'nodeName', 'nodeId', 'kubeletRoots', 'backends', 'node', 'controller', 'exec', 'shutdownGraceSeconds', 'kubernetes', 'metricsAddress'] as const;
const BACKEND_KEYS = ['name', 'driver', 'dataDir', 'labels', 'topology', 'overSubscriptionRatio', 'reservedPercent', 'capacityBytes', 'export', 'iscsi'] as const;
const ISCSI_KEYS = ['helper', 'portals', 'iqnPrefix', 'controlPort', 'writeCache', 'blockSize', 'reconcileSeconds'] as const;
const NODE_KEYS = ['maxVolumesPerNode', 'topology', 'stateDir', 'iscsiInitiatorName', 'initiatorNameFile', 'initiator', 'sysfsRoot', 'devRoot', 'fc', 'orphanSessions', 'orphanTargetPrefixes'] as const;
const FC_KEYS = ['scanTimeoutSeconds', 'removeTimeoutSeconds'] as const;
const CONTROLLER_KEYS = ['stateDir'] as const;
const IQN_PREFIX_RE = /^(?:iqn\.\d{4}-\d{2}\.[A-Za-z0-9.:-]+[:.]|eui\.|naa\.)$/;

/** `${VAR}` in a portal comes from the environment, as Kubernetes hands a pod its host IP. */
function expandEnv(v: string, key: string): string {
  return v.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
    const val = process.env[name];
    if (!val) throw new ConfigError(key, `environment variable ${name} is not set`);
    return val;
  });
}

function iscsiFrom(raw: unknown, key: string): IscsiExportConfig {
  if (!isObj(raw)) throw new ConfigError(key, 'is required with export: iscsi (at least portals)');
  onlyKeys(raw, ISCSI_KEYS, key);
  if (!Array.isArray(raw.portals) || raw.portals.length === 0) throw new ConfigError(`${key}.portals`, 'must list at least one portal (host:port)');
  const portals = raw.portals.map((p, i) => {
    const v = expandEnv(str(p, `${key}.portals[${i}]`), `${key}.portals[${i}]`);
    try {
      parsePortal(v);
    } catch (e) {
      throw new ConfigError(`${key}.portals[${i}]`, (e as Error).message);
    }
    return v;
  });
  const iqnPrefix = raw.iqnPrefix === undefined ? DEFAULT_IQN_PREFIX : str(raw.iqnPrefix, `${key}.iqnPrefix`);
  if (!IQN_PREFIX_RE.test(iqnPrefix)) throw new ConfigError(`${key}.iqnPrefix`, `"${iqnPrefix}" must look like iqn.YYYY-MM.reversed.domain: (ending in : or .)`);
  const blockSize = raw.blockSize === undefined ? 512 : int(raw.blockSize, `${key}.blockSize`, 512, 4096);
  if (blockSize !== 512 && blockSize !== 4096) throw new ConfigError(`${key}.blockSize`, 'must be 512 or 4096');
  if (raw.writeCache !== undefined && typeof raw.writeCache !== 'boolean') throw new ConfigError(`${key}.writeCache`, 'must be true or false');
  return {
    helper: oneOf(raw.helper ?? 'tgt', `${key}.helper`, ['tgt'] as const),
    portals,
    iqnPrefix,
    controlPort: raw.controlPort === undefined ? 0 : int(raw.controlPort, `${key}.controlPort`, 0, 32767),
    writeCache: raw.writeCache === undefined ? true : (raw.writeCache),
    blockSize,
    reconcileSeconds: raw.reconcileSeconds === undefined ? 30 : num(raw.reconcileSeconds, `${key}.reconcileSeconds`, 1, 86400),
  };
}
const EXEC_KEYS = ['mode', 'hostRoot', 'timeoutSeconds', 'nsenterTarget'] as const;

function backendFrom(raw: unknown, key: string, role: Role, nodeName: string): BackendConfig {
  if (!isObj(raw)) throw new ConfigError(key, 'must be a map');
  onlyKeys(raw, BACKEND_KEYS, key);
  const name = str(raw.name, `${key}.name`);
  if (!BACKEND_NAME_RE.test(name)) throw new ConfigError(`${key}.name`, `"${name}" must be lower-case letters, digits and '-', at most 32 characters`);
  // Volume ids are `<backend>-<uuid>`; `static-<name>` is the static volumes' handle (src/controller/static-volumes.ts).
  if (name === 'static' || name.startsWith('static-')) throw new ConfigError(`${key}.name`, `"${name}" is reserved: volume handles starting with "static-" name static (pre-provisioned) volumes`);
  oneOf(raw.driver ?? 'file', `${key}.driver`, ['file'] as const);
  const topology = strMap(raw.topology, `${key}.topology`);
  const b: FileBackendConfig = {
    name,
    driver: 'file',
    dataDir: absPath(raw.dataDir, `${key}.dataDir`),
    labels: strMap(raw.labels, `${key}.labels`),
    // In single-machine mode the images live on this node, so only this node can reach them.
    topology: Object.keys(topology).length === 0 && role === 'all' ? { [NODE_TOPOLOGY_KEY]: nodeName } : topology,
    overSubscriptionRatio: raw.overSubscriptionRatio === undefined ? 1 : num(raw.overSubscriptionRatio, `${key}.overSubscriptionRatio`, 1, 1000),
    reservedPercent: raw.reservedPercent === undefined ? 0 : num(raw.reservedPercent, `${key}.reservedPercent`, 0, 99),
    capacityBytes: raw.capacityBytes === undefined ? 0 : int(raw.capacityBytes, `${key}.capacityBytes`, 0, Number.MAX_SAFE_INTEGER),
    export: oneOf(raw.export ?? 'local', `${key}.export`, ['local', 'iscsi'] as const),
  };
  if (b.export === 'iscsi') b.iscsi = iscsiFrom(raw.iscsi, `${key}.iscsi`);
  else if (raw.iscsi !== undefined) throw new ConfigError(`${key}.iscsi`, 'only applies with export: iscsi');
  return b;
}

function fcFrom(raw: unknown): Config['node']['fc'] {
  const f = raw ?? {};
  if (!isObj(f)) throw new ConfigError('node.fc', 'must be a map');
  onlyKeys(f, FC_KEYS, 'node.fc');
  return {
    scanTimeoutSeconds: f.scanTimeoutSeconds === undefined ? 30 : num(f.scanTimeoutSeconds, 'node.fc.scanTimeoutSeconds', 1, 600),
    removeTimeoutSeconds: f.removeTimeoutSeconds === undefined ? 30 : num(f.removeTimeoutSeconds, 'node.fc.removeTimeoutSeconds', 1, 600),
  };
}

/** Flags over the YAML file over defaults; throws ConfigError naming the key. */
export function loadConfig(role: Role, argv: string[]): Config {
  let flags: ReturnType<typeof parseArgs<{ options: typeof FLAG_SPEC; args: string[]; strict: true; allowPositionals: false }>>['values'];
  try {
    flags = parseArgs({ args: argv, options: FLAG_SPEC, strict: true, allowPositionals: false }).values;
  } catch (e) {
    const msg = (e as Error).message;
    const m = /'(--?[\w-]+)/.exec(msg);
    throw new ConfigError(m?.[1] ?? 'flags', msg);
  }

  let file: Obj = {};
  if (flags.config !== undefined) {
    let text: string;
    try {
      text = readFileSync(flags.config, 'utf8');
    } catch (e) {
      throw new ConfigError('--config', `cannot read ${flags.config}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (e) {
      throw new ConfigError('--config', `${flags.config} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    if (parsed !== null && parsed !== undefined && !isObj(parsed)) throw new ConfigError('--config', `${flags.config} must hold a map at the top level`);
    file = (parsed as Obj) ?? {};
    onlyKeys(file, TOP_KEYS, '');
  }

  const endpoint = flags.endpoint ?? (file.endpoint === undefined ? 'unix:///csi/csi.sock' : str(file.endpoint, 'endpoint'));
  try {
    parseEndpoint(endpoint);
  } catch (e) {
    throw new ConfigError(flags.endpoint !== undefined ? '--endpoint' : 'endpoint', (e as Error).message);
  }

  const driverName = flags['driver-name'] ?? (file.driverName === undefined ? DEFAULT_DRIVER_NAME : str(file.driverName, 'driverName'));
  if (!DRIVER_NAME_RE.test(driverName)) throw new ConfigError(flags['driver-name'] ? '--driver-name' : 'driverName', `"${driverName}" must be a DNS-style name of at most 63 characters`);

  const logLevel = oneOf(flags['log-level'] ?? file.logLevel ?? 'info', flags['log-level'] ? '--log-level' : 'logLevel', LOG_LEVELS);
  const nodeName = flags['node-name'] ?? (file.nodeName === undefined ? process.env.NODE_NAME || hostname() : str(file.nodeName, 'nodeName'));
  const nodeId = flags['node-id'] ?? (file.nodeId === undefined ? undefined : str(file.nodeId, 'nodeId'));

  const rootsRaw: unknown = flags['kubelet-root'] ?? file.kubeletRoots ?? ['/var/lib/kubelet'];
  if (!Array.isArray(rootsRaw) || rootsRaw.length === 0) throw new ConfigError('kubeletRoots', 'must be a non-empty list of absolute paths');
  const rootKey = flags['kubelet-root'] ? '--kubelet-root' : 'kubeletRoots';
  const kubeletRoots = rootsRaw.map((r, i) => absPath(r, `${rootKey}[${i}]`));
  if (kubeletRoots.includes('/')) throw new ConfigError(rootKey, '"/" cannot be a kubelet root: every path on the host would be fair game');

  let backends: BackendConfig[] = [];
  if (file.backends !== undefined) {
    if (!Array.isArray(file.backends)) throw new ConfigError('backends', 'must be a list');
    backends = file.backends.map((b, i) => backendFrom(b, `backends[${i}]`, role, nodeName));
  }
  if (flags['data-dir'] !== undefined) {
    backends = [backendFrom({ name: 'default', driver: 'file', dataDir: flags['data-dir'] }, '--data-dir', role, nodeName)];
  }
  if (role !== 'node' && backends.length === 0) throw new ConfigError('backends', 'the controller needs at least one backend (--data-dir DIR or backends: in --config)');
  const seen = new Set<string>();
  for (const [i, b] of backends.entries()) {
    if (seen.has(b.name)) throw new ConfigError(`backends[${i}].name`, `"${b.name}" is used twice`);
    seen.add(b.name);
    for (const other of backends.slice(0, i)) {
      if (b.dataDir === other.dataDir || b.dataDir.startsWith(`${other.dataDir}/`) || other.dataDir.startsWith(`${b.dataDir}/`))
        throw new ConfigError(`backends[${i}].dataDir`, `overlaps the data directory of backend "${other.name}"`);
    }
  }

  const nodeRaw = file.node ?? {};
  if (!isObj(nodeRaw)) throw new ConfigError('node', 'must be a map');
  onlyKeys(nodeRaw, NODE_KEYS, 'node');
  const maxVol = flags['max-volumes-per-node'] ?? nodeRaw.maxVolumesPerNode ?? 0;
  const stateDirDefault = backends.length > 0 && role === 'all' ? `${backends[0]!.dataDir}/node-state` : '/var/lib/sinter/node';
  const nodeTopology = strMap(nodeRaw.topology, 'node.topology');
  // The controller reads this segment from the node id (its host): a different value here would make the two disagree.
  if (NODE_TOPOLOGY_KEY in nodeTopology)
    throw new ConfigError(`node.topology.${NODE_TOPOLOGY_KEY}`, 'is always the node name (the host part of the node id); remove it');
  const node = {
    maxVolumesPerNode: int(maxVol, flags['max-volumes-per-node'] ? '--max-volumes-per-node' : 'node.maxVolumesPerNode', 0, 1_000_000),
    topology: { [NODE_TOPOLOGY_KEY]: nodeName, ...nodeTopology },
    stateDir: flags['state-dir'] !== undefined ? absPath(flags['state-dir'], '--state-dir') : nodeRaw.stateDir === undefined ? stateDirDefault : absPath(nodeRaw.stateDir, 'node.stateDir'),
    iscsiInitiatorName: nodeRaw.iscsiInitiatorName === undefined ? undefined : str(nodeRaw.iscsiInitiatorName, 'node.iscsiInitiatorName'),
    initiatorNameFile: nodeRaw.initiatorNameFile === undefined ? '/etc/iscsi/initiatorname.iscsi' : absPath(nodeRaw.initiatorNameFile, 'node.initiatorNameFile'),
    initiator: oneOf(nodeRaw.initiator ?? 'auto', 'node.initiator', ['kernel', 'userspace', 'auto'] as const),
    sysfsRoot: nodeRaw.sysfsRoot === undefined ? '/sys' : absPath(nodeRaw.sysfsRoot, 'node.sysfsRoot'),
    devRoot: nodeRaw.devRoot === undefined ? '/dev' : absPath(nodeRaw.devRoot, 'node.devRoot'),
    fc: fcFrom(nodeRaw.fc),
    orphanSessions: oneOf(flags['orphan-sessions'] ?? nodeRaw.orphanSessions ?? 'report', flags['orphan-sessions'] !== undefined ? '--orphan-sessions' : 'node.orphanSessions', ['report', 'clean'] as const),
    orphanTargetPrefixes: orphanTargetPrefixes(nodeRaw.orphanTargetPrefixes, backends),
  };
  if (node.sysfsRoot === '/' || node.devRoot === '/') throw new ConfigError(node.sysfsRoot === '/' ? 'node.sysfsRoot' : 'node.devRoot', 'must not be "/"');

  const ctlRaw = file.controller ?? {};
  if (!isObj(ctlRaw)) throw new ConfigError('controller', 'must be a map');
  onlyKeys(ctlRaw, CONTROLLER_KEYS, 'controller');
  const controller = {
    stateDir:
      ctlRaw.stateDir !== undefined
        ? absPath(ctlRaw.stateDir, 'controller.stateDir')
        : backends.length > 0
          ? `${backends[0]!.dataDir}/controller-state`
          : '/var/lib/sinter/controller',
  };

  const execRaw = file.exec ?? {};
  if (!isObj(execRaw)) throw new ConfigError('exec', 'must be a map');
  onlyKeys(execRaw, EXEC_KEYS, 'exec');
  const exec = {
    mode: oneOf(execRaw.mode ?? 'direct', 'exec.mode', ['direct', 'nsenter', 'chroot'] as const),
    hostRoot: execRaw.hostRoot === undefined ? '/host' : absPath(execRaw.hostRoot, 'exec.hostRoot'),
    timeoutSeconds: execRaw.timeoutSeconds === undefined ? 120 : num(execRaw.timeoutSeconds, 'exec.timeoutSeconds', 1, 3600),
    nsenterTarget: oneOf(execRaw.nsenterTarget ?? 'host', 'exec.nsenterTarget', ['host', 'iscsid'] as const),
  };

  return {
    role,
    endpoint,
    driverName,
    logLevel,
    nodeName,
    nodeId,
    kubeletRoots,
    backends,
    node,
    controller,
    exec,
    shutdownGraceSeconds: file.shutdownGraceSeconds === undefined ? 10 : num(file.shutdownGraceSeconds, 'shutdownGraceSeconds', 0, 600),
    kubernetes: kubernetesFrom(file.kubernetes, role),
    metricsAddress:
      flags['metrics-address'] !== undefined
        ? metricsAddressFrom(flags['metrics-address'], '--metrics-address')
        : file.metricsAddress === undefined || file.metricsAddress === null
          ? undefined
          : metricsAddressFrom(file.metricsAddress, 'metricsAddress'),
  };
}

const METRICS_ADDRESS_RE = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/;

/** `host:port`, `[v6]:port` or `:port` (every interface); an empty string turns metrics off. */
function metricsAddressFrom(raw: unknown, key: string): MetricsAddress | undefined {
  if (raw === '') return undefined;
  const s = str(raw, key);
  const m = METRICS_ADDRESS_RE.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(key, `"${s}" must be host:port, [ipv6]:port or :port (every interface), port 0-65535`);
  return { host: m[1] ?? m[2] ?? '', port, raw: s };
}

/**
 * Target names whose orphan sessions `orphanSessions: clean` may tear down:
 * the ones sinter's controllers make (by default the default iqnPrefix and
 * the iqnPrefix of every iSCSI backend in this configuration). Sessions to
 * any other target (an array's LUNs, static volumes, an administrator's) are
 * only ever reported.
 */
function orphanTargetPrefixes(raw: unknown, backends: BackendConfig[]): string[] {
  const key = 'node.orphanTargetPrefixes';
  if (raw === undefined) {
    const fromBackends = backends.flatMap((b) => (b.driver === 'file' && b.export === 'iscsi' && b.iscsi ? [b.iscsi.iqnPrefix] : []));
    return [...new Set([DEFAULT_IQN_PREFIX, ...fromBackends])];
  }
  if (!Array.isArray(raw) || raw.length === 0) throw new ConfigError(key, 'must be a non-empty list of target name prefixes such as "iqn.2026-11.io.sinter:"');
  return raw.map((p, i) => {
    if (typeof p !== 'string' || !IQN_PREFIX_RE.test(p)) throw new ConfigError(`${key}[${i}]`, `${JSON.stringify(p)} must look like iqn.YYYY-MM.reversed.domain: (ending in : or .)`);
    return p;
  });
}
