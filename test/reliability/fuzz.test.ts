import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { runFsck } from '../../src/fsck/check.js';
import { describe as describeReport } from '../helpers/fsck.js';
import { seedFromEnv, SOAK } from '../helpers/rng.js';
import { blockCap, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { rpcByName } from '../../src/csi/client.js';

/**
 * Bad input (safety rules 2 and 3): property-based fuzzing of every RPC's
 * request fields against a real `sinter all`. Hostile ids (.., /, NUL, 10 KB,
 * unicode), negative and huge sizes, bogus capabilities and enums, bad
 * tokens, paths outside the kubelet root and through symlinks that lead out,
 * publish_contexts naming files that are not images — mixed with valid
 * values so requests reach deep into the handlers. Every answer must be a
 * precise status (never INTERNAL, UNKNOWN or a hang); sinter must stay up;
 * and nothing may be created, removed or changed outside the data directory
 * and the kubelet root: the rest of the test's directory and a canary
 * directory outside it are compared file by file before and after, as are
 * the mount table and the loop devices.
 * CI: 10,000 requests; `npm run soak`: 100,000. SINTER_SEED=<n> replays.
 */

const REQUESTS = Number(process.env.SINTER_FUZZ_REQUESTS ?? (SOAK ? 100_000 : 10_000));
const BATCH = 20;
const BAD = new Map([
  [2, 'UNKNOWN'],
  [4, 'DEADLINE_EXCEEDED'],
  [13, 'INTERNAL'],
  [14, 'UNAVAILABLE'],
]);

/** name → type, size, content hash (or link target) of every entry under dir, minus the excluded subtrees. */
function tree(dir: string, exclude: string[] = [], out = new Map<string, string>()): Map<string, string> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = join(dir, n);
    if (exclude.includes(p)) continue;
    const st = lstatSync(p);
    if (st.isSymbolicLink()) out.set(p, `link ${readlinkSync(p)}`);
    else if (st.isDirectory()) {
      out.set(p, `dir ${st.mode.toString(8)}`);
      tree(p, exclude, out);
    } else if (st.isFile()) out.set(p, `file ${st.size} ${st.mode.toString(8)} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    else out.set(p, `other ${st.mode.toString(8)}`);
  }
  return out;
}

const mountPoints = () => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((l) => l.split(' ')[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
async function loops(): Promise<{ name: string; back: string }[]> {
  const out = (await execa('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])).stdout;
  return out.trim() ? (JSON.parse(out) as { loopdevices: { name: string; 'back-file': string | null }[] }).loopdevices.map((l) => ({ name: l.name, back: l['back-file'] ?? '' })) : [];
}

describe(`fuzzing every RPC's request fields (SINTER_SEED=${seedFromEnv()})`, () => {
  const seed = seedFromEnv();
  let s: SinterProcess;
  let canary: string;
  let nodeId: string;
  const v: Record<string, string> = {};
  let snapId = '';
  let kubelet = '';
  let data = '';

  beforeAll(async () => {
    s = await startSinter({ detached: true });
    kubelet = s.kubeletRoot;
    data = s.dataDir;
    canary = mkdtempSync(join(tmpdir(), 'sinter-canary-'));
    writeFileSync(join(canary, 'a'), 'precious');
    mkdirSync(join(canary, 'dir'));
    writeFileSync(join(canary, 'dir', 'b'), 'also precious');
    // Ways out of the kubelet root that a careless driver would follow.
    symlinkSync(canary, join(kubelet, 'escape'));
    symlinkSync(join(canary, 'a'), join(kubelet, 'escape-file'));
    symlinkSync('/nonexistent-sinter', join(kubelet, 'dangling'));
    symlinkSync(kubelet, join(kubelet, 'loop'));
    mkdirSync(join(kubelet, 'staging'), { recursive: true });
    nodeId = (await s.client.node.NodeGetInfo({})).node_id!;
    const ctl = s.client.controller;
    v.mount = (await ctl.CreateVolume({ name: 'fz-mount', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [mountCap()] })).volume!.volume_id!;
    v.block = (await ctl.CreateVolume({ name: 'fz-block', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [blockCap()] })).volume!.volume_id!;
    snapId = (await ctl.CreateSnapshot({ name: 'fz-snap', source_volume_id: v.mount })).snapshot!.snapshot_id!;
    const ctx = (await ctl.ControllerPublishVolume({ volume_id: v.mount, node_id: nodeId, volume_capability: mountCap() })).publish_context;
    await s.client.node.NodeStageVolume({ volume_id: v.mount, staging_target_path: join(kubelet, 'staging', v.mount), volume_capability: mountCap(), publish_context: ctx });
    await s.client.node.NodePublishVolume({
      volume_id: v.mount,
      staging_target_path: join(kubelet, 'staging', v.mount),
      target_path: join(kubelet, 'pods', 'p', v.mount),
      volume_capability: mountCap(),
      publish_context: ctx,
    });
  });
  afterAll(async () => {
    await s?.cleanup();
    if (canary) rmSync(canary, { recursive: true, force: true });
  });

  it(`answers ${REQUESTS} hostile requests precisely, stays up, and touches nothing outside its directories`, { timeout: REQUESTS * 20 + 120_000 }, async () => {
    const outsideBefore = tree(s.base, [data, kubelet, join(s.base, 'csi.sock')]);
    const canaryBefore = tree(canary);
    const mountsBefore = new Set(mountPoints());
    const loopsBefore = new Set((await loops()).map((l) => `${l.name} ${l.back}`));
    const big = (c: string) => c.repeat(10 * 1024);

    // ---- field generators: hostile values mixed with valid ones.
    const hostile = fc.oneof(
      fc.constantFrom('', '.', '..', '../..', '/', '//', 'a/b', '../../etc/passwd', 'x\0y', '\0', ' ', '\n', '%2e%2e', 'default-../x', 'default-', 'default@', big('a'), big('/'), big('\u00e9'), '\u202e\u0000', '😀'.repeat(300), 'CON', '-rf', '--help'),
      fc.string({ maxLength: 40 }),
      fc.string({ unit: 'grapheme', maxLength: 40 }),
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.uuid().map((u) => `default-${u}`),
      fc.uuid().map((u) => `default@${u}`),
      fc.uuid().map((u) => `nosuch-${u}`),
    );
    const volumeId = fc.oneof({ arbitrary: fc.constantFrom(v.mount, v.block, snapId), weight: 3 }, { arbitrary: hostile, weight: 2 });
    const snapshotId = fc.oneof(fc.constantFrom(snapId, v.mount), hostile);
    const nodeIdArb = fc.oneof({ arbitrary: fc.constant(nodeId), weight: 4 }, fc.constantFrom('other;;', ';;', 'test-node;;', `${nodeId};x`, big('n')), hostile);
    const name = fc.oneof(fc.constantFrom('fz-mount', 'fz-block', 'fz-new-1', 'fz-new-2', big('n'), 'n'.repeat(256)), hostile.filter((x) => x.length > 255 || x === ''));
    const size = fc.oneof(
      fc.constantFrom(0, 1, -1, 4095, MiB, 16 * MiB, 2 ** 31, 2 ** 53 - 1, 2 ** 53, 2 ** 62, -(2 ** 53), Number.MAX_SAFE_INTEGER, 9.2e18),
      fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
      fc.maxSafeInteger(),
    );
    const capacityRange = fc.option(fc.record({ required_bytes: fc.option(size, { nil: undefined }), limit_bytes: fc.option(size, { nil: undefined }) }), { nil: undefined });
    const mode = fc.oneof(fc.constantFrom('SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', 'UNKNOWN'), fc.integer({ min: -5, max: 40 }));
    const flag = fc.oneof(fc.constantFrom('ro', 'noatime', 'bind', 'remount', 'loop', 'x-mount.mkdir', 'rw,bind', 'make-shared', 'defaults', 'nosuid,nodev', 'context="x"', ''), hostile);
    const capability = fc.oneof(
      { arbitrary: fc.constant(mountCap()), weight: 2 },
      { arbitrary: fc.constant(blockCap()), weight: 2 },
      fc.record(
        {
          mount: fc.record({ fs_type: fc.oneof(fc.constantFrom('', 'ext4', 'xfs', 'btrfs', 'vfat', 'nfs', 'ext4 -o bind', '../ext4'), hostile), mount_flags: fc.array(flag, { maxLength: 4 }), volume_mount_group: hostile }, { requiredKeys: [] }),
          block: fc.constant({}),
          access_mode: fc.record({ mode }, { requiredKeys: [] }),
        },
        { requiredKeys: [] },
      ),
    );
    const capabilities = fc.array(capability, { maxLength: 3 });
    const stringMap = (keys: fc.Arbitrary<string>) => fc.dictionary(keys, fc.oneof(fc.constantFrom('ext4', 'xfs', 'ssd', 'default', '-F -O ^has_journal', '; rm -rf /', '$(reboot)'), hostile), { maxKeys: 4 });
    const parameters = stringMap(fc.oneof(fc.constantFrom('type', 'backend', 'fsType', 'mkfsOptions', 'csi.storage.k8s.io/pvc/name', 'csi.storage.k8s.io/fstype', 'FsType', '__proto__', 'constructor'), hostile));
    const secrets = stringMap(fc.oneof(fc.constantFrom('node.session.auth.password', 'password', 'token'), hostile));
    const validPaths = fc.constantFrom(join(kubelet, 'staging', v.mount), join(kubelet, 'pods', 'p', v.mount), join(kubelet, 'staging', v.block), join(kubelet, 'pods', 'p', v.block), `${kubelet}/staging/fz`, `${kubelet}/pods/fz/mount`);
    const path = fc.oneof(
      { arbitrary: validPaths, weight: 4 },
      fc.constantFrom(
        kubelet,
        `${kubelet}/`,
        `${kubelet}/staging/fz`,
        `${kubelet}/pods/fz/mount`,
        join(kubelet, 'staging', v.mount),
        join(kubelet, 'pods', 'p', v.mount),
        `${kubelet}/../fz`,
        `${kubelet}/./fz`,
        `${kubelet}//fz`,
        `${kubelet}/escape`,
        `${kubelet}/escape/new`,
        `${kubelet}/escape/dir`,
        `${kubelet}/escape/dir/b`,
        `${kubelet}/escape-file`,
        `${kubelet}/dangling/x`,
        `${kubelet}/loop/loop/fz`,
        canary,
        `${canary}/a`,
        `${canary}/new`,
        `${data}`,
        `${data}/volumes`,
        `${data}/volumes/${v.mount}.img`,
        s.base,
        '/',
        '/etc',
        '/etc/passwd',
        '/proc/self/root/etc',
        '/dev/null',
        '/sys',
        'relative/fz',
        `${kubelet}/fz\0x`,
        `${kubelet}/${big('x')}`,
        `${kubelet}/${'d/'.repeat(300)}x`,
      ),
      fc.string({ unit: 'grapheme', maxLength: 30 }).map((x) => `${kubelet}/fz-${x}`),
      fc.string({ maxLength: 20 }).map((x) => `${kubelet}/escape/${x}`),
      hostile,
    );
    const imagePath = fc.oneof(
      { arbitrary: fc.constantFrom(`${data}/volumes/${v.mount}.img`, `${data}/volumes/${v.block}.img`), weight: 3 },
      fc.constantFrom(`${data}/snapshots/${snapId}.img`, `${data}/volumes`, `${data}/volumes/../../x`, `${data}/volumes/nosuch.img`, `${canary}/a`, `${kubelet}/escape-file`, '/dev/loop0', '/dev/sda', '/etc/shadow'),
      path,
    );
    const publishContext = fc.oneof(
      { arbitrary: fc.record({ transport: fc.constant('local'), path: imagePath }), weight: 3 },
      fc.record({ transport: fc.constantFrom('local', 'iscsi', 'fc', '', 'LOCAL', 'nbd'), path: imagePath, portals: hostile, iqn: hostile, lun: fc.oneof(fc.constantFrom('0', '1', '-1', '99999', '1e3'), hostile), wwns: hostile }, { requiredKeys: [] }),
      fc.dictionary(hostile, hostile, { maxKeys: 3 }),
    );
    const volumeContext = stringMap(fc.oneof(fc.constantFrom('fsType', 'mkfsOptions', 'backend', 'csi.storage.k8s.io/pod.name'), hostile));
    const token = fc.option(fc.oneof(fc.constantFrom(v.mount, '0', '-1', 'default-', 'zzzz', big('t')), hostile), { nil: undefined });
    const maxEntries = fc.option(fc.oneof(fc.constantFrom(0, 1, -1, 2 ** 31 - 1, -(2 ** 31))), { nil: undefined });
    const topology = fc.record({ segments: fc.dictionary(fc.oneof(fc.constant('topology.sinter.csi.io/node'), hostile), fc.oneof(fc.constant('test-node'), hostile), { maxKeys: 2 }) });
    const contentSource = fc.option(
      fc.oneof(fc.record({ snapshot: fc.record({ snapshot_id: snapshotId }) }), fc.record({ volume: fc.record({ volume_id: volumeId }) }), fc.constant({})),
      { nil: undefined },
    );

    type Call = { svc: 'controller' | 'node' | 'identity'; rpc: string; req: Record<string, unknown> };
    const opt = { requiredKeys: [] as never[] };
    /**
     * Each RPC two ways: every field random (often refused at the first check),
     * and a valid request with one or two fields replaced by hostile values, so
     * each field's handling is reached with the rest of the request sound.
     */
    const call = (svc: Call['svc'], rpc: string, fields: Record<string, fc.Arbitrary<unknown>>, template?: Record<string, unknown>) => {
      const random = fc.record(fields, opt);
      const keys = Object.keys(fields);
      const mutated = template && keys.length
        ? fc.tuple(fc.record(fields), fc.subarray(keys, { minLength: 1, maxLength: Math.min(2, keys.length) })).map(([r, ks]) => {
            const req: Record<string, unknown> = { ...template };
            for (const k of ks) req[k] = (r as Record<string, unknown>)[k];
            return req;
          })
        : random;
      return fc.oneof(random, mutated).map((req): Call => ({ svc, rpc, req: req }));
    };
    const staged = { staging: join(kubelet, 'staging', v.mount), target: join(kubelet, 'pods', 'p', v.mount) };
    const mountCtx = { transport: 'local', path: `${data}/volumes/${v.mount}.img` };
    const unknownVol = 'default-00000000-0000-4000-8000-000000000000';
    const topologyReq = fc.record({ requisite: fc.array(topology, { maxLength: 2 }), preferred: fc.array(topology, { maxLength: 2 }) }, opt);
    const anyCall = fc.oneof(
      call('controller', 'CreateVolume', { name, capacity_range: capacityRange, volume_capabilities: capabilities, parameters, secrets, volume_content_source: contentSource, accessibility_requirements: topologyReq, mutable_parameters: parameters },
        { name: 'fz-new-1', capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [mountCap()], parameters: {} }),
      call('controller', 'DeleteVolume', { volume_id: volumeId, secrets }, { volume_id: unknownVol }),
      call('controller', 'ControllerPublishVolume', { volume_id: volumeId, node_id: nodeIdArb, volume_capability: capability, readonly: fc.boolean(), secrets, volume_context: volumeContext },
        { volume_id: v.block, node_id: nodeId, volume_capability: blockCap() }),
      call('controller', 'ControllerUnpublishVolume', { volume_id: volumeId, node_id: nodeIdArb, secrets }, { volume_id: v.block, node_id: nodeId }),
      call('controller', 'ValidateVolumeCapabilities', { volume_id: volumeId, volume_context: volumeContext, volume_capabilities: capabilities, parameters, secrets }, { volume_id: v.mount, volume_capabilities: [mountCap()] }),
      call('controller', 'ListVolumes', { max_entries: maxEntries, starting_token: token }, { max_entries: 1 }),
      call('controller', 'GetCapacity', { volume_capabilities: capabilities, parameters, accessible_topology: topology }, { volume_capabilities: [mountCap()] }),
      call('controller', 'ControllerGetCapabilities', {}),
      call('controller', 'CreateSnapshot', { source_volume_id: volumeId, name, secrets, parameters }, { name: 'fz-snap', source_volume_id: v.mount }),
      call('controller', 'DeleteSnapshot', { snapshot_id: snapshotId, secrets }, { snapshot_id: 'default@00000000-0000-4000-8000-000000000000' }),
      call('controller', 'ListSnapshots', { max_entries: maxEntries, starting_token: token, source_volume_id: volumeId, snapshot_id: snapshotId, secrets }, { max_entries: 1 }),
      call('controller', 'GetSnapshot', { snapshot_id: snapshotId, secrets }, { snapshot_id: snapId }),
      call('controller', 'ControllerExpandVolume', { volume_id: volumeId, capacity_range: capacityRange, secrets, volume_capability: capability },
        { volume_id: v.block, capacity_range: { required_bytes: 8 * MiB }, volume_capability: blockCap() }),
      call('controller', 'ControllerGetVolume', { volume_id: volumeId }, { volume_id: v.mount }),
      call('controller', 'ControllerModifyVolume', { volume_id: volumeId, secrets, mutable_parameters: parameters }),
      call('node', 'NodeStageVolume', { volume_id: volumeId, publish_context: publishContext, staging_target_path: path, volume_capability: capability, secrets, volume_context: volumeContext },
        { volume_id: v.mount, publish_context: mountCtx, staging_target_path: staged.staging, volume_capability: mountCap(), volume_context: {} }),
      call('node', 'NodeUnstageVolume', { volume_id: volumeId, staging_target_path: path }, { volume_id: v.block, staging_target_path: join(kubelet, 'staging', v.block) }),
      call('node', 'NodePublishVolume', { volume_id: volumeId, publish_context: publishContext, staging_target_path: path, target_path: path, volume_capability: capability, readonly: fc.boolean(), secrets, volume_context: volumeContext },
        { volume_id: v.mount, publish_context: mountCtx, staging_target_path: staged.staging, target_path: staged.target, volume_capability: mountCap() }),
      call('node', 'NodeUnpublishVolume', { volume_id: volumeId, target_path: path }, { volume_id: v.block, target_path: join(kubelet, 'pods', 'p', v.block) }),
      call('node', 'NodeGetVolumeStats', { volume_id: volumeId, volume_path: path, staging_target_path: path }, { volume_id: v.mount, volume_path: staged.target }),
      call('node', 'NodeExpandVolume', { volume_id: volumeId, volume_path: path, capacity_range: capacityRange, staging_target_path: path, volume_capability: capability, secrets }, { volume_id: v.mount, volume_path: staged.target }),
      call('node', 'NodeGetCapabilities', {}),
      call('node', 'NodeGetInfo', {}),
      call('identity', 'GetPluginInfo', {}),
      call('identity', 'Probe', {}),
    );

    const counts = new Map<string, number>();
    let sent = 0;
    const runs = Math.ceil(REQUESTS / BATCH);
    const result = await fc.check(
      fc.asyncProperty(fc.array(anyCall, { minLength: BATCH, maxLength: BATCH }), async (calls) => {
        const answers = await Promise.all(
          calls.map((c) =>
            rpcByName(s.client[c.svc], c.rpc)(c.req, { deadlineMs: 60_000 }).then(
              () => 0,
              (e: { code?: number; details?: string }) => {
                if (BAD.has(e.code ?? -1)) throw Object.assign(new Error(`${c.svc}.${c.rpc} → ${BAD.get(e.code!)}: ${e.details}`), { call: c });
                return e.code ?? -1;
              },
            ),
          ),
        ).catch((e: Error & { call?: Call }) => {
          throw new Error(`${e.message}\nrequest: ${JSON.stringify(e.call?.req).slice(0, 1500)}`);
        });
        sent += calls.length;
        for (const [i, code] of answers.entries()) {
          const k = `${calls[i].rpc}:${code}`;
          counts.set(k, (counts.get(k) ?? 0) + 1);
        }
      }),
      // No shrinking: each run changes sinter's state, so a shrunk replay would not mean the same.
      { numRuns: runs, seed, endOnFailure: true },
    );
    if (result.failed) {
      const err = result.errorInstance as Error | undefined;
      throw new Error(`fuzzing failed (SINTER_SEED=${seed}) after ${sent} requests: ${(err?.message ?? String(err)).slice(0, 3000)}`);
    }

    // Still up and serving.
    expect((await s.client.identity.Probe({})).ready?.value).toBe(true);
    expect(s.proc.exitCode).toBeNull();
    expect(s.logs()).not.toContain('unexpected error');
    // Nothing outside the data dir and the kubelet root changed; nothing mounted or attached outside them.
    expect(tree(s.base, [data, kubelet, join(s.base, 'csi.sock')])).toEqual(outsideBefore);
    expect(tree(canary)).toEqual(canaryBefore);
    // (Other test runs' directories, which a concurrent run may mount in, are not ours to judge; nor are
    // the network namespaces the two-host tests pin under /run/netns (test/helpers/netns.ts), which sinter never makes.)
    const othersRun = (m: string) =>
      (m.startsWith(join(tmpdir(), 'sinter-')) && !m.startsWith(`${s.base}/`) && !m.startsWith(canary)) || m.startsWith('/run/netns/sinter-');
    const newMounts = mountPoints().filter((m) => !mountsBefore.has(m) && !othersRun(m));
    for (const m of newMounts) expect(m.startsWith(`${kubelet}/`), `new mount ${m}`).toBe(true);
    const ours = new Set((await loops()).filter((l) => l.back.startsWith(`${data}/`)).map((l) => l.name));
    const all = await loops();
    const backOf = new Map(all.map((l) => [l.name, l.back.replace(/ \(deleted\)$/, '')]));
    for (const l of all) {
      // A read-only view is judged by the device it is layered on.
      const under = backOf.get(l.back.replace(/ \(deleted\)$/, '')) ?? l.back;
      if (loopsBefore.has(`${l.name} ${l.back}`) || othersRun(l.back) || othersRun(under)) continue;
      expect(l.back.startsWith(`${data}/`) || ours.has(l.back.replace(/ \(deleted\)$/, '')), `new loop device ${l.name} on ${l.back}`).toBe(true);
    }
    // What the fuzzing left is consistent: nothing that needs an operator.
    const report = await runFsck(loadConfig('all', ['--data-dir', data, '--kubelet-root', kubelet, '--node-name', 'test-node']), { scope: 'all' });
    expect(report.findings.filter((f) => f.remedy === 'operator'), describeReport(report)).toEqual([]);
    const byRpc = new Map<string, string[]>();
    for (const [k, n] of [...counts.entries()].sort()) {
      const [rpc, code] = k.split(':');
      byRpc.set(rpc, [...(byRpc.get(rpc) ?? []), `${code}×${n}`]);
    }
    console.log(`fuzz: seed ${seed}: ${sent} requests; answers (gRPC code × count): ${[...byRpc.entries()].map(([r, c]) => `${r} ${c.join(' ')}`).join('; ')}`);
    expect(sent).toBeGreaterThanOrEqual(REQUESTS);
  });
});
