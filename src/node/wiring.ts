import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { encodeNodeId, isValidIqn, isValidNqn, NODE_TOPOLOGY_KEY, parseNodeId } from '../contracts/nodeid.js';
import type { HostExecutor } from '../exec/run.js';
import { IscsiConnector } from './connectors/iscsi-connector.js';
import { RbdConnector } from './connectors/rbd.js';
import { NvmeConnector } from './connectors/nvme.js';
import { onlineInitiatorWwpns } from './connectors/fc.js';
import { NodeService } from './service.js';

// The node role's wiring, apart from src/app.ts so that a controller-only
// process never loads the node service and its connectors (~25 modules of
// start-up); app.ts imports this module only when the role has a node.

/** Reads the host's iSCSI initiator name (`InitiatorName=iqn…`), if it has one. */
export function readInitiatorName(file: string): string | undefined {
  try {
    const m = /^\s*InitiatorName\s*=\s*(\S+)\s*$/m.exec(readFileSync(file, 'utf8'));
    return m && isValidIqn(m[1]!) ? m[1] : undefined;
  } catch {
    return undefined;
  }
}

/** Reads nvme-cli's host NQN file (one line, the NQN), if the host has a valid one. */
export function readHostNqn(file: string): string | undefined {
  try {
    const nqn = readFileSync(file, 'utf8').trim();
    return isValidNqn(nqn) ? nqn : undefined;
  } catch {
    return undefined;
  }
}

export function nodeIdFor(cfg: Config): string {
  if (cfg.nodeId) return cfg.nodeId;
  return encodeNodeId({
    host: cfg.nodeName,
    iqn: cfg.node.iscsiInitiatorName ?? readInitiatorName(cfg.node.initiatorNameFile),
    wwpns: onlineInitiatorWwpns(cfg.node.sysfsRoot),
    nqn: cfg.node.nvmeHostNqn ?? readHostNqn(cfg.node.hostNqnFile),
  });
}

/**
 * The node service as this configuration builds it (connectors included);
 * `sinter fsck` builds the same one, never started, for its read-only report.
 */
export function nodeServiceFor(cfg: Config, nodeId: string, exec: HostExecutor, log: Logger): NodeService {
  return new NodeService({
    config: {
      driverName: cfg.driverName,
      nodeName: cfg.nodeName,
      nodeId,
      maxVolumesPerNode: cfg.node.maxVolumesPerNode,
      // The node segment is the node id's host, which the controller reads back from the id (src/contracts/nodeid.ts).
      topology: { ...cfg.node.topology, [NODE_TOPOLOGY_KEY]: parseNodeId(nodeId)?.host ?? cfg.nodeName },
      kubeletRoots: cfg.kubeletRoots,
      localRoots: cfg.backends.flatMap((b) => (b.driver === 'file' ? [join(b.dataDir, 'volumes')] : [])),
      stateDir: cfg.node.stateDir,
      sysfsRoot: cfg.node.sysfsRoot,
      devRoot: cfg.node.devRoot,
      fc: cfg.node.fc,
      orphanSessions: cfg.node.orphanSessions,
    },
    exec,
    log,
    // Host commands run in PID 1's mount namespace in nsenter mode: the mount table to read is PID 1's too.
    mountInfoPath: cfg.exec.mode === 'nsenter' ? '/proc/1/mountinfo' : undefined,
    connectors: [
      new IscsiConnector(
        {
          mode: cfg.node.initiator,
          initiatorName: parseNodeId(nodeId)?.iqn,
          stateDir: join(cfg.node.stateDir, 'iscsi-userspace'),
          sysfsRoot: cfg.node.sysfsRoot,
          devRoot: cfg.node.devRoot,
          orphanTargetPrefixes: cfg.node.orphanTargetPrefixes,
          kernel: {
            mountInfoPath: cfg.exec.mode === 'nsenter' ? '/proc/1/mountinfo' : undefined,
            deviceTimeoutMs: cfg.node.iscsi.deviceTimeoutSeconds * 1000,
            multipathWaitMs: cfg.node.iscsi.multipathWaitSeconds * 1000,
          },
        },
        exec,
        log.child({ part: 'iscsi' }),
      ),
      new RbdConnector(
        {
          stateDir: join(cfg.node.stateDir, 'rbd-userspace'),
          kernelStateDir: join(cfg.node.stateDir, 'rbd-kernel'),
          user: cfg.node.rbd.user,
          keyFile: cfg.node.rbd.keyFile,
          attach: cfg.node.rbd.attach,
          mapOptions: cfg.node.rbd.mapOptions,
          sysfsRoot: cfg.node.sysfsRoot,
          devRoot: cfg.node.devRoot,
          nodeHost: parseNodeId(nodeId)?.host,
        },
        exec,
        log.child({ part: 'rbd' }),
      ),
      new NvmeConnector(
        {
          hostNqn: parseNodeId(nodeId)?.nqn,
          sysfsRoot: cfg.node.sysfsRoot,
          devRoot: cfg.node.devRoot,
          orphanNqnPrefixes: cfg.node.orphanNqnPrefixes,
          mountInfoPath: cfg.exec.mode === 'nsenter' ? '/proc/1/mountinfo' : undefined,
        },
        exec,
        log.child({ part: 'nvme' }),
      ),
    ],
  });
}
