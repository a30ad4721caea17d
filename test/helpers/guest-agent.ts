import { runInGuest, type GuestResult } from '../vm/harness.mjs';
import { freePort } from './tgtd.js';

/**
 * A VM guest (test/vm/harness.mjs: Debian's 6.1 kernel under qemu TCG) driven
 * from a host test through test/vm/agent.mjs: the host keeps what runs fast
 * natively (a Ceph cluster, the controller, the checks) and the guest does what
 * only a real kernel can (rbd.ko, iscsi_tcp, dm-*).
 *
 * The guest has one NIC on qemu's user-mode network: the host reaches the
 * agent and each forwarded guest port through its own 127.0.0.1, and the guest
 * reaches only the host addresses in `routes` (no default route).
 */
export interface GuestAgent {
  /** The host's 127.0.0.1 port forwarded to this guest port (one of `forwards`). */
  hostPort(guestPort: number): number;
  run(argv: string[], o?: { input?: string; timeoutMs?: number }): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** Like run, but throws with its stderr when it exits non-zero. */
  sh(script: string, timeoutMs?: number): Promise<string>;
  spawn(name: string, argv: string[], env?: Record<string, string>): Promise<void>;
  logs(name: string): Promise<string>;
  signal(name: string, signal?: NodeJS.Signals, waitMs?: number): Promise<{ exited: boolean }>;
  /** Stops what the agent started, powers the guest off, and returns the guest's result. Safe to call twice. */
  stop(): Promise<GuestResult | undefined>;
  bootMs(): number | undefined;
}

export interface GuestAgentOptions {
  /** Host addresses (a.b.c.d) the guest may reach, routed through qemu's gateway. */
  routes?: string[];
  /** Guest TCP ports the host reaches through 127.0.0.1. */
  forwards?: number[];
  scratchDisks?: number[];
  memoryMb?: number;
  /** The whole guest's life; qemu is killed after it. */
  timeoutMs?: number;
  onOutput?: (s: string) => void;
}

const AGENT_PORT = 7000;

export async function startGuestAgent(o: GuestAgentOptions = {}): Promise<GuestAgent> {
  for (const r of o.routes ?? []) if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(r)) throw new Error(`startGuestAgent: route ${r} is not an IPv4 address`);
  const ports = new Map<number, number>();
  for (const g of [AGENT_PORT, ...(o.forwards ?? [])]) ports.set(g, await freePort());
  const abort = new AbortController();
  let output = '';
  let boot: number | undefined;
  // The NIC's name comes from udev (ens2 with one device on qemu's default machine): whatever is not lo.
  const command = [
    'set -e',
    'modprobe virtio_net',
    // udev renames eth0 to its predictable name (ens2): wait for that before using the name.
    'udevadm settle --timeout=30 || true',
    'for i in $(seq 100); do IF=$(ls /sys/class/net | grep -vx lo | head -n1); [ -n "$IF" ] && [ "$IF" != eth0 ] && break; sleep 0.1; done',
    'ip link set lo up',
    'ip link set "$IF" up',
    'ip addr add 10.0.2.15/24 dev "$IF"',
    ...(o.routes ?? []).map((r) => `ip route add ${r}/32 via 10.0.2.2`),
    `exec node test/vm/agent.mjs ${AGENT_PORT} 10.0.2.15`,
  ].join('\n');
  const result = runInGuest({
    command,
    timeoutMs: o.timeoutMs ?? 15 * 60_000,
    scratchDisks: o.scratchDisks,
    memoryMb: o.memoryMb,
    services: [],
    network: { hostForwards: [...ports].map(([guestPort, hostPort]) => ({ guestPort, hostPort })) },
    signal: abort.signal,
    onOutput: (s) => {
      output += s;
      o.onOutput?.(s);
    },
  });
  let ended: GuestResult | Error | undefined;
  const settled = result.then(
    (r) => (ended = r),
    (e: Error) => (ended = e),
  );
  const base = `http://127.0.0.1:${ports.get(AGENT_PORT)}`;
  const call = async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
    const r = await fetch(base + path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    if (!r.ok) throw new Error(`guest agent ${path}: ${text}`);
    return (r.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text) as T;
  };
  const t0 = Date.now();
  // Boot, then the agent's listen: poll until it answers, the guest ends, or the time is up.
  for (;;) {
    if (ended) throw new Error(`the guest ended before its agent answered: ${ended instanceof Error ? ended.message : `exit ${ended.exitCode}: ${ended.output.slice(-2000)}`}`);
    try {
      await call('GET', '/ready');
      boot = Date.now() - t0;
      break;
    } catch {
      if (Date.now() - t0 > 10 * 60_000) {
        abort.abort();
        await settled;
        throw new Error(`the guest agent did not answer in 10 min; guest output: ${output.slice(-2000)}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  let stopping: Promise<GuestResult | undefined> | undefined;
  const run: GuestAgent['run'] = (argv, ro = {}) => call('POST', '/run', { argv, ...ro });
  return {
    hostPort: (g) => {
      const p = ports.get(g);
      if (p === undefined) throw new Error(`guest port ${g} is not forwarded`);
      return p;
    },
    run,
    async sh(script, timeoutMs) {
      const r = await run(['sh', '-c', script], { timeoutMs });
      if (r.exitCode !== 0) throw new Error(`in the guest: ${script.slice(0, 200)}: exit ${r.exitCode}: ${r.stderr.slice(-2000)}`);
      return r.stdout;
    },
    spawn: async (name, argv, env) => void (await call('POST', '/spawn', { name, argv, env })),
    logs: (name) => call('GET', `/logs?name=${encodeURIComponent(name)}`),
    signal: (name, signal = 'SIGTERM', waitMs = 30_000) => call('POST', '/signal', { name, signal, waitMs }),
    bootMs: () => boot,
    stop() {
      stopping ??= (async () => {
        if (!ended) {
          await call('POST', '/exit').catch(() => undefined);
          // The agent exits, the command ends, the guest powers off; a guest that does not is killed.
          const timer = setTimeout(() => abort.abort(), 60_000);
          await settled;
          clearTimeout(timer);
        }
        return ended instanceof Error ? undefined : ended;
      })();
      return stopping;
    },
  };
}
