// The guest side of a host-driven VM test (test/helpers/guest-agent.ts): a
// small HTTP server in the guest that runs what the host test asks, so a test
// on the host can drive a real 6.1 kernel (iscsi_tcp, rbd.ko, dm-*) while its
// cluster, controller and checks stay on the host at native speed.
//
// It listens on the guest's 10.0.2.15 only; qemu forwards one port of the
// host's 127.0.0.1 to it (harness.mjs netArgs), so nothing outside this
// machine can reach it, and it lives only as long as the guest.
//
//   GET  /ready                                   200 once listening
//   POST /run    {argv, input?, timeoutMs?}       → {exitCode, stdout, stderr}
//   POST /spawn  {name, argv, env?}               → {pid}   (a long-lived process)
//   GET  /logs?name=N                             → its stdout+stderr so far (last 4 MiB)
//   POST /signal {name, signal, waitMs?}          → {exited, code, signal}
//   POST /exit                                    stops what it spawned, then the guest
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';

const [port = '7000', host = '10.0.2.15'] = process.argv.slice(2);
/** @type {Map<string, { child: import('node:child_process').ChildProcess, out: string, exit?: { code: number | null, signal: string | null } }>} */
const procs = new Map();

function run({ argv, input, timeoutMs = 600_000 }) {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ exitCode: 127, stdout, stderr: stderr + e.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code ?? 128, signal, stdout, stderr });
    });
    child.stdin.end(input ?? '');
  });
}

function start({ name, argv, env }) {
  if (procs.get(name)?.exit === undefined && procs.has(name)) throw new Error(`${name} is already running`);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const p = { child, out: '' };
  const keep = (d) => {
    p.out += d;
    if (p.out.length > 8 * 2 ** 20) p.out = p.out.slice(-4 * 2 ** 20);
  };
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  child.on('exit', (code, signal) => (p.exit = { code, signal }));
  child.on('error', (e) => {
    keep(`spawn failed: ${e.message}\n`);
    p.exit = { code: 127, signal: null };
  });
  procs.set(name, p);
  return { pid: child.pid };
}

async function signal({ name, signal: sig = 'SIGTERM', waitMs = 30_000 }) {
  const p = procs.get(name);
  if (!p) throw new Error(`no process ${name}`);
  if (!p.exit) p.child.kill(sig);
  const until = Date.now() + waitMs;
  while (!p.exit && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  return { exited: Boolean(p.exit), ...p.exit };
}

async function stopAll() {
  await Promise.all([...procs.keys()].map(async (name) => {
    const r = await signal({ name, waitMs: 15_000 });
    if (!r.exited) await signal({ name, signal: 'SIGKILL', waitMs: 5_000 });
  }));
}

const server = createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (d) => (body += d));
  req.on('end', async () => {
    const url = new URL(req.url ?? '/', 'http://agent');
    const reply = (code, value) => {
      res.writeHead(code, { 'content-type': typeof value === 'string' ? 'text/plain' : 'application/json' });
      res.end(typeof value === 'string' ? value : JSON.stringify(value));
    };
    try {
      const arg = body ? JSON.parse(body) : {};
      if (req.method === 'GET' && url.pathname === '/ready') return reply(200, 'ready');
      if (req.method === 'GET' && url.pathname === '/logs') return reply(200, procs.get(url.searchParams.get('name') ?? '')?.out ?? '');
      if (req.method === 'POST' && url.pathname === '/run') return reply(200, await run(arg));
      if (req.method === 'POST' && url.pathname === '/spawn') return reply(200, start(arg));
      if (req.method === 'POST' && url.pathname === '/signal') return reply(200, await signal(arg));
      if (req.method === 'POST' && url.pathname === '/exit') {
        await stopAll();
        reply(200, 'bye');
        server.close();
        return setTimeout(() => process.exit(0), 100);
      }
      reply(404, `no ${req.method} ${url.pathname}`);
    } catch (e) {
      reply(500, String(e?.message ?? e));
    }
  });
});
server.listen(Number(port), host, () => console.log(`sinter-vm-agent: listening on ${host}:${port}`));
