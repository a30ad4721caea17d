import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, MiB, mountCap, startSinter, type SinterProcess } from '../helpers/sinter-process.js';
import { rpcByName } from '../../src/csi/client.js';
import type { ControllerPublishVolumeResponse__Output } from '../../src/csi/generated/csi/v1/ControllerPublishVolumeResponse.js';
import type { CreateSnapshotResponse__Output } from '../../src/csi/generated/csi/v1/CreateSnapshotResponse.js';
import type { CreateVolumeResponse__Output } from '../../src/csi/generated/csi/v1/CreateVolumeResponse.js';

/**
 * Secrets (safety rule 4): CHAP credentials and tokens travel in the CSI
 * `secrets` fields. Sent in every RPC that has one — and also where a
 * careless driver might echo or store them: StorageClass parameters (the
 * sidecars' csi.storage.k8s.io/ keys and an unknown key), volume_context and
 * publish_context — on calls that succeed and on calls that fail, with sinter
 * logging at debug level. No log line, error message, reply (publish_context
 * included) or file sinter writes may contain a secret value.
 */

const tag = `${process.pid}${Date.now()}`;
/** Distinct values, so a leak names where it came from. */
const secret = (where: string) => `s3cr3t-${where}-${tag}`;

function chap(where: string): Record<string, string> {
  return {
    'node.session.auth.username': `user-${where}`,
    'node.session.auth.password': secret(`${where}-password`),
    'node.session.auth.username_in': `target-${where}`,
    'node.session.auth.password_in': secret(`${where}-password-in`),
    password: secret(`${where}-plain`),
    chapPassword: secret(`${where}-chap`),
    token: secret(`${where}-token`),
  };
}

/** Every regular file under dir, read as text. */
function filesUnder(dir: string, out: string[] = []): string[] {
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    const st = statSync(p, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) filesUnder(p, out);
    else if (st.isFile() && st.size < 1024 * 1024) out.push(`${p}\n${readFileSync(p, 'utf8')}`);
  }
  return out;
}

describe('secrets never reach a log line, an error message, a reply or a record', () => {
  let s: SinterProcess;
  const said: string[] = [];
  const results: { rpc: string; ok: boolean }[] = [];

  /** Calls an RPC and keeps everything it said: the reply, or the error's message. */
  const tell = async (svc: 'controller' | 'node', rpc: string, req: Record<string, unknown>) => {
    try {
      const res = await rpcByName(s.client[svc], rpc)(req);
      said.push(`${rpc} reply: ${JSON.stringify(res)}`);
      results.push({ rpc, ok: true });
      return res;
    } catch (e) {
      const err = e as { details?: string; message?: string };
      said.push(`${rpc} error: ${err.details ?? ''} | ${err.message ?? ''}`);
      results.push({ rpc, ok: false });
      return undefined;
    }
  };

  beforeAll(async () => {
    s = await startSinter({ logLevel: 'debug' });
  });
  afterAll(async () => s?.cleanup());

  it('with CHAP secrets in every RPC, on success and on failure', async () => {
    const nodeId = (await s.client.node.NodeGetInfo({})).node_id;
    const k8sSecretParams = {
      'csi.storage.k8s.io/provisioner-secret-name': 'chap',
      'csi.storage.k8s.io/provisioner-secret-namespace': 'default',
      // Where a careless CO or user might put a value: passes through unvalidated.
      'csi.storage.k8s.io/node-stage-secret-password': secret('param-k8s'),
    };
    const carelessContext = { 'node.session.auth.password': secret('vctx'), password: secret('vctx-plain'), fsType: 'ext4' };

    // Controller side, succeeding.
    const created = await tell('controller', 'CreateVolume', { name: 'sec-vol', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [mountCap()], parameters: k8sSecretParams, secrets: chap('create') });
    const block = await tell('controller', 'CreateVolume', { name: 'sec-block', capacity_range: { required_bytes: 8 * MiB }, volume_capabilities: [blockCap()], secrets: chap('create-block') });
    const id = (created as CreateVolumeResponse__Output).volume!.volume_id!;
    const blockId = (block as CreateVolumeResponse__Output).volume!.volume_id!;
    await tell('controller', 'ValidateVolumeCapabilities', { volume_id: id, volume_capabilities: [mountCap()], volume_context: carelessContext, parameters: k8sSecretParams, secrets: chap('validate') });
    const pub = await tell('controller', 'ControllerPublishVolume', { volume_id: id, node_id: nodeId, volume_capability: mountCap(), volume_context: carelessContext, secrets: chap('publish') });
    await tell('controller', 'ControllerPublishVolume', { volume_id: blockId, node_id: nodeId, volume_capability: blockCap(), secrets: chap('publish-block') });
    const ctx = (pub as ControllerPublishVolumeResponse__Output).publish_context;
    const snap = (await tell('controller', 'CreateSnapshot', { name: 'sec-snap', source_volume_id: id, secrets: chap('snapshot') })) as CreateSnapshotResponse__Output;
    await tell('controller', 'ListSnapshots', { secrets: chap('list-snapshots') });
    await tell('controller', 'GetSnapshot', { snapshot_id: snap.snapshot!.snapshot_id, secrets: chap('get-snapshot') });
    await tell('controller', 'ControllerExpandVolume', { volume_id: id, capacity_range: { required_bytes: 48 * MiB }, volume_capability: mountCap(), secrets: chap('expand') });

    // Node side, succeeding: stage (format, mount), publish, stats, expand, and back.
    const staging = join(s.kubeletRoot, 'staging', id);
    const target = join(s.kubeletRoot, 'pods', 'p', id);
    const leakyCtx = { ...ctx, chapPassword: secret('pctx'), 'node.session.auth.password': secret('pctx-chap') };
    await tell('node', 'NodeStageVolume', { volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: leakyCtx, volume_context: carelessContext, secrets: chap('stage') });
    await tell('node', 'NodePublishVolume', { volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: leakyCtx, volume_context: carelessContext, secrets: chap('node-publish') });
    await tell('node', 'NodeGetVolumeStats', { volume_id: id, volume_path: target });
    await tell('node', 'NodeExpandVolume', { volume_id: id, volume_path: target, capacity_range: { required_bytes: 48 * MiB }, volume_capability: mountCap(), secrets: chap('node-expand') });
    await tell('controller', 'ControllerModifyVolume', { volume_id: id, mutable_parameters: { a: 'b' }, secrets: chap('modify') });
    await tell('node', 'NodeUnpublishVolume', { volume_id: id, target_path: target });
    await tell('node', 'NodeUnstageVolume', { volume_id: id, staging_target_path: staging });
    await tell('controller', 'ControllerUnpublishVolume', { volume_id: id, node_id: nodeId, secrets: chap('unpublish') });

    // Failing calls, which build error messages out of the request.
    await tell('controller', 'CreateVolume', { name: 'sec-bad', volume_capabilities: [mountCap()], parameters: { chapPassword: secret('param-unknown') }, secrets: chap('create-bad') });
    await tell('controller', 'CreateVolume', { name: 'sec-vol', capacity_range: { required_bytes: 999 * MiB, limit_bytes: 999 * MiB }, volume_capabilities: [mountCap()], secrets: chap('create-conflict') });
    await tell('controller', 'CreateVolume', { name: '', volume_capabilities: [mountCap()], secrets: chap('create-noname') });
    await tell('controller', 'ControllerPublishVolume', { volume_id: id, node_id: 'nosuch;;', volume_capability: mountCap(), secrets: chap('publish-bad') });
    await tell('controller', 'DeleteVolume', { volume_id: blockId, secrets: chap('delete-published') });
    await tell('controller', 'ControllerExpandVolume', { volume_id: id, capacity_range: { required_bytes: -1 }, secrets: chap('expand-bad') });
    await tell('controller', 'CreateSnapshot', { name: 'sec-snap', source_volume_id: blockId, secrets: chap('snapshot-conflict') });
    await tell('node', 'NodeStageVolume', { volume_id: id, staging_target_path: '/etc/x', volume_capability: mountCap(), publish_context: leakyCtx, secrets: chap('stage-bad-path') });
    await tell('node', 'NodeStageVolume', { volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: { transport: 'iscsi', portals: '10.0.0.1:3260', iqn: 'iqn.2020-01.x:y', lun: '1', chapPassword: secret('pctx-iscsi') }, secrets: chap('stage-iscsi') });
    await tell('node', 'NodeStageVolume', { volume_id: id, staging_target_path: staging, volume_capability: mountCap(), publish_context: { transport: 'local', path: `/nowhere/${secret('pctx-path-not-a-secret-field')}` }, secrets: chap('stage-bad-ctx') });
    await tell('node', 'NodePublishVolume', { volume_id: id, staging_target_path: staging, target_path: target, volume_capability: mountCap(), publish_context: leakyCtx, secrets: chap('publish-unstaged') });
    await tell('node', 'NodeExpandVolume', { volume_id: id, volume_path: target, secrets: chap('node-expand-bad') });

    // An encrypted volume: the passphrase (node-stage secret encryptionPassphrase) goes to cryptsetup's
    // stdin and nowhere else. Where this machine lacks device-mapper the stage fails (FAILED_PRECONDITION
    // naming dm_crypt); in the guest it formats, opens, and a wrong passphrase is refused by cryptsetup.
    const enc = (await tell('controller', 'CreateVolume', { name: 'sec-enc', capacity_range: { required_bytes: 32 * MiB }, volume_capabilities: [mountCap()], parameters: { encrypted: 'true' }, secrets: chap('create-enc') })) as CreateVolumeResponse__Output;
    const encId = enc.volume!.volume_id!;
    expect(enc.volume!.volume_context).toMatchObject({ encrypted: 'true' });
    const encPub = (await tell('controller', 'ControllerPublishVolume', { volume_id: encId, node_id: nodeId, volume_capability: mountCap(), secrets: chap('publish-enc') })) as ControllerPublishVolumeResponse__Output;
    const encStaging = join(s.kubeletRoot, 'staging', encId);
    const encStage = (secrets: Record<string, string>) =>
      tell('node', 'NodeStageVolume', { volume_id: encId, staging_target_path: encStaging, volume_capability: mountCap(), publish_context: encPub.publish_context, volume_context: enc.volume!.volume_context, secrets });
    await encStage(chap('stage-enc-none'));
    expect(said.at(-1)).toMatch(/error: .*node-stage secret has no key encryptionPassphrase/);
    await encStage({ ...chap('stage-enc'), encryptionPassphrase: secret('luks-passphrase') });
    await tell('node', 'NodeUnstageVolume', { volume_id: encId, staging_target_path: encStaging });
    await tell('node', 'NodeStageVolume', { volume_id: encId, staging_target_path: encStaging, volume_capability: mountCap(), publish_context: encPub.publish_context, volume_context: enc.volume!.volume_context, secrets: { ...chap('stage-enc-wrong'), encryptionPassphrase: secret('luks-wrong') } });
    await tell('node', 'NodeUnstageVolume', { volume_id: encId, staging_target_path: encStaging });
    await tell('controller', 'ControllerUnpublishVolume', { volume_id: encId, node_id: nodeId, secrets: chap('unpublish-enc') });
    await tell('controller', 'DeleteVolume', { volume_id: encId, secrets: chap('delete-enc') });

    // Tidy up, still with secrets.
    await tell('controller', 'DeleteSnapshot', { snapshot_id: snap.snapshot!.snapshot_id, secrets: chap('delete-snapshot') });
    await tell('controller', 'ControllerUnpublishVolume', { volume_id: blockId, node_id: nodeId, secrets: chap('unpublish-block') });
    await tell('controller', 'DeleteVolume', { volume_id: id, secrets: chap('delete') });

    // The calls meant to work did (so the secrets went through the real paths).
    const failedOnPurpose = new Set(['ControllerModifyVolume']);
    const okCount = results.filter((r) => r.ok).length;
    expect(okCount).toBeGreaterThanOrEqual(16);
    for (const [i, r] of results.slice(0, 17).entries()) if (!failedOnPurpose.has(r.rpc)) expect(r, said[i]).toMatchObject({ ok: true });
    expect(results.filter((r) => !r.ok).length).toBeGreaterThanOrEqual(12);

    // The scan: logs (debug, JSON lines), replies and error messages, and every file sinter wrote.
    const logs = s.logs();
    expect(logs.split('\n').filter(Boolean).length).toBeGreaterThan(50);
    expect(logs).toContain('"level":20'); // debug lines were there to leak
    const haystacks: [string, string][] = [
      ['log', logs],
      ['replies and errors', said.join('\n')],
      ...filesUnder(s.dataDir).map((f): [string, string] => ['file', f]),
    ];
    // Every secret value sent, minus the one deliberately put in a non-secret field (a path), which may be echoed.
    const values = [...logs.matchAll(/s3cr3t-[\w-]+/g)].map((m) => m[0]);
    // ValidateVolumeCapabilities confirms by echoing the caller's own volume_context and parameters
    // (CSI spec); that hands nothing to anyone new, so its reply is left out of the scan.
    const validate = said.findIndex((x) => x.startsWith('ValidateVolumeCapabilities reply'));
    expect(said[validate]).toContain(secret('vctx'));
    said.splice(validate, 1);
    haystacks[1] = ['replies and errors', said.join('\n')];
    for (const [what, text] of haystacks) {
      const found = [...text.matchAll(new RegExp(`s3cr3t-[\\w-]*${tag}`, 'g'))].map((m) => m[0]).filter((x) => !x.includes('not-a-secret-field'));
      expect(found, `${what} contains secret values: ${found.join(', ')}`).toEqual([]);
    }
    expect(values.filter((x) => !x.includes('not-a-secret-field'))).toEqual([]);
    // The control: the non-secret field did reach the error message, so the scan would see a leak.
    expect(said.join('\n')).toContain(secret('pctx-path-not-a-secret-field'));
  });
});
