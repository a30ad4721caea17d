import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { failedPrecondition, invalidArgument } from '../errors/domain-error.js';
import { ExecError, type Executor } from '../exec/run.js';
import { deviceMajMin } from './context.js';
import { probe } from './format.js';
import { toHostError } from './host-errors.js';

/**
 * Node-side LUKS encryption (Cinder's encrypted volume types, os-brick's luks
 * encryptor): the volume's device holds a LUKS2 header; stage opens it with
 * dm-crypt and the filesystem (or the block volume) lives on the mapper.
 *
 * The passphrase comes from the node-stage secret under PASSPHRASE_KEY and
 * reaches cryptsetup only on its stdin (--key-file=-): never an argument, a
 * log line or an error message. The secret's bytes are the key exactly as
 * stored (cryptsetup strips no newline when reading a key file), the same on
 * every node and every stage.
 */

/** volume_context key the controller sets from the StorageClass parameter `encrypted`. */
export const ENCRYPTED_KEY = 'encrypted';
/** Key of the node-stage secret (StorageClass csi.storage.k8s.io/node-stage-secret-name) holding the passphrase. */
export const PASSPHRASE_KEY = 'encryptionPassphrase';

export interface Encryption {
  passphrase: string;
}

/** Whether volume_context asks for encryption; anything but "true"/"false" is the StorageClass's mistake. */
export function isEncrypted(volumeContext: Record<string, string>): boolean {
  const v = volumeContext[ENCRYPTED_KEY];
  if (v === undefined || v === '' || v === 'false') return false;
  if (v === 'true') return true;
  throw invalidArgument(`volume_context.${ENCRYPTED_KEY} must be "true" or "false", not ${JSON.stringify(v.slice(0, 16))}`);
}

/** The passphrase for an encrypted volume, or undefined for a plain one. Missing → FAILED_PRECONDITION naming the key (never a value). */
export function encryptionOf(volumeId: string, volumeContext: Record<string, string>, secrets: Record<string, string>): Encryption | undefined {
  if (!isEncrypted(volumeContext)) return undefined;
  const passphrase = secrets[PASSPHRASE_KEY];
  if (typeof passphrase !== 'string' || passphrase === '')
    throw failedPrecondition(
      `volume ${volumeId} is encrypted (StorageClass parameter ${ENCRYPTED_KEY}: "true") but the node-stage secret has no key ${PASSPHRASE_KEY}; ` +
        `point the StorageClass's csi.storage.k8s.io/node-stage-secret-name and -namespace at a Secret that holds it`,
    );
  return { passphrase };
}

/**
 * The dm-crypt mapping's name for a volume: `sinter-<volume id>` (volume ids
 * use only characters device-mapper keeps as they are), or a digest of the id
 * when that would pass device-mapper's 127-character limit.
 */
export function mapperName(volumeId: string): string {
  const plain = `sinter-${volumeId}`;
  if (plain.length <= 127) return plain;
  return `sinter-${createHash('sha256').update(volumeId).digest('hex').slice(0, 48)}`;
}

export const mapperPath = (name: string) => `/dev/mapper/${name}`;

/**
 * Key-derivation cost of new LUKS headers (cryptsetup --iter-time,
 * --pbkdf-memory). Unset: cryptsetup's defaults (argon2id, ~2 s and up to
 * 1 GiB per unlock on the node that formats). Lower only where unlocking time
 * matters more than resistance to guessing: a slow test kernel, a node
 * plugin with a small memory limit. Not part of the configuration file or of
 * a StorageClass: only code that builds a NodeService sets it.
 */
export interface LuksPbkdf {
  iterTimeMs?: number;
  memoryKiB?: number;
  /**
   * PBKDF2 with exactly this many iterations (--pbkdf pbkdf2
   * --pbkdf-force-iterations; cryptsetup's minimum is 1000), with no
   * benchmark at format time; iterTimeMs and memoryKiB are then ignored.
   * For tests only: under an emulated CPU (the VM guest) the argon2 benchmark
   * and unlock cost seconds per volume and prove nothing about sinter.
   */
  pbkdf2Iterations?: number;
}

/** cryptsetup luksFormat's key-derivation options for p. */
export function pbkdfArgs(p: LuksPbkdf | undefined): string[] {
  if (p?.pbkdf2Iterations) return ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', String(p.pbkdf2Iterations)];
  return [...(p?.iterTimeMs ? ['--iter-time', String(p.iterTimeMs)] : []), ...(p?.memoryKiB ? ['--pbkdf-memory', String(p.memoryKiB)] : [])];
}

export interface EncryptionDeps {
  exec: Executor;
  log: Logger;
  luksPbkdf?: LuksPbkdf;
}

// cryptsetup's exit codes (cryptsetup(8) RETURN CODES).
const WRONG_PASSPHRASE = 2;
const INACTIVE = 4;
const BUSY = 5;

/**
 * The block device behind an active mapping, or undefined if the mapping is
 * not active. `cryptsetup status` prints "  device:  /dev/sdX" for an active
 * mapping and exits 4 for one that is not.
 */
export async function activeBacking(exec: Executor, name: string): Promise<string | undefined> {
  const res = await exec.run('cryptsetup', ['status', name], { okExitCodes: [INACTIVE] }).catch((e: unknown) => {
    throw hostError(`looking up the dm-crypt mapping ${name}`, e);
  });
  if (res.exitCode === INACTIVE) return undefined;
  const m = /^\s*device:\s*(\S+)\s*$/m.exec(res.stdout);
  return m?.[1] ?? '';
}

/**
 * Makes the volume's decrypted view available and returns its path
 * (/dev/mapper/<name>). Idempotent: a mapping already open over this device
 * is reused (a stage retried after a crash between open and mount). A blank
 * device gets a new LUKS2 header first; a device with a LUKS header is only
 * opened; anything else on the device (a filesystem, a partition table,
 * signatures blkid cannot tell apart) is refused: sinter never formats over
 * data (safety rule 1), and a plain volume does not become encrypted.
 * The caller holds the device's lock, so nothing else probes or formats it
 * between the probe and luksFormat.
 */
export async function openEncrypted(
  d: EncryptionDeps,
  req: { volumeId: string; device: string; name: string; readOnly: boolean; encryption: Encryption },
): Promise<{ path: string; opened: boolean }> {
  const { volumeId, device, name } = req;
  const path = mapperPath(name);
  const backing = await activeBacking(d.exec, name);
  if (backing !== undefined) {
    const [want, have] = await Promise.all([deviceMajMin(device), backing ? deviceMajMin(backing) : undefined]);
    if (want !== undefined && want === have) return { path, opened: false };
    throw failedPrecondition(
      `the dm-crypt mapping ${name} for volume ${volumeId} is already open over ${backing || 'another device'}, not over the volume's device ${device}; ` +
        `unstage the volume (or, if nothing uses it, close it with 'cryptsetup close ${name}') and stage it again`,
    );
  }

  const found = await probe(d.exec, device);
  const luks = found.kind === 'filesystem' && found.type === 'crypto_LUKS';
  if (!luks) {
    if (found.kind !== 'blank') {
      const what =
        found.kind === 'filesystem'
          ? `a filesystem (${found.type})`
          : found.kind === 'partitioned'
            ? `a ${found.ptType} partition table`
            : `signatures blkid cannot tell apart (${found.detail || 'ambivalent'})`;
      throw failedPrecondition(
        `volume ${volumeId} is encrypted (${ENCRYPTED_KEY}: "true") but its device ${device} holds ${what}, not a LUKS header; ` +
          `sinter encrypts only a blank volume and never formats over data: stage it without encryption, or copy the data to a new encrypted volume`,
      );
    }
    if (req.readOnly)
      throw failedPrecondition(
        `encrypted volume ${volumeId} has no LUKS header yet and is staged read-only; sinter only formats a volume staged writable: stage it once with a writable mode first`,
      );
    d.log.info({ volume_id: volumeId, device }, 'writing a LUKS header on blank volume');
    await cryptsetup(volumeId, `writing a LUKS header on ${device}`, d.exec, ['luksFormat', '--batch-mode', '--type', 'luks2', ...pbkdfArgs(d.luksPbkdf), '--key-file=-', device], req.encryption, 10 * 60_000);
  }

  // --disable-keyring keeps the volume key in the dm table rather than the
  // kernel keyring, so `cryptsetup resize` on expansion needs no passphrase
  // (NodeExpandVolume carries no node-stage secret).
  const args = ['open', '--type', 'luks', '--disable-keyring', '--key-file=-', ...(req.readOnly ? ['--readonly'] : []), device, name];
  await cryptsetup(volumeId, `opening the LUKS header on ${device}`, d.exec, args, req.encryption, 5 * 60_000);
  return { path, opened: true };
}

async function cryptsetup(volumeId: string, what: string, exec: Executor, args: string[], enc: Encryption, timeoutMs: number): Promise<void> {
  try {
    await exec.run('cryptsetup', args, { input: enc.passphrase, secrets: [enc.passphrase], timeoutMs });
  } catch (e) {
    if (e instanceof ExecError && e.exitCode === WRONG_PASSPHRASE)
      throw failedPrecondition(
        `the passphrase in the node-stage secret's key ${PASSPHRASE_KEY} does not open the LUKS header of encrypted volume ${volumeId}; ` +
          `the secret must hold the passphrase the volume was first staged with`,
      );
    throw hostError(what, e);
  }
}

/** A kernel without device-mapper is the node's setup, not a fault in sinter: say what to load. */
function hostError(what: string, e: unknown) {
  if (e instanceof ExecError && /Cannot initialize device-mapper/i.test(e.stderr))
    return failedPrecondition(`${what} failed: this node's kernel has no device-mapper; load the dm_crypt module (modprobe dm_crypt) to stage encrypted volumes`);
  return toHostError(what, e);
}

/** Closes the mapping if it is open. A mapping still in use is FAILED_PRECONDITION (nothing is closed under a user). */
export async function closeEncrypted(d: EncryptionDeps, volumeId: string, name: string): Promise<void> {
  if ((await activeBacking(d.exec, name)) === undefined) return;
  try {
    await d.exec.run('cryptsetup', ['close', name], { timeoutMs: 60_000 });
  } catch (e) {
    if (e instanceof ExecError && e.exitCode === BUSY)
      throw failedPrecondition(
        `the dm-crypt mapping ${name} of volume ${volumeId} is still in use (something holds ${mapperPath(name)} open); stop what uses it and unstage again`,
      );
    // Closed meanwhile (a racing retry): done.
    if ((await activeBacking(d.exec, name).catch(() => '')) === undefined) return;
    throw hostError(`closing the dm-crypt mapping ${name}`, e);
  }
}

/** Grows the mapping to its (already grown) device. No passphrase: the volume key is in the dm table (see openEncrypted). */
export async function resizeEncrypted(d: EncryptionDeps, name: string): Promise<void> {
  await d.exec.run('cryptsetup', ['resize', name], { timeoutMs: 60_000 }).catch((e: unknown) => {
    throw hostError(`growing the dm-crypt mapping ${name}`, e);
  });
}
