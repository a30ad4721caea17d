import { DEFAULT_IQN_PREFIX, DEFAULT_NQN_PREFIX, NODE_TOPOLOGY_KEY } from '../contracts/nodeid.js';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import { ConfigError } from './error.js';
import { dmNameLength, longestLvName } from '../backends/lvm/names.js';
import { kubernetesFrom } from './kubernetes.js';
import { fileSchema, parseConfig } from './schema.js';
import type { BackendConfig, Config, Role } from './types.js';

// The YAML parser is loaded only when a --config file is given (it is ~30 ms
// of start-up otherwise spent for nothing). `require` loads the same file an
// `import` does under Node (the package's "node" export, CommonJS).
const require = createRequire(import.meta.url);
const parseYaml = (text: string): unknown => (require('yaml') as typeof import('yaml')).parse(text);

export { BACKEND_NAME_RE, DEFAULT_DRIVER_NAME } from './schema.js';
export { NODE_TOPOLOGY_KEY };

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

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Flags set the key of the file they override (so they pass the same rules);
 * a mistake in one is named by the flag. [flag, key it sets].
 */
const FLAG_KEYS = [
  ['endpoint', 'endpoint'],
  ['driver-name', 'driverName'],
  ['log-level', 'logLevel'],
  ['node-name', 'nodeName'],
  ['node-id', 'nodeId'],
  ['kubelet-root', 'kubeletRoots'],
  ['max-volumes-per-node', 'node.maxVolumesPerNode'],
  ['state-dir', 'node.stateDir'],
  ['orphan-sessions', 'node.orphanSessions'],
  ['metrics-address', 'metricsAddress'],
] as const;

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
  }

  // The flags, written over the file's keys (copies: the file's maps stay as read).
  const raw: Obj = { ...file };
  const fromFlag = new Map<string, string>();
  for (const [flag, key] of FLAG_KEYS) {
    const val = flags[flag];
    if (val === undefined) continue;
    const [top, sub] = key.split('.') as [string, string | undefined];
    if (sub === undefined) raw[top] = val;
    else raw[top] = { ...(isObj(raw[top]) ? raw[top] : {}), [sub]: val };
    fromFlag.set(key, `--${flag}`);
  }
  if (flags['data-dir'] !== undefined) {
    raw.backends = [{ name: 'default', driver: 'file', dataDir: flags['data-dir'] }];
    fromFlag.set('backends[0].dataDir', '--data-dir');
  }
  const rename = (key: string): string => {
    for (const [k, flag] of fromFlag) if (key === k || key.startsWith(`${k}[`) || key.startsWith(`${k}.`)) return flag + key.slice(k.length);
    return key;
  };

  const { kubernetes, ...cfg } = parseConfig(fileSchema, raw, '', rename);
  const { backends, nodeName } = cfg;
  // Local state defaults under the first backend that has a data directory (an rbd backend has none).
  const firstDataDir = backends.flatMap((b) => (b.driver === 'file' ? [b.dataDir] : []))[0];

  if (role !== 'node' && backends.length === 0) throw new ConfigError('backends', 'the controller needs at least one backend (--data-dir DIR or backends: in --config)');
  const seen = new Set<string>();
  for (const [i, b] of backends.entries()) {
    if (seen.has(b.name)) throw new ConfigError(`backends[${i}].name`, `"${b.name}" is used twice`);
    seen.add(b.name);
    for (const other of backends.slice(0, i)) {
      if (b.driver !== 'file' || other.driver !== 'file') continue;
      if (b.dataDir === other.dataDir || b.dataDir.startsWith(`${other.dataDir}/`) || other.dataDir.startsWith(`${b.dataDir}/`))
        throw new ConfigError(`backends[${i}].dataDir`, `overlaps the data directory of backend "${other.name}"`);
    }
    if (b.driver === 'lvm') {
      const same = backends.slice(0, i).find((o) => o.driver === 'lvm' && o.volumeGroup === b.volumeGroup);
      if (same) throw new ConfigError(`backends[${i}].volumeGroup`, `volume group "${b.volumeGroup}" is already backend "${same.name}"'s; two backends cannot share one volume group`);
      const dm = dmNameLength(b.volumeGroup, longestLvName(b.name));
      if (dm > 127) throw new ConfigError(`backends[${i}].volumeGroup`, `with backend name "${b.name}", device-mapper names would be ${dm} characters (at most 127); shorten the backend or volume group name`);
    }
    // In single-machine mode the images live on this node, so only this node can reach them.
    if (role === 'all' && Object.keys(b.topology).length === 0) b.topology = { [NODE_TOPOLOGY_KEY]: nodeName };
  }

  return {
    ...cfg,
    role,
    node: {
      ...cfg.node,
      topology: { [NODE_TOPOLOGY_KEY]: nodeName, ...cfg.node.topology },
      stateDir: cfg.node.stateDir ?? (firstDataDir !== undefined && role === 'all' ? `${firstDataDir}/node-state` : '/var/lib/sinter/node'),
      orphanTargetPrefixes: cfg.node.orphanTargetPrefixes ?? defaultOrphanTargetPrefixes(backends),
      orphanNqnPrefixes: cfg.node.orphanNqnPrefixes ?? [...new Set([DEFAULT_NQN_PREFIX, ...backends.flatMap((b) => (b.driver !== 'rbd' && b.export === 'nvmeof' && b.nvmeof ? [b.nvmeof.nqnPrefix] : []))])],
    },
    controller: { stateDir: cfg.controller.stateDir ?? (firstDataDir !== undefined ? `${firstDataDir}/controller-state` : '/var/lib/sinter/controller') },
    kubernetes: kubernetesFrom(file.kubernetes, role),
  };
}

/**
 * Target names whose orphan sessions `orphanSessions: clean` may tear down:
 * the ones sinter's controllers make (by default the default iqnPrefix and
 * the iqnPrefix of every iSCSI backend in this configuration). Sessions to
 * any other target (an array's LUNs, static volumes, an administrator's) are
 * only ever reported.
 */
function defaultOrphanTargetPrefixes(backends: BackendConfig[]): string[] {
  const fromBackends = backends.flatMap((b) => (b.driver !== 'rbd' && b.export === 'iscsi' && b.iscsi ? [b.iscsi.iqnPrefix] : []));
  return [...new Set([DEFAULT_IQN_PREFIX, ...fromBackends])];
}
