import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSinter, type SinterProcess } from './sinter-process.js';
import type { TestTgtd } from './tgtd.js';
import { forceCleanupUserspace } from './userspace-cleanup.js';

export interface IscsiSplitOptions {
  tgtd: TestTgtd;
  iqnPrefix: string;
  nodeIqn: string;
  nodeName: string;
  reconcileSeconds: number;
}

export interface IscsiSplit {
  ctl: SinterProcess;
  node: SinterProcess;
  nodeId: string;
  /** The controller's configuration file, for a restart with the same backends. */
  controllerConfig: string;
  dataDir: string;
  nodeStateDir: string;
  /** Starts the controller again (after a kill) with the same configuration. */
  restartController(): Promise<SinterProcess>;
  /** Starts the node plugin again (after a kill) with the same configuration and state. */
  restartNode(): Promise<SinterProcess>;
  /** Stops both processes and tears down whatever user-space sessions the node left. */
  cleanup(): Promise<void>;
}

/** A controller configuration with one file backend, `san`, exported through tgt at `portal`. */
export function sanBackendYaml(o: { dataDir: string; portal: string; controlPort: number; iqnPrefix: string; reconcileSeconds: number; openPortals?: boolean; name?: string }): string {
  return [
    'backends:',
    `  - name: ${o.name ?? 'san'}`,
    '    driver: file',
    `    dataDir: ${o.dataDir}`,
    '    export: iscsi',
    '    iscsi:',
    `      portals: ["${o.portal}"]`,
    `      controlPort: ${o.controlPort}`,
    `      iqnPrefix: "${o.iqnPrefix}"`,
    `      reconcileSeconds: ${o.reconcileSeconds}`,
    ...(o.openPortals ? ['      openPortals: true'] : []),
  ].join('\n');
}

/**
 * The split a cluster runs: `sinter controller` exporting one file backend
 * (`san`) through the given tgtd, and `sinter node` with the user-space
 * initiator, as two processes under `dir`.
 */
export async function startIscsiSplit(dir: string, o: IscsiSplitOptions): Promise<IscsiSplit> {
  const dataDir = join(dir, 'data');
  const nodeStateDir = join(dir, 'node', 'state');
  const controllerConfig = join(dir, 'controller.yaml');
  writeFileSync(controllerConfig, sanBackendYaml({ dataDir, portal: o.tgtd.portal, controlPort: o.tgtd.controlPort, iqnPrefix: o.iqnPrefix, reconcileSeconds: o.reconcileSeconds }));
  writeFileSync(join(dir, 'node.yaml'), ['node:', `  iscsiInitiatorName: ${o.nodeIqn}`, '  initiator: userspace', `  stateDir: ${nodeStateDir}`].join('\n'));
  mkdirSync(join(dir, 'ctl'), { recursive: true });
  mkdirSync(join(dir, 'node'), { recursive: true });
  const startController = () => startSinter({ role: 'controller', base: join(dir, 'ctl'), args: ['--config', controllerConfig] });
  const startNode = () => startSinter({ role: 'node', base: join(dir, 'node'), nodeName: o.nodeName, args: ['--config', join(dir, 'node.yaml')] });
  const split: IscsiSplit = {
    ctl: await startController(),
    node: await startNode(),
    nodeId: '',
    controllerConfig,
    dataDir,
    nodeStateDir,
    async restartController() {
      split.ctl = await startController();
      return split.ctl;
    },
    async restartNode() {
      split.node = await startNode();
      return split.node;
    },
    async cleanup() {
      await split.node?.cleanup();
      await forceCleanupUserspace(join(nodeStateDir, 'iscsi-userspace'));
      await split.ctl?.cleanup();
    },
  };
  split.nodeId = (await split.node.client.node.NodeGetInfo({})).node_id!;
  return split;
}
