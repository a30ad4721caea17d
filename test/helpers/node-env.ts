import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { DomainError } from '../../src/errors/domain-error.js';
import { HostExecutor } from '../../src/exec/run.js';
import { parseMountInfo, type MountEntry } from '../../src/node/mount.js';
import { NodeService, type NodeServiceConfig, type NodeServiceDeps } from '../../src/node/service.js';
import type { NodeStageVolumeRequest } from '../../src/csi/generated/csi/v1/NodeStageVolumeRequest.js';
import type { AccessMode, InProcess, NodeImpl, NodeRpcs, VolumeCapability } from '../../src/csi/messages.js';

/** The node's handlers called in-process with a client's request shapes. */
export type NodeHandlers = InProcess<NodeImpl, NodeRpcs>;

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/**
 * One test's private world: a kubelet root, a directory of image files (the
 * local root), a state dir, and a NodeService over them that runs real host
 * commands. cleanup() unmounts and detaches everything under the temp dir,
 * whatever the test left behind.
 */
/** A stage request whose volume and staging path are set (the skeleton always sets them). */
export type StageReq = NodeStageVolumeRequest & { volume_id: string; staging_target_path: string };

export class NodeEnv {
  readonly exec = new HostExecutor({ mode: 'direct', defaultTimeoutMs: 120_000 });
  svc!: NodeService;
  h!: NodeHandlers;
  config!: NodeServiceConfig;
  /** Replaces parts of what the NodeService gets (an executor, fc connector options). */
  deps: Partial<Pick<NodeServiceDeps, 'exec' | 'fc'>> = {};

  private constructor(readonly dir: string) {}

  get kubelet(): string {
    return join(this.dir, 'kubelet');
  }
  get images(): string {
    return join(this.dir, 'images');
  }
  get stateDir(): string {
    return join(this.dir, 'state');
  }

  /** Loop devices attached to an image file. */
  async loopsOf(file: string): Promise<string[]> {
    return (await this.sh('losetup', ['--list', '--noheadings', '--output', 'NAME', '--associated', file])).split('\n').filter(Boolean);
  }

  static async create(overrides: Partial<NodeServiceConfig> = {}): Promise<NodeEnv> {
    const dir = await mkdtemp(join(tmpdir(), 'sinter-node-'));
    const env = new NodeEnv(dir);
    await mkdir(env.kubelet, { recursive: true });
    await mkdir(env.images, { recursive: true });
    env.config = {
      driverName: 'sinter.csi.example.org',
      nodeName: 'node-a',
      nodeId: 'node-a;;',
      maxVolumesPerNode: 0,
      topology: {},
      kubeletRoots: [env.kubelet],
      localRoots: [env.images],
      stateDir: env.stateDir,
      ...overrides,
    };
    env.restart();
    await env.svc.start();
    return env;
  }

  /** A fresh NodeService over the same directories: what a plugin restart sees. */
  restart(): NodeService {
    return this.use(new NodeService({ config: this.config, exec: this.deps.exec ?? this.exec, fc: this.deps.fc, log: pino({ level: 'silent' }) }));
  }

  /** Serves the tests from svc (one built with other connectors); h calls its handlers in-process. */
  use(svc: NodeService): NodeService {
    this.svc = svc;
    this.h = svc.handlers() as NodeHandlers;
    return svc;
  }

  async image(name: string, bytes: number): Promise<string> {
    const p = join(this.images, name);
    await this.exec.run('truncate', ['-s', String(bytes), p]);
    return p;
  }

  /** A request skeleton for a volume backed by image `file`. */
  stageReq(volumeId: string, file: string, cap: VolumeCapability, extra: Partial<NodeStageVolumeRequest> = {}): StageReq {
    return {
      volume_id: volumeId,
      publish_context: { transport: 'local', path: file },
      staging_target_path: join(this.kubelet, 'staging', volumeId),
      volume_capability: cap,
      secrets: {},
      volume_context: {},
      ...extra,
    };
  }

  target(volumeId: string, pod = 'pod1'): string {
    return join(this.kubelet, 'pods', pod, volumeId, 'mount');
  }

  async mountsUnder(): Promise<MountEntry[]> {
    const all = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
    return all.filter((m) => m.mountPoint === this.dir || m.mountPoint.startsWith(this.dir + '/'));
  }

  /** Loop devices whose backing file is under this env (or is a loop device of this env: read-only views). */
  async loopsUnder(): Promise<{ name: string; back: string }[]> {
    const all = await this.allLoops();
    const ours = new Set(all.filter((l) => l.back.startsWith(this.dir + '/')).map((l) => l.name));
    return all.filter((l) => ours.has(l.name) || ours.has(l.back));
  }

  private async allLoops(): Promise<{ name: string; back: string }[]> {
    const res = await this.exec.run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE']);
    if (!res.stdout.trim()) return [];
    return (JSON.parse(res.stdout) as { loopdevices: { name: string; 'back-file': string | null }[] }).loopdevices.map((l) => ({
      name: l.name,
      back: (l['back-file'] ?? '').replace(/ \(deleted\)$/, ''),
    }));
  }

  async cleanup(): Promise<void> {
    // Listed before the unmounts: once a store the images live on (a tmpfs
    // under the env) is lazily unmounted, the backing paths no longer start
    // with this.dir and the loop devices would be left bound for good.
    const before = await this.loopsUnder();
    for (let i = 0; i < 10; i++) {
      const mounts = await this.mountsUnder();
      if (!mounts.length) break;
      for (const m of mounts.reverse()) await this.exec.run('umount', ['-l', m.mountPoint]).catch(() => undefined);
    }
    // Read-only views sit on top of the volume's loop device: detach them first.
    const after = await this.loopsUnder();
    // A device listed before counts only while it is still backed by the same
    // file seen from outside its unmounted store (its path a suffix of the old
    // one): a device freed meanwhile may already be another test's.
    const current = new Map((await this.allLoops()).map((l) => [l.name, l.back]));
    const stale = before.filter((b) => !after.some((a) => a.name === b.name) && !!current.get(b.name) && b.back.endsWith(current.get(b.name)!));
    const loops = [...after, ...stale];
    const views = loops.filter((l) => l.back.startsWith('/dev/'));
    for (const l of [...views, ...loops.filter((x) => !views.includes(x))]) await this.exec.run('losetup', ['-d', l.name]).catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Run a host command, returning stdout. */
  async sh(cmd: string, args: string[]): Promise<string> {
    return (await this.exec.run(cmd, args)).stdout;
  }

  async write(path: string, text: string): Promise<void> {
    await writeFile(path, text);
  }
}

/** Awaits p and returns the DomainError it rejected with (fails if it resolved). */
export async function csiError(p: Promise<unknown>): Promise<DomainError> {
  try {
    await p;
  } catch (e) {
    return e as DomainError;
  }
  throw new Error('expected the call to fail, but it succeeded');
}

export const mountCap = (fsType?: string, mode: AccessMode = 'SINGLE_NODE_WRITER', mountFlags: string[] = []): VolumeCapability => ({
  access_type: 'mount',
  mount: { ...(fsType ? { fs_type: fsType } : {}), mount_flags: mountFlags },
  access_mode: { mode },
});

export const blockCap = (mode: AccessMode = 'SINGLE_NODE_WRITER'): VolumeCapability => ({ access_type: 'block', block: {}, access_mode: { mode } });
