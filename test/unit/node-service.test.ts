import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import type { NodeHandlers } from '../helpers/node-env.js';
import { ExecError, type Executor } from '../../src/exec/run.js';
import { toHostError } from '../../src/node/host-errors.js';
import { NodeService, type NodeServiceConfig } from '../../src/node/service.js';
import { handlerByName } from '../../src/csi/messages.js';

/** An executor that records calls and runs nothing: request validation must never reach the host. */
class NoHost implements Executor {
  calls: string[] = [];
  async run(cmd: string, args: string[]): Promise<never> {
    this.calls.push([cmd, ...args].join(' '));
    throw new Error(`unexpected host command: ${cmd}`);
  }
}

let dir: string;
let h: NodeHandlers;
let exec: NoHost;
let config: NodeServiceConfig;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sinter-nodesvc-'));
  exec = new NoHost();
  config = {
    driverName: 'sinter.csi.example.org',
    nodeName: 'n1',
    nodeId: 'n1;;',
    maxVolumesPerNode: 0,
    topology: {},
    kubeletRoots: [dir],
    localRoots: [join(dir, 'images')],
    stateDir: join(dir, 'state'),
  };
  h = new NodeService({ config, exec, log: pino({ level: 'silent' }) }).handlers() as NodeHandlers;
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const cap = { access_type: 'mount', mount: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
async function codeOf(p: Promise<unknown>): Promise<[string, string]> {
  try {
    await p;
    return ['ok', ''];
  } catch (e) {
    const err = e as { code: string; message: string };
    return [err.code, err.message];
  }
}

describe('NodeGetInfo / NodeGetCapabilities', () => {
  it('omits max_volumes_per_node when unlimited and topology when empty', async () => {
    expect(await h.NodeGetInfo({})).toEqual({ node_id: 'n1;;' });
    const h2 = new NodeService({ config: { ...config, maxVolumesPerNode: 8, topology: { zone: 'a' } }, exec, log: pino({ level: 'silent' }) }).handlers() as NodeHandlers;
    expect(await h2.NodeGetInfo({})).toEqual({ node_id: 'n1;;', max_volumes_per_node: 8, accessible_topology: { segments: { zone: 'a' } } });
  });

  it('lists the four node capabilities', async () => {
    const res = (await h.NodeGetCapabilities({})) as { capabilities: { rpc: { type: string } }[] };
    expect(res.capabilities.map((c) => c.rpc.type)).toEqual(['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'EXPAND_VOLUME', 'VOLUME_CONDITION']);
  });
});

describe('request validation happens before any host command', () => {
  const S = () => join(dir, 'staging', 'v');
  const T = () => join(dir, 'pods', 'p', 'mount');
  const cases: [string, string, () => Record<string, unknown>, string, string][] = [
    ['stage: no volume_id', 'NodeStageVolume', () => ({ staging_target_path: S(), volume_capability: cap, publish_context: { device: '/dev/mock' } }), Code.INVALID_ARGUMENT, 'volume_id'],
    ['stage: no staging path', 'NodeStageVolume', () => ({ volume_id: 'file-v', volume_capability: cap }), Code.INVALID_ARGUMENT, 'staging_target_path'],
    ['stage: no capability', 'NodeStageVolume', () => ({ volume_id: 'file-v', staging_target_path: S(), publish_context: { device: '/dev/mock' } }), Code.INVALID_ARGUMENT, 'volume_capability'],
    ['stage: foreign publish_context', 'NodeStageVolume', () => ({ volume_id: 'file-v', staging_target_path: S(), volume_capability: cap, publish_context: { device: '/dev/mock' } }), Code.INVALID_ARGUMENT, 'publish_context.transport'],
    ['stage: iscsi without a connector', 'NodeStageVolume', () => ({ volume_id: 'file-v', staging_target_path: S(), volume_capability: cap, publish_context: { transport: 'iscsi', portals: '10.0.0.1:3260', iqn: 'iqn.2024-01.org.example:v', lun: '1' } }), Code.FAILED_PRECONDITION, 'iscsi'],
    ['stage: malformed id', 'NodeStageVolume', () => ({ volume_id: 'a/../b', staging_target_path: S(), volume_capability: cap }), Code.NOT_FOUND, 'volume_id'],
    ['publish: no volume_id', 'NodePublishVolume', () => ({}), Code.INVALID_ARGUMENT, 'volume_id'],
    ['publish: no target', 'NodePublishVolume', () => ({ volume_id: 'file-v' }), Code.INVALID_ARGUMENT, 'target_path'],
    ['publish: no capability', 'NodePublishVolume', () => ({ volume_id: 'file-v', target_path: T() }), Code.INVALID_ARGUMENT, 'volume_capability'],
    ['publish: no staging path', 'NodePublishVolume', () => ({ volume_id: 'file-v', target_path: T(), volume_capability: cap }), Code.FAILED_PRECONDITION, 'NodeStageVolume'],
    ['publish: target = staging', 'NodePublishVolume', () => ({ volume_id: 'file-v', target_path: S(), staging_target_path: S(), volume_capability: cap }), Code.INVALID_ARGUMENT, 'separate'],
    ['unpublish: no volume_id', 'NodeUnpublishVolume', () => ({}), Code.INVALID_ARGUMENT, 'volume_id'],
    ['unpublish: no target', 'NodeUnpublishVolume', () => ({ volume_id: 'file-v' }), Code.INVALID_ARGUMENT, 'target_path'],
    ['unstage: no volume_id', 'NodeUnstageVolume', () => ({ staging_target_path: S() }), Code.INVALID_ARGUMENT, 'volume_id'],
    ['unstage: no staging path', 'NodeUnstageVolume', () => ({ volume_id: 'file-v' }), Code.INVALID_ARGUMENT, 'staging_target_path'],
    ['unstage: outside root', 'NodeUnstageVolume', () => ({ volume_id: 'file-v', staging_target_path: '/etc' }), Code.INVALID_ARGUMENT, 'staging_target_path'],
    ['stats: no volume_id', 'NodeGetVolumeStats', () => ({ volume_path: 'some/path' }), Code.INVALID_ARGUMENT, 'volume_id'],
    ['stats: no path', 'NodeGetVolumeStats', () => ({ volume_id: 'file-v' }), Code.INVALID_ARGUMENT, 'volume_path'],
    ['stats: unknown volume', 'NodeGetVolumeStats', () => ({ volume_id: 'file-v', volume_path: 'some/path' }), Code.NOT_FOUND, 'volume_path'],
    ['expand: no volume_id', 'NodeExpandVolume', () => ({ volume_path: dir, volume_capability: cap }), Code.INVALID_ARGUMENT, 'volume_id'],
    ['expand: no path', 'NodeExpandVolume', () => ({ volume_id: 'file-v', volume_capability: cap }), Code.INVALID_ARGUMENT, 'volume_path'],
    ['expand: unknown volume', 'NodeExpandVolume', () => ({ volume_id: 'file-v', volume_path: 'some/path' }), Code.NOT_FOUND, 'volume_path'],
    ['expand: required > limit', 'NodeExpandVolume', () => ({ volume_id: 'file-v', volume_path: dir + '/state', capacity_range: { required_bytes: 10, limit_bytes: 5 } }), Code.INVALID_ARGUMENT, 'capacity_range'],
  ];
  it.each(cases)('%s', async (_n, method, req, code, field) => {
    const [got, msg] = await codeOf(handlerByName(h, method)(req()));
    expect(got).toBe(code);
    expect(msg).toContain(field);
    expect(exec.calls).toEqual([]);
  });
});

describe('host command failures become one actionable line', () => {
  it('a missing tool names the package to install', () => {
    const e = toHostError('formatting /dev/loop3 as xfs', new ExecError('mkfs.xfs -q /dev/loop3', undefined, 'spawn mkfs.xfs ENOENT', false));
    expect(e.code).toBe(Code.FAILED_PRECONDITION);
    expect(e.message).toBe('formatting /dev/loop3 as xfs failed: mkfs.xfs is not installed on this node (install xfsprogs)');
  });
  it('a failing command says what the node was doing, the command and its error, on one line', () => {
    const e = toHostError('mounting /dev/loop3 (ext4) at /k/s', new ExecError('mount -t ext4 /dev/loop3 /k/s', 32, 'mount: /k/s: wrong fs type\nline two\n', false));
    expect(e.code).toBe(Code.INTERNAL);
    expect(e.message).not.toContain('\n');
    expect(e.message).toMatch(/^mounting \/dev\/loop3 \(ext4\) at \/k\/s failed: mount -t ext4 \/dev\/loop3 \/k\/s failed \(exit 32\): mount: \/k\/s: wrong fs type/);
  });
  it('a timeout is DEADLINE_EXCEEDED', () => {
    expect(toHostError('x', new ExecError('resize2fs /dev/loop1', undefined, '', true)).code).toBe(Code.DEADLINE_EXCEEDED);
  });
});
