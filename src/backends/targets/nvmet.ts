import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { Logger } from 'pino';
import { isValidNqn, validateNqnPrefix } from '../../contracts/nodeid.js';
import { NVME_TCP_PORT, parsePortal, type Portal } from '../../contracts/publish-context.js';
import { failedPrecondition, internal, invalidArgument, notFound } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';

export interface NvmetConfig {
  /** Where configfs is mounted; nvmet's tree is `<root>/nvmet`. */
  configfsRoot: string;
  /** Subsystem NQNs are this prefix + volume id, e.g. `nqn.2026-11.io.sinter:`. */
  nqnPrefix: string;
  /** TCP addresses nvmet listens on (`address:port`): one port each, shared by every subsystem. */
  portals: string[];
}

/** What nvmet serves for one subsystem, read from configfs. */
export interface NvmetSubsystem {
  nqn: string;
  /** The volume it serves, when its NQN carries this helper's prefix. */
  volumeId?: string;
  /** Namespace 1's backing file or block device, and whether it is enabled. */
  devicePath?: string;
  enabled: boolean;
  allowAnyHost: boolean;
  /** Host NQNs in allowed_hosts. */
  hosts: string[];
  /** `address:port` of every port the subsystem is linked into. */
  portals: string[];
}

const NSID = 1;
const VOLUME_CHARS = /^[a-z0-9][a-z0-9.@-]*$/;
const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException)?.code;

/**
 * Ports and hosts are shared by every helper on one configfs tree (each backend with
 * export: nvmeof has its own helper), so their locks are per tree, not per helper: two
 * backends creating their first port at once would otherwise both pick the same free id.
 */
const treeLocks = new Map<string, KeyedLock>();
function treeLock(root: string): KeyedLock {
  let l = treeLocks.get(root);
  if (!l) treeLocks.set(root, (l = new KeyedLock()));
  return l;
}
/** How many taken port ids ensurePort steps over before it gives up. */
const PORT_CLAIM_TRIES = 64;

/**
 * The nvmet target helper (Cinder's nvmet target_helper, which drives the same
 * tree through nvmetcli): NVMe over TCP exports written straight into the
 * kernel's configfs (drivers/nvme/target/configfs.c), as rtslib-style tools do.
 *
 * One subsystem per volume (NQN = prefix + volume id), namespace 1 backed by
 * the image file (buffered_io) or block device, `attr_allow_any_host` 0 and
 * `allowed_hosts` naming exactly the publishing nodes' host NQNs. Ports (one
 * per configured portal, found by address or created with the next free id)
 * are shared: the subsystem is linked into each. An empty port does not even
 * listen (nvmet enables a port on its first link and disables it on its last).
 *
 * The fence. Linux 6.1's nvmet checks allowed_hosts only when a host connects
 * (nvmet_host_allowed in the Connect command): unlinking a host leaves its
 * live controller serving I/O (recorded in the test guest). What drops a live
 * controller is unlinking the subsystem from a port (nvmet_port_subsys_drop_link
 * → nvmet_port_del_ctrls); so revokeHost unlinks the host, then unlinks and
 * relinks the subsystem on every port. Every controller of the subsystem is
 * dropped; the hosts still allowed reconnect by themselves (the initiator's
 * reconnect_delay, 10 s by default), the revoked one is refused.
 *
 * Identity. nvmet gives a new namespace a random UUID and a new subsystem a
 * random serial; after a reboot (configfs empty) the rebuilt export would then
 * look like another namespace to a host that reconnects, and the kernel drops
 * it. Both are derived from the volume id instead, so a rebuilt export is the
 * same namespace.
 *
 * configfs has no transactions; every method re-reads the tree and converges,
 * so a crash between two writes is finished by the next call or reconcile.
 */
export class NvmetTargetHelper {
  readonly kind = 'nvmet';
  private readonly locks = new KeyedLock();
  /** Shared with every other helper on the same configfs tree (ports, hosts). */
  private readonly shared: KeyedLock;
  private readonly root: string;
  private readonly portals: Portal[];

  constructor(
    private readonly cfg: NvmetConfig,
    private readonly log?: Logger,
  ) {
    validateNqnPrefix(cfg.nqnPrefix);
    this.root = join(cfg.configfsRoot, 'nvmet');
    this.shared = treeLock(this.root);
    this.portals = cfg.portals.map((p) => parsePortal(p, NVME_TCP_PORT));
  }

  get portalTexts(): string[] {
    return this.portals.map((p) => p.text);
  }

  nqnFor(volumeId: string): string {
    if (!VOLUME_CHARS.test(volumeId)) throw invalidArgument(`volume id "${volumeId}" cannot be part of an NQN`);
    const nqn = this.cfg.nqnPrefix + volumeId;
    if (!isValidNqn(nqn)) throw invalidArgument(`subsystem NQN for "${volumeId}" would be ${Buffer.byteLength(nqn)} bytes or malformed; NVMe allows 223`);
    return nqn;
  }

  volumeIdOf(nqn: string): string | undefined {
    if (!nqn.startsWith(this.cfg.nqnPrefix)) return undefined;
    const id = nqn.slice(this.cfg.nqnPrefix.length);
    return VOLUME_CHARS.test(id) ? id : undefined;
  }

  // ---------------------------------------------------------------- configfs

  private p(...parts: string[]): string {
    return join(this.root, ...parts);
  }

  /** Throws a clear error when nvmet's configfs tree is not there. */
  async probe(): Promise<void> {
    try {
      await fs.access(this.p('subsystems'));
    } catch {
      throw failedPrecondition(
        `nvmet's configfs tree ${this.root} is missing: load the kernel modules (modprobe nvmet nvmet-tcp) and mount configfs (mount -t configfs none ${this.cfg.configfsRoot}) on the storage host`,
      );
    }
  }

  private async read(path: string): Promise<string | undefined> {
    try {
      return (await fs.readFile(path, 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  private async write(path: string, value: string): Promise<void> {
    try {
      await fs.writeFile(path, value);
    } catch (e) {
      throw internal(`nvmet refused "${value}" for ${path.slice(this.root.length + 1)}: ${errno(e) ?? (e as Error).message} (see the storage host's kernel log)`);
    }
  }

  private async list(path: string): Promise<string[]> {
    try {
      return (await fs.readdir(path)).sort();
    } catch {
      return [];
    }
  }

  private async mkdir(path: string): Promise<boolean> {
    try {
      await fs.mkdir(path);
      return true;
    } catch (e) {
      if (errno(e) === 'EEXIST') return false;
      throw internal(`cannot create ${path.slice(this.root.length + 1)} in nvmet's configfs: ${errno(e) ?? (e as Error).message}`);
    }
  }

  private async link(target: string, path: string): Promise<boolean> {
    try {
      await fs.symlink(target, path);
      return true;
    } catch (e) {
      if (errno(e) === 'EEXIST') return false;
      throw internal(`cannot link ${path.slice(this.root.length + 1)} in nvmet's configfs: ${errno(e) ?? (e as Error).message}`);
    }
  }

  private async unlink(path: string): Promise<boolean> {
    try {
      await fs.unlink(path);
      return true;
    } catch (e) {
      if (errno(e) === 'ENOENT') return false;
      throw internal(`cannot remove ${path.slice(this.root.length + 1)} from nvmet's configfs: ${errno(e) ?? (e as Error).message}`);
    }
  }

  private async rmdir(path: string): Promise<void> {
    try {
      await fs.rmdir(path);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw internal(`cannot remove ${path.slice(this.root.length + 1)} from nvmet's configfs: ${errno(e) ?? (e as Error).message}`);
    }
  }

  // ---------------------------------------------------------------- ports

  /** Port ids by `address:port`, for the TCP ports nvmet has. */
  private async tcpPorts(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const id of await this.list(this.p('ports'))) {
      if ((await this.read(this.p('ports', id, 'addr_trtype'))) !== 'tcp') continue;
      const addr = await this.read(this.p('ports', id, 'addr_traddr'));
      const svc = await this.read(this.p('ports', id, 'addr_trsvcid'));
      if (!addr || !svc) continue;
      try {
        out.set(parsePortal(addr.includes(':') ? `[${addr}]:${svc}` : `${addr}:${svc}`, NVME_TCP_PORT).text, id);
      } catch {
        // not an address we could have written
      }
    }
    return out;
  }

  /**
   * The port listening on `portal`, created (with the next free id) when nvmet has none.
   * The id is claimed by the mkdir itself: an id whose directory already exists (another
   * process, e.g. nvmetcli or a second sinter, took it since the listing) is never written
   * into; the next one is tried.
   */
  private async ensurePort(portal: Portal): Promise<string> {
    return this.shared.run('\0ports', async () => {
      const have = (await this.tcpPorts()).get(portal.text);
      if (have) return have;
      const ids = (await this.list(this.p('ports'))).map(Number).filter(Number.isInteger);
      let next = Math.max(0, ...ids) + 1;
      for (let tries = 0; tries < PORT_CLAIM_TRIES; tries++, next++) {
        const id = String(next);
        const dir = this.p('ports', id);
        if (!(await this.mkdir(dir))) continue;
        // Attributes are written while the port has no subsystem: nvmet refuses changes to an enabled port.
        await this.write(join(dir, 'addr_trtype'), 'tcp');
        await this.write(join(dir, 'addr_adrfam'), portal.host.includes(':') ? 'ipv6' : 'ipv4');
        await this.write(join(dir, 'addr_traddr'), portal.host);
        await this.write(join(dir, 'addr_trsvcid'), String(portal.port));
        this.log?.info({ port: id, portal: portal.text }, 'nvmet port created');
        return id;
      }
      throw internal(`cannot claim an nvmet port id for ${portal.text}: ids ${next - PORT_CLAIM_TRIES} to ${next - 1} were all taken while sinter tried`);
    });
  }

  // ---------------------------------------------------------------- subsystems

  /**
   * One subsystem per volume with `devicePath` as namespace 1, linked into a
   * port per portal, allowing no host until allowHost. Creates what is
   * missing, points namespace 1 at devicePath when it pointed elsewhere
   * (only while no host is allowed: configfs does not show connected
   * controllers), and leaves the rest alone.
   */
  async ensureSubsystem(volumeId: string, devicePath: string): Promise<string> {
    const nqn = this.nqnFor(volumeId);
    if (!isAbsolute(devicePath)) throw invalidArgument(`backing path for ${volumeId} must be absolute`);
    await this.probe();
    return this.locks.run(volumeId, async () => {
      const sub = this.p('subsystems', nqn);
      const created = await this.mkdir(sub);
      const id = UUID_RE.exec(volumeId)?.[0] ?? uuidFrom(volumeId);
      if (created) this.log?.info({ nqn }, 'nvmet subsystem created');
      // Set before any host identifies a controller (nvmet refuses changes after); checked on every
      // call, so a crash between the mkdir and these writes is finished by the next one.
      const serial = id.replace(/-/g, '').slice(0, 20);
      if ((await this.read(join(sub, 'attr_serial'))) !== serial) await this.write(join(sub, 'attr_serial'), serial).catch((e: Error) => this.log?.warn({ nqn, err: e.message }, 'cannot set the subsystem serial'));
      if ((await this.read(join(sub, 'attr_model'))) !== 'sinter') await this.write(join(sub, 'attr_model'), 'sinter').catch((e: Error) => this.log?.warn({ nqn, err: e.message }, 'cannot set the subsystem model'));
      if ((await this.read(join(sub, 'attr_allow_any_host'))) !== '0') await this.write(join(sub, 'attr_allow_any_host'), '0');
      const ns = join(sub, 'namespaces', String(NSID));
      await this.mkdir(ns);
      const path = await this.read(join(ns, 'device_path'));
      const enabled = (await this.read(join(ns, 'enable'))) === '1';
      if (!enabled || path !== devicePath) {
        if (enabled) {
          if ((await this.list(join(sub, 'allowed_hosts'))).length > 0)
            throw failedPrecondition(`subsystem ${nqn} serves ${path ?? 'nothing'} as namespace ${NSID} to allowed hosts; not replacing it with ${devicePath}`);
          await this.write(join(ns, 'enable'), '0');
        }
        const st = await fs.stat(devicePath).catch(() => undefined);
        if (!st) throw notFound(`the image or device backing volume ${volumeId} is missing`);
        await this.write(join(ns, 'device_path'), devicePath);
        // A file goes through the page cache (nvmet's file backend with buffered_io), a block device is opened directly.
        await this.write(join(ns, 'buffered_io'), st.isFile() ? '1' : '0');
        await this.write(join(ns, 'device_uuid'), id);
        await this.write(join(ns, 'device_nguid'), id);
        await this.write(join(ns, 'enable'), '1');
        this.log?.info({ nqn, devicePath }, 'nvmet namespace enabled');
      }
      for (const portal of this.portals) {
        const port = await this.ensurePort(portal);
        await this.link(sub, this.p('ports', port, 'subsystems', nqn));
      }
      return nqn;
    });
  }

  /** Lets one host (by its host NQN) connect. NOT_FOUND when the subsystem does not exist. */
  async allowHost(volumeId: string, hostNqn: string): Promise<void> {
    const nqn = this.nqnFor(volumeId);
    if (!isValidNqn(hostNqn)) throw invalidArgument(`host NQN "${hostNqn}" is not a valid NQN`);
    await this.locks.run(volumeId, async () => {
      const sub = this.p('subsystems', nqn);
      if (!(await this.exists(sub))) throw notFound(`NVMe subsystem for volume ${volumeId} does not exist`);
      await this.shared.run('\0hosts', async () => {
        await this.mkdir(this.p('hosts', hostNqn));
        if (await this.link(this.p('hosts', hostNqn), join(sub, 'allowed_hosts', hostNqn))) this.log?.info({ nqn, host: hostNqn }, 'host allowed');
      });
    });
  }

  /**
   * Fences one host: out of allowed_hosts, then every live controller of the
   * subsystem is dropped by unlinking and relinking it on each port (see the
   * class comment); the other allowed hosts reconnect. Idempotent.
   */
  async revokeHost(volumeId: string, hostNqn: string): Promise<void> {
    const nqn = this.nqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      const sub = this.p('subsystems', nqn);
      if (!(await this.exists(sub))) return;
      await this.unlink(join(sub, 'allowed_hosts', hostNqn));
      await this.dropControllers(nqn);
      this.log?.info({ nqn, host: hostNqn }, 'host revoked; controllers dropped (fence)');
      await this.forgetHost(hostNqn);
    });
  }

  private async dropControllers(nqn: string): Promise<void> {
    for (const port of await this.list(this.p('ports'))) {
      const l = this.p('ports', port, 'subsystems', nqn);
      if (await this.unlink(l)) await this.link(this.p('subsystems', nqn), l);
    }
  }

  /** Removes a host entry no subsystem allows any more (an entry alone grants nothing, but it is sinter's leftover). */
  private async forgetHost(hostNqn: string): Promise<void> {
    await this.shared.run('\0hosts', async () => {
      for (const s of await this.list(this.p('subsystems'))) if ((await this.list(this.p('subsystems', s, 'allowed_hosts'))).includes(hostNqn)) return;
      await this.rmdir(this.p('hosts', hostNqn));
    });
  }

  /** Removes the subsystem: off every port (its controllers drop), its hosts, namespace and directory. Idempotent. */
  async removeSubsystem(volumeId: string): Promise<void> {
    const nqn = this.nqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      const sub = this.p('subsystems', nqn);
      if (!(await this.exists(sub))) return;
      for (const port of await this.list(this.p('ports'))) await this.unlink(this.p('ports', port, 'subsystems', nqn));
      const hosts = await this.list(join(sub, 'allowed_hosts'));
      for (const h of hosts) await this.unlink(join(sub, 'allowed_hosts', h));
      for (const ns of await this.list(join(sub, 'namespaces'))) {
        await this.write(join(sub, 'namespaces', ns, 'enable'), '0').catch(() => undefined);
        await this.rmdir(join(sub, 'namespaces', ns));
      }
      await this.rmdir(sub);
      this.log?.info({ nqn }, 'nvmet subsystem removed');
      for (const h of hosts) await this.forgetHost(h);
    });
  }

  /**
   * After the backing file or device grew: nvmet re-reads namespace 1's size
   * and tells connected hosts (a Namespace Attribute Changed event), whose
   * kernels rescan it. Recorded in the test guest: the host's nvmeXnY showed
   * the new size within a second. 'absent' when the namespace is not there.
   */
  async refreshSize(volumeId: string): Promise<'refreshed' | 'absent'> {
    const nqn = this.nqnFor(volumeId);
    return this.locks.run(volumeId, async () => {
      const ns = this.p('subsystems', nqn, 'namespaces', String(NSID));
      if ((await this.read(join(ns, 'enable'))) !== '1') return 'absent';
      await this.write(join(ns, 'revalidate_size'), '1');
      return 'refreshed';
    });
  }

  private async exists(path: string): Promise<boolean> {
    return fs.access(path).then(
      () => true,
      () => false,
    );
  }

  /** Every subsystem nvmet has now, read from configfs. */
  async listSubsystems(): Promise<NvmetSubsystem[]> {
    await this.probe();
    const ports = new Map<string, string>();
    for (const [text, id] of await this.tcpPorts()) ports.set(id, text);
    const linked = new Map<string, string[]>();
    for (const [id, text] of ports) for (const s of await this.list(this.p('ports', id, 'subsystems'))) linked.set(s, [...(linked.get(s) ?? []), text]);
    const out: NvmetSubsystem[] = [];
    for (const nqn of await this.list(this.p('subsystems'))) {
      const sub = this.p('subsystems', nqn);
      const ns = join(sub, 'namespaces', String(NSID));
      const path = await this.read(join(ns, 'device_path'));
      const volumeId = this.volumeIdOf(nqn);
      out.push({
        nqn,
        ...(volumeId === undefined ? {} : { volumeId }),
        ...(path && path !== '(null)' ? { devicePath: path } : {}),
        enabled: (await this.read(join(ns, 'enable'))) === '1',
        allowAnyHost: (await this.read(join(sub, 'attr_allow_any_host'))) === '1',
        hosts: await this.list(join(sub, 'allowed_hosts')),
        portals: linked.get(nqn) ?? [],
      });
    }
    return out;
  }
}

/** A stable UUID-shaped id for a volume id that carries none. */
function uuidFrom(s: string): string {
  const h = createHash('sha256').update(s).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}
