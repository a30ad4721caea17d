import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodePublishContext } from '../../src/contracts/publish-context.js';
import { notFound } from '../../src/csi/errors.js';
import { CsiServer, type ServiceImpl } from '../../src/csi/server.js';
import { NodeEnv, GiB } from '../helpers/node-env.js';

// csi-sanity's "Node Service" specs against the real node service. The
// identity and controller here are a few lines of stand-in (image files in
// the env's local root), only so sanity can create volumes to stage.
const SANITY = '/opt/csi-sanity/csi-sanity';

let env: NodeEnv;
let server: CsiServer;
let socket: string;

function fakeController(images: string): ServiceImpl {
  const pathOf = (id: string) => join(images, `${id}.img`);
  return {
    ControllerGetCapabilities: async () => ({
      capabilities: ['CREATE_DELETE_VOLUME', 'PUBLISH_UNPUBLISH_VOLUME', 'EXPAND_VOLUME'].map((type) => ({ rpc: { type } })),
    }),
    CreateVolume: async (req) => {
      const id = `file-${createHash('sha256').update(req.name).digest('hex').slice(0, 32)}`;
      const bytes = Number(req.capacity_range?.required_bytes || GiB);
      if (!existsSync(pathOf(id))) await env.exec.run('truncate', ['-s', String(bytes), pathOf(id)]);
      return { volume: { volume_id: id, capacity_bytes: bytes, volume_context: req.parameters ?? {} } };
    },
    DeleteVolume: async (req) => {
      await rm(pathOf(req.volume_id), { force: true });
      return {};
    },
    ControllerPublishVolume: async (req) => {
      if (!existsSync(pathOf(req.volume_id))) throw notFound(`volume ${req.volume_id} does not exist`);
      return { publish_context: encodePublishContext({ transport: 'local', path: pathOf(req.volume_id) }) };
    },
    ControllerUnpublishVolume: async () => ({}),
    ControllerExpandVolume: async (req) => {
      const bytes = Number(req.capacity_range.required_bytes);
      await env.exec.run('truncate', ['-s', String(bytes), pathOf(req.volume_id)]);
      return { capacity_bytes: bytes, node_expansion_required: true };
    },
  };
}

const identity: ServiceImpl = {
  GetPluginInfo: async () => ({ name: 'sinter.csi.example.org', vendor_version: '0.1.0' }),
  GetPluginCapabilities: async () => ({ capabilities: [{ service: { type: 'CONTROLLER_SERVICE' } }] }),
  Probe: async () => ({ ready: { value: true } }),
};

beforeAll(async () => {
  env = await NodeEnv.create();
  server = new CsiServer({ identity, controller: fakeController(env.images), node: env.h }, pino({ level: 'silent' }));
  socket = join(env.dir, 'csi.sock');
  await server.listen(`unix://${socket}`);
});
afterAll(async () => {
  await server?.shutdown(1000);
  await env?.cleanup();
});

describe.skipIf(!existsSync(SANITY))('csi-sanity Node Service', () => {
  it.each(['mount', 'block'])('passes every Node Service spec with %s volumes', async (access) => {
    // xfs: grows online without CAP_SYS_RESOURCE, which some test sandboxes lack (ext4 needs it).
    const params = join(env.dir, 'params.yaml');
    await writeFile(params, access === 'mount' ? 'fsType: xfs\n' : '{}\n');
    const res = await env.exec.run(
      SANITY,
      [
        `--csi.endpoint=unix://${socket}`,
        `--csi.stagingdir=${join(env.kubelet, 'sanity-staging')}`,
        `--csi.mountdir=${join(env.kubelet, 'sanity-mount')}`,
        `--csi.testvolumeparameters=${params}`,
        `--csi.testvolumesize=${GiB}`,
        `--csi.testvolumeexpandsize=${2 * GiB}`,
        `--csi.testvolumeaccesstype=${access}`,
        '--ginkgo.focus=Node Service',
        '--ginkgo.no-color',
      ],
      { timeoutMs: 300_000, okExitCodes: [1] },
    );
    const out = res.stdout + res.stderr;
    if (process.env.SANITY_DEBUG) console.log(out);
    const summary = /Ran (\d+) of \d+ Specs[\s\S]*?(\d+) Passed \| (\d+) Failed/.exec(out);
    expect(summary, out.slice(-3000)).not.toBeNull();
    expect(Number(summary![3]), out.slice(-6000)).toBe(0);
    expect(Number(summary![1])).toBeGreaterThan(15);
    expect(res.exitCode).toBe(0);
  }, 320_000);
});
