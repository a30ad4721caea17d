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

export class NvmeSysfs {
  constructor(private readonly sysfs: SysfsTree) {}

  async controllers(): Promise<NvmeController[]> {
    const out: NvmeController[] = [];
    for (const name of await this.sysfs.list('class/nvme')) {
      if (!CTRL_RE.test(name)) continue;
      const dir = `class/nvme/${name}`;
      const subsysnqn = await this.sysfs.read(`${dir}/subsysnqn`);
      if (!subsysnqn) continue;
      const addr = parseNvmeAddress((await this.sysfs.read(`${dir}/address`)) ?? '');
      const hostnqn = await this.sysfs.read(`${dir}/hostnqn`);
      out.push({
        name,
        subsysnqn,
        transport: (await this.sysfs.read(`${dir}/transport`)) ?? '',
        ...(addr.traddr !== undefined ? { traddr: addr.traddr } : {}),
        ...(addr.trsvcid !== undefined ? { trsvcid: addr.trsvcid } : {}),
        state: (await this.sysfs.read(`${dir}/state`)) ?? 'unknown',
        ...(hostnqn ? { hostnqn } : {}),
      });
    }
    return out;
  }

  /** Every namespace block device of fabrics controllers, by subsystem NQN and nsid. */
  async namespaces(): Promise<NvmeNamespace[]> {
    const out = new Map<string, NvmeNamespace>();
    const add = async (dir: string, nqn: string) => {
      for (const e of await this.sysfs.list(dir)) {
        if (!NS_RE.test(e)) continue;
        const nsid = Number(await this.sysfs.read(`${dir}/${e}/nsid`));
        if (Number.isInteger(nsid) && nsid > 0 && !out.has(e)) out.set(e, { device: e, nqn, nsid });
      }
    };
    // Native multipath: the head devices under the subsystem.
    for (const s of await this.sysfs.list('class/nvme-subsystem')) {
      const nqn = await this.sysfs.read(`class/nvme-subsystem/${s}/subsysnqn`);
      if (nqn) await add(`class/nvme-subsystem/${s}`, nqn);
    }
    // Without it: one device under each controller.
    for (const c of await this.controllers()) await add(`class/nvme/${c.name}`, c.subsysnqn);
    return [...out.values()];
  }

  /** The block device (kernel name) of namespace `nsid` of subsystem `nqn`, if the kernel shows one. */
  async namespaceDevice(nqn: string, nsid: number): Promise<string | undefined> {
    return (await this.namespaces()).find((n) => n.nqn === nqn && n.nsid === nsid)?.device;
  }
}
