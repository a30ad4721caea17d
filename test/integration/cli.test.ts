import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { MAIN, startSinter, waitFor, type SinterProcess } from '../helpers/sinter-process.js';
import type { VolumeCapability } from '../../src/csi/messages.js';

const run = (args: string[]) => execa('node', [MAIN, ...args], { reject: false, timeout: 20_000 });

describe('sinter CLI', () => {
  const dirs: string[] = [];
  const procs: SinterProcess[] = [];
  const tmp = () => {
    const d = mkdtempSync(join(tmpdir(), 'sinter-cli-'));
    dirs.push(d);
    return d;
  };
  afterEach(async () => {
    for (const p of procs.splice(0)) await p.cleanup();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('exits 2 naming an unknown flag', async () => {
    const r = await run(['all', '--data-dir', tmp(), '--frobnicate']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--frobnicate/);
  });

  it('exits 2 naming the bad key of a config file', async () => {
    const d = tmp();
    writeFileSync(join(d, 'c.yaml'), 'backends:\n  - name: fast\n    driver: file\n    dataDir: /tmp/x\n    lables: {type: ssd}\n');
    const r = await run(['controller', '--config', join(d, 'c.yaml')]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/backends\[0\]\.lables: unknown key/);
  });

  it('exits 2 for a relative data dir, a bad endpoint, a bad log level, and a controller without backends', async () => {
    expect((await run(['all', '--data-dir', 'rel/dir'])).stderr).toMatch(/--data-dir.*absolute/);
    const ep = await run(['all', '--data-dir', tmp(), '--endpoint', 'http://x']);
    expect([ep.exitCode, /--endpoint/.test(ep.stderr)]).toEqual([2, true]);
    expect((await run(['all', '--data-dir', tmp(), '--log-level', 'loud'])).exitCode).toBe(2);
    const nb = await run(['controller']);
    expect([nb.exitCode, /backends/.test(nb.stderr)]).toEqual([2, true]);
  });

  it('replaces a stale socket from a crash and removes its socket on SIGTERM', async () => {
    const base = tmp();
    const sock = join(base, 'csi.sock');
    // A socket file nobody listens on: what a SIGKILLed plugin leaves.
    await new Promise<void>((resolve) => {
      const srv = createServer().listen(sock, () => {
        srv.close();
        resolve();
      });
    });
    writeFileSync(join(base, 'marker'), '');
    const s = await startSinter({ base });
    procs.push(s);
    expect((await s.client.identity.Probe({})).ready!.value).toBe(true);
    await s.stop('SIGTERM');
    expect(s.proc.exitCode).toBe(0);
    expect(existsSync(s.socket)).toBe(false);
  });

  it('on SIGTERM finishes an RPC already in flight, then exits 0', async () => {
    const s = await startSinter();
    procs.push(s);
    const info = await s.client.node.NodeGetInfo({});
    const cap: VolumeCapability = { mount: { fs_type: 'ext4', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    const v = (await s.client.controller.CreateVolume({ name: 'inflight', capacity_range: { required_bytes: 256 * 1024 * 1024 }, volume_capabilities: [cap] })).volume;
    const ctx = (await s.client.controller.ControllerPublishVolume({ volume_id: v!.volume_id, node_id: info.node_id, volume_capability: cap })).publish_context;
    const staging = join(s.kubeletRoot, 'staging');
    // mkfs makes NodeStageVolume take long enough for the signal to land mid-call.
    const stage = s.client.node.NodeStageVolume({ volume_id: v!.volume_id, staging_target_path: staging, volume_capability: cap, publish_context: ctx });
    // The node writes its stage record first thing: once it exists, the call is in flight.
    await waitFor('the stage to begin', () => existsSync(join(s.dataDir, 'node-state', 'volumes', `${v!.volume_id}.json`)) || undefined);
    s.proc.kill('SIGTERM');
    await expect(stage).resolves.toBeDefined();
    await s.proc;
    expect(s.proc.exitCode).toBe(0);
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).toContain(` ${staging} `);
  });

  it('logs one JSON line per RPC with method, ids, duration and code', async () => {
    const s = await startSinter();
    procs.push(s);
    await s.client.controller.DeleteVolume({ volume_id: 'default-00000000-0000-4000-8000-000000000000' });
    await s.client.controller.CreateVolume({ name: 'x' }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    const lines = s.logs().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { rpc?: string; ms?: unknown });
    const del = lines.find((l) => l.rpc === 'Controller.DeleteVolume');
    expect(del).toMatchObject({ volume_id: 'default-00000000-0000-4000-8000-000000000000', code: 'OK' });
    expect(typeof del!.ms).toBe('number');
    expect(lines.find((l) => l.rpc === 'Controller.CreateVolume')).toMatchObject({ name: 'x', code: 'INVALID_ARGUMENT' });
  });
});
