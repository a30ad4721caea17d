// The Dockerfile, tested without a Docker engine (none runs here):
//  - its structure (stages, tini, HEALTHCHECK, labels, users, what it copies);
//  - its apt package lists, resolved by apt-get on this machine's Debian;
//  - the image's entry command, run from a fresh `npm ci --omit=dev` install
//    laid out the way the runtime stage lays out /app.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ROOT } from './k8s.js';
import { arrayContaining } from '../helpers/matchers.js';

interface Instruction {
  op: string;
  args: string;
  line: number;
}
interface Stage {
  name: string;
  from: string;
  body: Instruction[];
}

/** Instructions of a Dockerfile by stage: continuation lines joined, comments dropped. */
function parseDockerfile(text: string): { args: Map<string, string>; stages: Stage[] } {
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let l = lines[i];
    if (/^\s*(#|$)/.test(l)) continue;
    while (/\\\s*$/.test(l) && i + 1 < lines.length) {
      i++;
      const next = lines[i];
      if (/^\s*#/.test(next)) continue;
      l = l.replace(/\\\s*$/, ' ') + next;
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(l);
    if (!m) throw new Error(`Dockerfile line ${start + 1}: cannot parse ${l}`);
    const op = m[1].toUpperCase();
    const rest = m[2].trim().replace(/\s+/g, ' ');
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest)!;
      stages.push({ name: f[2] ?? String(stages.length), from: f[1], body: [] });
    } else if (stages.length === 0 && op === 'ARG') {
      const [k, v] = rest.split('=');
      args.set(k, v ?? '');
    } else {
      stages.at(-1)!.body.push({ op, args: rest, line: start + 1 });
    }
  }
  return { args, stages };
}

const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const df = parseDockerfile(DOCKERFILE);
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

function stage(name: string): Stage {
  const s = df.stages.find((x) => x.name === name);
  if (!s) throw new Error(`Dockerfile has no stage ${name}`);
  return s;
}

/** The stage and its FROM ancestors within this Dockerfile, base first. */
function lineage(name: string): Stage[] {
  const s = stage(name);
  const parent = df.stages.find((x) => x.name === s.from);
  return parent ? [...lineage(parent.name), s] : [s];
}

/** Packages each `apt-get install` of a stage installs. */
function aptPackages(s: Stage): string[] {
  const out: string[] = [];
  for (const ins of s.body.filter((x) => x.op === 'RUN')) {
    for (const m of ins.args.matchAll(/apt-get install((?:\s+[^&|;]+?)+)\s*(?:&&|;|$)/g)) {
      out.push(...m[1].trim().split(/\s+/).filter((w) => !w.startsWith('-')));
    }
  }
  return out;
}

function lastOf(name: string, op: string): Instruction | undefined {
  return lineage(name)
    .flatMap((s) => s.body)
    .filter((x) => x.op === op)
    .at(-1);
}

function jsonArgs(ins: Instruction | undefined): string[] {
  expect(ins?.args, 'exec form (a JSON array)').toMatch(/^\[/);
  return JSON.parse(ins!.args) as string[];
}

/** .dockerignore as the build sees it: later patterns win, `!` re-includes. */
function dockerignored(path: string): boolean {
  const patterns = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  let ignored = false;
  for (const p of patterns) {
    const neg = p.startsWith('!');
    const pat = (neg ? p.slice(1) : p).replace(/\/$/, '');
    const re = new RegExp(`^${pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`);
    if (re.test(path)) ignored = !neg;
  }
  return ignored;
}

const NODE_TOOLS = ['util-linux', 'mount', 'e2fsprogs', 'xfsprogs', 'btrfs-progs', 'open-iscsi', 'libiscsi-bin', 'qemu-utils', 'qemu-block-extra', 'libnbd-bin', 'fuse3'];

describe('Dockerfile structure (static; no Docker engine runs here)', () => {
  it('builds on node:20-bookworm-slim in stages: build (dev deps) -> prod-deps (--omit=dev) -> runtime -> controller | node | all', () => {
    expect(df.args.get('NODE_IMAGE')).toBe('node:20-bookworm-slim');
    expect(df.stages.map((s) => `${s.name}<-${s.from}`)).toEqual([
      'build<-${NODE_IMAGE}',
      'prod-deps<-${NODE_IMAGE}',
      'runtime<-${NODE_IMAGE}',
      'controller<-runtime',
      'node<-runtime',
      'all<-node',
    ]);
    const runs = (s: string) => stage(s).body.filter((x) => x.op === 'RUN').map((x) => x.args);
    expect(runs('build').join('\n')).toMatch(/npm ci(?![^\n]*--omit=dev)/);
    expect(runs('build')).toContain('npm run build');
    // --omit=optional too: typescript is an optional peer of valibot (devOptional in the lock), which --omit=dev alone installs.
    expect(runs('prod-deps').join('\n')).toMatch(/npm ci --omit=dev --omit=optional/);
    const fromBuild = stage('runtime').body.filter((x) => x.op === 'COPY' && x.args.startsWith('--from=')).map((x) => x.args);
    expect(fromBuild).toEqual(['--from=prod-deps /app/node_modules ./node_modules', '--from=build /src/dist ./dist']);
    expect(DOCKERFILE).not.toMatch(/:latest\b/);
  });
  it('runs sinter under tini as PID 1, with a HEALTHCHECK and OCI labels', () => {
    for (const target of ['controller', 'node', 'all']) {
      expect(jsonArgs(lastOf(target, 'ENTRYPOINT')), target).toEqual(['/usr/bin/tini', '--', 'node', '/app/dist/bundle/main.mjs']);
      expect(lastOf(target, 'HEALTHCHECK')?.args, target).toMatch(/CMD \["node", "\/app\/healthcheck\.mjs"\]$/);
      expect(lineage(target).flatMap(aptPackages), target).toContain('tini');
    }
    expect(jsonArgs(lastOf('controller', 'CMD'))).toEqual(['controller']);
    expect(jsonArgs(lastOf('node', 'CMD'))).toEqual(['node']);
    expect(jsonArgs(lastOf('all', 'CMD'))[0]).toBe('all');
    const labels = stage('runtime').body.filter((x) => x.op === 'LABEL').map((x) => x.args).join(' ');
    for (const l of ['title', 'description', 'version', 'revision', 'licenses']) expect(labels).toContain(`org.opencontainers.image.${l}=`);
    expect(stage('runtime').body.find((x) => x.op === 'ARG' && x.args.startsWith('VERSION='))?.args).toBe(`VERSION=${PKG.version}`);
    expect(stage('runtime').body.some((x) => x.op === 'ENV' && x.args.includes('CSI_ENDPOINT=unix:///csi/csi.sock'))).toBe(true);
  });
  it('the controller image is non-root (uid 65532, as the manifests run it); node and all stay root', () => {
    expect(lastOf('controller', 'USER')?.args).toBe('65532:65532');
    expect(lastOf('node', 'USER')).toBeUndefined();
    expect(lastOf('all', 'USER')).toBeUndefined();
    const controller = readFileSync(join(ROOT, 'deploy/kubernetes/base/controller.yaml'), 'utf8');
    const pod = (parseYaml(controller) as { spec: { template: { spec: { securityContext: { runAsUser: number; runAsGroup: number } } } } }).spec.template.spec;
    expect(`${pod.securityContext.runAsUser}:${pod.securityContext.runAsGroup}`).toBe('65532:65532');
  });
  it('installs the host tools per role: the node tools in node, tgt in controller, both in all', () => {
    const pk = (t: string) => lineage(t).flatMap(aptPackages);
    expect(pk('node')).toEqual(arrayContaining(NODE_TOOLS));
    expect(pk('node')).not.toContain('tgt');
    expect(pk('controller')).toContain('tgt');
    expect(pk('controller').filter((p) => NODE_TOOLS.includes(p))).toEqual([]);
    expect(pk('all')).toEqual(arrayContaining([...NODE_TOOLS, 'tgt']));
    for (const s of df.stages) {
      for (const ins of s.body.filter((x) => x.op === 'RUN' && x.args.includes('apt-get install'))) {
        expect(ins.args, `line ${ins.line}`).toMatch(/^apt-get update && apt-get install -y --no-install-recommends .* && rm -rf \/var\/lib\/apt\/lists\/\*$/);
      }
    }
  });
  it('copies only files that exist and that .dockerignore lets into the build context', () => {
    const sources = df.stages.flatMap((s) => s.body.filter((x) => x.op === 'COPY' && !x.args.startsWith('--from=')).flatMap((x) => x.args.split(/\s+/).slice(0, -1)));
    expect(sources.length).toBeGreaterThan(4);
    for (const src of sources) {
      expect(existsSync(join(ROOT, src)), src).toBe(true);
      expect(dockerignored(src.replace(/\/$/, '')), `${src} is excluded by .dockerignore`).toBe(false);
      if (statSync(join(ROOT, src)).isDirectory()) {
        const inner = readdirSync(join(ROOT, src))[0];
        if (inner) expect(dockerignored(posix.join(src, inner)), `${src}/${inner}`).toBe(false);
      }
    }
    for (const kept of ['node_modules', 'dist', '.git', 'test/deploy/manifests.test.ts', 'deploy/kubernetes/base/node.yaml', 'bench']) expect(dockerignored(kept), kept).toBe(true);
  });
});

// ---- apt --------------------------------------------------------------------

const osRelease = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '';
const codename = /^VERSION_CODENAME=(\S+)/m.exec(osRelease)?.[1] ?? 'unknown';
const hasApt = spawnSync('apt-get', ['--version']).status === 0;
const aptListsPresent = () => existsSync('/var/lib/apt/lists') && readdirSync('/var/lib/apt/lists').some((f) => /_Packages(\.\w+)?$/.test(f));

describe(`Dockerfile apt packages, resolved by apt-get on this machine's Debian (${codename}; the image's base is bookworm)`, () => {
  beforeAll(() => {
    expect(hasApt, 'apt-get is needed to check the Dockerfile package lists').toBe(true);
    // A fresh machine may have no package lists yet; as root, fetch them once.
    if (!aptListsPresent() && process.getuid?.() === 0) execFileSync('apt-get', ['update', '-q'], { stdio: 'ignore', timeout: 240_000 });
    expect(aptListsPresent(), 'no apt package lists: run `apt-get update` (as root) first').toBe(true);
  }, 250_000);
  it(`every package of every image has an install candidate from ${codename === 'bookworm' ? 'bookworm/main' : codename}`, () => {
    const pkgs = [...new Set(['controller', 'node', 'all'].flatMap((t) => lineage(t).flatMap(aptPackages)))].sort();
    // One call for all: `apt-cache madison` prints "name | version | archive" per candidate.
    const out = execFileSync('apt-cache', ['madison', ...pkgs], { encoding: 'utf8', timeout: 60_000 });
    const missing: string[] = [];
    for (const p of pkgs) {
      const lines = out.split('\n').filter((l) => l.split('|')[0]?.trim() === p);
      if (!lines.length) missing.push(`${p}: no candidate`);
      else if (codename === 'bookworm' && !lines.some((l) => / bookworm(-updates|-security)?\/main /.test(l))) missing.push(`${p}: not from bookworm/main`);
    }
    expect(missing).toEqual([]);
  });
  it('`apt-get install -s --no-install-recommends` resolves the whole list of the `all` image (a superset of the controller and node lists, so they resolve too)', () => {
    const pkgs = [...new Set(lineage('all').flatMap(aptPackages))];
    for (const t of ['controller', 'node']) expect(pkgs).toEqual(arrayContaining(lineage(t).flatMap(aptPackages)));
    const r = spawnSync('apt-get', ['install', '-s', '-q', '--no-install-recommends', ...pkgs], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr.split('\n').filter((l) => /^E:/.test(l))).toEqual([]);
    expect(r.status).toBe(0);
  });
});

// ---- the entry command from a fresh production install ---------------------

const canDropToControllerUser = process.getuid?.() === 0 && spawnSync('setpriv', ['--version']).status === 0;

describe('the image\'s entry command works from a fresh `npm ci --omit=dev` install (no Docker engine: /app is rebuilt in a temp dir as the runtime stage lays it out)', () => {
  let work = '';
  let app = '';
  let build = { status: 0 as number | null, output: '' };

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'sinter-image-'));
    chmodSync(work, 0o755);
    app = join(work, 'app');
    mkdirSync(app);
    // COPY lines of the runtime stage: plain ones from the repository, --from=build
    // by compiling (the build stage's `npm run build`), --from=prod-deps by npm ci --omit=dev.
    for (const ins of stage('runtime').body.filter((x) => x.op === 'COPY' && !x.args.startsWith('--from='))) {
      const words = ins.args.split(/\s+/);
      const dest = words.at(-1)!;
      for (const src of words.slice(0, -1)) {
        const to = dest.endsWith('/') ? join(app, dest, src.split('/').at(-1)!) : join(app, dest);
        mkdirSync(dirname(to), { recursive: true });
        cpSync(join(ROOT, src), to, { recursive: true });
      }
    }
    const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.json'), '--outDir', join(app, 'dist')], { encoding: 'utf8', timeout: 120_000 });
    build = { status: tsc.status, output: `${tsc.stdout}${tsc.stderr}` };
    execFileSync('npm', ['ci', '--omit=dev', '--omit=optional', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], { cwd: app, stdio: 'pipe', timeout: 180_000 });
    // The build stage's `npm run build` ends by joining dist/ into dist/bundle (the entrypoint).
    const bundle = spawnSync(process.execPath, [join(ROOT, 'scripts/bundle.mjs'), join(app, 'dist')], { encoding: 'utf8', timeout: 120_000 });
    build = { status: build.status || bundle.status, output: `${build.output}${bundle.stdout}${bundle.stderr}` };
  }, 300_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('`npm run build` (tsc, then the bundle) compiles the current src/ without errors', () => {
    expect(build.output.trim(), 'the image build would stop here').toBe('');
    expect(build.status).toBe(0);
  });

  it('the install holds production dependencies only (every package the lock marks dev-only is absent)', () => {
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean; optional?: boolean; devOptional?: boolean }> };
    const entries = Object.entries(lock.packages).filter(([p]) => p.startsWith('node_modules/'));
    // devOptional: a dev dependency that is also an optional peer of a production one (typescript, for valibot); --omit=optional leaves it out.
    const dev = entries.filter(([, e]) => e.dev === true || e.devOptional === true);
    const prod = entries.filter(([, e]) => !e.dev && !e.optional && !e.devOptional);
    expect(dev.map(([p]) => p)).toEqual(arrayContaining(['node_modules/typescript', 'node_modules/vitest']));
    expect(dev.filter(([p]) => existsSync(join(app, p))).map(([p]) => p)).toEqual([]);
    expect(prod.filter(([p]) => !existsSync(join(app, p))).map(([p]) => p)).toEqual([]);
  });

  it('`node /app/dist/bundle/main.mjs version` prints the package version', () => {
    const out = execFileSync(process.execPath, [join(app, 'dist/bundle/main.mjs'), 'version'], { cwd: app, encoding: 'utf8', env: { ...process.env, NODE_ENV: 'production' }, timeout: 30_000 });
    expect(out.trim()).toBe(PKG.version);
  });

  it(`\`sinter controller\` starts ${canDropToControllerUser ? 'as uid 65532 (the controller image\'s user)' : 'as this user'}, the HEALTHCHECK script answers healthy over its socket, and unhealthy after SIGTERM stops it`, async () => {
    const data = join(work, 'data');
    const run = join(work, 'run');
    mkdirSync(data);
    mkdirSync(run);
    if (canDropToControllerUser) {
      chownSync(data, 65532, 65532);
      chownSync(run, 65532, 65532);
    }
    const endpoint = `unix://${run}/csi.sock`;
    const argv = [process.execPath, join(app, 'dist/bundle/main.mjs'), 'controller', `--data-dir=${data}`, `--endpoint=${endpoint}`, '--log-level=info'];
    const cmd = canDropToControllerUser ? ['setpriv', '--reuid=65532', '--regid=65532', '--clear-groups', '--', ...argv] : argv;
    const child = spawn(cmd[0], cmd.slice(1), { cwd: app, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NODE_ENV: 'production' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    child.stdout.on('data', (b: Buffer) => (logs += b.toString()));
    child.stderr.on('data', (b: Buffer) => (logs += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const health = () => spawnSync(process.execPath, [join(app, 'healthcheck.mjs')], { cwd: app, encoding: 'utf8', env: { ...process.env, CSI_ENDPOINT: endpoint, HEALTHCHECK_TIMEOUT_MS: '2000' }, timeout: 20_000 });
    try {
      let h = health();
      for (let i = 0; i < 50 && h.status !== 0 && child.exitCode === null; i++) {
        await new Promise((r) => setTimeout(r, 200));
        h = health();
      }
      expect(h.status, `healthcheck: ${h.stderr}\nsinter: ${logs}`).toBe(0);
      child.kill('SIGTERM');
      expect(await exited, logs).toBe(0);
      const after = health();
      expect(after.status).toBe(1);
      expect(after.stderr).toMatch(/healthcheck: Probe on unix:\/\/.*failed/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 60_000);
});
