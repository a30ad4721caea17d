import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NODE_TOPOLOGY_KEY, parseNodeId } from '../../src/contracts/nodeid.js';
import { checkNodeInTopology, KubeNodeSegments, LocalNodeSegments } from '../../src/controller/node-topology.js';
import { ConfigError } from '../../src/config/error.js';
import { loadConfig } from '../../src/config/load.js';
import { projectCsiNode } from '../../src/k8s/resources.js';

const ZONE = 'topology.sinter.csi.io/zone';
const N1 = parseNodeId('node-1;;')!;

describe('a node inside or outside a volume\'s accessible topology', () => {
  it('reads the node segment from the node id and names what is missing or different', () => {
    expect(() => checkNodeInTopology('volume v', { [NODE_TOPOLOGY_KEY]: 'node-1' }, N1, {})).not.toThrow();
    expect(() => checkNodeInTopology('volume v', {}, N1, {})).not.toThrow();
    // A registration claiming another node segment cannot move the node: the id decides.
    expect(() => checkNodeInTopology('volume v', { [NODE_TOPOLOGY_KEY]: 'node-2' }, N1, { [NODE_TOPOLOGY_KEY]: 'node-2' })).toThrow(
      /volume v is reachable only from topology topology\.sinter\.csi\.io\/node=node-2, and node node-1 is in topology\.sinter\.csi\.io\/node=node-1/,
    );
    expect(() => checkNodeInTopology('volume v', { [ZONE]: 'a' }, N1, {})).toThrow(/node node-1 reports no topology\.sinter\.csi\.io\/zone segment/);
    expect(() => checkNodeInTopology('volume v', { [ZONE]: 'a' }, N1, { [ZONE]: 'b' })).toThrow(/node node-1 is in topology\.sinter\.csi\.io\/zone=b/);
    expect(() => checkNodeInTopology('volume v', { [ZONE]: 'a', [NODE_TOPOLOGY_KEY]: 'node-1' }, N1, { [ZONE]: 'a' })).not.toThrow();
  });

  it('without Kubernetes knows the local node\'s configured segments only', async () => {
    const src = new LocalNodeSegments('node-1;;', { [ZONE]: 'a' });
    expect(await src.segments('node-1;;')).toEqual({ [ZONE]: 'a' });
    expect(await src.segments('node-2;;')).toEqual({});
  });

  it('with Kubernetes takes the Node labels the CSINode\'s topologyKeys name, and nothing when the API cannot be asked', async () => {
    const csiNode = projectCsiNode('sinter.csi.io', {
      metadata: { name: 'worker-1' },
      spec: { drivers: [{ name: 'sinter.csi.io', nodeID: 'worker-1;;', topologyKeys: [NODE_TOPOLOGY_KEY, ZONE] }] },
    })!;
    expect(csiNode.topologyKeys).toEqual([NODE_TOPOLOGY_KEY, ZONE]);
    let up = true;
    const src = new KubeNodeSegments({
      csiNodeOfId: (id) => (id === csiNode.nodeId ? csiNode : undefined),
      nodeLabels: async (name) => {
        if (!up) throw new Error('connect ECONNREFUSED');
        const labels: Record<string, string> = name === 'worker-1' ? { [ZONE]: 'a', 'topology.kubernetes.io/zone': 'x', [NODE_TOPOLOGY_KEY]: 'worker-1' } : {};
        return labels;
      },
    });
    expect(await src.segments('worker-1;;')).toEqual({ [ZONE]: 'a', [NODE_TOPOLOGY_KEY]: 'worker-1' });
    expect(await src.segments('worker-9;;')).toEqual({});
    up = false;
    expect(await src.segments('worker-1;;')).toEqual({});
  });

  it('the node configuration cannot set the node segment: it is always the node id\'s host', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sinter-topo-cfg-'));
    try {
      writeFileSync(join(dir, 'c.yaml'), `node:\n  topology:\n    ${NODE_TOPOLOGY_KEY}: elsewhere\n`);
      expect(() => loadConfig('node', ['--node-name', 'n1', '--config', join(dir, 'c.yaml')])).toThrow(ConfigError);
      expect(() => loadConfig('node', ['--node-name', 'n1', '--config', join(dir, 'c.yaml')])).toThrow(/node\.topology\.topology\.sinter\.csi\.io\/node/);
      writeFileSync(join(dir, 'c.yaml'), `node:\n  topology:\n    ${ZONE}: a\n`);
      expect(loadConfig('node', ['--node-name', 'n1', '--config', join(dir, 'c.yaml')]).node.topology).toEqual({ [NODE_TOPOLOGY_KEY]: 'n1', [ZONE]: 'a' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
