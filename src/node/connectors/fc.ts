import { readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import type { Logger } from 'pino';
import { normalizeWwpn } from '../../contracts/nodeid.js';
import { isLun, MAX_LUN, type PublishContext } from '../../contracts/publish-context.js';
import { Code, DomainError, failedPrecondition, invalidArgument, shown } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';
import type { Executor } from '../../exec/run.js';
import { doing } from '../host-errors.js';
import type { Connector, DeviceCondition } from './connector.js';
import { Multipath, type MultipathMap } from './multipath.js';
import { byPathLun, hctlString, ScsiDisks, type Hctl } from './scsi.js';
import { KERNEL_NAME_RE, type SysfsTree } from './sysfs.js';
import { poll } from '../../util/poll.js';

type FcContext = Extract<PublishContext, { transport: 'fc' }>;

const WWN_RE = /^[0-9a-f]{16}$/;
/** SAM flat-space LUNs; what arrays hand out and Linux scans by number. */

export interface FcConnectorOptions {
  sysfs: SysfsTree;
  /** How long connect keeps scanning and waiting for the LUN (and its multipath map). */
  scanTimeoutMs: number;
  /** How long disconnect waits for deleted paths to disappear. */
  removeTimeoutMs: number;
  /** First pause between scans; doubles up to maxBackoffMs. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Mount table for the in-use check before anything is removed. */
  mountInfoPath?: string;
  log?: Logger;
}

/** A remote port of an FC target as one HBA sees it. */
interface TargetPort {
  rport: string;
  wwn: string;
  host: number;
  channel: number;
  /** SCSI target id; -1 while the port is not (yet) a SCSI target. */
  target: number;
  online: boolean;
}

interface Path {
  disk: string;
  hctl: Hctl;
}

function asFc(ctx: PublishContext): FcContext {
  if (ctx.transport !== 'fc') throw new Error(`fc connector got a ${ctx.transport} context`);
  return ctx;
}

const describe = (ctx: FcContext) => `FC LUN ${ctx.lun} behind target WWN${ctx.wwns.length > 1 ? 's' : ''} ${ctx.wwns.join(', ')}`;

/** `0x21000024ff3a1b2c` → `21000024ff3a1b2c`; undefined unless it is a WWN. */
function wwnOf(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const w = normalizeWwpn(raw);
  return WWN_RE.test(w) ? w : undefined;
}

/**
 * The node's FC initiator port names (WWPNs) of online HBA ports, from
 * <sysfs>/class/fc_host/host*\/port_name and port_state. Synchronous: it is
 * read once at start for the node id.
 */
export function onlineInitiatorWwpns(sysRoot = '/sys'): string[] {
  const dir = posix.join(sysRoot, 'class/fc_host');
  let hosts: string[];
  try {
    hosts = readdirSync(dir).filter((h) => /^host\d+$/.test(h)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const h of hosts) {
    try {
      const state = readFileSync(posix.join(dir, h, 'port_state'), 'utf8').trim();
      const wwpn = wwnOf(readFileSync(posix.join(dir, h, 'port_name'), 'utf8'));
      if (state === 'Online' && wwpn && !out.includes(wwpn)) out.push(wwpn);
    } catch {
      // a port that vanished while we looked
    }
  }
  return out;
}

/**
 * The `fc` transport (Cinder's FibreChannelConnector): the LUN is reached
 * through the node's FC HBAs. Connect scans exactly the target ports and LUN
 * the publish_context names, with backoff until it appears, and hands out
 * the multipath map when several paths reach it (never one of its paths);
 * disconnect flushes and removes the map and deletes each path, touching
 * only devices that are this LUN and are not in use.
 */
export class FcConnector implements Connector {
  readonly transport = 'fc' as const;
  private readonly sysfs: SysfsTree;
  private readonly disks: ScsiDisks;
  readonly multipath: Multipath;
  private readonly locks = new KeyedLock();
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(
    exec: Executor,
    private readonly opts: FcConnectorOptions,
  ) {
    this.sysfs = opts.sysfs;
    this.disks = new ScsiDisks(this.sysfs);
    this.multipath = new Multipath(exec, this.sysfs, this.disks, opts.log, { mountInfoPath: opts.mountInfoPath });
    this.initialBackoffMs = opts.initialBackoffMs ?? 250;
    this.maxBackoffMs = opts.maxBackoffMs ?? 4000;
  }

  private lockKey(ctx: FcContext): string {
    return `fc:${[...ctx.wwns].sort().join(',')}:${ctx.lun}`;
  }

  private check(ctx: FcContext): void {
    for (const w of ctx.wwns)
      if (!WWN_RE.test(w)) throw invalidArgument(`publish_context.wwns entry ${shown(w)} is not a WWN (16 hex digits, optionally 0x-prefixed)`);
    if (!isLun(ctx.lun)) throw invalidArgument(`publish_context.lun ${ctx.lun} is above ${MAX_LUN}`);
  }

  /** Host numbers of the online FC HBA ports. */
  private async onlineHosts(): Promise<number[]> {
    const out: number[] = [];
    for (const h of await this.sysfs.list('class/fc_host')) {
      if (!/^host\d+$/.test(h)) continue;
      if ((await this.sysfs.read(`class/fc_host/${h}/port_state`)) === 'Online') out.push(Number(h.slice(4)));
    }
    return out.sort((a, b) => a - b);
  }

  async validate(ctx: PublishContext): Promise<void> {
    const fc = asFc(ctx);
    this.check(fc);
    if ((await this.onlineHosts()).length === 0)
      throw failedPrecondition(`${describe(fc)}: this node has no online FC HBA port (${this.sysfs.sys('class/fc_host')}); check the HBA, its driver and the link`);
  }

  /** Remote ports whose port_name is one of the target WWNs, on any HBA, in any state. */
  private async targetPorts(ctx: FcContext): Promise<TargetPort[]> {
    const want = new Set(ctx.wwns);
    const out: TargetPort[] = [];
    for (const r of await this.sysfs.list('class/fc_remote_ports')) {
      const m = /^rport-(\d+):(\d+)-(\d+)$/.exec(r);
      if (!m) continue;
      const wwn = wwnOf(await this.sysfs.read(`class/fc_remote_ports/${r}/port_name`));
      if (!wwn || !want.has(wwn)) continue;
      const t = Number((await this.sysfs.read(`class/fc_remote_ports/${r}/scsi_target_id`)) ?? '-1');
      const state = await this.sysfs.read(`class/fc_remote_ports/${r}/port_state`);
      out.push({ rport: r, wwn, host: Number(m[1]), channel: Number(m[2]), target: Number.isInteger(t) ? t : -1, online: state === 'Online' });
    }
    return out;
  }

  /**
   * Every disk on this node that is this LUN: the disks at the target ports'
   * addresses (sysfs HCTL), and the disks /dev/disk/by-path names for the
   * target WWNs and LUN whose address confirms them.
   */
  private async lunPaths(ctx: FcContext, ports: TargetPort[]): Promise<Path[]> {
    const found = new Map<string, Path>();
    const addrs = new Set(ports.filter((p) => p.target >= 0).map((p) => `${p.host}:${p.channel}:${p.target}`));
    for (const p of ports) {
      if (p.target < 0) continue;
      const hctl = { host: p.host, channel: p.channel, target: p.target, lun: ctx.lun };
      const disk = await this.disks.diskAt(hctl);
      if (disk) found.set(disk, { disk, hctl });
    }
    const lunPart = byPathLun(ctx.lun);
    const names = await this.sysfs.listDev('disk/by-path');
    for (const wwn of ctx.wwns) {
      const suffix = `-fc-0x${wwn}-${lunPart}`;
      for (const n of names) {
        if (!n.endsWith(suffix)) continue;
        const disk = await this.sysfs.devTarget(`disk/by-path/${n}`);
        if (!disk || found.has(disk)) continue;
        const hctl = await this.disks.hctlOf(disk);
        if (hctl && hctl.lun === ctx.lun && addrs.has(`${hctl.host}:${hctl.channel}:${hctl.target}`)) found.set(disk, { disk, hctl });
      }
    }
    return [...found.values()].sort((a, b) => (a.disk < b.disk ? -1 : 1));
  }

  /** Whether disk is this LUN: its address is one of the target ports' at this LUN. */
  private async isOurs(ctx: FcContext, disk: string, ports: TargetPort[]): Promise<boolean> {
    const h = await this.disks.hctlOf(disk);
    return h !== undefined && h.lun === ctx.lun && ports.some((p) => p.host === h.host && p.channel === h.channel && p.target === h.target);
  }

  /** The device to hand out for these paths, or why there is none yet. */
  private async resolve(ctx: FcContext, paths: Path[], expected: number, final: boolean): Promise<{ device?: string; waiting: string; map?: MultipathMap }> {
    const what = describe(ctx);
    const names = paths.map((p) => p.disk);
    if (paths.length === 0) return { waiting: 'no disk for it has appeared' };
    const choice = await this.multipath.choose(names, what);
    if (choice.kind === 'map') {
      if (choice.device) return { device: choice.device, map: choice.map, waiting: '' };
      return { waiting: `multipath map ${choice.map.name} (${choice.map.dm}) has no device node in ${this.sysfs.devRoot} yet` };
    }
    if (paths.length >= 2)
      return {
        waiting: `it is reached through ${paths.length} paths (${names.join(', ')}) but no multipath map holds them; is multipathd running (multipath-tools) and does its configuration accept this LUN?`,
      };
    const single = this.sysfs.dev(names[0]!);
    if (!(await this.sysfs.devExists(names[0]!))) return { waiting: `${single} has not been created yet (udev)` };
    // One path of several expected: wait for the others (and multipathd) until
    // the deadline, then use the one there is.
    if (expected > 1 && !final) return { waiting: `only ${names[0]} of ${expected} paths has appeared` };
    if (expected > 1) this.opts.log?.warn({ lun: ctx.lun, wwns: ctx.wwns, device: single, expected }, 'FC LUN reached through one path only; the others did not appear');
    return { device: single, waiting: '' };
  }

  async connect(ctx: PublishContext, _secrets?: Record<string, string>): Promise<string> {
    const fc = asFc(ctx);
    await this.validate(fc);
    return this.locks.run(this.lockKey(fc), async () => {
      const what = describe(fc);
      let scans = 0;
      const scannedHosts = new Set<number>();
      const device = await poll(
        async ({ final }) => {
          const hosts = new Set(await this.onlineHosts());
          const ports = await this.targetPorts(fc);
          const usable = ports.filter((p) => p.online && p.target >= 0 && hosts.has(p.host));
          const paths = await this.lunPaths(fc, ports);
          const r = await this.resolve(fc, paths, usable.length, final);
          if (r.device) return r.device;
          if (final) {
            const why = usable.length === 0 ? `no online remote port with ${fc.wwns.length > 1 ? 'these WWNs' : 'this WWN'} is logged in on any HBA (check zoning)` : r.waiting;
            const initiators = onlineInitiatorWwpns(this.sysfs.sysRoot);
            const scanned = scans > 0 ? `, ${scans} scan${scans > 1 ? 's' : ''} through ${[...scannedHosts].sort((a, b) => a - b).map((h) => `host${h}`).join(', ')}` : '';
            throw new DomainError(
              Code.DEADLINE_EXCEEDED,
              `${what} did not appear on this node within ${Math.round(this.opts.scanTimeoutMs / 100) / 10}s${scanned}: ${why}; check the zoning and the LUN masking for this node's WWPNs (${initiators.join(', ') || 'none online'})`,
            );
          }
          const have = new Set(paths.map((p) => `${p.hctl.host}:${p.hctl.channel}:${p.hctl.target}`));
          for (const p of usable) {
            if (have.has(`${p.host}:${p.channel}:${p.target}`)) continue;
            const hctl = { host: p.host, channel: p.channel, target: p.target, lun: fc.lun };
            await doing(`scanning ${hctlString(hctl)} for ${what}`, () => this.disks.scan(hctl));
            scans++;
            scannedHosts.add(p.host);
          }
          return undefined;
        },
        { initialMs: this.initialBackoffMs, maxMs: this.maxBackoffMs, minSleepMs: 1, timeoutMs: this.opts.scanTimeoutMs },
      );
      return device!;
    });
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const fc = asFc(ctx);
    if (fc.wwns.some((w) => !WWN_RE.test(w))) return undefined;
    const ports = await this.targetPorts(fc);
    const paths = await this.lunPaths(fc, ports);
    const r = await this.resolve(fc, paths, 1, true).catch(() => undefined);
    return r?.device;
  }

  async disconnect(ctx: PublishContext, device?: string): Promise<void> {
    const fc = asFc(ctx);
    this.check(fc);
    await this.locks.run(this.lockKey(fc), async () => {
      const what = describe(fc);
      const ports = await this.targetPorts(fc);
      const paths = new Map((await this.lunPaths(fc, ports)).map((p) => [p.disk, p.hctl] as const));
      const maps = new Map<string, MultipathMap>();
      // The map recorded at connect, if it is still this LUN's (after a reboot
      // the same dm name may be another map).
      const recorded = device ? await this.multipath.mapOfDevice(device) : undefined;
      if (recorded) {
        const ours = [];
        for (const s of recorded.slaves) if (paths.has(s) || (await this.isOurs(fc, s, ports))) ours.push(s);
        if (ours.length > 0 && ours.length === recorded.slaves.length) maps.set(recorded.dm, recorded);
        else
          this.opts.log?.warn(
            { device, map: recorded.name, slaves: recorded.slaves },
            recorded.slaves.length ? 'recorded multipath device is no longer this LUN; leaving it' : 'recorded multipath device has no paths left, so it cannot be told to be this LUN; leaving it',
          );
      }
      for (const disk of paths.keys()) {
        for (const h of await this.disks.holders(disk)) {
          const m = await this.multipath.map(h);
          if (!m) throw failedPrecondition(`${what}: path ${disk} is held by ${h}, which is not a multipath map; sinter will not remove it`);
          maps.set(m.dm, m);
        }
      }
      for (const m of maps.values()) {
        for (const s of m.slaves) {
          if (paths.has(s)) continue;
          const h = await this.disks.hctlOf(s);
          if (!h || !(await this.isOurs(fc, s, ports)))
            throw failedPrecondition(`${what}: multipath map ${m.name} also holds ${s}, which is not this LUN; sinter will not remove it`);
          paths.set(s, h);
        }
      }
      await this.multipath.removeLun([...maps.values()], [...paths.keys()], what, this.opts.removeTimeoutMs);
    });
  }

  async rescan(ctx: PublishContext, device: string): Promise<void> {
    const fc = asFc(ctx);
    await this.locks.run(this.lockKey(fc), async () => {
      const what = describe(fc);
      const ports = await this.targetPorts(fc);
      const paths = await this.lunPaths(fc, ports);
      const map = await this.multipath.mapOfDevice(device);
      const disks = new Set(paths.map((p) => p.disk));
      if (map) for (const s of map.slaves) if (await this.isOurs(fc, s, ports)) disks.add(s);
      if (disks.size === 0) throw failedPrecondition(`${what} has no path on this node to rescan; stage it again`);
      await this.multipath.growLun(map, [...disks], what);
    });
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const fc = asFc(ctx);
    const kernel = await this.sysfs.kernelName(device);
    if (!kernel) return { abnormal: true, attached: false, message: `${device} no longer exists` };
    const ports = await this.targetPorts(fc);
    let paths: string[];
    if (kernel.startsWith('dm-')) {
      const map = await this.multipath.map(kernel);
      if (!map) return { abnormal: true, attached: false, message: `${device} is no longer a multipath map` };
      paths = map.slaves;
      const ours = [];
      for (const s of paths) if (await this.isOurs(fc, s, ports)) ours.push(s);
      if (paths.length > 0 && ours.length === 0) return { abnormal: true, attached: false, message: `${device} is now another LUN` };
    } else {
      if (!KERNEL_NAME_RE.test(kernel) || !(await this.isOurs(fc, kernel, ports))) return { abnormal: true, attached: false, message: `${device} is no longer ${describe(fc)}` };
      paths = [kernel];
    }
    if (paths.length === 0) return { abnormal: true, attached: true, message: `${device} has no paths left to ${describe(fc)}` };
    const down: string[] = [];
    for (const p of paths) {
      const s = (await this.disks.state(p)) ?? 'gone';
      if (s !== 'running') down.push(`${p}: ${s}`);
    }
    if (down.length === paths.length) return { abnormal: true, attached: true, message: `no path to ${describe(fc)} is running (${down.join(', ')})` };
    if (down.length) return { abnormal: true, attached: true, message: `${down.length} of ${paths.length} paths to ${describe(fc)} are down (${down.join(', ')}); running degraded` };
    return { abnormal: false, attached: true, message: `attached as ${device} through ${paths.length} path${paths.length > 1 ? 's' : ''}` };
  }
}
