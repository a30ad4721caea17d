import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { PublishContext } from '../../contracts/publish-context.js';
import { KeyedLock } from '../../csi/locks.js';
import { failedPrecondition, internal } from '../../errors/domain-error.js';
import { ExecError, type Executor } from '../../exec/run.js';
import { writeFileAtomic } from '../../store/atomic-file.js';
import type { Connector, DeviceCondition } from './connector.js';
import { asRbd, imageKey, rbdCredentials, type RbdContext } from './rbd-common.js';
import { SysfsTree } from './sysfs.js';


export interface KernelRbdConfig {
  /** Private state directory (created 0700): one record per mapping sinter made, and short-lived key files. */
  stateDir: string;
  /** The node's cephx user and key file (node.rbd); NodeStageVolume secrets `userID`/`userKey` take precedence. */
  user?: string;
  keyFile?: string;
  /** `rbd device map -o` options (node.rbd.mapOptions), e.g. `ms_mode=crc`, `queue_depth=128`, `noudev`. */
  mapOptions?: string[];
  sysfsRoot?: string;
  devRoot?: string;
  /** How long `rbd device map` may take (connecting to the monitors and the OSDs, the udev event). */
  mapTimeoutMs?: number;
}

/** One kernel rbd mapping, as /sys/bus/rbd/devices/<id> shows it. */
export interface KrbdMapping {
  id: string;
  pool: string;
  namespace: string;
  image: string;
  /** `-` for the image's head (what sinter maps); a snapshot name otherwise. */
  snap: string;
  /** The kernel client's Ceph id (`client.4242`): what a blocklist entry names. */
  clientId?: string;
  /** Monitor addresses from config_info (root-only), when readable. */
  monitors?: string[];
  device: string;
}

interface MapRecord {
  pool: string;
  image: string;
  monitors: string[];
  id: string;
  clientId?: string;
  createdAt: string;
}

/**
 * `rbd device list --format json` (ceph 16.2): `[{"id":"0","pool":"p","namespace":"","name":"img","snap":"-","device":"/dev/rbd0"}]`.
 * Used where sysfs cannot be read; mappings of snapshots are left out by the caller.
 */
export function parseRbdDeviceList(json: string): { id: string; pool: string; namespace: string; image: string; snap: string; device: string }[] {
  let raw: unknown;
  try {
    raw = JSON.parse(json || '[]');
  } catch {
    throw internal(`rbd device list printed something that is not JSON: ${json.slice(0, 200)}`);
  }
  if (!Array.isArray(raw)) throw internal('rbd device list did not print a JSON list');
  // rbd prints ids as numbers or strings depending on the release; anything else is not ours to guess.
  const field = (v: unknown, dflt: string) => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : dflt);
  return raw.map((e: Record<string, unknown>) => ({
    id: field(e.id, ''),
    pool: field(e.pool, ''),
    namespace: field(e.namespace, ''),
    image: field(e.name, ''),
    snap: field(e.snap, '-'),
    device: field(e.device, ''),
  }));
}

/**
 * config_info of a mapping: `<mon addrs> <options> <pool> <image> <snap>` as
 * written to /sys/bus/rbd/add_single_major, the options with `key=client.X`
 * (never the secret itself: `rbd device map` puts that in the kernel keyring).
 */
export function monitorsOfConfigInfo(info: string): string[] {
  const first = info.trim().split(/\s+/)[0] ?? '';
  return first ? first.split(',') : [];
}

/** `host:port` of a publish_context monitor, for comparison with what the kernel shows; undefined for a name (the kernel shows addresses). */
function addressOf(m: string): string | undefined {
  const bare = m.replace(/^v[12]:/, '');
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(bare);
  if (v6) return `[${v6[1]}]:${v6[2] ?? (m.startsWith('v1:') ? 6789 : 3300)}`;
  const [host, port] = bare.split(':');
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(host!)) return undefined;
  return `${host}:${port ?? (m.startsWith('v1:') ? 6789 : 3300)}`;
}

/**
 * The kernel picks monitor addresses by messenger version: `ms_mode=legacy`
 * (its default) reaches only v1 addresses (port 6789), any other ms_mode only
 * v2 ones. Without an ms_mode in the options, a cluster named by v2 addresses
 * gets `ms_mode=prefer-crc` (msgr2, plain crc unless the cluster wants secure).
 * And `noshare` unless the config says `share`.
 */
export function effectiveMapOptions(options: string[], monitors: string[]): string[] {
  const out = [...options];
  const legacy = monitors.some((m) => m.startsWith('v1:') || /:6789$/.test(m));
  if (!legacy && !out.some((o) => o.startsWith('ms_mode='))) out.push('ms_mode=prefer-crc');
  // The kernel shares one Ceph client instance among mappings with the same options, and the fence blocklists
  // a client instance: `noshare` gives each volume its own, so fencing one volume never cuts off another's I/O.
  if (!out.includes('share') && !out.includes('noshare')) out.push('noshare');
  return out;
}

/**
 * Reads the rbd bus in sysfs, /sys/bus/rbd/devices/<id>/{pool,pool_ns,name,current_snap,client_id,config_info}.
 */
export class KrbdSysfs {
  constructor(private readonly sys: SysfsTree) {}

  async available(): Promise<boolean> {
    return this.sys.exists('bus/rbd');
  }

  async mapping(id: string): Promise<KrbdMapping | undefined> {
    if (!/^\d{1,6}$/.test(id)) return undefined;
    const base = `bus/rbd/devices/${id}`;
    const [pool, namespace, image, snap, clientId, info] = await Promise.all(
      ['pool', 'pool_ns', 'name', 'current_snap', 'client_id', 'config_info'].map((a) => this.sys.read(`${base}/${a}`)),
    );
    if (pool === undefined || image === undefined) return undefined;
    return {
      id,
      pool,
      namespace: namespace ?? '',
      image,
      snap: snap ?? '-',
      clientId: clientId || undefined,
      monitors: info ? monitorsOfConfigInfo(info) : undefined,
      device: this.sys.dev(`rbd${id}`),
    };
  }

  async mappings(): Promise<KrbdMapping[]> {
    const ids = (await this.sys.list('bus/rbd/devices')).filter((n) => /^\d{1,6}$/.test(n));
    const out = await Promise.all(ids.map((id) => this.mapping(id)));
    return out.filter((m): m is KrbdMapping => m !== undefined).sort((a, b) => Number(a.id) - Number(b.id));
  }
}

/** Whether a mapping is of the head of pool/image in the cluster ctx names (monitors compared where both sides show addresses). */
export function mappingMatches(m: KrbdMapping, c: RbdContext): boolean {
  if (m.pool !== c.pool || m.image !== c.image || m.namespace !== '' || m.snap !== '-') return false;
  if (!m.monitors) return true;
  const wanted = c.monitors.map(addressOf);
  // A monitor given by name: the kernel shows what it resolved to; pool and image have to do.
  if (wanted.some((a) => a === undefined)) return true;
  return m.monitors.some((a) => wanted.includes(a));
}

/**
 * The `rbd` transport through the kernel's rbd client (krbd): `rbd device map`
 * with the node's own cephx identity, the monitors and the key always given
 * explicitly (`--conf /dev/null`: no /etc/ceph, no DNS lookup of monitors),
 * the device found on the rbd bus in sysfs, `rbd device unmap` on disconnect.
 * The kernel keeps a watch on the image header: after `rbd resize` the size
 * of /dev/rbdN follows by itself (rescan asks for a header refresh anyway).
 *
 * Every mapping this connector makes gets a record in stateDir (mapping id,
 * kernel client id): start-up clean-up only ever unmaps mappings it made.
 */
export class KernelRbdConnector implements Connector {
  readonly transport = 'rbd' as const;
  private readonly locks = new KeyedLock();
  private readonly sys: SysfsTree;
  readonly krbd: KrbdSysfs;
  private readonly mapTimeoutMs: number;

  constructor(
    private readonly cfg: KernelRbdConfig,
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {
    this.sys = new SysfsTree(cfg.sysfsRoot ?? '/sys', cfg.devRoot ?? '/dev');
    this.krbd = new KrbdSysfs(this.sys);
    this.mapTimeoutMs = cfg.mapTimeoutMs ?? 120_000;
  }

  private recordPath(c: { pool: string; image: string }): string {
    return join(this.cfg.stateDir, `${imageKey(c)}.json`);
  }


  async validate(ctx: PublishContext): Promise<void> {
    asRbd(ctx);
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    return (await this.attach(ctx, secrets)).device;
  }

  async attach(ctx: PublishContext, secrets: Record<string, string>): Promise<{ device: string; attached: boolean }> {
    const c = asRbd(ctx);
    const creds = rbdCredentials(secrets, this.cfg);
    return this.locks.run(`${c.pool}/${c.image}`, async () => {
      const existing = await this.findMapping(c);
      if (existing) return { device: existing.device, attached: false };
      await fs.mkdir(this.cfg.stateDir, { recursive: true, mode: 0o700 });
      let keyFile = creds.keyFile!;
      let tmpKey: string | undefined;
      if (creds.key !== undefined) {
        tmpKey = keyFile = join(this.cfg.stateDir, `key-${process.pid}-${createHash('sha256').update(`${c.pool}/${c.image}`).digest('hex').slice(0, 12)}`);
        await fs.rm(tmpKey, { force: true });
        const fh = await fs.open(tmpKey, 'wx', 0o600);
        try {
          await fh.writeFile(creds.key.trim());
        } finally {
          await fh.close();
        }
      }
      const options = effectiveMapOptions(this.cfg.mapOptions ?? [], c.monitors);
      // librados in the CLI retries a refused key until client_mount_timeout (300 s by default): give up well before the command's own timeout.
      const mountTimeout = String(Math.max(5, Math.floor(this.mapTimeoutMs / 2000)));
      const args = ['device', 'map', '--conf', '/dev/null', '--client_mount_timeout', mountTimeout, '--id', creds.user, '--keyfile', keyFile, '-m', c.monitors.join(','), ...(options.length ? ['-o', options.join(',')] : []), `${c.pool}/${c.image}`];
      let out: string;
      try {
        out = (await this.exec.run('rbd', args, { timeoutMs: this.mapTimeoutMs, secrets: creds.key ? [creds.key] : [] })).stdout;
      } catch (e) {
        // A map whose udev wait timed out may still have made the device: take that one.
        const late = await this.findMapping(c);
        if (late) {
          await this.writeRecord(c, late);
          return { device: late.device, attached: true };
        }
        throw mapError(e, c, creds.user);
      } finally {
        if (tmpKey) await fs.rm(tmpKey, { force: true });
      }
      const m = await this.findMapping(c);
      if (!m) throw internal(`rbd device map of ${c.pool}/${c.image} printed "${out.trim().slice(0, 100)}" but no mapping of it is on the rbd bus`);
      await this.writeRecord(c, m);
      this.log?.info({ pool: c.pool, image: c.image, device: m.device, client: m.clientId }, 'kernel rbd mapped');
      return { device: m.device, attached: true };
    });
  }

  private async writeRecord(c: RbdContext, m: KrbdMapping): Promise<void> {
    const rec: MapRecord = { pool: c.pool, image: c.image, monitors: c.monitors, id: m.id, clientId: m.clientId, createdAt: new Date().toISOString() };
    await writeFileAtomic(this.recordPath(c), JSON.stringify(rec, null, 2));
  }

  private async readRecord(c: { pool: string; image: string }): Promise<MapRecord | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.recordPath(c), 'utf8')) as MapRecord;
    } catch {
      return undefined;
    }
  }

  /** The mapping of ctx's image head: the recorded one first, else the lowest id. */
  private async findMapping(c: RbdContext): Promise<KrbdMapping | undefined> {
    const all = (await this.krbd.mappings()).filter((m) => mappingMatches(m, c));
    if (all.length <= 1) return all[0];
    const rec = await this.readRecord(c);
    return all.find((m) => m.id === rec?.id) ?? all[0];
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    return (await this.findMapping(asRbd(ctx)))?.device;
  }

  async disconnect(ctx: PublishContext, device?: string): Promise<void> {
    const c = asRbd(ctx);
    await this.locks.run(`${c.pool}/${c.image}`, async () => {
      const mappings = (await this.krbd.mappings()).filter((m) => mappingMatches(m, c));
      // The device the stage recorded, when it is still this image's; else whatever maps the image head.
      const mine = device ? mappings.filter((m) => m.device === device) : [];
      for (const m of mine.length ? mine : mappings) await this.unmap(m, `${c.pool}/${c.image}`);
      await fs.rm(this.recordPath(c), { force: true });
    });
  }

  private async unmap(m: KrbdMapping, what: string): Promise<void> {
    try {
      await this.exec.run('rbd', ['device', 'unmap', '--conf', '/dev/null', m.device], { timeoutMs: this.mapTimeoutMs });
    } catch (e) {
      if (!(await this.krbd.mapping(m.id))) return; // gone meanwhile
      const text = e instanceof ExecError ? e.stderr : (e as Error).message;
      if (/busy|\(16\)/i.test(text)) throw failedPrecondition(`${m.device} (rbd image ${what}) is still in use (mounted or open); unmount it before unstaging`);
      throw internal(`rbd device unmap ${m.device} (rbd image ${what}) failed: ${text.trim().split('\n').slice(-2).join(' | ')}`);
    }
    this.log?.info({ image: what, device: m.device }, 'kernel rbd unmapped');
  }

  /** The kernel follows a resize through its header watch; a refresh makes sure before the size is read. */
  async rescan(ctx: PublishContext, device: string): Promise<void> {
    const c = asRbd(ctx);
    const m = (await this.krbd.mappings()).find((x) => x.device === device && mappingMatches(x, c));
    if (!m) throw failedPrecondition(`${device} no longer maps rbd image ${c.pool}/${c.image}; stage the volume again`);
    await this.sys.write(`bus/rbd/devices/${m.id}/refresh`, '1').catch((e: Error) => this.log?.warn({ device, err: e.message }, 'rbd header refresh failed'));
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const c = asRbd(ctx);
    const id = /rbd(\d+)$/.exec(device)?.[1];
    const m = id ? await this.krbd.mapping(id) : undefined;
    if (!m || m.device !== device) {
      const other = await this.findMapping(c);
      return other
        ? { abnormal: true, attached: false, message: `${device} no longer maps rbd image ${c.pool}/${c.image} (it is mapped as ${other.device})` }
        : { abnormal: true, attached: false, message: `rbd image ${c.pool}/${c.image} is no longer mapped on this node (${device} is gone); stage it again` };
    }
    if (!mappingMatches(m, c)) return { abnormal: true, attached: false, message: `${device} now maps rbd image ${m.pool}/${m.image}, not ${c.pool}/${c.image}` };
    return { abnormal: false, attached: true, message: `mapped as ${device}${m.clientId ? ` by ${m.clientId}` : ''}` };
  }

  /** Every kernel rbd mapping of an image head on this node; only those sinter recorded are releasable. */
  async attached(): Promise<{ device: string; source: string; notReleasable?: string }[]> {
    const out: { device: string; source: string; notReleasable?: string }[] = [];
    for (const m of await this.krbd.mappings()) {
      if (m.snap !== '-' || m.namespace !== '') continue;
      const rec = await this.readRecord(m);
      const ours = rec !== undefined && rec.id === m.id && (rec.clientId === undefined || rec.clientId === m.clientId);
      out.push(ours ? { device: m.device, source: `rbd:${m.pool}/${m.image}` } : { device: m.device, source: `rbd:${m.pool}/${m.image}`, notReleasable: `${m.device} was not mapped by sinter on this node (no record of it), so sinter never unmaps it` });
    }
    return out;
  }

  async release(device: string, source: string, inUse: PublishContext[]): Promise<boolean> {
    const s = /^rbd:([^/]+)\/(.+)$/.exec(source);
    if (!s) return false;
    const [pool, image] = [s[1]!, s[2]!];
    if (inUse.some((c) => c.transport === 'rbd' && c.pool === pool && c.image === image)) return false;
    return this.locks.run(`${pool}/${image}`, async () => {
      const m = (await this.krbd.mappings()).find((x) => x.device === device && x.pool === pool && x.image === image && x.snap === '-');
      const rec = await this.readRecord({ pool, image });
      if (!m || rec?.id !== m.id) return false;
      await this.unmap(m, `${pool}/${image}`);
      await fs.rm(this.recordPath({ pool, image }), { force: true });
      return true;
    });
  }
}


/** `rbd device map`'s failures, as it reports them (ceph 16.2: "rbd: map failed: (13) Permission denied", "rbd: sysfs write failed"). */
function mapError(e: unknown, c: RbdContext, user: string): Error {
  if (!(e instanceof ExecError)) return e as Error;
  const text = e.stderr.trim().split('\n').filter(Boolean).slice(-3).join(' | ') || 'no output';
  if (e.timedOut) return internal(`rbd device map of ${c.pool}/${c.image} did not finish in time (are the monitors ${c.monitors.join(',')} and the OSDs reachable from this node?)`);
  // A key the monitors refuse: librados retries the auth until client_mount_timeout, then gives up with ETIMEDOUT.
  if (/handle_auth_bad_method|bad authorizer|\(110\)|timed out/i.test(text))
    return failedPrecondition(
      `rbd device map of ${c.pool}/${c.image} could not authenticate to or reach the monitors ${c.monitors.join(',')} as client.${user} (${text.slice(-300)}); check the node's cephx key (node.rbd.keyFile or the node-stage secret) and that the monitors are reachable`,
    );
  if (/\(13\)|\(1\)|Permission denied|Operation not permitted/i.test(text))
    return failedPrecondition(`mapping rbd image ${c.pool}/${c.image} as client.${user} was refused by Ceph (${text}); check the node's cephx key and that its caps include "profile rbd" on pool ${c.pool}`);
  if (/\(2\)|No such file or directory/.test(text)) return failedPrecondition(`rbd image ${c.pool}/${c.image} does not exist in the cluster at ${c.monitors.join(',')} (${text})`);
  if (/feature set mismatch|\(6\)/i.test(text)) return failedPrecondition(`this node's kernel cannot map rbd image ${c.pool}/${c.image}: it has image features the kernel client lacks (${text}); create such volumes with fewer imageFeatures, or use node.rbd.attach: userspace`);
  return internal(`rbd device map of ${c.pool}/${c.image} failed: ${text}`);
}
