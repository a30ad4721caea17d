import { realpath } from 'node:fs/promises';
import type { Logger } from 'pino';
import { DEFAULT_NQN_PREFIX } from '../../contracts/nodeid.js';
import { NVME_TCP_PORT, parsePortal, type Portal, type PublishContext } from '../../contracts/publish-context.js';
import { Code, DomainError, failedPrecondition, internal, invalidArgument, unavailable } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';
import { ExecError, type Executor } from '../../exec/run.js';
import { poll, realClock, type Clock } from '../../util/poll.js';
import { deviceMountPoint } from '../mount.js';
import type { Connector, DeviceCondition } from './connector.js';
import { controllerAt, NvmeSysfs, type NvmeController, type NvmeSubsystem } from './nvme-sysfs.js';
import { SysfsTree } from './sysfs.js';

type NvmeContext = Extract<PublishContext, { transport: 'nvmeof' }>;

export interface NvmeConnectorConfig {
  /** This node's host NQN, as its node id carries it (what the controller put in allowed_hosts). */
  hostNqn?: string;
  sysfsRoot?: string;
  devRoot?: string;
  /** Subsystems whose orphan controllers `orphanSessions: clean` may disconnect (sinter's own). */
  orphanNqnPrefixes?: string[];
  /** How long to wait for the namespace's block device after connecting. */
  deviceTimeoutMs?: number;
  /** How long to wait for deleted controllers to go. */
  removalTimeoutMs?: number;
  /** Timeout of one nvme-cli call. */
  nvmeTimeoutMs?: number;
  /** Mount table for the in-use check; default /proc/self/mountinfo. */
  mountInfoPath?: string;
  /** A simulated tree in tests. */
  sysfs?: SysfsTree;
  clock?: Clock;
}

function asNvme(ctx: PublishContext): NvmeContext {
  if (ctx.transport !== 'nvmeof') throw new Error(`nvme connector got a ${ctx.transport} context`);
  return ctx;
}

const SOURCE_RE = /^(\S+) nsid (\d+)$/;
const DHCHAP_KEYS = ['dhchap-secret', 'dhchap-ctrl-secret', 'dhchapSecret'];

/**
 * The `nvmeof` transport over TCP (os-brick's NVMeOFConnector, native
 * multipath only): `nvme connect -t tcp` per portal with this node's host
 * NQN, reusing a controller the kernel already has for (NQN, address, port);
 * then the namespace's block device, found in sysfs by subsystem NQN and
 * nsid. With native NVMe multipath (nvme_core.multipath=Y, Debian's default)
 * several portals give one device; dm-multipath is not involved.
 *
 * Disconnect deletes the subsystem's controllers only when its namespace is
 * not mounted or held and no other namespace of the subsystem has a device
 * (a volume sinter did not make may share it); sinter's own subsystems carry
 * one volume each.
 */
export class NvmeConnector implements Connector {
  readonly transport = 'nvmeof' as const;
  /** A controller no record explains may be an administrator's: released only with node.orphanSessions: clean. */
  readonly releaseOptIn = true;
  private readonly locks = new KeyedLock();
  private readonly sysfs: SysfsTree;
  private readonly nvme: NvmeSysfs;
  private readonly clock: Clock;

  constructor(
    private readonly cfg: NvmeConnectorConfig,
    private readonly exec: Executor,
    private readonly log?: Logger,
  ) {
    this.sysfs = cfg.sysfs ?? new SysfsTree(cfg.sysfsRoot ?? '/sys', cfg.devRoot ?? '/dev');
    this.nvme = new NvmeSysfs(this.sysfs);
    this.clock = cfg.clock ?? realClock;
  }

  private portals(c: NvmeContext): Portal[] {
    try {
      return c.portals.map((p) => parsePortal(p, NVME_TCP_PORT));
    } catch (e) {
      throw invalidArgument((e as Error).message);
    }
  }

  async validate(ctx: PublishContext): Promise<void> {
    asNvme(ctx);
    if (!this.cfg.hostNqn)
      throw failedPrecondition('this node has no NVMe host NQN (install nvme-cli, which writes /etc/nvme/hostnqn, or set node.nvmeHostNqn), so no subsystem will let it connect');
  }

  /** nvme-fabrics and nvme-tcp loaded (or built in); loaded when missing, named when that fails. */
  private async ensureModules(): Promise<void> {
    if ((await this.sysfs.exists('module/nvme_tcp')) && (await this.sysfs.exists('module/nvme_fabrics'))) return;
    try {
      await this.exec.run('modprobe', ['nvme-tcp'], { timeoutMs: 30_000 });
    } catch (e) {
      this.log?.warn({ err: (e as Error).message }, 'modprobe nvme-tcp failed');
    }
    if (!(await this.sysfs.exists('module/nvme_fabrics')))
      throw failedPrecondition('the nvme-fabrics kernel module is not loaded on this node and could not be loaded (modprobe nvme-fabrics); NVMe over TCP needs it');
    if (!(await this.sysfs.exists('module/nvme_tcp')))
      throw failedPrecondition('the nvme-tcp kernel module is not loaded on this node and could not be loaded (modprobe nvme-tcp); NVMe over TCP needs it');
  }

  private async nvmeCli(args: string[]) {
    try {
      return await this.exec.run('nvme', args, { timeoutMs: this.cfg.nvmeTimeoutMs ?? 60_000 });
    } catch (e) {
      if (e instanceof ExecError && e.exitCode === undefined && !e.timedOut && /ENOENT|not found/i.test(e.message))
        throw failedPrecondition('the nvme command is missing on this node: install the nvme-cli package');
      throw e;
    }
  }

  private ofSubsystem(all: NvmeController[], nqn: string): NvmeController[] {
    return all.filter((c) => c.subsysnqn === nqn && c.transport === 'tcp');
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    return (await this.attach(ctx, secrets)).device;
  }

  async attach(ctx: PublishContext, secrets: Record<string, string>): Promise<{ device: string; attached: boolean }> {
    const c = asNvme(ctx);
    await this.validate(c);
    const asked = DHCHAP_KEYS.filter((k) => secrets?.[k] !== undefined);
    if (asked.length > 0) throw invalidArgument(`secrets: ${asked.join(', ')} asks for NVMe in-band authentication (DH-HMAC-CHAP), which sinter does not support yet`);
    const portals = this.portals(c);
    return this.locks.run(c.nqn, async () => {
      // Not a proof of absence, so that a new volume's stage does not read every other subsystem's NQN: a subsystem
      // hidden from it (under a number the index knows as another NQN's) has a controller to the portal, which the
      // connect below then hears of as "already connected" and looks for in full. The portal checks and the wait
      // below reuse what this finds.
      let sub: NvmeSubsystem | null | undefined = await this.nvme.subsystem(c.nqn, 'new');
      // Whether the subsystem was attached before this call: only then may a failed stage not undo it.
      let existed = (await this.nvme.namespaceDevice(c.nqn, c.nsid, sub)) !== undefined;
      let made = 0;
      await this.ensureModules();
      const failures: DomainError[] = [];
      let up = 0;
      let ctrls: NvmeController[] | undefined;
      for (const p of portals) {
        // After a connect made (or joined) the subsystem, it is found among those that appeared since, without a full scan.
        if (sub === undefined) sub = await this.nvme.subsystem(c.nqn);
        ctrls ??= this.ofSubsystem(await this.nvme.controllersOf(c.nqn, sub), c.nqn);
        const have = ctrls.find((x) => controllerAt(x, p.host, p.port) && !x.state.startsWith('deleting'));
        if (have) {
          this.log?.debug({ nqn: c.nqn, portal: p.text, controller: have.name, state: have.state }, 'reusing NVMe controller');
          up++;
          continue;
        }
        try {
          if ((await this.connectPortal(c.nqn, p)) === 'already') existed = true;
          else made++;
          sub = undefined;
          ctrls = undefined;
          up++;
        } catch (e) {
          const de = e instanceof DomainError ? e : internal((e as Error).message);
          failures.push(de);
          this.log?.warn({ nqn: c.nqn, portal: p.text, err: de.message }, 'NVMe/TCP portal failed');
        }
      }
      if (up === 0) throw worst(failures) ?? unavailable(`no portal of ${c.nqn} could be connected`);
      const kernel = await poll(async () => this.nvme.namespaceDevice(c.nqn, c.nsid), {
        initialMs: 100,
        maxMs: 1_000,
        timeoutMs: this.cfg.deviceTimeoutMs ?? 30_000,
        clock: this.clock,
      });
      if (!kernel) throw unavailable(`namespace ${c.nsid} of ${c.nqn} did not appear as a block device within ${this.cfg.deviceTimeoutMs ?? 30_000} ms`);
      const device = this.sysfs.dev(kernel);
      const seen = await poll(async () => ((await this.sysfs.devExists(kernel)) ? true : undefined), { initialMs: 50, maxMs: 500, timeoutMs: 10_000, clock: this.clock });
      if (!seen) throw unavailable(`${device} (namespace ${c.nsid} of ${c.nqn}) has no device node yet; retry`);
      // A controller this call did not make (the hidden subsystem above, joined at another portal): attached before.
      if (!existed) existed = this.ofSubsystem(await this.nvme.controllersOf(c.nqn), c.nqn).length > made;
      return { device, attached: !existed };
    });
  }

  /** 'already': nvme-cli found a controller for (nqn, portal) and made none (a racing connect, or one made outside sinter). */
  private async connectPortal(nqn: string, p: Portal): Promise<'connected' | 'already'> {
    const args = ['connect', '-t', 'tcp', '-a', p.host, '-s', String(p.port), '-n', nqn, '--hostnqn', this.cfg.hostNqn!];
    try {
      await this.nvmeCli(args);
      this.log?.info({ nqn, portal: p.text }, 'NVMe/TCP connected');
      return 'connected';
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      const where = `nvme connect to ${nqn} at ${p.text}`;
      const err = e.stderr;
      // nvme-cli 2.3 (recorded in the guest: test/fixtures/nvme/connect-again.err): a controller for (nqn, address) exists, live or reconnecting.
      if (/already connected/i.test(err)) {
        this.log?.info({ nqn, portal: p.text }, 'NVMe/TCP controller to this portal already there (made outside this call); using it');
        return 'already';
      }
      if (/Connection refused/i.test(err)) throw unavailable(`${where} failed: nothing listens there (connection refused); check the portal and that the storage host's nvmet port is up`);
      // nvmet answers a host outside allowed_hosts and an unknown subsystem alike (Linux 6.1:
      // "Failed to write to /dev/nvme-fabrics: Input/output error"): recorded in the test guest.
      if (/Input\/output error/i.test(err))
        throw failedPrecondition(`${where} was refused: the subsystem does not exist or does not allow this node's host NQN ${this.cfg.hostNqn} (is the volume published to this node?)`);
      if (/No such file or directory/i.test(err) && /nvme-fabrics/.test(err)) throw failedPrecondition(`${where} failed: /dev/nvme-fabrics is missing; load the nvme-fabrics and nvme-tcp kernel modules`);
      if (e.timedOut) throw unavailable(`${where} timed out`);
      throw internal(`${where} failed (exit ${e.exitCode ?? 'signal'}): ${lastLine(err)}`);
    }
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const c = asNvme(ctx);
    const k = await this.nvme.namespaceDevice(c.nqn, c.nsid);
    return k ? this.sysfs.dev(k) : undefined;
  }

  /** Why a namespace device must not lose its controllers (mounted, or held), if it must not. */
  private async inUse(kernel: string): Promise<string | undefined> {
    const holders = await this.sysfs.list(`block/${kernel}/holders`);
    if (holders.length) return `${kernel} is held by ${holders.join(', ')}`;
    const at = await deviceMountPoint(this.cfg.mountInfoPath ?? '/proc/self/mountinfo', kernel, await this.sysfs.read(`block/${kernel}/dev`));
    return at !== undefined ? `${kernel} is mounted at ${at}` : undefined;
  }

  async disconnect(ctx: PublishContext): Promise<void> {
    const c = asNvme(ctx);
    await this.locks.run(c.nqn, () => this.disconnectLocked(c.nqn, c.nsid));
  }

  private async disconnectLocked(nqn: string, nsid: number): Promise<boolean> {
    const sub = await this.nvme.subsystem(nqn);
    const namespaces = await this.nvme.namespacesOf(nqn, sub);
    const mine = namespaces.find((n) => n.nsid === nsid);
    if (mine) {
      const busy = await this.inUse(mine.device);
      if (busy) throw failedPrecondition(`namespace ${nsid} of ${nqn}: ${busy}; not disconnecting`);
    }
    const others = namespaces.filter((n) => n.nsid !== nsid);
    if (others.length > 0) {
      this.log?.info({ nqn, nsid, others: others.map((o) => o.device) }, 'other namespaces of the subsystem are attached; keeping its controllers');
      return false;
    }
    const ctrls = this.ofSubsystem(await this.nvme.controllersOf(nqn, sub), nqn);
    for (const ctrl of ctrls) {
      // What `nvme disconnect -d` does; a controller already gone is success.
      await this.sysfs.write(`class/nvme/${ctrl.name}/delete_controller`, '1').catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw internal(`cannot delete NVMe controller ${ctrl.name} of ${nqn}: ${e.message}`);
      });
      this.log?.info({ nqn, controller: ctrl.name }, 'NVMe controller deleted');
    }
    // Gone: each deleted controller's directory, or its number now another subsystem's (the kernel reuses it at once).
    const stillThere = async (x: NvmeController) => (await this.sysfs.read(`class/nvme/${x.name}/subsysnqn`)) === nqn;
    const gone = await poll(async () => ((await Promise.all(ctrls.map(stillThere))).some(Boolean) ? undefined : true), {
      initialMs: 50,
      maxMs: 500,
      timeoutMs: this.cfg.removalTimeoutMs ?? 15_000,
      clock: this.clock,
    });
    if (!gone) throw unavailable(`the NVMe controllers of ${nqn} are still there after deleting them; retry`);
    return ctrls.length > 0;
  }

  /**
   * The target tells connected hosts when a namespace grows (nvmet's
   * revalidate_size raises a Namespace Attribute Changed event) and the kernel
   * rescans by itself; a rescan of each controller makes sure, for a host
   * that missed the event.
   */
  async rescan(ctx: PublishContext, _device: string): Promise<void> {
    const c = asNvme(ctx);
    const ctrls = this.ofSubsystem(await this.nvme.controllersOf(c.nqn), c.nqn).filter((x) => x.state === 'live');
    if (ctrls.length === 0) throw failedPrecondition(`no live NVMe controller of ${c.nqn} on this node to rescan; stage the volume again`);
    for (const ctrl of ctrls) await this.sysfs.write(`class/nvme/${ctrl.name}/rescan_controller`, '1').catch(() => undefined);
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const c = asNvme(ctx);
    const sub = await this.nvme.subsystem(c.nqn);
    const kernel = await this.nvme.namespaceDevice(c.nqn, c.nsid, sub);
    if (!kernel) return { abnormal: true, attached: false, message: `no NVMe controller of ${c.nqn} on this node shows namespace ${c.nsid} any more` };
    const ctrls = this.ofSubsystem(await this.nvme.controllersOf(c.nqn, sub), c.nqn);
    const down = ctrls.filter((x) => x.state !== 'live').map((x) => `${x.name} at ${x.traddr ?? '?'}:${x.trsvcid ?? '?'} is ${x.state}`);
    const found = this.sysfs.dev(kernel);
    const same = found === device || (await realpath(device).catch(() => device)) === (await realpath(found).catch(() => found));
    if (!same) return { abnormal: true, attached: false, message: `${device} no longer belongs to ${c.nqn}` };
    if (ctrls.length > 0 && down.length === ctrls.length)
      return {
        abnormal: true,
        attached: true,
        message: `every NVMe/TCP path to ${c.nqn} is down (${down.join('; ')}): I/O waits while the kernel reconnects and fails after ctrl_loss_tmo; check the network path to the portals and the target`,
      };
    if (down.length > 0) return { abnormal: true, attached: true, message: `${down.length} of ${ctrls.length} NVMe/TCP paths to ${c.nqn} are down (${down.join('; ')}); running degraded on the others` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }

  private ours(nqn: string): boolean {
    return (this.cfg.orphanNqnPrefixes ?? [DEFAULT_NQN_PREFIX]).some((p) => nqn.startsWith(p));
  }

  /** Every NVMe/TCP namespace device on this node, so start-up can report those no staged volume explains. */
  async attached(): Promise<{ device: string; source: string; notReleasable?: string }[]> {
    const tcp = new Set((await this.nvme.controllers()).filter((x) => x.transport === 'tcp').map((x) => x.subsysnqn));
    return (await this.nvme.namespaces())
      .filter((n) => tcp.has(n.nqn))
      .map((n) => {
        const base = { device: this.sysfs.dev(n.device), source: `${n.nqn} nsid ${n.nsid}` };
        return this.ours(n.nqn)
          ? base
          : {
              ...base,
              notReleasable: `its subsystem ${n.nqn} is not one of sinter's (node.orphanNqnPrefixes: ${(this.cfg.orphanNqnPrefixes ?? [DEFAULT_NQN_PREFIX]).join(', ')}), so sinter never disconnects it`,
            };
      });
  }

  /**
   * Start-up clean-up (node.orphanSessions: clean) of a namespace attached()
   * listed that no record explains and nothing uses: its subsystem's
   * controllers are deleted, unless a staged volume uses the subsystem or
   * another of its namespaces has a device. False when device is no longer
   * that namespace.
   */
  async release(device: string, source: string, inUse: PublishContext[]): Promise<boolean> {
    const m = SOURCE_RE.exec(source);
    if (!m) return false;
    const nqn = m[1]!;
    const nsid = Number(m[2]);
    if (!this.ours(nqn)) return false;
    if (inUse.some((c) => c.transport === 'nvmeof' && c.nqn === nqn)) return false;
    return this.locks.run(nqn, async () => {
      const kernel = await this.sysfs.kernelName(device);
      if (!kernel || (await this.nvme.namespaceDevice(nqn, nsid)) !== kernel) return false;
      return this.disconnectLocked(nqn, nsid);
    });
  }
}

function lastLine(s: string): string {
  return (s.trim().split('\n').filter(Boolean).pop() ?? '').slice(0, 300);
}

/** The error to report when every portal failed: the one the user can act on first. */
function worst(errors: DomainError[]): DomainError | undefined {
  const rank = (e: DomainError) => (e.code === Code.PERMISSION_DENIED ? 0 : e.code === Code.FAILED_PRECONDITION ? 1 : e.code === Code.INTERNAL ? 2 : 3);
  return [...errors].sort((a, b) => rank(a) - rank(b))[0];
}
