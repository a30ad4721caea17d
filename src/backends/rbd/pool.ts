import { Code, DomainError } from '../../errors/domain-error.js';
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

const isErrno = (e: unknown, ...n: number[]) => e instanceof CephCommandError && e.errno !== undefined && n.includes(e.errno);

/**
 * One pool's images through the rbd CLI: the few operations the backend is
 * made of, each idempotent where a retry after a crash needs it to be.
 */
export class RbdPool {
  constructor(
    readonly pool: string,
    private readonly cli: CephCli,
    private readonly features: readonly string[],
    private readonly dataPool?: string,
  ) {}

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
    try {
      return await this.cli.rbdJson<ImageInfo>(['info', this.spec(image)], `reading image ${this.spec(image)}`);
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
      return (await this.cli.rbdJson<Record<string, string> | null>(['image-meta', 'list', this.spec(image)], `reading the metadata of ${this.spec(image)}`)) ?? {};
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return undefined;
      throw e;
    }
  }

  async setMeta(image: string, key: string, value: string): Promise<void> {
    await this.cli.rbd(['image-meta', 'set', this.spec(image), key, value], `writing the record of ${this.spec(image)}`);
  }

  private featureArgs(): string[] {
    return [...(this.dataPool ? ['--data-pool', this.dataPool] : []), '--image-feature', this.features.join(',')];
  }

  /** A new empty image; an existing one of that name is an error (the caller decides whether it is its own). */
  async create(image: string, sizeBytes: number): Promise<void> {
    await this.cli.rbd(['create', '--size', `${sizeBytes}B`, ...this.featureArgs(), this.spec(image)], `creating image ${this.spec(image)}`);
  }

  /**
   * `target` as a copy-on-write clone (format 2: no protected snapshot) of
   * `source` as it is now: through a temporary snapshot, removed at the end
   * (the clone keeps it alive in the trash namespace). Each step accepts what
   * an interrupted earlier run left.
   */
  async cloneFrom(source: string, target: string): Promise<void> {
    const snap = `${this.spec(source)}@${tempSnapName(target)}`;
    try {
      await this.cli.rbd(['snap', 'create', '--no-progress', snap], `snapshotting ${this.spec(source)} to clone it`);
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
    try {
      await this.cli.rbd(['clone', '--rbd-default-clone-format', '2', ...this.featureArgs(), snap, this.spec(target)], `cloning ${this.spec(source)} to ${this.spec(target)}`);
    } catch (e) {
      if (!isErrno(e, Errno.EEXIST)) throw e;
    }
    await this.removeSnap(source, tempSnapName(target));
  }

  async removeSnap(image: string, snap: string): Promise<void> {
    try {
      await this.cli.rbd(['snap', 'rm', '--no-progress', `${this.spec(image)}@${snap}`], `removing snapshot ${snap} of ${this.spec(image)}`);
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
      await this.cli.rbd(['rm', '--no-progress', this.spec(image)], `removing image ${this.spec(image)}`);
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return 'gone';
      if (!isErrno(e, Errno.ENOTEMPTY)) {
        if (isErrno(e, Errno.EBUSY))
          throw new DomainError(Code.FAILED_PRECONDITION, `image ${this.spec(image)} is still open by a client (mapped or attached on a node): unstage it there first; \`rbd status ${this.spec(image)}\` names the client`);
        throw e;
      }
      await this.cli.rbd(['trash', 'mv', this.spec(image)], `moving image ${this.spec(image)} to the trash`);
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

  /** The Ceph clients watching an image (every client that has it open for writing); [] when the image is gone. */
  async watchers(image: string): Promise<{ address: string; client: string }[]> {
    try {
      const r = await this.cli.rbdJson<{ watchers?: { address: string; client: number }[] } | null>(['status', this.spec(image)], `reading the clients of ${this.spec(image)}`);
      return (r?.watchers ?? []).map((w) => ({ address: w.address, client: `client.${w.client}` }));
    } catch (e) {
      if (isErrno(e, Errno.ENOENT)) return [];
      throw e;
    }
  }

  /** The pool's usage: what is stored and what can still be written (max_avail, after replication). */
  async usage(): Promise<{ stored: number; maxAvail: number }> {
    const df = await this.cli.cephJson<{ pools?: { name: string; stats: { stored?: number; bytes_used?: number; max_avail: number } }[] }>(['df'], 'reading the pool usage (ceph df)');
    const p = df.pools?.find((x) => x.name === this.pool);
    if (!p) throw new DomainError(Code.FAILED_PRECONDITION, `pool "${this.pool}" does not exist in the Ceph cluster; create it (ceph osd pool create ${this.pool}; rbd pool init ${this.pool})`);
    return { stored: p.stats.stored ?? p.stats.bytes_used ?? 0, maxAvail: p.stats.max_avail };
  }
}
