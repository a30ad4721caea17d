// The Dockerfile built for real, with podman (no Docker engine runs here), and
// the built images checked from the inside.
//
// Debian's podman 4.3 builds with `--isolation chroot`; `podman run` does not
// work on these machines (crun cannot set RLIMIT_NOFILE/NPROC), so each image
// is `podman image mount`ed (read-only) and its programs run with chroot(8) —
// in a private mount namespace (unshare) where a host directory is bound at
// /tmp, /proc is mounted and /dev bound, the parts a container runtime would
// provide. The base cannot be pulled (no registry): scripts/image-base.sh
// builds one (debootstrap bookworm + this machine's Node.js 20, cached under
// /var/cache/sinter-test/image-base) and the build gets it as NODE_IMAGE.
//
// Everything podman stores (images, layers, mounts) lives under one temp
// directory with its own storage.conf, removed afterwards; nothing is left in
// the host's podman storage.
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiClient } from '../../src/csi/client.js';
import { scanHostCommands, type HostCommandCall } from './host-commands.js';
import { ROOT } from './k8s.js';

interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  Healthcheck?: { Test?: string[] };
  Labels?: Record<string, string>;
}

interface Ran {
  code: number | null;
  out: string;
}

const RUN_ID = `${process.pid}-${Date.now().toString(36)}`;
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

let work = '';
let tmpfs = false;
const TMPFS_SIZE = '4g'; // the peak measured is 1.2 GiB
let env: NodeJS.ProcessEnv = {};
const timings: string[] = [];

/** Runs a command to its end, output captured; rejects with the output on failure or timeout. */
function run(cmd: string, args: string[], opts: { timeoutMs: number; ok?: number[] } = { timeoutMs: 60_000 }): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if ((opts.ok ?? [0]).includes(code ?? -1)) resolve({ code, out });
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? 'on a signal (timeout?)'}:\n${out.slice(-4000)}`));
    });
  });
}

const podman = (args: string[], timeoutMs = 120_000) => run('podman', args, { timeoutMs });

async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t = performance.now();
  const r = await fn();
  timings.push(`${what} ${((performance.now() - t) / 1000).toFixed(1)}s`);
  return r;
}

async function imageConfig(image: string): Promise<ImageConfig> {
  // A docker-format image's HEALTHCHECK is kept beside the OCI config, not in it.
  const { out } = await podman(['image', 'inspect', '--format', '{"config": {{json .Config}}, "healthcheck": {{json .HealthCheck}}}', image]);
  const { config, healthcheck } = JSON.parse(out) as { config: ImageConfig; healthcheck: ImageConfig['Healthcheck'] | null };
  return { ...config, Healthcheck: healthcheck ?? undefined };
}

const envOf = (c: ImageConfig) => c.Env ?? [];

/**
 * argv run inside an image's root as a container would: private mount
 * namespace, hostTmp bound at /tmp, /proc and /dev present, the image's
 * environment only, its working directory, as `user` (uid:gid).
 */
function inImageArgv(root: string, c: ImageConfig, argv: string[], o: { hostTmp: string; user?: string; env?: string[] }): [string, string[]] {
  const user = o.user ?? c.User ?? '0:0';
  const [uid, gid = uid] = user.split(':');
  const script =
    'set -e; r=$1; t=$2; u=$3; g=$4; shift 4; ' +
    'mount --bind "$t" "$r/tmp"; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; ' +
    'exec chroot --userspec="$u:$g" --groups="$g" "$r" "$@"';
  return [
    'unshare',
    ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sh', root, o.hostTmp, uid, gid, '/usr/bin/env', '-i', '-C', c.WorkingDir || '/', ...envOf(c), ...(o.env ?? []), ...argv],
  ];
}

/** Whether each command resolves in the image's PATH (`command -v` in the image's own shell): name → path, or '' when missing. */
async function resolveIn(root: string, c: ImageConfig, commands: string[]): Promise<Map<string, string>> {
  const path = envOf(c).find((e) => e.startsWith('PATH=')) ?? 'PATH=/usr/sbin:/usr/bin:/sbin:/bin';
  const { out } = await run('chroot', [root, '/usr/bin/env', '-i', path, '/bin/sh', '-c', 'for c; do printf "%s %s\\n" "$c" "$(command -v "$c")"; done', 'sh', ...commands], { timeoutMs: 30_000 });
  return new Map(out.trim().split('\n').map((l) => [l.split(' ')[0], l.split(' ').slice(1).join(' ')] as [string, string]));
}

/** A process and all its descendants, parents first (from /proc/PID/task/TID/children). */
function processTree(pid: number): number[] {
  const kids = (() => {
    try {
      return readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch {
      return [];
    }
  })();
  return [pid, ...kids.flatMap(processTree)];
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .map((m) => m.replace(/\\040/g, ' '))
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

const NO_SUCH_COMMAND = 'sinter-no-such-command';
const isRoot = process.getuid?.() === 0;
const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

const images = { base: `localhost/sinter-test-base:${RUN_ID}`, controller: `localhost/sinter-test-controller:${RUN_ID}`, node: `localhost/sinter-test-node:${RUN_ID}` };
const roots = { controller: '', node: '' };
const configs: { controller: ImageConfig; node: ImageConfig } = { controller: {}, node: {} };
const scan = scanHostCommands();
const commandsOf = (calls: HostCommandCall[]) => [...new Set(calls.map((c) => c.command))].sort();

describe('container images built with podman (--isolation chroot) from a local debootstrap bookworm + Node.js 20 base, checked by chroot into `podman image mount`', () => {
  beforeAll(async () => {
    expect(isRoot, 'building images and chroot need root').toBe(true);
    for (const tool of ['podman', 'debootstrap', 'unshare', 'chroot']) expect(has(tool), `${tool} is missing: run scripts/setup.sh`).toBe(true);
    work = mkdtempSync(join(tmpdir(), 'sinter-images-'));
    // Images and layers on a tmpfs of their own: a build writes and deletes ~10^5 small files
    // (node_modules several times over), which on this VM's disk took longer than the builds'
    // own work, and removing the storage took 40-80 s; a tmpfs is gone with one umount.
    tmpfs = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_SIZE},mode=0700`, 'sinter-images', work]).status === 0;
    for (const d of ['storage', 'run', 'tmp']) mkdirSync(join(work, d));
    // podman's own storage and state for this run only; overlay storage (SINTER_PODMAN_DRIVER=vfs where the kernel lacks overlayfs).
    writeFileSync(join(work, 'storage.conf'), `[storage]\ndriver = "${process.env.SINTER_PODMAN_DRIVER ?? 'overlay'}"\ngraphroot = "${work}/storage"\nrunroot = "${work}/run"\n`);
    writeFileSync(join(work, 'containers.conf'), `[engine]\ntmp_dir = "${work}/tmp"\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n`);
    env = { ...process.env, CONTAINERS_STORAGE_CONF: join(work, 'storage.conf'), CONTAINERS_CONF: join(work, 'containers.conf'), TMPDIR: join(work, 'tmp') };

    await timed('base (scripts/image-base.sh + podman import)', () => run(join(ROOT, 'scripts/image-base.sh'), ['--import', images.base], { timeoutMs: 15 * 60_000 }));
    // --jobs 2: the build and prod-deps stages (two npm ci) and the runtime stage's apt run side by side.
    // Behind a TLS-inspecting proxy npm inside the build needs this machine's CA bundle: a build secret, used by npm ci only (see the Dockerfile).
    const secret = existsSync(CA_BUNDLE) ? ['--secret', `id=ca-certificates,src=${CA_BUNDLE}`] : [];
    const build = (target: 'controller' | 'node') =>
      timed(`build --target ${target}`, () =>
        podman(['build', '--jobs', '2', '--isolation', 'chroot', '--format', 'docker', '--build-arg', `NODE_IMAGE=${images.base}`, ...secret, '--target', target, '--tag', images[target], ROOT], 15 * 60_000),
      );
    await build('controller');
    await build('node');
    for (const role of ['controller', 'node'] as const) {
      configs[role] = await imageConfig(images[role]);
      roots[role] = (await podman(['image', 'mount', images[role]])).out.trim();
      expect(statSync(join(roots[role], 'app/dist/bundle/main.mjs')).isFile()).toBe(true);
    }
  }, 30 * 60_000);

  afterAll(async () => {
    if (!work) return;
    await podman(['image', 'unmount', '--all']).catch(() => undefined);
    // The storage is this run's alone, on its own tmpfs: unmounting it removes every image and
    // layer at once. Nothing of this run may stay mounted; what podman did not release (image
    // mounts, its overlay bookkeeping) is ours to unmount first.
    if (tmpfs) timings.push(`storage peak ${spawnSync('df', ['--output=used', '-h', work], { encoding: 'utf8' }).stdout.split('\n')[1]?.trim()}`);
    for (const m of mountsUnder(work).reverse()) if (m !== work) spawnSync('umount', ['-l', m]);
    if (tmpfs && spawnSync('umount', [work]).status !== 0) spawnSync('umount', ['-l', work]);
    await timed('cleanup', () => run('rm', ['-rf', '--one-file-system', work], { timeoutMs: 300_000 }));
    console.log(`images-podman: ${timings.join(', ')}${tmpfs ? '' : ' (storage on disk: no tmpfs)'}`);
    expect(mountsUnder(work)).toEqual([]);
  }, 360_000);

  it('builds both roles on the local base: the controller as uid 65532 with the docker-format HEALTHCHECK, the node as root, both under tini', () => {
    expect(configs.controller.User).toBe('65532:65532');
    expect(configs.node.User ?? '').toMatch(/^(|0|root)(:0)?$/);
    for (const c of [configs.controller, configs.node]) {
      expect(c.Entrypoint).toEqual(['/usr/bin/tini', '--', 'node', '/app/dist/bundle/main.mjs']);
      expect(c.Healthcheck?.Test).toEqual(['CMD', 'node', '/app/healthcheck.mjs']);
      expect(c.Labels?.['org.opencontainers.image.base.name']).toBe(images.base);
    }
    expect(configs.controller.Cmd).toEqual(['controller']);
    expect(configs.node.Cmd).toEqual(['node']);
    // /app holds what the runtime stage copies and nothing else of the checkout (.dockerignore as podman reads it).
    for (const role of ['controller', 'node'] as const) expect(readdirSync(join(roots[role], 'app')).sort(), role).toEqual(['dist', 'healthcheck.mjs', 'node_modules', 'package-lock.json', 'package.json', 'proto']);
    // Production dependencies only, and the Node.js the project runs on.
    expect(existsSync(join(roots.controller, 'app/node_modules/@grpc/grpc-js'))).toBe(true);
    expect(existsSync(join(roots.controller, 'app/node_modules/typescript'))).toBe(false);
    const v = spawnSync('chroot', [roots.node, '/usr/local/bin/node', '--version'], { encoding: 'utf8' });
    expect(v.stdout.trim()).toMatch(/^v20\./);
  });

  it('the controller image: `sinter controller` runs as uid 65532 (no capabilities), answers Probe over its socket from the host, its HEALTHCHECK passes, and SIGTERM stops it cleanly', async () => {
    const hostTmp = join(work, 'controller-tmp');
    mkdirSync(hostTmp);
    chownSync(hostTmp, 65532, 65532);
    const endpoint = 'unix:///tmp/csi.sock';
    const [cmd, args] = inImageArgv(roots.controller, configs.controller, [...configs.controller.Entrypoint!, ...configs.controller.Cmd!, `--endpoint=${endpoint}`, '--data-dir=/tmp/data', '--log-level=info'], { hostTmp, env: [`CSI_ENDPOINT=${endpoint}`] });
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    child.stdout.on('data', (b: Buffer) => (logs += b.toString()));
    child.stderr.on('data', (b: Buffer) => (logs += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const client = csiClient(`unix://${join(hostTmp, 'csi.sock')}`);
    try {
      let probe: { ready?: { value?: boolean } } | undefined;
      for (let i = 0; i < 100 && child.exitCode === null && !probe; i++) {
        probe = await client.identity.Probe({}, { deadlineMs: 2000 }).catch(() => undefined);
        if (!probe) await new Promise((r) => setTimeout(r, 200));
      }
      expect(probe?.ready?.value, `no Probe answer; sinter: ${logs}`).toBe(true);
      expect((await client.identity.GetPluginInfo({})).name).toBe('sinter.csi.io');
      // tini (PID of the chroot'ed entrypoint) runs node as its child: both as 65532, nothing else.
      const pids = processTree(child.pid!);
      expect(pids).toHaveLength(2);
      for (const pid of pids) {
        const status = readFileSync(`/proc/${pid}/status`, 'utf8');
        expect(/^Uid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/), `pid ${pid}`).toEqual(['65532', '65532', '65532', '65532']);
        expect(/^Gid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/)).toEqual(['65532', '65532', '65532', '65532']);
        expect(/^CapEff:\s+(\S+)$/m.exec(status)?.[1]).toBe('0000000000000000');
      }
      expect(readFileSync(`/proc/${pids[1]}/cmdline`, 'utf8').split('\0').slice(0, 3)).toEqual(['node', '/app/dist/bundle/main.mjs', 'controller']);
      expect(statSync(join(hostTmp, 'csi.sock')).uid).toBe(65532);
      // The image's own HEALTHCHECK command, in the image, as its user.
      const [hcmd, hargs] = inImageArgv(roots.controller, configs.controller, configs.controller.Healthcheck!.Test!.slice(1), { hostTmp, env: [`CSI_ENDPOINT=${endpoint}`] });
      const health = await run(hcmd, hargs, { timeoutMs: 30_000, ok: [0, 1] });
      expect(health.code, health.out).toBe(0);
      child.kill('SIGTERM');
      expect(await exited, logs).toBe(0);
    } finally {
      client.close();
      // tini cannot pass on a SIGKILL: take its child with it, or the tmpfs stays busy.
      if (child.exitCode === null) for (const pid of processTree(child.pid!)) process.kill(pid, 'SIGKILL');
    }
  }, 120_000);

  it('the node image has every host command src/node and src/exec run (found from the code by the type checker) in its PATH', async () => {
    expect(scan.unresolved, 'calls into src/exec whose command is not a compile-time string set: give it a literal (union) type so this check can see it').toEqual([]);
    const nodeCalls = scan.calls.filter((c) => c.area === 'node' || c.area === 'exec');
    const wanted = commandsOf(nodeCalls);
    // The scan itself must have found the node path's main tools, or it is not looking.
    expect(wanted).toEqual(expect.arrayContaining(['mount', 'umount', 'losetup', 'blkid', 'mkfs.ext4', 'mkfs.xfs', 'iscsiadm', 'nsenter']));
    const found = await resolveIn(roots.node, configs.node, [...wanted, NO_SUCH_COMMAND]);
    expect(found.get(NO_SUCH_COMMAND), 'the PATH check must be able to fail').toBe('');
    const missing = wanted.filter((c) => !found.get(c)).map((c) => `${c} (called at ${nodeCalls.filter((x) => x.command === c).map((x) => x.at).join(', ')})`);
    expect(missing, 'add the Debian package that ships it to the node stage of the Dockerfile').toEqual([]);
  });

  it('the controller image has every host command the backends run (found from the code) in its PATH', async () => {
    const calls = scan.calls.filter((c) => c.area === 'backends');
    const wanted = commandsOf(calls);
    expect(wanted).toContain('tgtadm');
    const found = await resolveIn(roots.controller, configs.controller, wanted);
    expect(wanted.filter((c) => !found.get(c)).map((c) => `${c} (called at ${calls.filter((x) => x.command === c).map((x) => x.at).join(', ')})`)).toEqual([]);
  });

  it('both images run the command runner that forks every host command (src/exec/command_runner.pl, perl-base only) as their entrypoint\'s user', async () => {
    for (const role of ['controller', 'node'] as const) {
      const hostTmp = join(work, `${role}-runner-tmp`);
      mkdirSync(hostTmp);
      // stdin is /dev/null: the runner says ready, sees its input end, and exits.
      const [cmd, args] = inImageArgv(roots[role], configs[role], ['perl', '/app/dist/exec/command_runner.pl'], { hostTmp });
      const r = await run(cmd, args, { timeoutMs: 30_000 });
      expect(r.out, role).toBe('1\n5:ready');
    }
  });

  it('the node image: `sinter node --help` runs through the entrypoint and prints the usage', async () => {
    const hostTmp = join(work, 'node-tmp');
    mkdirSync(hostTmp);
    const [cmd, args] = inImageArgv(roots.node, configs.node, [...configs.node.Entrypoint!, 'node', '--help'], { hostTmp });
    const r = await run(cmd, args, { timeoutMs: 30_000 });
    expect(r.out).toContain('sinter controller|node|all [flags]');
    expect(r.out).toContain('--kubelet-root');
    expect(readdirSync(hostTmp)).toEqual([]);
  });
});
