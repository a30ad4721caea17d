import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

/**
 * Two "hosts" on one machine for multi-node tests: two network namespaces
 * joined by a veth pair on a private /30 that only they can see.
 *
 * Processes are run in a namespace with `nsenter --net=/run/netns/<name> --`
 * (netnsWrapper), NOT `ip netns exec`: the latter also unshares the mount
 * namespace (to remount /sys), so mounts, FUSE mounts and loop devices made
 * there would be invisible to the test and to its cleanup. nsenter with
 * --net only switches the network namespace and then execs the command, so
 * signals sent to the returned pid reach it.
 */
export interface NetnsHost {
  /** Namespace name (/run/netns/<name>). */
  ns: string;
  /** This host's end of the veth pair, inside its namespace. */
  iface: string;
  /** This host's address on the private subnet. */
  address: string;
  /** Command prefix that runs a command in this host's network namespace. */
  wrapper: string[];
}

export interface TwoHostNet {
  storage: NetnsHost;
  node: NetnsHost;
  /** The private subnet, e.g. 10.250.17.40/30. */
  subnet: string;
  /**
   * Deletes the veth pair and both namespaces; idempotent, never throws.
   * Returns what it could not remove (empty when all is gone).
   */
  destroy(): Promise<string[]>;
}

/** The host tools the two-host tests need beyond the iSCSI ones, by Debian package. */
const NETNS_TOOLS: Record<string, string> = { ip: 'iproute2', nsenter: 'util-linux', bash: 'bash', 'iscsi-inq': 'libiscsi-bin' };

/** Throws a message naming the packages to install when a tool is missing. */
export function requireNetnsTools(): void {
  const path = (process.env.PATH ?? '').split(':');
  const missing = Object.keys(NETNS_TOOLS).filter((t) => !path.some((d) => existsSync(join(d, t))));
  if (missing.length) throw new Error(`the two-host test needs ${missing.map((m) => `${m} (${NETNS_TOOLS[m]})`).join(', ')}: apt-get install ${[...new Set(missing.map((m) => NETNS_TOOLS[m]))].join(' ')}`);
}

export const netnsWrapper = (ns: string): string[] => ['nsenter', `--net=/run/netns/${ns}`, '--'];

/** Runs a command in a namespace; rejects with its stderr. */
export async function inNetns(ns: string, cmd: string, args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}) {
  const [c, ...a] = [...netnsWrapper(ns), cmd, ...args];
  return execa(c, a, { timeout: opts.timeoutMs ?? 10_000, env: opts.env, stdin: 'ignore' });
}

/** Whether a TCP connection from namespace `ns` to host:port succeeds. */
export async function canReach(ns: string, host: string, port: number): Promise<boolean> {
  const [c, ...a] = [...netnsWrapper(ns), 'bash', '-c', 'exec 3<>"/dev/tcp/$0/$1"', host, String(port)];
  return (await execa(c, a, { reject: false, timeout: 5000, stdin: 'ignore' })).exitCode === 0;
}

async function netnsNames(): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list'], { reject: false });
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

/**
 * Creates the two namespaces (`sinter-st-<tag>`, `sinter-nd-<tag>`), the veth
 * pair (made directly inside them, so no interface ever appears in the host's
 * namespace) and a random /30 in 10.250.0.0/16, with lo up in each. Throws —
 * never skips — when namespaces cannot be made (not root, no CAP_SYS_ADMIN).
 * On a failure part way, what was made is removed before the error is thrown.
 */
export async function makeTwoHostNet(tag: string = String(process.pid)): Promise<TwoHostNet> {
  if (!/^[a-z0-9]{1,8}$/.test(tag)) throw new Error(`netns tag "${tag}" must be 1-8 of a-z 0-9 (interface names are at most 15 characters)`);
  const stNs = `sinter-st-${tag}`;
  const ndNs = `sinter-nd-${tag}`;
  const stIf = `sst${tag}`;
  const ndIf = `snd${tag}`;
  const third = Math.floor(Math.random() * 256);
  const base = 4 * Math.floor(Math.random() * 64);
  const stAddr = `10.250.${third}.${base + 1}`;
  const ndAddr = `10.250.${third}.${base + 2}`;

  const destroy = async (): Promise<string[]> => {
    await execa('ip', ['-n', stNs, 'link', 'del', stIf], { reject: false });
    for (const ns of [stNs, ndNs]) await execa('ip', ['netns', 'del', ns], { reject: false });
    const left = await netnsNames();
    return [stNs, ndNs].filter((n) => left.includes(n)).map((n) => `network namespace ${n}`);
  };

  const ip = async (args: string[]) => {
    const r = await execa('ip', args, { reject: false, stdin: 'ignore' });
    if (r.exitCode !== 0) throw new Error(`ip ${args.join(' ')} failed (${r.exitCode}): ${r.stderr.trim() || r.stdout.trim()}`);
  };

  try {
    // A namespace of a crashed earlier run with the same tag (pid) would make `add` fail.
    await destroy();
    for (const ns of [stNs, ndNs]) {
      const r = await execa('ip', ['netns', 'add', ns], { reject: false, stdin: 'ignore' });
      if (r.exitCode !== 0) {
        throw new Error(`cannot create network namespace ${ns} (ip netns add: ${r.stderr.trim()}); the two-host test needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN`);
      }
    }
    await ip(['link', 'add', stIf, 'netns', stNs, 'type', 'veth', 'peer', 'name', ndIf, 'netns', ndNs]);
    for (const [ns, iface, addr] of [
      [stNs, stIf, stAddr],
      [ndNs, ndIf, ndAddr],
    ] as const) {
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      await ip(['-n', ns, 'addr', 'add', `${addr}/30`, 'dev', iface]);
      await ip(['-n', ns, 'link', 'set', iface, 'up']);
    }
  } catch (e) {
    await destroy();
    throw e;
  }
  return {
    storage: { ns: stNs, iface: stIf, address: stAddr, wrapper: netnsWrapper(stNs) },
    node: { ns: ndNs, iface: ndIf, address: ndAddr, wrapper: netnsWrapper(ndNs) },
    subnet: `10.250.${third}.${base}/30`,
    destroy,
  };
}
