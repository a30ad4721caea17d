// The VM test harness: builds (once, cached) a Debian bookworm guest with a
// real 6.1 kernel, boots it under qemu TCG with no network device (unless a test asks for
// one: netArgs), runs one
// shell command inside with the checkout and the host's node shared over 9p,
// and returns the command's output and exit status. qemu is killed and every
// temporary file removed whatever happens (failure, timeout, the caller dying).
//
// Plain JavaScript (typed by harness.d.mts) so that scripts and a shell can use
// it without a TypeScript step: `node test/vm/run.mjs -- uname -a`.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const VM_DIR = dirname(fileURLToPath(import.meta.url));
export const CHECKOUT = join(VM_DIR, '..', '..');
// guest-init.sh is not among them: it is copied into each run's control share.
const RECIPE_FILES = ['build-guest.sh', 'initrd-init.sh'];

/** Where guests are cached: one directory per recipe hash. */
export function cacheRoot() {
  return process.env.SINTER_VM_CACHE || '/var/cache/sinter-vm';
}

/** Hash of everything that decides the guest's content. */
export function recipeHash() {
  const h = createHash('sha256');
  for (const f of RECIPE_FILES) {
    h.update(f + '\0');
    h.update(readFileSync(join(VM_DIR, f)));
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * The guest for the current recipe, building it if needed (2–6 min). Several
 * processes asking at once build it once: the build holds a lock file and the
 * others wait on it.
 * @returns {{ dir: string, kernel: string, initrd: string, rootfs: string, kernelVersion: string, built: boolean, buildMs: number }}
 */
export function ensureGuest({ log = (/** @type {string} */ _m) => {} } = {}) {
  const dir = join(cacheRoot(), recipeHash());
  const paths = () => ({
    dir,
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.img'),
    rootfs: join(dir, 'rootfs.img'),
    kernelVersion: readFileSync(join(dir, 'kernel-version'), 'utf8').trim(),
  });
  if (existsSync(join(dir, 'done'))) return { ...paths(), built: false, buildMs: 0 };
  mkdirSync(cacheRoot(), { recursive: true });
  log(`building the VM guest into ${dir} (cold: several minutes)`);
  const t0 = Date.now();
  const r = spawnSync('flock', [join(cacheRoot(), `${recipeHash()}.lock`), 'bash', join(VM_DIR, 'build-guest.sh'), dir], {
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 20 * 60_000,
    killSignal: 'SIGKILL',
  });
  if (r.error) throw new Error(`VM guest build failed: ${r.error.message}`);
  if (r.status !== 0 || !existsSync(join(dir, 'done'))) throw new Error(`VM guest build failed (exit ${r.status ?? r.signal}); see the output above`);
  const buildMs = Date.now() - t0;
  log(`VM guest built in ${(buildMs / 1000).toFixed(0)} s`);
  return { ...paths(), built: true, buildMs };
}

/** Live qemu processes and their temp dirs, killed and removed if this process exits first. */
const live = new Set();
const liveDirs = new Set();
let exitHook = false;
function installExitHook() {
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
  });
}
function trackChild(child) {
  installExitHook();
  live.add(child);
}

/**
 * No network device unless asked. Asked: one virtio NIC on qemu's user-mode
 * network (slirp, no host privileges, no bridge): the guest is 10.0.2.15, the
 * host's listeners reach the guest only through the given port forwards (bound
 * to the host's 127.0.0.1), and the guest reaches only what its command routes
 * (the guest has no default route unless its command adds one).
 * @param {import('./harness.mjs').GuestNetwork | undefined} net
 */
function netArgs(net) {
  if (!net) return ['-nic', 'none'];
  const fwds = (net.hostForwards ?? []).map((f) => {
    if (!Number.isInteger(f.hostPort) || !Number.isInteger(f.guestPort)) throw new Error('runInGuest: network.hostForwards needs integer ports');
    return `,hostfwd=tcp:127.0.0.1:${f.hostPort}-10.0.2.15:${f.guestPort}`;
  });
  return ['-netdev', `user,id=net0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2${fwds.join('')}`, '-device', 'virtio-net-pci,netdev=net0'];
}

const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

/**
 * Boots the guest, runs `command` (a shell script, run by /bin/sh in the
 * guest's working directory) and powers off.
 * @param {import('./harness.mjs').RunInGuestOptions} opts
 * @returns {Promise<import('./harness.mjs').GuestResult>}
 */
export async function runInGuest(opts) {
  const guest = ensureGuest({ log: opts.log });
  // A guest that has not reached its command by then is stuck (seen once in CI: no
  // console output at all, 40 min lost), and nothing of the command has run yet,
  // so booting it again is safe. Boots take 12-20 s, ~60 s on a loaded machine.
  const bootTimeoutMs = opts.bootTimeoutMs ?? 150_000;
  const attempts = Math.max(1, opts.bootAttempts ?? 3);
  for (let attempt = 1; ; attempt++) {
    try {
      return await bootAndRun(opts, guest, bootTimeoutMs);
    } catch (e) {
      if (!(e instanceof GuestError) || !e.bootTimedOut || attempt >= attempts || opts.signal?.aborted) throw e;
      opts.log?.(`boot attempt ${attempt} of ${attempts} stuck, booting again: ${e.message}`);
    }
  }
}

async function bootAndRun(opts, guest, bootTimeoutMs) {
  const timeoutMs = opts.timeoutMs ?? 10 * 60_000;
  const tmp = mkdtempSync(join(opts.tmpDir ?? tmpdir(), 'sinter-vm-'));
  installExitHook();
  liveDirs.add(tmp);
  const ctl = join(tmp, 'ctl');
  mkdirSync(join(ctl, 'out'), { recursive: true });
  let child;
  try {
    const nodeBin = realpathSync(process.execPath);
    const shares = [
      { tag: 'checkout', hostPath: CHECKOUT, guestPath: CHECKOUT, readonly: false, cache: 'loose' },
      { tag: 'hostnode', hostPath: dirname(nodeBin), guestPath: '/run/sinter-host-node', readonly: true, cache: 'loose' },
      // A git worktree's node_modules may be a symlink to another checkout's: the guest follows it to the same path
      // (read-write, as on the host: vite writes its config bundle into node_modules/.vite-temp).
      ...linkedNodeModules().map((p) => ({ tag: 'nodemodules', hostPath: p, guestPath: p, readonly: false, cache: 'loose' })),
      ...(opts.shares ?? []).map((s, i) => ({ tag: `share${i}`, guestPath: s.hostPath, readonly: false, cache: 'loose', ...s })),
    ];
    const env = {
      SINTER_VM_CWD: opts.cwd ?? CHECKOUT,
      SINTER_VM_NODE: `/run/sinter-host-node/${nodeBin.split('/').pop()}`,
      SINTER_VM_SERVICES: (opts.services ?? ['dbus']).join(' '),
      SINTER_VM_OUT: '/run/sinter-ctl/out',
      SINTER_IN_VM: '1',
      ...(opts.env ?? {}),
    };
    for (const k of Object.keys(env)) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`runInGuest: bad environment variable name ${k}`);
    writeFileSync(
      join(ctl, 'env'),
      Object.entries(env)
        .map(([k, v]) => `export ${k}=${shq(v)}\n`)
        .join(''),
    );
    writeFileSync(join(ctl, 'shares'), shares.map((s) => `${s.tag} ${s.guestPath} cache=${s.cache}${s.readonly ? ',ro' : ''}\n`).join(''));
    writeFileSync(join(ctl, 'cmd.sh'), opts.command + '\n');
    copyFileSync(join(VM_DIR, 'guest-init.sh'), join(ctl, 'guest-init.sh'));

    const disks = (opts.scratchDisks ?? []).map((sizeMb, i) => {
      const f = join(tmp, `scratch${i}.img`);
      writeFileSync(f, '');
      spawnSync('truncate', ['-s', `${sizeMb}M`, f]);
      return f;
    });

    const args = [
      '-accel', 'tcg,thread=multi', '-cpu', 'max', '-m', String(opts.memoryMb ?? 2048), '-smp', String(opts.cpus ?? 2),
      '-nodefaults', ...netArgs(opts.network), '-display', 'none', '-no-reboot', '-no-user-config',
      '-kernel', guest.kernel, '-initrd', guest.initrd,
      '-append', `console=ttyS0 root=/dev/vda rw quiet loglevel=4 panic=-1 no_timer_check tsc=reliable ${opts.kernelArgs ?? ''}`.trim(),
      '-drive', `file=${guest.rootfs},if=virtio,format=raw,snapshot=on,cache=unsafe`,
      ...disks.flatMap((f) => ['-drive', `file=${f},if=virtio,format=raw,cache=unsafe,discard=unmap`]),
      '-fsdev', `local,id=ctl,path=${ctl},security_model=none`, '-device', 'virtio-9p-pci,fsdev=ctl,mount_tag=ctl',
      ...shares.flatMap((s) => ['-fsdev', `local,id=${s.tag},path=${s.hostPath},security_model=none${s.readonly ? ',readonly=on' : ''}`, '-device', `virtio-9p-pci,fsdev=${s.tag},mount_tag=${s.tag}`]),
      '-chardev', `file,id=con,path=${join(tmp, 'console.log')}`, '-serial', 'chardev:con',
      '-chardev', 'stdio,id=out,signal=off', '-serial', 'chardev:out',
    ];

    const t0 = Date.now();
    let bootMs;
    let output = '';
    let stderr = '';
    let timedOut = false;
    child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(child);
    let pending = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      let s = pending + d.replace(/\r/g, '');
      pending = '';
      if (bootMs === undefined) {
        const nl = s.indexOf('\n');
        if (nl < 0) {
          pending = s;
          return;
        }
        const first = s.slice(0, nl);
        if (/^sinter-vm: ready/.test(first)) {
          bootMs = Date.now() - t0;
          opts.log?.(`${first} (${(bootMs / 1000).toFixed(1)} s wall)`);
          s = s.slice(nl + 1);
        }
      }
      output += s;
      if (output.length > 32 * 1024 * 1024) output = output.slice(-16 * 1024 * 1024);
      opts.onOutput?.(s);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => (stderr += d));
    const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const spawnError = new Promise((resolve) => child.once('error', (e) => resolve({ error: e })));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    let bootTimedOut = false;
    const bootTimer = setTimeout(() => {
      if (bootMs !== undefined) return;
      bootTimedOut = true;
      child.kill('SIGKILL');
    }, Math.min(bootTimeoutMs, timeoutMs));
    const onAbort = () => child.kill('SIGKILL');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const ended = await Promise.race([exit, spawnError]);
    clearTimeout(timer);
    clearTimeout(bootTimer);
    opts.signal?.removeEventListener('abort', onAbort);
    if (pending) output += pending;
    const durationMs = Date.now() - t0;
    const consoleLog = existsSync(join(tmp, 'console.log')) ? readFileSync(join(tmp, 'console.log'), 'utf8').replace(/\r/g, '') : '';
    if (ended.error) throw new GuestError(`qemu could not start: ${ended.error.message}`, { consoleLog, output, stderr });
    const statusFile = join(ctl, 'status');
    const status = existsSync(statusFile) ? readFileSync(statusFile, 'utf8').trim() : '';
    const files = {};
    for (const f of readdirSync(join(ctl, 'out'))) files[f] = readFileSync(join(ctl, 'out', f));
    if (bootTimedOut) {
      throw new GuestError(`the guest did not finish booting within ${Math.min(bootTimeoutMs, timeoutMs) / 1000} s; qemu was killed`, { consoleLog, output, stderr, files, timedOut: true, bootTimedOut: true });
    }
    if (timedOut) throw new GuestError(`the guest did not finish within ${timeoutMs / 1000} s (${bootMs === undefined ? 'it never finished booting' : 'the command was still running'}); qemu was killed`, { consoleLog, output, stderr, files, timedOut: true });
    if (!/^\d+$/.test(status)) {
      throw new GuestError(`the guest stopped without an exit status (qemu ${ended.signal ?? `exit ${ended.code}`}${bootMs === undefined ? ', before it finished booting' : ''})`, { consoleLog, output, stderr, files });
    }
    return { exitCode: Number(status), output, consoleLog, qemuStderr: stderr, bootMs: bootMs ?? durationMs, durationMs, files, kernelVersion: guest.kernelVersion };
  } finally {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    if (child) live.delete(child);
    rmSync(tmp, { recursive: true, force: true });
    liveDirs.delete(tmp);
  }
}

export class GuestError extends Error {
  constructor(message, details) {
    const tail = (s, n) => (s ?? '').trim().split('\n').slice(-n).join('\n');
    const parts = [message];
    if (details.stderr?.trim()) parts.push(`qemu: ${tail(details.stderr, 10)}`);
    if (details.consoleLog?.trim()) parts.push(`guest console (last lines):\n${tail(details.consoleLog, 30)}`);
    if (details.output?.trim()) parts.push(`command output (last lines):\n${tail(details.output, 30)}`);
    super(parts.join('\n'));
    this.name = 'GuestError';
    Object.assign(this, details);
  }
}

/** node_modules's real directory when it is a symlink out of the checkout ([] otherwise). */
function linkedNodeModules() {
  const link = join(CHECKOUT, 'node_modules');
  if (!existsSync(link)) return [];
  const real = realpathSync(link);
  return real.startsWith(CHECKOUT + '/') ? [] : [real];
}
