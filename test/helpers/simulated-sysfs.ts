import { lstat, mkdir, readdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { execa } from 'execa';
import { ExecError, HostExecutor, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { deviceMajMin } from '../../src/node/context.js';
import { SysfsTree } from '../../src/node/connectors/sysfs.js';

/**
 * A simulated FC SAN for the node's connector tests: a fake sysfs tree and a
 * fake /dev tree in a temp directory, whose block device nodes are made with
 * mknod from REAL loop devices, so formatting, mounting and growing are real
 * while discovery, scan writes, multipath choice and device deletion are
 * checked against the tree.
 *
 * The "kernel" is this class: SysfsTree's write hook hands it every write the
 * connector makes (scan, delete, rescan), and SimExecutor hands it the
 * multipath / multipathd commands (multipath-tools is not installed here, and
 * its maps are fake). Each path and each multipath map has its own loop device
 * over the LUN's one image file, so a map's size only changes when
 * `multipathd resize map` runs, as on a real host.
 *
 * Layout (relative to sys/ and dev/):
 *   class/fc_host/hostH/{port_name,port_state}
 *   class/fc_remote_ports/rport-H:C-N/{port_name,port_state,scsi_target_id}
 *   class/scsi_host/hostH/scan
 *   bus/scsi/devices/H:C:T:L/{delete,rescan,state,wwid,block/sdX/}
 *   block/sdX/{device → ../../bus/scsi/devices/H:C:T:L, dev, holders/}
 *   block/dm-N/{dev, dm/name, dm/uuid, slaves/sdX → ../../sdX, holders/}
 *   dev/sdX, dev/dm-N (block nodes), dev/mapper/NAME → ../dm-N,
 *   dev/disk/by-path/pci-0000:05:00.0-fc-0xWWN-lun-L → ../../sdX
 */

export interface Lun {
  name: string;
  image: string;
  wwid: string;
}

export interface DiskSpec {
  disk: string;
  host: number;
  channel: number;
  target: number;
  lun: number;
  /** The target port WWN (for the by-path link). */
  wwn: string;
  image: Lun;
  state?: string;
}

interface Pending extends DiskSpec {
  /** The disk appears on this scan of its host/channel/target/LUN (1 = the first). */
  afterScans: number;
}

interface Disk extends DiskSpec {
  loop: string;
  byPath: string;
}

interface MapRec {
  dm: string;
  name: string;
  lun: Lun;
  loop: string;
  slaves: string[];
}

export class SimulatedSan {
  readonly sysfs: SysfsTree;
  /** Every sysfs write the connector made, in order (path relative to sys/, value). */
  readonly writes: { path: string; value: string }[] = [];
  /** multipath / multipathd command lines the connector ran. */
  readonly commands: string[] = [];
  /** Create a multipath map as soon as two paths of one LUN exist (what multipathd does). */
  multipathd = false;
  /** Delay before a deleted path disappears, like the kernel's asynchronous removal. */
  deleteDelayMs = 30;
  readonly disks = new Map<string, Disk>();
  readonly maps = new Map<string, MapRec>();
  private readonly pending: Pending[] = [];
  private readonly scans = new Map<string, number>();
  private readonly loops = new Set<string>();
  private nextDm = 0;
  private readonly timers = new Set<NodeJS.Timeout>();

  private constructor(
    readonly root: string,
    readonly sys: string,
    readonly dev: string,
  ) {
    this.sysfs = new SysfsTree(sys, dev, (path, value) => this.onWrite(path, value));
  }

  static async create(root: string): Promise<SimulatedSan> {
    const san = new SimulatedSan(root, join(root, 'sys'), join(root, 'dev'));
    for (const d of ['class/fc_host', 'class/fc_remote_ports', 'class/scsi_host', 'bus/scsi/devices', 'block']) await mkdir(join(san.sys, d), { recursive: true });
    for (const d of ['disk/by-path', 'mapper']) await mkdir(join(san.dev, d), { recursive: true });
    await mkdir(join(root, 'luns'), { recursive: true });
    return san;
  }

  private async attr(rel: string, value: string): Promise<void> {
    await mkdir(posix.dirname(join(this.sys, rel)), { recursive: true });
    await writeFile(join(this.sys, rel), `${value}\n`);
  }

  async addHba(host: number, wwpn: string, state = 'Online'): Promise<void> {
    await this.attr(`class/fc_host/host${host}/port_name`, `0x${wwpn}`);
    await this.attr(`class/fc_host/host${host}/port_state`, state);
    await this.attr(`class/scsi_host/host${host}/scan`, '');
  }

  async addRemotePort(host: number, channel: number, index: number, target: number, wwn: string, state = 'Online'): Promise<void> {
    const dir = `class/fc_remote_ports/rport-${host}:${channel}-${index}`;
    await this.attr(`${dir}/port_name`, `0x${wwn}`);
    await this.attr(`${dir}/port_state`, state);
    await this.attr(`${dir}/scsi_target_id`, String(target));
  }

  /** A LUN on the array: one sparse image file all its paths share. */
  async lun(name: string, bytes: number, wwid: string): Promise<Lun> {
    const image = join(this.root, 'luns', `${name}.img`);
    await execa('truncate', ['-s', String(bytes), image]);
    return { name, image, wwid };
  }

  async grow(lun: Lun, bytes: number): Promise<void> {
    await execa('truncate', ['-s', String(bytes), lun.image]);
  }

  private async newLoop(image: string): Promise<string> {
    const loop = (await execa('losetup', ['--find', '--show', image])).stdout.trim();
    this.loops.add(loop);
    return loop;
  }

  private async releaseLoop(loop: string): Promise<void> {
    await execa('losetup', ['-d', loop]).catch(() => undefined);
    this.loops.delete(loop);
  }

  private async mknod(path: string, loop: string): Promise<string> {
    const mm = await deviceMajMin(loop);
    if (!mm) throw new Error(`${loop} is not a block device`);
    const [maj, min] = mm.split(':');
    await execa('mknod', [path, 'b', maj, min]);
    return mm;
  }

  hctl(s: Pick<DiskSpec, 'host' | 'channel' | 'target' | 'lun'>): string {
    return `${s.host}:${s.channel}:${s.target}:${s.lun}`;
  }

  /** A path to a LUN that the kernel already knows (found at boot). */
  async addDisk(spec: DiskSpec): Promise<void> {
    const loop = await this.newLoop(spec.image.image);
    const h = this.hctl(spec);
    await this.attr(`bus/scsi/devices/${h}/state`, spec.state ?? 'running');
    await this.attr(`bus/scsi/devices/${h}/wwid`, spec.image.wwid);
    await this.attr(`bus/scsi/devices/${h}/delete`, '');
    await this.attr(`bus/scsi/devices/${h}/rescan`, '');
    await mkdir(join(this.sys, `bus/scsi/devices/${h}/block/${spec.disk}`), { recursive: true });
    await mkdir(join(this.sys, `block/${spec.disk}/holders`), { recursive: true });
    await symlink(`../../bus/scsi/devices/${h}`, join(this.sys, `block/${spec.disk}/device`));
    const mm = await this.mknod(join(this.dev, spec.disk), loop);
    await this.attr(`block/${spec.disk}/dev`, mm);
    const byPath = `pci-0000:05:00.${spec.host}-fc-0x${spec.wwn}-lun-${spec.lun}`;
    await symlink(`../../${spec.disk}`, join(this.dev, 'disk/by-path', byPath));
    this.disks.set(spec.disk, { ...spec, loop, byPath });
    if (this.multipathd) await this.multipathdReacts(spec.image);
  }

  /** A path that appears only when its host is scanned for it, on the given scan (1 = first). */
  presentOnScan(spec: DiskSpec, afterScans = 1): void {
    this.pending.push({ ...spec, afterScans });
  }

  async setPathState(disk: string, state: string): Promise<void> {
    const d = this.disks.get(disk)!;
    await this.attr(`bus/scsi/devices/${this.hctl(d)}/state`, state);
  }

  /** A multipath map over existing paths (what multipathd makes). */
  async addMap(name: string, lun: Lun, slaves: string[]): Promise<string> {
    const dm = `dm-${this.nextDm++}`;
    const loop = await this.newLoop(lun.image);
    await this.attr(`block/${dm}/dm/name`, name);
    await this.attr(`block/${dm}/dm/uuid`, `mpath-3${lun.wwid.replace(/^naa\./, '')}`);
    await mkdir(join(this.sys, `block/${dm}/holders`), { recursive: true });
    await mkdir(join(this.sys, `block/${dm}/slaves`), { recursive: true });
    for (const s of slaves) {
      await symlink(`../../${s}`, join(this.sys, `block/${dm}/slaves/${s}`));
      await symlink(`../../${dm}`, join(this.sys, `block/${s}/holders/${dm}`));
    }
    const mm = await this.mknod(join(this.dev, dm), loop);
    await this.attr(`block/${dm}/dev`, mm);
    await symlink(`../${dm}`, join(this.dev, 'mapper', name));
    this.maps.set(name, { dm, name, lun, loop, slaves: [...slaves] });
    return dm;
  }

  /** A device-mapper device that is not multipath (an LVM volume) holding a path. */
  async addForeignHolder(dm: string, over: string): Promise<void> {
    await this.attr(`block/${dm}/dm/name`, 'vg0-lv0');
    await this.attr(`block/${dm}/dm/uuid`, 'LVM-abcdef');
    await mkdir(join(this.sys, `block/${dm}/slaves`), { recursive: true });
    await symlink(`../../${over}`, join(this.sys, `block/${dm}/slaves/${over}`));
    await symlink(`../../${dm}`, join(this.sys, `block/${over}/holders/${dm}`));
  }

  private async multipathdReacts(lun: Lun): Promise<void> {
    const paths = [...this.disks.values()].filter((d) => d.image === lun).map((d) => d.disk);
    const existing = [...this.maps.values()].find((m) => m.lun === lun);
    if (existing) {
      for (const p of paths) {
        if (existing.slaves.includes(p)) continue;
        await symlink(`../../${p}`, join(this.sys, `block/${existing.dm}/slaves/${p}`));
        await symlink(`../../${existing.dm}`, join(this.sys, `block/${p}/holders/${existing.dm}`));
        existing.slaves.push(p);
      }
    } else if (paths.length >= 2) {
      await this.addMap(`mpath${String.fromCharCode(97 + this.maps.size)}`, lun, paths);
    }
  }

  /** Scan writes to a host, as "C T L" strings. */
  scansOf(host: number): string[] {
    return this.writes.filter((w) => w.path === `class/scsi_host/host${host}/scan`).map((w) => w.value);
  }

  /** Disks the connector wrote "1" to device/delete of (or rescan). */
  writtenTo(attr: 'delete' | 'rescan'): string[] {
    return this.writes.filter((w) => w.path.endsWith(`/device/${attr}`)).map((w) => w.path.split('/')[1]);
  }

  private async onWrite(full: string, value: string): Promise<void> {
    const rel = posix.relative(this.sys, full);
    this.writes.push({ path: rel, value });
    let m = /^class\/scsi_host\/host(\d+)\/scan$/.exec(rel);
    if (m) {
      const host = Number(m[1]);
      const [c, t, l] = value.trim().split(/\s+/);
      const key = `${host}:${c}:${t}:${l}`;
      const n = (this.scans.get(key) ?? 0) + 1;
      this.scans.set(key, n);
      for (const p of [...this.pending]) {
        const hit = p.host === host && (c === '-' || Number(c) === p.channel) && (t === '-' || Number(t) === p.target) && (l === '-' || Number(l) === p.lun);
        if (hit && n >= p.afterScans) {
          this.pending.splice(this.pending.indexOf(p), 1);
          await this.addDisk(p);
        }
      }
      return;
    }
    m = /^block\/([a-z0-9-]+)\/device\/(delete|rescan)$/.exec(rel);
    if (m && value.trim() === '1') {
      const d = this.disks.get(m[1]);
      if (!d) return;
      if (m[2] === 'rescan') {
        await execa('losetup', ['--set-capacity', d.loop]);
        return;
      }
      const t = setTimeout(() => {
        this.timers.delete(t);
        void this.removeDisk(d);
      }, this.deleteDelayMs);
      this.timers.add(t);
    }
  }

  private async removeDisk(d: Disk): Promise<void> {
    for (const m of this.maps.values()) {
      if (!m.slaves.includes(d.disk)) continue;
      m.slaves = m.slaves.filter((s) => s !== d.disk);
      await rm(join(this.sys, `block/${m.dm}/slaves/${d.disk}`), { force: true });
    }
    await rm(join(this.sys, `block/${d.disk}`), { recursive: true, force: true });
    await rm(join(this.sys, `bus/scsi/devices/${this.hctl(d)}`), { recursive: true, force: true });
    await rm(join(this.dev, d.disk), { force: true });
    await rm(join(this.dev, 'disk/by-path', d.byPath), { force: true });
    await this.releaseLoop(d.loop);
    this.disks.delete(d.disk);
  }

  /** `multipath -f NAME` and `multipathd resize map NAME`, played against the fake maps. */
  async command(cmd: string, args: string[]): Promise<ExecResult> {
    this.commands.push([cmd, ...args].join(' '));
    if (cmd === 'multipath' && args[0] === '-f') {
      const m = this.maps.get(args[1]);
      if (!m) throw new ExecError(`multipath -f ${args[1]}`, 1, `${args[1]}: no such map`, false);
      const mm = await deviceMajMin(join(this.dev, m.dm));
      const mounts = (await execa('cat', ['/proc/self/mountinfo'])).stdout.split('\n').filter((l) => l.split(' ')[2] === mm);
      if (mounts.length) throw new ExecError(`multipath -f ${args[1]}`, 1, `${args[1]}: map in use`, false);
      for (const s of m.slaves) await rm(join(this.sys, `block/${s}/holders/${m.dm}`), { force: true });
      await rm(join(this.sys, `block/${m.dm}`), { recursive: true, force: true });
      await rm(join(this.dev, m.dm), { force: true });
      await rm(join(this.dev, 'mapper', m.name), { force: true });
      await this.releaseLoop(m.loop);
      this.maps.delete(m.name);
      return { stdout: '', stderr: '', exitCode: 0 };
    }
    if (cmd === 'multipathd' && args[0] === 'resize' && args[1] === 'map') {
      const m = this.maps.get(args[2]);
      if (!m) throw new ExecError(`multipathd resize map ${args[2]}`, 1, 'fail', false);
      await execa('losetup', ['--set-capacity', m.loop]);
      return { stdout: 'ok\n', stderr: '', exitCode: 0 };
    }
    throw new ExecError([cmd, ...args].join(' '), 1, 'unexpected command in the simulated SAN', false);
  }

  /** Whether the path still exists anywhere in the tree (sysfs or dev). */
  async pathExists(disk: string): Promise<boolean> {
    for (const p of [join(this.sys, 'block', disk), join(this.dev, disk)]) {
      try {
        await lstat(p);
        return true;
      } catch {
        // gone
      }
    }
    return false;
  }

  async byPathLinks(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const n of await readdir(join(this.dev, 'disk/by-path'))) out[n] = await readlink(join(this.dev, 'disk/by-path', n));
    return out;
  }

  /** Detaches every loop device the simulation made and removes the tree. */
  async cleanup(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const loop of [...this.loops]) await this.releaseLoop(loop);
    await rm(this.root, { recursive: true, force: true });
  }
}

/** Runs host commands for real, except multipath-tools', which the simulated SAN answers. */
export class SimExecutor implements Executor {
  private readonly real = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 120_000 });

  constructor(private readonly san: SimulatedSan) {}

  run(cmd: string, args: string[], opts?: ExecOptions): Promise<ExecResult> {
    if (cmd === 'multipath' || cmd === 'multipathd') return this.san.command(cmd, args);
    return this.real.run(cmd, args, opts);
  }
}
