import { readdirSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { mapperName, PASSPHRASE_KEY } from '../../src/node/encryption.js';
import type { NodeStageVolumeRequest } from '../../src/csi/generated/csi/v1/NodeStageVolumeRequest.js';
import type { VolumeCapability } from '../../src/csi/messages.js';
import { blockCap, csiError, MiB, mountCap, NodeEnv } from '../helpers/node-env.js';
import { requireGuest } from './guest.js';

/**
 * Node-side LUKS on a real kernel (dm-crypt in the VM guest, cryptsetup
 * 2.6.1): the node service stages encrypted volumes over the local (loop)
 * transport; LUKS sits between the connector and the filesystem, so the
 * same code runs over iSCSI, FC and NVMe.
 */

const PASS = 'vm-luks-passphrase-0123456789';
const WRONG = 'not-the-passphrase-9876543210';
const enc = (passphrase = PASS) => ({ volume_context: { encrypted: 'true' }, secrets: { [PASSPHRASE_KEY]: passphrase } });
const MARKER = 'sinter-luks-plaintext-marker-7f3a91';

/**
 * The kernel's dm-crypt mapping of a volume, read from sysfs (the device-mapper name, its LUKS2
 * uuid, the device under it, its size): what `cryptsetup status` reports, without a cryptsetup
 * start per look (~1 s each under TCG).
 */
async function mappingOf(volumeId: string): Promise<{ active: boolean; device?: string; size?: number }> {
  const name = mapperName(volumeId);
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8').trim();
    } catch {
      return undefined; // a mapping removed while we look
    }
  };
  const dm = readdirSync('/sys/block').find((d) => d.startsWith('dm-') && read(`/sys/block/${d}/dm/name`) === name);
  if (!dm) return { active: false };
  expect(read(`/sys/block/${dm}/dm/uuid`)).toMatch(/^CRYPT-LUKS2-/);
  const under = readdirSync(`/sys/block/${dm}/slaves`);
  expect(under).toHaveLength(1);
  return { active: true, device: `/dev/${under[0]}`, size: Number(read(`/sys/block/${dm}/size`)) * 512 };
}

async function rawContains(file: string, text: string): Promise<boolean> {
  return (await readFile(file)).includes(Buffer.from(text));
}

async function blkidType(path: string): Promise<string> {
  const r = await execa('blkid', ['-p', '-o', 'value', '-s', 'TYPE', path], { reject: false });
  return r.stdout.trim();
}

describe('LUKS encryption on a real kernel (dm-crypt in the VM guest)', () => {
  requireGuest();
  let env: NodeEnv;
  const volumes: string[] = [];

  beforeAll(async () => {
    await execa('modprobe', ['loop']);
    await execa('modprobe', ['dm_crypt']);
  });
  beforeEach(async () => {
    // cryptsetup's default key derivation (argon2id, ~2 s, up to 1 GiB per unlock) costs tens of seconds under TCG,
    // and even a cheap argon2id costs a benchmark per format and seconds per unlock. What this file proves does not
    // depend on the PBKDF: PBKDF2 at cryptsetup's minimum, no benchmark. (luks-iscsi.vm.test.ts keeps argon2id.)
    env = await NodeEnv.create({ luksPbkdf: { pbkdf2Iterations: 1000 } });
  });
  afterEach(async () => {
    // Whatever a failed test left: unmount (env.cleanup), close the mappings, then the loops go.
    for (let i = 0; i < 5; i++) {
      const mounts = await env.mountsUnder();
      for (const m of mounts.reverse()) await execa('umount', ['-l', m.mountPoint], { reject: false });
    }
    for (const v of volumes.splice(0)) await execa('cryptsetup', ['close', mapperName(v)], { reject: false });
    await env.cleanup();
  });

  const stage = async (vol: string, file: string, cap: VolumeCapability, extra: Partial<NodeStageVolumeRequest> = enc()) => {
    if (!volumes.includes(vol)) volumes.push(vol);
    const req = env.stageReq(vol, file, cap, extra);
    await env.h.NodeStageVolume(req);
    return req;
  };
  const unstage = (req: { volume_id: string; staging_target_path: string }) =>
    env.h.NodeUnstageVolume({ volume_id: req.volume_id, staging_target_path: req.staging_target_path });

  it('formats a blank volume as LUKS2 + ext4; what reaches the storage is ciphertext; unstage closes the mapping and detaches', async () => {
    const file = await env.image('enc.img', 64 * MiB);
    const vol = 'file-enc-mount';
    const req = await stage(vol, file, mountCap('ext4'));
    const m = await mappingOf(vol);
    expect(m.active).toBe(true);
    expect(await blkidType(m.device!)).toBe('crypto_LUKS');
    expect(await blkidType(`/dev/mapper/${mapperName(vol)}`)).toBe('ext4');
    // The LUKS2 header takes 16 MiB of the volume.
    expect(m.size).toBe(48 * MiB);
    const mount = (await env.mountsUnder()).find((x) => x.mountPoint === req.staging_target_path);
    expect(mount?.source).toBe(`/dev/mapper/${mapperName(vol)}`);

    await writeFile(join(req.staging_target_path, 'secret.txt'), MARKER.repeat(64));
    await execa('sync');
    await execa('blockdev', ['--flushbufs', `/dev/mapper/${mapperName(vol)}`]);
    expect(await rawContains(file, MARKER)).toBe(false);

    await unstage(req);
    expect((await mappingOf(vol)).active).toBe(false);
    expect(await env.loopsOf(file)).toEqual([]);
    expect(await env.mountsUnder()).toEqual([]);
    expect(await rawContains(file, MARKER)).toBe(false);
    // The control: the same bytes written to a plain volume are on its image in clear.
    const plain = await env.image('plain.img', 64 * MiB);
    const preq = await stage('file-plain', plain, mountCap('ext4'), {});
    await writeFile(join(preq.staging_target_path, 'secret.txt'), MARKER.repeat(64));
    await unstage(preq);
    expect(await rawContains(plain, MARKER)).toBe(true);

    // The same formatted volume (one luksFormat serves the checks that only read it): a wrong passphrase is
    // refused with an actionable message and leaves nothing open; the right one finds the data (never reformatted).
    const headerBefore = (await readFile(file)).subarray(0, 16 * MiB);

    const err = await csiError(env.h.NodeStageVolume(env.stageReq(vol, file, mountCap('ext4'), enc(WRONG))));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(`key ${PASSPHRASE_KEY} does not open the LUKS header`);
    expect(err.message).not.toContain(WRONG);
    expect((await mappingOf(vol)).active).toBe(false);
    expect(await env.loopsOf(file)).toEqual([]);

    const missing = await csiError(env.h.NodeStageVolume(env.stageReq(vol, file, mountCap('ext4'), { volume_context: { encrypted: 'true' }, secrets: {} })));
    expect(missing.code).toBe(Code.FAILED_PRECONDITION);
    expect(missing.message).toContain(PASSPHRASE_KEY);

    await stage(vol, file, mountCap('ext4'));
    expect(await readFile(join(req.staging_target_path, 'secret.txt'), 'utf8')).toBe(MARKER.repeat(64));
    await unstage(req);
    // Neither the refused stage nor the second good one rewrote the header.
    expect((await readFile(file)).subarray(0, 16 * MiB).equals(headerBefore)).toBe(true);

    // Never formats over data the other way round either: the encrypted volume staged as plain is refused.
    const err2 = await csiError(env.h.NodeStageVolume(env.stageReq(vol, file, mountCap('ext4'), {})));
    expect(err2.code).toBe(Code.FAILED_PRECONDITION);
    expect(err2.message).toContain('LUKS header');
    expect(await blkidType(file)).toBe('crypto_LUKS');
    expect(await env.loopsOf(file)).toEqual([]);
  });

  it('never formats over data: a plain ext4 volume staged as encrypted is refused', async () => {
    const file = await env.image('plain.img', 64 * MiB);
    const preq = await stage('file-was-plain', file, mountCap('ext4'), {});
    await writeFile(join(preq.staging_target_path, 'data.txt'), 'plain data');
    await unstage(preq);
    const err = await csiError(env.h.NodeStageVolume(env.stageReq('file-was-plain', file, mountCap('ext4'), enc())));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('holds a filesystem (ext4), not a LUKS header');
    expect(await blkidType(file)).toBe('ext4');
    expect((await mappingOf('file-was-plain')).active).toBe(false);
  });

  it('grows: the device, then cryptsetup resize, then the filesystem (no passphrase on NodeExpandVolume)', async () => {
    const file = await env.image('grow.img', 64 * MiB);
    const vol = 'file-enc-grow';
    const req = await stage(vol, file, mountCap('ext4'));
    const target = env.target(vol);
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: req.staging_target_path, target_path: target, volume_capability: mountCap('ext4') });
    const before = (await execa('df', ['-B1', '--output=size', target])).stdout.split('\n')[1].trim();
    await execa('truncate', ['-s', String(128 * MiB), file]);
    const res = (await env.h.NodeExpandVolume({ volume_id: vol, volume_path: target, capacity_range: { required_bytes: 128 * MiB } })) as { capacity_bytes: number };
    expect(res.capacity_bytes).toBe(128 * MiB);
    expect((await mappingOf(vol)).size).toBe(112 * MiB);
    const after = (await execa('df', ['-B1', '--output=size', target])).stdout.split('\n')[1].trim();
    expect(Number(after) - Number(before)).toBeGreaterThan(50 * MiB);
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });
    await unstage(req);
    expect((await mappingOf(vol)).active).toBe(false);
  });

  it('block access: the staged device is the mapping; writes through it are ciphertext on the storage; unstage refuses while someone holds the mapping open', async () => {
    const file = await env.image('blk.img', 32 * MiB);
    const vol = 'file-enc-block';
    const req = await stage(vol, file, blockCap());
    const target = join(env.kubelet, 'plugins', 'volumeDevices', 'publish', vol, 'pod1');
    await env.h.NodePublishVolume({ volume_id: vol, staging_target_path: req.staging_target_path, target_path: target, volume_capability: blockCap() });
    const mapper = (await execa('stat', ['-L', '-c', '%t:%T', `/dev/mapper/${mapperName(vol)}`])).stdout;
    expect((await execa('stat', ['-L', '-c', '%t:%T', target])).stdout).toBe(mapper);
    await writeFile(target, Buffer.from(MARKER.repeat(128)), { flag: 'r+' });
    await execa('blockdev', ['--flushbufs', target]);
    expect(await rawContains(file, MARKER)).toBe(false);
    expect((await readFile(target)).subarray(0, MARKER.length).toString()).toBe(MARKER);
    await env.h.NodeUnpublishVolume({ volume_id: vol, target_path: target });

    // Unstage refuses while the mapping is held open by someone else, then succeeds once it is let go.
    // The holder says when it has the mapping open (no fixed pause: under TCG a shell's start alone can take a second).
    const holder = execa('sh', ['-c', `exec 3</dev/mapper/${mapperName(vol)}; echo open; exec sleep 300`], { reject: false });
    await new Promise<void>((resolve, reject) => {
      holder.stdout.on('data', (d: Buffer) => d.toString().includes('open') && resolve());
      void holder.then((r) => reject(new Error(`the holder exited before opening the mapping: ${r.stderr}`)));
    });
    const err = await csiError(unstage(req));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('still in use');
    holder.kill('SIGKILL');
    await holder;
    await unstage(req);
    expect((await mappingOf(vol)).active).toBe(false);
    expect(await env.loopsOf(file)).toEqual([]);
  });

  it('crash between luksOpen and mount: a restarted plugin\'s stage retry reuses the mapping and mounts; an unstage after such a crash closes it', async () => {
    const file = await env.image('crash.img', 64 * MiB);
    const vol = 'file-enc-crash';
    const req = await stage(vol, file, mountCap('ext4'));
    await writeFile(join(req.staging_target_path, 'f.txt'), 'before the crash');
    // What a crash right after luksOpen leaves: the mapping open, nothing mounted, the record mid-stage.
    await execa('umount', [req.staging_target_path]);
    const recFile = join(env.stateDir, 'volumes', `${vol}.json`);
    const rec = JSON.parse(await readFile(recFile, 'utf8')) as { phase: string; mapper?: string };
    expect(rec.mapper).toBe(mapperName(vol));
    await writeFile(recFile, JSON.stringify({ ...rec, phase: 'staging' }));
    env.restart();
    await env.svc.start();
    expect((await mappingOf(vol)).active).toBe(true);

    await stage(vol, file, mountCap('ext4'));
    expect(await readFile(join(req.staging_target_path, 'f.txt'), 'utf8')).toBe('before the crash');

    // Again, and this time the CO gives up and unstages.
    await execa('umount', [req.staging_target_path]);
    await writeFile(recFile, JSON.stringify({ ...rec, phase: 'staging' }));
    env.restart();
    await env.svc.start();
    await unstage(req);
    expect((await mappingOf(vol)).active).toBe(false);
    expect(await env.loopsOf(file)).toEqual([]);
  });
});
