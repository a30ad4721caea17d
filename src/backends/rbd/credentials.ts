import { statfsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { currentCall } from '../../csi/call-context.js';
import { AwaitingCredentialsError, Code, DomainError, invalidArgument } from '../../errors/domain-error.js';

/** ceph-csi's names for the cephx user and key in a CSI secrets map: its users' Secrets work unchanged. */
export const SECRET_USER_ID = 'userID';
export const SECRET_USER_KEY = 'userKey';

/** A cephx key as `ceph auth get-key` prints it: base64 (a 16-byte secret and its header: 40 characters). */
const CEPHX_KEY_RE = /^[A-Za-z0-9+/]{16,1024}={0,2}$/;

/**
 * How one Ceph client call authenticates: a key file the operator made, or a
 * key held in memory (the request's, or the last one a request brought).
 * `id` tells two apart without comparing keys where they could be logged.
 */
export type CephAuth = { kind: 'file'; keyFile: string; id: string } | { kind: 'key'; key: string; fromRequest: boolean; id: string };

const TMPFS_MAGIC = 0x01021994;
/** Where a key file for the CLI may go: RAM only (a container's /dev/shm is a tmpfs; so is /run on most hosts). */
const TMPFS_CANDIDATES = ['/dev/shm', '/run'];

function tmpfsDir(): string | undefined {
  for (const d of TMPFS_CANDIDATES) {
    try {
      if (Number(statfsSync(d).type) === TMPFS_MAGIC) return d;
    } catch {
      // not there
    }
  }
  return undefined;
}

/**
 * The cephx key of one rbd backend (config `keyFrom`). With `file`, the key
 * file, always. With `secrets`, ceph-csi's model: a request that carries
 * secrets (`userID`, `userKey`) is served with its own key, checked by Ceph
 * on that very call; work that carries none (ListVolumes, GetCapacity, the
 * start-up scan, the client scan, the fence) uses the last key a request
 * brought and Ceph accepted, held in memory only, else keyFile, else it is
 * UNAVAILABLE with a message that says how to give one. A key Ceph refuses
 * never replaces a working one.
 *
 * The key never reaches a command line or a persistent disk: the CLI reads it
 * from a 0600 file in a 0700 directory on a tmpfs, made for one call and
 * removed after it (ceph-csi writes a temporary key file per request the same
 * way); the agent gets it on its stdin.
 */
export class CephKeys {
  private held?: string;
  private warnedWaiting = false;
  private readonly shm = tmpfsDir();

  constructor(
    private readonly backend: string,
    private readonly cfg: { user: string; keyFile?: string; keyFrom: 'file' | 'secrets' },
    private readonly log: Logger,
  ) {}

  get fromSecrets(): boolean {
    return this.cfg.keyFrom === 'secrets';
  }

  /** The current request's key for this backend, checked; undefined when the request brings none (or keyFrom is file). */
  requestKey(): string | undefined {
    if (!this.fromSecrets) return undefined;
    const s = currentCall()?.secrets;
    if (!s) return undefined;
    const id = s[SECRET_USER_ID];
    const key = s[SECRET_USER_KEY];
    if (id === undefined && key === undefined) return undefined;
    if (id === undefined || id === '') throw invalidArgument(`secrets["${SECRET_USER_ID}"] is missing: rbd backend ${this.backend} needs the cephx user beside ${SECRET_USER_KEY} (ceph-csi's Secret layout)`);
    // A user named with its type is the same user.
    const user = id.startsWith('client.') ? id.slice('client.'.length) : id;
    if (user !== this.cfg.user)
      throw invalidArgument(`secrets["${SECRET_USER_ID}"] names cephx user "${id.slice(0, 64)}", not client.${this.cfg.user}, the user rbd backend ${this.backend} is configured with`);
    if (key === undefined || key === '') throw invalidArgument(`secrets["${SECRET_USER_KEY}"] is missing: rbd backend ${this.backend} needs the key of client.${this.cfg.user} beside ${SECRET_USER_ID}`);
    const k = key.trim();
    if (!CEPHX_KEY_RE.test(k)) throw invalidArgument(`secrets["${SECRET_USER_KEY}"] is not a cephx key (the base64 text \`ceph auth get-key client.${this.cfg.user}\` prints)`);
    return k;
  }

  /** Whether a call now would have a key (the request's, a held one, or a file). */
  available(): boolean {
    return this.requestKey() !== undefined || this.held !== undefined || this.cfg.keyFile !== undefined;
  }

  /** Whether the current request brings a key for this backend that Ceph has not accepted yet. */
  requestBringsNewKey(): boolean {
    try {
      const k = this.requestKey();
      return k !== undefined && k !== this.held;
    } catch {
      return false;
    }
  }

  /** Whether the current request brings a key for this backend (a deferred start may run with it). */
  requestBringsKey(): boolean {
    try {
      return this.requestKey() !== undefined;
    } catch {
      return false;
    }
  }

  /** How the next Ceph call authenticates; UNAVAILABLE while no key is at hand. */
  auth(): CephAuth {
    const rk = this.requestKey();
    if (rk !== undefined) return { kind: 'key', key: rk, fromRequest: rk !== this.held, id: `key:${rk}` };
    if (this.held !== undefined) return { kind: 'key', key: this.held, fromRequest: false, id: `key:${this.held}` };
    if (this.cfg.keyFile !== undefined) return { kind: 'file', keyFile: this.cfg.keyFile, id: `file:${this.cfg.keyFile}` };
    throw this.noKeyYet();
  }

  noKeyYet(): AwaitingCredentialsError {
    return new AwaitingCredentialsError(
      `rbd backend ${this.backend} has no cephx key yet: it comes with the provisioner secrets (${SECRET_USER_ID}, ${SECRET_USER_KEY}) of the first CreateVolume/DeleteVolume (or any request that carries them); or set keyFile in its configuration`,
    );
  }

  /** Logged once by background work that found no key: what a person can do about it. */
  warnWaiting(what: string): void {
    if (this.warnedWaiting) return;
    this.warnedWaiting = true;
    this.log.warn({ backend: this.backend }, `${what} waits: ${this.noKeyYet().message}`);
  }

  /** Ceph accepted `auth` on a call: a request's key becomes the one work without secrets uses. */
  accepted(auth: CephAuth): void {
    if (auth.kind !== 'key' || auth.key === this.held) return;
    const first = this.held === undefined;
    this.held = auth.key;
    this.warnedWaiting = false;
    this.log.info({ backend: this.backend, user: `client.${this.cfg.user}` }, first ? 'cephx key received with a request (held in memory only)' : 'cephx key replaced by the one a request brought (held in memory only)');
  }

  /**
   * Runs `fn` with a key file for the CLI: the operator's, or one made for
   * this call on a tmpfs (0700 directory, 0600 file) and removed after it.
   */
  async withKeyFile<T>(auth: CephAuth, fn: (keyFile: string) => Promise<T>): Promise<T> {
    if (auth.kind === 'file') return fn(auth.keyFile);
    if (!this.shm)
      throw new DomainError(Code.FAILED_PRECONDITION, `rbd backend ${this.backend}: no tmpfs at ${TMPFS_CANDIDATES.join(' or ')} for the rbd CLI's temporary key file (a key from the secrets never goes to a persistent disk); mount one, or use keyFile`);
    const dir = await mkdtemp(join(this.shm, 'sinter-cephx-'));
    try {
      const file = join(dir, 'key');
      await writeFile(file, auth.key, { mode: 0o600, flag: 'wx' });
      return await fn(file);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Every key this backend may hold, for masking in anything an error might echo. */
  maskable(auth: CephAuth): string[] {
    const out = auth.kind === 'key' ? [auth.key] : [];
    if (this.held && this.held !== (auth.kind === 'key' ? auth.key : undefined)) out.push(this.held);
    return out;
  }

  /** Where to point an operator whose key Ceph refused. */
  keyHint(auth?: CephAuth): string {
    if (auth?.kind === 'file' || (!this.fromSecrets && this.cfg.keyFile)) return 'check the key in its key file';
    return `check ${SECRET_USER_KEY} in the Secret the StorageClass names (csi.storage.k8s.io/*-secret-name)`;
  }
}
