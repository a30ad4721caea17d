import { Code, DomainError } from '../../errors/domain-error.js';
import type { Logger } from 'pino';
import { AgentConnectError, AgentUnavailableError, type RbdAgent } from './agent.js';
import { CephCommandError, Errno, type CephCli } from './cli.js';
import { tempSnapName } from './names.js';

export interface ImageEntry {
  image: string;
  id: string;
  size: number;
  parent?: { pool: string; image: string; snapshot: string };
}

export interface ImageInfo {
  name: string;
  id: string;
  size: number;
  snapshot_count: number;
  features: string[];
  /** When the image was made (`Sun Dec  6 07:06:55 2026`, the cluster's local time). */
  create_timestamp?: string;
  parent?: { pool: string; image: string; id: string; snapshot: string; trash: boolean };
}

/** `v1:127.0.0.1:0/123` or `127.0.0.1:0/123` → `127.0.0.1:0/123`, as `rbd status` names a client instance. */
export const clientAddress = (a: string) => a.replace(/^v[12]:/, '');

const isErrno = (e: unknown, ...n: number[]) => e instanceof CephCommandError && e.errno !== undefined && n.includes(e.errno);

/**
 * One pool's images through the rbd CLI: the few operations the backend is
 * made of, each idempotent where a retry after a crash needs it to be.
 */
export class RbdPool {
  private agentOff = false;

  constructor(
    readonly pool: string,
    private readonly cli: CephCli,
    private readonly features: readonly string[],
    private readonly dataPool?: string,
    private readonly agent?: RbdAgent,
    private readonly log?: Logger,
  ) {}

  /**
   * The agent's way (one request on the open connection, a few ms) when there
   * is an agent, else the CLI's (a process and a cluster connect per call).
   * An agent that cannot start here (no python3-rbd) is given up for good.
   */
  private async via<T>(agent: (a: RbdAgent) => Promise<T>, cli: () => Promise<T>): Promise<T> {
    if (this.agent && !this.agentOff) {
      try {
        return await agent(this.agent);
      } catch (e) {
        // The CLI's own connect names why (auth refused, monitors unreachable), or succeeds if it was passing.
        if (e instanceof AgentConnectError) return cli();
        if (!(e instanceof AgentUnavailableError)) throw e;
        this.agentOff = true;
        this.log?.warn({ err: e.message }, 'the rbd agent cannot run here; every Ceph call goes through the rbd CLI (slower)');
      }
    }
    return cli();
  }

  spec(image: string): string {
    return `${this.pool}/${image}`;
  }

  /** Images of the pool with their parents, and their (user) snapshots: one call. */
  async list(): Promise<{ images: ImageEntry[]; snaps: { image: string; snapshot: string }[] }> {
    const all = (await this.cli.rbdJson<(ImageEntry & { snapshot?: string })[] | null>(['ls', '--long', this.pool], `listing the images of pool ${this.pool}`)) ?? [];
    return {
      images: all.filter((e) => e.snapshot === undefined),
      snaps: all.flatMap((e) => (e.snapshot === undefined ? [] : [{ image: e.image, snapshot: e.snapshot }])),
    };
  }

  /** Images in the pool's trash (removed with snapshots that clones still need). */
  async trash(): Promise<{ id: string; name: string }[]> {
    return (await this.cli.rbdJson<{ id: string; name: string }[] | null>(['trash', 'ls', '--all', this.pool], `listing the trash of pool ${this.pool}`)) ?? [];
  }

  async info(image: string): Promise<ImageInfo | undefined> {
    const what = `reading image ${this.spec(image)}`;
    try {
      return await this.via(
        (a) => a.call<ImageInfo>('info', { pool: this.pool, image }, what),
        () => this.cli.rbdJson<ImageInfo>(['info', this.spec(image)], what),
      );
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return undefined;
      throw e;
    }
  }

  /** A trashed image, by id. */
  async infoById(id: string): Promise<ImageInfo | undefined> {
    try {
      return await this.cli.rbdJson<ImageInfo>(['info', '--pool', this.pool, '--image-id', id], `reading trashed image ${id} of pool ${this.pool}`);
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return undefined;
      throw e;
    }
  }

  /** All of an image's metadata; undefined when the image does not exist. */
  async meta(image: string): Promise<Record<string, string> | undefined> {
    try {
      const what = `reading the metadata of ${this.spec(image)}`;
      return (
        (await this.via(
          (a) => a.call<Record<string, string> | null>('meta_list', { pool: this.pool, image }, what),
          () => this.cli.rbdJson<Record<string, string> | null>(['image-meta', 'list', this.spec(image)], what),
        )) ?? {}
      );
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return undefined;
      throw e;
    }
  }

  async setMeta(image: string, key: string, value: string): Promise<void> {
    const what = `writing the record of ${this.spec(image)}`;
    await this.via(
      (a) => a.call('meta_set', { pool: this.pool, image, key, value }, what),
      () => this.cli.rbd(['image-meta', 'set', this.spec(image), key, value], what),
    );
  }

  private featureArgs(): string[] {
    return [...(this.dataPool ? ['--data-pool', this.dataPool] : []), '--image-feature', this.features.join(',')];
  }

  /**
   * A new empty image; an existing one of that name is an error (the caller
   * decides whether it is its own). With `meta`, the metadata is written right
   * after the image, in the same agent request: one round trip for a volume
   * and its record, with the record still last (an image without one is an
   * interrupted create).
   */
  async create(image: string, sizeBytes: number, meta?: Record<string, string>): Promise<void> {
    const what = `creating image ${this.spec(image)}`;
    await this.via(
      (a) => a.call('create', { pool: this.pool, image, size: sizeBytes, features: this.features, dataPool: this.dataPool, meta }, what),
      async () => {
        await this.cli.rbd(['create', '--size', `${sizeBytes}B`, ...this.featureArgs(), this.spec(image)], what);
        for (const [k, v] of Object.entries(meta ?? {})) await this.setMeta(image, k, v);
      },
    );
  }

  /**
   * `target` as a copy-on-write clone (format 2: no protected snapshot) of
   * `source` as it is now: through a temporary snapshot, removed at the end
   * (the clone keeps it alive in the trash namespace). Each step accepts what
   * an interrupted earlier run left.
   */
  async cloneFrom(source: string, target: string): Promise<void> {
    const snapName = tempSnapName(target);
    const snap = `${this.spec(source)}@${snapName}`;
    const what = `snapshotting ${this.spec(source)} to clone it`;
    try {
      await this.via(
        (a) => a.call('snap_create', { pool: this.pool, image: source, snap: snapName }, what),
        () => this.cli.rbd(['snap', 'create', '--no-progress', snap], what),
      );
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
    const cloning = `cloning ${this.spec(source)} to ${this.spec(target)}`;
    try {
      await this.via(
        (a) => a.call('clone', { pool: this.pool, image: source, snap: snapName, dest: target, features: this.features, dataPool: this.dataPool }, cloning),
        () => this.cli.rbd(['clone', '--rbd-default-clone-format', '2', ...this.featureArgs(), snap, this.spec(target)], cloning),
      );
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
    await this.removeSnap(source, tempSnapName(target));
  }

  async removeSnap(image: string, snap: string): Promise<void> {
    try {
      const what = `removing snapshot ${snap} of ${this.spec(image)}`;
      await this.via(
        (a) => a.call('snap_remove', { pool: this.pool, image, snap }, what),
        () => this.cli.rbd(['snap', 'rm', '--no-progress', `${this.spec(image)}@${snap}`], what),
      );
    } catch (e) {
      if (!isErrno(e, Errno.ENOENT)) throw e;
    }
  }

  /** Snapshots of an image (user namespace). */
  async snaps(image: string): Promise<{ name: string }[]> {
    try {
      return (await this.cli.rbdJson<{ name: string }[] | null>(['snap', 'ls', this.spec(image)], `listing the snapshots of ${this.spec(image)}`)) ?? [];
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return [];
      throw e;
    }
  }

  async resize(image: string, sizeBytes: number): Promise<void> {
    await this.cli.rbd(['resize', '--no-progress', '--size', `${sizeBytes}B`, this.spec(image)], `growing ${this.spec(image)} to ${sizeBytes} bytes`);
  }

  async flatten(image: string): Promise<void> {
    await this.cli.rbd(['flatten', '--no-progress', this.spec(image)], `flattening ${this.spec(image)}`);
  }

  /**
   * Removes an image; one whose snapshots clones still read from goes to the
   * trash instead (it is purged when its last clone goes: purgeTrashed).
   * 'gone' when there was nothing to remove. Then tries to purge the parent,
   * when the parent was itself waiting in the trash for this clone.
   */
  async remove(image: string): Promise<'removed' | 'trashed' | 'gone'> {
    const info = await this.info(image);
    if (!info) return 'gone';
    let how: 'removed' | 'trashed' = 'removed';
    try {
      const what = `removing image ${this.spec(image)}`;
      await this.via(
        (a) => a.call('remove', { pool: this.pool, image }, what),
        () => this.cli.rbd(['rm', '--no-progress', this.spec(image)], what),
      );
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return 'gone';
      if (!isErrno(e, Errno.ENOTEMPTY)) {
        if (isErrno(e, Errno.EBUSY))
          throw new DomainError(Code.FAILED_PRECONDITION, `image ${this.spec(image)} is still open by a client (mapped or attached on a node): unstage it there first; \`rbd status ${this.spec(image)}\` names the client`);
        throw e;
      }
      const trashing = `moving image ${this.spec(image)} to the trash`;
      await this.via(
        (a) => a.call('trash_move', { pool: this.pool, image }, trashing),
        () => this.cli.rbd(['trash', 'mv', this.spec(image)], trashing),
      );
      how = 'trashed';
    }
    if (info.parent?.trash) await this.purgeTrashed(info.parent.id);
    return how;
  }

  /** Removes a trashed image if no clone needs it any more, and then its trashed parent likewise; true if it removed `id`. */
  async purgeTrashed(id: string): Promise<boolean> {
    let next: string | undefined = id;
    let first = true;
    let removedFirst = false;
    while (next) {
      const info = await this.infoById(next);
      if (!info) return removedFirst;
      try {
        await this.cli.rbd(['trash', 'rm', '--no-progress', `${this.pool}/${next}`], `purging trashed image ${next} of pool ${this.pool}`);
      } catch (e) {
        if (isErrno(e, Errno.ENOTEMPTY, Errno.EBUSY, Errno.EPERM)) return removedFirst; // still needed by a clone
        if (isErrno(e, Errno.ENOENT)) return removedFirst;
        throw e;
      }
      if (first) removedFirst = true;
      first = false;
      next = info.parent?.trash ? info.parent.id : undefined;
    }
    return removedFirst;
  }

  /** The pool's `rbd group`s (sinter makes one per group snapshot, for the time it takes to cut it). */
  async groups(): Promise<string[]> {
    return (await this.cli.rbdJson<string[] | null>(['group', 'ls', this.pool], `listing the groups of pool ${this.pool}`)) ?? [];
  }

  async groupCreate(group: string): Promise<void> {
    try {
      await this.cli.rbd(['group', 'create', this.spec(group)], `creating group ${this.spec(group)}`);
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
  }

  /** Adds an image to the group; one already in it is fine, one in another group is refused (an image joins one group at a time). */
  async groupAdd(group: string, image: string): Promise<void> {
    try {
      await this.cli.rbd(['group', 'image', 'add', this.spec(group), this.spec(image)], `adding ${this.spec(image)} to group ${this.spec(group)}`);
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
      const members = (await this.cli.rbdJson<{ image: string; pool: string }[] | null>(['group', 'image', 'ls', this.spec(group)], `listing the images of group ${this.spec(group)}`)) ?? [];
      if (!members.some((m) => m.image === image && m.pool === this.pool))
        throw new DomainError(Code.FAILED_PRECONDITION, `image ${this.spec(image)} is a member of another rbd group; \`rbd group ls ${this.pool}\` and \`rbd group image ls\` name it (sinter's own are removed at its next start)`);
    }
  }

  async groupSnapCreate(group: string, snap: string): Promise<void> {
    try {
      await this.cli.rbd(['group', 'snap', 'create', `${this.spec(group)}@${snap}`], `cutting the group snapshot ${this.spec(group)}@${snap}`);
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
  }

  /** Removes a group with its group snapshots (librbd removes them from the member images too); gone is fine. */
  async groupRemove(group: string): Promise<void> {
    try {
      await this.cli.rbd(['group', 'rm', this.spec(group)], `removing group ${this.spec(group)}`);
    } catch (e) {
      if (!isErrno(e, Errno.ENOENT)) throw e;
    }
  }

  /**
   * The Ceph clients watching an image (every client that has it open for
   * writing), but for the controller's own agent (it opens images to snapshot
   * them: never a node's client to refuse a publish for or to fence); [] when
   * the image is gone.
   */
  async watchers(image: string): Promise<{ address: string; client: string }[]> {
    try {
      const r = await this.cli.rbdJson<{ watchers?: { address: string; client: number }[] } | null>(['status', this.spec(image)], `reading the clients of ${this.spec(image)}`);
      const own = this.agent?.ownClient();
      return (r?.watchers ?? []).map((w) => ({ address: w.address, client: `client.${w.client}` })).filter((w) => w.client !== own);
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return [];
      throw e;
    }
  }

  /**
   * The client instances holding the image's exclusive lock (`rbd lock ls`),
   * but for the controller's own agent: a writer keeps the lock until it
   * closes the image, so a client that still holds it but no longer watches
   * is one that went silent (partitioned, hung), not one that left. Undefined
   * when the image has no exclusive-lock feature (nothing then says who
   * wrote last); [] when the image is gone.
   */
  async lockHolders(image: string): Promise<{ address: string; client: string }[] | undefined> {
    const info = await this.info(image);
    if (!info) return [];
    if (!info.features.includes('exclusive-lock')) return undefined;
    type Locker = { id?: string; locker?: string; address?: string };
    try {
      // Pacific prints an array of lockers; older releases an object keyed by the lock id.
      const r = await this.cli.rbdJson<Locker[] | Record<string, Locker> | null>(['lock', 'ls', this.spec(image)], `reading the lock owners of ${this.spec(image)}`);
      const all = Array.isArray(r) ? r : Object.values(r ?? {});
      const own = this.agent?.ownClient();
      return all
        .filter((l): l is Required<Pick<Locker, 'address' | 'locker'>> => typeof l.address === 'string' && typeof l.locker === 'string')
        .map((l) => ({ address: clientAddress(l.address), client: l.locker }))
        .filter((l) => l.client !== own);
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return [];
      throw e;
    }
  }

  /** The pool's usage: what is stored and what can still be written (max_avail, after replication). */
  async usage(): Promise<{ stored: number; maxAvail: number }> {
    type Df = { pools?: { name: string; stats: { stored?: number; bytes_used?: number; max_avail: number } }[] };
    const what = 'reading the pool usage (ceph df)';
    const df = await this.via(
      (a) => a.call<Df>('df', {}, what),
      () => this.cli.cephJson<Df>(['df'], what),
    );
    const p = df.pools?.find((x) => x.name === this.pool);
    if (!p) throw new DomainError(Code.FAILED_PRECONDITION, `pool "${this.pool}" does not exist in the Ceph cluster; create it (ceph osd pool create ${this.pool}; rbd pool init ${this.pool})`);
    return { stored: p.stats.stored ?? p.stats.bytes_used ?? 0, maxAvail: p.stats.max_avail };
  }
}
