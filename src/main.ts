#!/usr/bin/env node
import { loadConfig } from './config/load.js';
import type { Role } from './config/types.js';
import { ConfigError } from './config/error.js';
import { readAheadFileBackends } from './backends/file/read-ahead.js';
import { VERSION } from './version.js';

const USAGE = `sinter ${VERSION} — Cinder's block-storage model as a CSI driver

Usage:
  sinter controller|node|all [flags]
  sinter fsck [all|controller|node] [flags] [--json] [--repair]
                            check records, images, mounts and loop devices (sinter fsck --help)
  sinter version

Flags:
  --endpoint URL            unix:///path.sock or tcp://host:port (default unix:///csi/csi.sock)
  --config FILE             YAML configuration (see README)
  --data-dir DIR            shorthand for one file backend named "default" in DIR
  --node-id ID              node id to report (default: built from the node name and initiator IQN)
  --node-name NAME          this node's name (default $NODE_NAME or the host name)
  --kubelet-root DIR        allowed root for staging/target paths; repeatable (default /var/lib/kubelet)
  --driver-name NAME        CSI driver name (default sinter.csi.io)
  --state-dir DIR           where the node keeps its staging records
  --max-volumes-per-node N  reported by NodeGetInfo (0 = no limit)
  --orphan-sessions MODE    report|clean: iSCSI attachments no stage record explains and
                            nothing uses are only reported, or torn down at start (default report)
  --metrics-address ADDR    serve Prometheus metrics at http://ADDR/metrics; host:port, [ipv6]:port
                            or :port (every interface); default off (no port opened)
  --log-level LEVEL         fatal|error|warn|info|debug|trace|silent (default info)
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === 'version' || cmd === '--version') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === 'fsck') {
    // Loaded only for this command: the checker does not need the gRPC server.
    const { fsckMain } = await import('./fsck/cli.js');
    return fsckMain(rest);
  }
  if (cmd !== 'controller' && cmd !== 'node' && cmd !== 'all') {
    process.stderr.write(`sinter: unknown command "${cmd}"\n\n${USAGE}`);
    return 2;
  }
  const role: Role = cmd;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  let cfg;
  try {
    cfg = loadConfig(role, rest);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`sinter: configuration error: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  // Reading 10,000 volume records takes as long as loading the driver; a worker
  // reads them meanwhile. The controller still serves nothing before they are
  // loaded (ListVolumes and CreateVolume's idempotency need them).
  const readAhead = role === 'node' ? undefined : readAheadFileBackends(cfg.backends);
  // Imported here so `sinter version` and config errors answer without loading the whole driver,
  // and after the read-ahead's worker is started, so that it boots and reads meanwhile (pino alone takes ~50 ms).
  const [{ createLogger }, { createApp }] = await Promise.all([import('./csi/logging.js'), import('./app.js')]);
  const log = createLogger(cfg.logLevel);
  const app = await createApp(cfg, log, { readAhead });
  const address = await app.listen();
  log.info({ role, address, version: VERSION, driver: cfg.driverName, nodeId: app.nodeId }, 'sinter started');

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down: finishing in-flight RPCs');
      app.stop().then(resolve, resolve);
    };
    // `on`, not `once`: execa's exit hook re-raises a signal that has no
    // listener left besides its own, which would kill us mid-shutdown.
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  log.info('stopped');
  log.flush();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`sinter: ${(e as Error)?.message ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
