import type { SysfsTree } from './sysfs.js';

/**
 * What the kernel's NVMe host driver shows in sysfs (drivers/nvme/host/core.c
 * and multipath.c, Linux 6.1; the layout recorded in the test guest is in
 * test/fixtures/nvme/):
 *
 *   class/nvme/nvmeN/{subsysnqn,transport,address,state,hostnqn,delete_controller,rescan_controller}
 *     address: `traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1` (tcp)
 *     state: new | live | resetting | connecting | deleting | deleting (noio) | dead
 *   class/nvme-subsystem/nvme-subsysK/{subsysnqn, nvmeN → controller, nvmeKnY/}
 *     with native multipath (nvme_core.multipath=Y, Debian's default) the
 *     namespace's one block device nvmeKnY lives here, over every path;
 *     the per-path devices nvmeKcNnY are hidden
 *   class/nvme/nvmeN/nvmeNnY/ without native multipath: one device per controller
 *   block/<ns>/{nsid,size,dev,holders/}
 */
export interface NvmeController {
  /** `nvme0` */
  name: string;
  subsysnqn: string;
  transport: string;
  traddr?: string;
  trsvcid?: string;
  state: string;
  hostnqn?: string;
}

export interface NvmeNamespace {
  /** Kernel name of the block device to use: the multipath head `nvme0n1`, or the only path's. */
  device: string;
  nqn: string;
  nsid: number;
}

const CTRL_RE = /^nvme\d+$/;
/** A namespace block device (head or single path), not a hidden path device (`nvme0c1n1`) nor a char device (`ng0n1`). */
const NS_RE = /^nvme\d+n\d+$/;

/** `traddr=…,trsvcid=…,src_addr=…` → its fields. */
export function parseNvmeAddress(address: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of address.split(',')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

/** Whether a controller's traddr/trsvcid is this portal (`host:port`, `[v6]:port`). */
export function controllerAt(c: NvmeController, host: string, port: number): boolean {
  return c.traddr !== undefined && c.traddr.toLowerCase() === host.toLowerCase() && c.trsvcid === String(port);
}

/** One subsystem as its sysfs directory lists it: its controllers (`nvme0`) and, with native multipath, its namespace heads (`nvme0n1`). */
export interface NvmeSubsystem {
  /** `nvme-subsys0` */
  name: string;
  nqn: string;
  controllers: string[];
  heads: string[];
}

const SUBSYS_DIR = 'class/nvme-subsystem';
const SUBSYS_RE = /^nvme-subsys\d+$/;
/** Reads of subsystems' NQNs in flight at once during a scan. */
const SCAN_BATCH = 32;

/**
 * Lookups by subsystem NQN cost O(1) sysfs reads however many subsystems the
 * node has: an index (subsystem name ↔ NQN) remembers where each NQN was
 * last seen, and every use re-checks the remembered subsystem against its NQN
 * (the kernel reuses instance numbers: nvme-subsysK and nvmeN of a subsystem
 * that went are given to the next one connected). Only a lookup that misses
 * reads other subsystems' NQNs, those that appeared since the last scan
 * first, and proves an NQN absent by reading every subsystem's NQN (one small
 * file each, never the controllers' attributes).
 */
export class NvmeSysfs {
  /** Subsystem name → the NQN it had when last read. */
  private readonly byName = new Map<string, string>();
  /** NQN → the subsystem name it was last seen under. */
  private readonly byNqn = new Map<string, string>();
  /** class/nvme-subsystem seen (kernels since 4.15 have it while nvme-core is loaded, and nvme-core stays while anything uses it). */
  private subsysClass = false;

  constructor(private readonly sysfs: SysfsTree) {}

  private remember(name: string, nqn: string | undefined): void {
    const old = this.byName.get(name);
    if (old !== undefined && this.byNqn.get(old) === name) this.byNqn.delete(old);
    if (nqn === undefined) {
      this.byName.delete(name);
      return;
    }
    this.byName.set(name, nqn);
    this.byNqn.set(nqn, name);
  }

  /** The subsystem `name` if it (still) is `nqn`'s; the index learns what it is now either way. */
  private async open(name: string, nqn: string): Promise<NvmeSubsystem | undefined> {
    const dir = `${SUBSYS_DIR}/${name}`;
    // Listed before its NQN is read: a subsystem replaced in between shows the new NQN, so the listing is never taken for the old one's.
    const entries = await this.sysfs.list(dir);
    const now = await this.sysfs.read(`${dir}/subsysnqn`);
    this.remember(name, now || undefined);
    if (now !== nqn) return undefined;
    return { name, nqn, controllers: entries.filter((e) => CTRL_RE.test(e)), heads: entries.filter((e) => NS_RE.test(e)) };
  }

  /** Reads the NQN of each named subsystem into the index; the one that is `nqn`, if any. */
  private async scan(names: string[], nqn: string): Promise<string | undefined> {
    let found: string | undefined;
    for (let i = 0; i < names.length; i += SCAN_BATCH) {
      const batch = names.slice(i, i + SCAN_BATCH);
      const nqns = await Promise.all(batch.map((n) => this.sysfs.read(`${SUBSYS_DIR}/${n}/subsysnqn`)));
      batch.forEach((n, j) => {
        this.remember(n, nqns[j] || undefined);
        if (nqns[j] === nqn) found ??= n;
      });
    }
    return found;
  }

  /**
   * The subsystem whose NQN is `nqn`, or null when the node has none:
   * the remembered one when it still is nqn's (two reads), else the ones that
   * appeared since the last look, else every other one.
   *
   * `scope: 'new'` stops before the last step, so its cost does not grow with
   * the subsystems the index already knows. Its null is not proof of absence:
   * a subsystem that took the number of one the index knows under another NQN
   * (the other went and this one came between two looks, outside this
   * process) is not found. Only a caller that learns the rest another way may
   * use it: attach, which connects next and hears "already connected" from
   * nvme-cli when a controller to that portal exists.
   */
  async subsystem(nqn: string, scope: 'all' | 'new' = 'all'): Promise<NvmeSubsystem | null> {
    const cached = this.byNqn.get(nqn);
    if (cached !== undefined) {
      const s = await this.open(cached, nqn);
      if (s) return s;
    }
    const names = (await this.sysfs.list(SUBSYS_DIR)).filter((n) => SUBSYS_RE.test(n));
    const present = new Set(names);
    for (const n of [...this.byName.keys()]) if (!present.has(n)) this.remember(n, undefined);
    const others = names.filter((n) => n !== cached);
    const passes = [others.filter((n) => !this.byName.has(n))];
    if (scope === 'all') passes.push(others.filter((n) => this.byName.has(n)));
    for (const pass of passes) {
      const hit = await this.scan(pass, nqn);
      if (hit === undefined) continue;
      const s = await this.open(hit, nqn);
      if (s) return s;
    }
    return null;
  }

  /** Whether the kernel shows subsystems (class/nvme-subsystem); older ones only controllers. */
  private async bySubsystem(): Promise<boolean> {
    this.subsysClass ||= await this.sysfs.exists(SUBSYS_DIR);
    return this.subsysClass;
  }

  /** A controller's attributes, if it still exists. */
  async controller(name: string): Promise<NvmeController | undefined> {
    if (!CTRL_RE.test(name)) return undefined;
    const dir = `class/nvme/${name}`;
    const subsysnqn = await this.sysfs.read(`${dir}/subsysnqn`);
    if (!subsysnqn) return undefined;
    const addr = parseNvmeAddress((await this.sysfs.read(`${dir}/address`)) ?? '');
    const hostnqn = await this.sysfs.read(`${dir}/hostnqn`);
    return {
      name,
      subsysnqn,
      transport: (await this.sysfs.read(`${dir}/transport`)) ?? '',
      ...(addr.traddr !== undefined ? { traddr: addr.traddr } : {}),
      ...(addr.trsvcid !== undefined ? { trsvcid: addr.trsvcid } : {}),
      state: (await this.sysfs.read(`${dir}/state`)) ?? 'unknown',
      ...(hostnqn ? { hostnqn } : {}),
    };
  }

  /**
   * The controllers of subsystem `nqn` (O(paths) reads). A controller the
   * subsystem still links but that went (its link outlives it a moment), or
   * whose number another subsystem's controller took since, is left out.
   * `sub`: what subsystem(nqn) just answered, so it is not asked again.
   */
  async controllersOf(nqn: string, sub?: NvmeSubsystem | null): Promise<NvmeController[]> {
    if (!(await this.bySubsystem())) return (await this.controllers()).filter((c) => c.subsysnqn === nqn);
    const s = sub === undefined ? await this.subsystem(nqn) : sub;
    if (!s) return [];
    const out: NvmeController[] = [];
    for (const name of s.controllers) {
      const c = await this.controller(name);
      if (c && c.subsysnqn === nqn) out.push(c);
    }
    return out;
  }

  /** Every controller of the node (start-up's orphan scan; reads 5 attributes of each). */
  async controllers(): Promise<NvmeController[]> {
    const out: NvmeController[] = [];
    for (const name of await this.sysfs.list('class/nvme')) {
      const c = await this.controller(name);
      if (c) out.push(c);
    }
    return out;
  }

  private async addNamespaces(out: Map<string, NvmeNamespace>, dir: string, nqn: string, entries?: string[]): Promise<void> {
    for (const e of entries ?? (await this.sysfs.list(dir))) {
      if (!NS_RE.test(e)) continue;
      const nsid = Number(await this.sysfs.read(`${dir}/${e}/nsid`));
      if (Number.isInteger(nsid) && nsid > 0 && !out.has(e)) out.set(e, { device: e, nqn, nsid });
    }
  }

  /**
   * The namespace block devices of subsystem `nqn` (O(namespaces + paths)
   * reads): with native multipath the heads under the subsystem, without it
   * one device under each controller.
   */
  async namespacesOf(nqn: string, sub?: NvmeSubsystem | null): Promise<NvmeNamespace[]> {
    if (!(await this.bySubsystem())) return (await this.namespaces()).filter((n) => n.nqn === nqn);
    const s = sub === undefined ? await this.subsystem(nqn) : sub;
    if (!s) return [];
    const out = new Map<string, NvmeNamespace>();
    await this.addNamespaces(out, `${SUBSYS_DIR}/${s.name}`, nqn, s.heads);
    for (const c of s.controllers) {
      const dir = `class/nvme/${c}`;
      const entries = (await this.sysfs.list(dir)).filter((e) => NS_RE.test(e));
      // A controller number another subsystem took since the link was made shows that subsystem's devices.
      if (entries.length > 0 && (await this.sysfs.read(`${dir}/subsysnqn`)) === nqn) await this.addNamespaces(out, dir, nqn, entries);
    }
    return [...out.values()];
  }

  /** Every namespace block device of fabrics controllers, by subsystem NQN and nsid (start-up's orphan scan). */
  async namespaces(): Promise<NvmeNamespace[]> {
    const out = new Map<string, NvmeNamespace>();
    // Native multipath: the head devices under the subsystem.
    for (const s of await this.sysfs.list(SUBSYS_DIR)) {
      const nqn = await this.sysfs.read(`${SUBSYS_DIR}/${s}/subsysnqn`);
      if (nqn) await this.addNamespaces(out, `${SUBSYS_DIR}/${s}`, nqn);
    }
    // Without it: one device under each controller.
    for (const c of await this.controllers()) await this.addNamespaces(out, `class/nvme/${c.name}`, c.subsysnqn);
    return [...out.values()];
  }

  /** The block device (kernel name) of namespace `nsid` of subsystem `nqn`, if the kernel shows one. */
  async namespaceDevice(nqn: string, nsid: number, sub?: NvmeSubsystem | null): Promise<string | undefined> {
    return (await this.namespacesOf(nqn, sub)).find((n) => n.nsid === nsid)?.device;
  }
}
