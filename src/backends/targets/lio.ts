import { isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { ChapError, validateChap, type ChapCredentials } from '../../contracts/chap.js';
import { isValidIqn, sameIqn } from '../../contracts/nodeid.js';
import { DomainError, failedPrecondition, internal, invalidArgument, notFound, unavailable } from '../../errors/domain-error.js';
import { KeyedLock } from '../../csi/locks.js';
import { LioConfigfs } from './lio-configfs.js';
import {
  aclDir,
  authValue,
  backstoreAttributes,
  backstoreDir,
  backstoreName,
  controlString,
  hbaDir,
  hbaIndex,
  LINK,
  LUN,
  lunDir,
  mappedLunDir,
  npName,
  parseAclInfo,
  parseBackstoreInfo,
  targetDir,
  TPG_ATTRIBUTES,
  tpgDir,
  type BackstoreKind,
} from './lio-plan.js';
import type { EnsureTargetOptions, LunInfo, LunRefresh, TargetAccount, TargetHelper, TargetInfo, TargetRef, TargetSession } from './target-helper.js';
import { targetIqn, validateIqnPrefix, volumeIdOfIqn } from './tgt.js';

export interface LioConfig {
  /** Target names are this prefix + the volume id, e.g. `iqn.2025-01.io.sinter:`. */
  iqnPrefix: string;
  /** Portals every target listens on (IP literal:port); the same list goes to nodes in publish_context. */
  portals: string[];
  /** The LUN's write cache (WCE): fileio opens the image buffered (true) or O_DSYNC (false). Default true. */
  writeCache?: boolean;
  /** Advertise UNMAP (emulate_tpu) so discards free space in the image or device. Default true. */
  discard?: boolean;
  /** Logical block size of fileio LUNs (an iblock LUN keeps its device's). Default 512. */
  blockSize?: 512 | 1024 | 2048 | 4096;
  /** Where the target tree is; tests point it elsewhere. */
  configfsRoot?: string;
}

const KINDS: BackstoreKind[] = ['fileio', 'iblock'];

/**
 * TargetHelper for the kernel's own target (LIO), Cinder's lioadm: sinter
 * writes configfs itself, as rtslib does, with no targetcli or Python at run
 * time. Per volume: a fileio (image file) or iblock (block device) backstore
 * named by the volume id in sinter's own HBA, one target, TPG 1 with the
 * configured portals, LUN 1, one ACL per allowed initiator (with its CHAP), and
 * the TPG enabled last, so no initiator sees a half-built target.
 *
 * The kernel keeps nothing across a reboot: every method reads configfs and
 * converges, and the controller's reconcile rebuilds from the records.
 * Removing an ACL makes the kernel end that initiator's sessions before the
 * rmdir returns (target_core_tpg.c core_tpg_del_initiator_node_acl →
 * target_shutdown_sessions): that is the fence.
 */
export class LioTargetHelper implements TargetHelper {
  readonly kind = 'lio';
  private readonly locks = new KeyedLock();
  private readonly cfs: LioConfigfs;
  private readonly hba: number;
  private readonly nps: string[];
  private readonly readonly = new Map<string, boolean>();
  private readonly opts: { writeCache: boolean; discard: boolean; blockSize: number };

  constructor(
    private readonly cfg: LioConfig,
    private readonly log?: Logger,
  ) {
    validateIqnPrefix(cfg.iqnPrefix);
    this.nps = [...new Set(cfg.portals.map(npName))];
    this.cfs = new LioConfigfs(cfg.configfsRoot);
    this.hba = hbaIndex(cfg.iqnPrefix);
    this.opts = { writeCache: cfg.writeCache ?? true, discard: cfg.discard ?? true, blockSize: cfg.blockSize ?? 512 };
  }

  iqnFor(volumeId: string): string {
    return targetIqn(this.cfg.iqnPrefix, volumeId);
  }

  volumeIdOf(iqn: string): string | undefined {
    return volumeIdOfIqn(this.cfg.iqnPrefix, iqn);
  }

  private async requireLio(): Promise<void> {
    if (!(await this.cfs.exists('core')))
      throw unavailable(
        `LIO is not loaded: ${this.cfs.root}/core is missing (modprobe target_core_mod iscsi_target_mod target_core_file target_core_iblock; mount -t configfs none /sys/kernel/config)`,
      );
  }

  // ---------------------------------------------------------------- backstores

  /** The backstore of a volume that exists, in either of sinter's HBAs. */
  private async findBackstore(volumeId: string): Promise<{ kind: BackstoreKind; dir: string } | undefined> {
    const name = backstoreName(volumeId);
    for (const kind of KINDS) {
      const dir = backstoreDir(kind, this.hba, name);
      if (await this.cfs.exists(dir)) return { kind, dir };
    }
    return undefined;
  }

  private async backstoreInfo(kind: BackstoreKind, dir: string) {
    return parseBackstoreInfo(kind, (await this.cfs.read(`${dir}/info`)) ?? '');
  }

  private async ensureBackstore(volumeId: string, iqn: string, kind: BackstoreKind, path: string, bytes: number): Promise<string> {
    const have = await this.findBackstore(volumeId);
    if (have) {
      const info = await this.backstoreInfo(have.kind, have.dir);
      const enabled = (await this.cfs.read(`${have.dir}/enable`)) === '1';
      if (have.kind === kind && (!enabled || info.path === path)) return this.configureBackstore(volumeId, iqn, kind, have.dir, path, bytes);
      const sessions = await this.sessionsOf(iqn);
      if (sessions.length > 0)
        throw failedPrecondition(`target ${iqn} serves ${info.path ?? 'another backstore'} as LUN ${LUN} with ${sessions.length} session(s) logged in; not replacing it with ${path}`);
      this.log?.warn({ iqn, had: info.path, want: path }, 'replacing the LIO backstore');
      await this.removeLun(iqn);
      await this.cfs.rmdir(have.dir);
    }
    await this.cfs.mkdir(hbaDir(kind, this.hba)).catch((e: Error) => {
      throw e instanceof DomainError ? new DomainError(e.code, `${e.message} (is target_core_${kind === 'fileio' ? 'file' : 'iblock'} loaded?)`) : e;
    });
    const dir = backstoreDir(kind, this.hba, backstoreName(volumeId));
    await this.cfs.mkdir(dir);
    return this.configureBackstore(volumeId, iqn, kind, dir, path, bytes);
  }

  private async configureBackstore(volumeId: string, iqn: string, kind: BackstoreKind, dir: string, path: string, bytes: number): Promise<string> {
    if ((await this.cfs.read(`${dir}/enable`)) !== '1') {
      // A crash between mkdir and enable leaves a backstore the kernel has not opened: configure it (again).
      await this.cfs.write(`${dir}/control`, controlString(kind, path, bytes, this.opts.writeCache));
      await this.cfs.write(`${dir}/udev_path`, path);
      await this.cfs.write(`${dir}/enable`, '1');
      this.log?.info({ iqn, backstore: dir, path }, 'LIO backstore created');
    }
    const exported = Object.values(await this.cfs.links(lunDir(iqn))).includes(dir);
    for (const a of backstoreAttributes(kind, volumeId, this.opts)) {
      const cur = await this.cfs.read(`${dir}/${a.attr}`);
      if (cur === undefined || cur === a.value) continue;
      if (a.beforeExport && exported) {
        this.log?.warn({ iqn, attr: a.attr, cur, want: a.value }, 'LIO backstore attribute differs but cannot change while exported');
        continue;
      }
      try {
        await this.cfs.write(`${dir}/${a.attr}`, a.value);
      } catch (e) {
        if (!a.optional) throw e;
        this.log?.warn({ iqn, attr: a.attr, err: (e as Error).message }, 'LIO backstore attribute refused; continuing without it');
      }
    }
    return dir;
  }

  // ---------------------------------------------------------------- targets

  async ensureTarget(volumeId: string, imagePath: string, opts: EnsureTargetOptions = {}): Promise<TargetRef> {
    const iqn = this.iqnFor(volumeId);
    if (!isAbsolute(imagePath)) throw invalidArgument(`image path for ${volumeId} must be absolute`);
    const readonly = opts.readonly ?? false;
    return this.locks.run(volumeId, async () => {
      await this.requireLio();
      const b = await this.cfs.backing(imagePath);
      if (!b) throw failedPrecondition(`volume ${volumeId}: its backing file or device is missing; not exporting it`);
      const kind: BackstoreKind = b.kind === 'block' ? 'iblock' : 'fileio';
      const so = await this.ensureBackstore(volumeId, iqn, kind, imagePath, b.bytes);

      const tpg = tpgDir(iqn);
      await this.cfs.mkdir('iscsi');
      await this.cfs.mkdir(targetDir(iqn));
      const fresh = !(await this.cfs.exists(tpg));
      await this.cfs.mkdir(tpg);
      for (const [attr, value] of TPG_ATTRIBUTES) await this.setIfDiffers(`${tpg}/attrib/${attr}`, value);
      // A new TPG enforces CHAP (the kernel's default authentication=1) though no ACL has credentials yet:
      // off until allowInitiator is given CHAP; an existing TPG's setting is left as it is.
      if (fresh) await this.cfs.write(`${tpg}/attrib/authentication`, '0');
      const nps = await this.cfs.dirs(`${tpg}/np`);
      for (const np of this.nps) if (!nps.includes(np)) await this.cfs.mkdir(`${tpg}/np/${np}`);
      for (const np of nps) if (!this.nps.includes(np)) await this.cfs.rmdir(`${tpg}/np/${np}`);

      const lun = lunDir(iqn);
      await this.cfs.mkdir(lun);
      // A link of any name to the right backstore is kept (targetcli's restore names them at random):
      // unlinking it would take the LUN away from logged-in initiators.
      const links = await this.cfs.links(lun);
      for (const [name, to] of Object.entries(links)) if (to !== so) await this.cfs.unlink(`${lun}/${name}`);
      if (!Object.values(links).includes(so)) await this.cfs.symlink(so, `${lun}/${LINK}`);

      this.readonly.set(volumeId, readonly);
      for (const acl of await this.cfs.dirs(`${tpg}/acls`)) await this.setIfDiffers(`${mappedLunDir(iqn, acl)}/write_protect`, readonly ? '1' : '0', true);

      // Last: the TPG starts accepting logins only now that everything is in place.
      if ((await this.cfs.read(`${tpg}/enable`)) !== '1') {
        await this.cfs.write(`${tpg}/enable`, '1');
        this.log?.info({ iqn, portals: this.nps }, 'LIO target enabled');
      }
      return { iqn, lun: LUN, tid: 1 };
    });
  }

  private async setIfDiffers(rel: string, value: string, onlyIfThere = false): Promise<void> {
    const cur = await this.cfs.read(rel);
    if (cur === value || (onlyIfThere && cur === undefined)) return;
    await this.cfs.write(rel, value);
  }

  /** Unlinks LUN 1 from its backstore and removes it, mapped LUNs first (the kernel would drop them anyway). */
  private async removeLun(iqn: string): Promise<void> {
    const tpg = tpgDir(iqn);
    for (const acl of await this.cfs.dirs(`${tpg}/acls`)) await this.removeMappedLuns(iqn, acl);
    for (const l of await this.cfs.dirs(`${tpg}/lun`)) {
      for (const name of Object.keys(await this.cfs.links(`${tpg}/lun/${l}`))) await this.cfs.unlink(`${tpg}/lun/${l}/${name}`);
      await this.cfs.rmdir(`${tpg}/lun/${l}`);
    }
  }

  private async removeMappedLuns(iqn: string, acl: string): Promise<void> {
    const dir = aclDir(iqn, acl);
    for (const m of (await this.cfs.dirs(dir)).filter((d) => /^lun_\d+$/.test(d))) {
      for (const name of Object.keys(await this.cfs.links(`${dir}/${m}`))) await this.cfs.unlink(`${dir}/${m}/${name}`);
      await this.cfs.rmdir(`${dir}/${m}`);
    }
  }

  /** Removes one ACL; the kernel ends the initiator's sessions on this TPG before rmdir returns. */
  private async removeAcl(iqn: string, acl: string): Promise<void> {
    await this.removeMappedLuns(iqn, acl);
    await this.cfs.rmdir(aclDir(iqn, acl));
  }

  async removeTarget(volumeId: string): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      if (!(await this.cfs.exists('core'))) return;
      const tpgs = (await this.cfs.dirs(targetDir(iqn))).filter((d) => /^tpgt_\d+$/.test(d));
      for (const t of tpgs) {
        const tpg = `${targetDir(iqn)}/${t}`;
        // Disabling the TPG ends every session on it at once (iscsit_tpg_disable_portal_group).
        if ((await this.cfs.read(`${tpg}/enable`)) === '1') await this.cfs.write(`${tpg}/enable`, '0');
        for (const acl of await this.cfs.dirs(`${tpg}/acls`)) {
          for (const m of (await this.cfs.dirs(`${tpg}/acls/${acl}`)).filter((d) => /^lun_\d+$/.test(d))) {
            for (const name of Object.keys(await this.cfs.links(`${tpg}/acls/${acl}/${m}`))) await this.cfs.unlink(`${tpg}/acls/${acl}/${m}/${name}`);
            await this.cfs.rmdir(`${tpg}/acls/${acl}/${m}`);
          }
          await this.cfs.rmdir(`${tpg}/acls/${acl}`);
        }
        for (const l of await this.cfs.dirs(`${tpg}/lun`)) {
          for (const name of Object.keys(await this.cfs.links(`${tpg}/lun/${l}`))) await this.cfs.unlink(`${tpg}/lun/${l}/${name}`);
          await this.cfs.rmdir(`${tpg}/lun/${l}`);
        }
        for (const np of await this.cfs.dirs(`${tpg}/np`)) await this.cfs.rmdir(`${tpg}/np/${np}`);
        await this.cfs.rmdir(tpg);
      }
      if (await this.cfs.exists(targetDir(iqn))) {
        await this.cfs.rmdir(targetDir(iqn));
        this.log?.info({ iqn }, 'LIO target removed');
      }
      for (const kind of KINDS) {
        const dir = backstoreDir(kind, this.hba, backstoreName(volumeId));
        if (!(await this.cfs.exists(dir))) continue;
        await this.cfs.rmdir(dir);
        this.log?.info({ iqn, backstore: dir }, 'LIO backstore removed');
      }
      this.readonly.delete(volumeId);
    });
  }

  // ---------------------------------------------------------------- reading

  private async sessionsOf(iqn: string): Promise<TargetSession[]> {
    const tpg = tpgDir(iqn);
    const out: TargetSession[] = [];
    for (const acl of await this.cfs.dirs(`${tpg}/acls`)) {
      const s = parseAclInfo(acl, (await this.cfs.read(`${aclDir(iqn, acl)}/info`)) ?? '');
      if (s) out.push(s);
    }
    return out;
  }

  private async lunsOf(iqn: string): Promise<LunInfo[]> {
    const tpg = tpgDir(iqn);
    const luns: LunInfo[] = [];
    for (const l of await this.cfs.dirs(`${tpg}/lun`)) {
      const n = /^lun_(\d+)$/.exec(l);
      if (!n) continue;
      const so = Object.values(await this.cfs.links(`${tpg}/lun/${l}`))[0];
      const kind = /^core\/(fileio|iblock)_\d+\//.exec(so ?? '')?.[1] as BackstoreKind | undefined;
      const info = so && kind ? await this.backstoreInfo(kind, so) : {};
      luns.push({
        lun: Number(n[1]),
        type: 'disk',
        ...(info.path !== undefined ? { backingPath: info.path } : {}),
        ...(kind ? { backingStoreType: kind } : {}),
        ...(info.bytes !== undefined ? { sizeBytes: info.bytes, sizeMB: Math.floor(info.bytes / 1e6) } : {}),
        online: true,
      });
    }
    return luns;
  }

  private async accountsOf(iqn: string): Promise<TargetAccount[]> {
    const accounts: TargetAccount[] = [];
    for (const acl of await this.cfs.dirs(`${tpgDir(iqn)}/acls`)) {
      const user = await this.cfs.read(`${aclDir(iqn, acl)}/auth/userid`);
      const mutual = await this.cfs.read(`${aclDir(iqn, acl)}/auth/userid_mutual`);
      if (user && !user.startsWith('NULL') && !accounts.some((a) => !a.outgoing && a.user === user)) accounts.push({ user, outgoing: false });
      if (mutual && !mutual.startsWith('NULL') && !accounts.some((a) => a.outgoing && a.user === mutual)) accounts.push({ user: mutual, outgoing: true });
    }
    return accounts;
  }

  /**
   * sinter's targets (this prefix), read from configfs. A backstore of this
   * prefix that no target exports shows as a target with no LUN, so
   * reconcile either completes it (volume published) or removes it.
   */
  async listTargets(): Promise<TargetInfo[]> {
    await this.requireLio();
    const out: TargetInfo[] = [];
    const exported = new Set<string>();
    for (const iqn of await this.cfs.dirs('iscsi')) {
      const volumeId = this.volumeIdOf(iqn);
      if (volumeId === undefined) continue;
      const luns = await this.lunsOf(iqn);
      exported.add(volumeId);
      out.push({
        tid: 1,
        iqn,
        volumeId,
        state: (await this.cfs.read(`${tpgDir(iqn)}/enable`)) === '1' ? 'enabled' : 'disabled',
        luns,
        acls: await this.cfs.dirs(`${tpgDir(iqn)}/acls`),
        accounts: await this.accountsOf(iqn),
        sessions: await this.sessionsOf(iqn),
      });
    }
    for (const kind of KINDS) {
      for (const name of await this.cfs.dirs(hbaDir(kind, this.hba))) {
        if (exported.has(name)) continue;
        let iqn: string;
        try {
          iqn = this.iqnFor(name);
        } catch {
          continue; // not a name sinter makes: not one of its volumes
        }
        out.push({ tid: 0, iqn, volumeId: name, state: 'backstore only', luns: [], acls: [], accounts: [], sessions: [] });
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- access

  async allowInitiator(volumeId: string, initiatorIqn: string, chap?: ChapCredentials): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    if (!isValidIqn(initiatorIqn)) throw invalidArgument(`initiator name "${initiatorIqn}" is not a valid iSCSI name`);
    if (chap) {
      try {
        validateChap(chap);
      } catch (e) {
        if (e instanceof ChapError) throw invalidArgument(e.message);
        throw e;
      }
      // The kernel reads a value starting with "NULL" as "no value" (iscsi_target_configfs.c __DEF_NACL_AUTH_STR).
      for (const v of [chap.user, chap.password, chap.mutualUser, chap.mutualPassword])
        if (v?.startsWith('NULL')) throw invalidArgument('CHAP user names and secrets must not start with "NULL" (LIO reads that as unset)');
    }
    await this.locks.run(volumeId, async () => {
      const tpg = tpgDir(iqn);
      if (!(await this.cfs.exists(tpg))) throw notFound(`iSCSI target for volume ${volumeId} does not exist`);
      // CHAP is enforced per TPG: switch it on before the ACL exists, so there is no moment a login gets in without it.
      if (chap) await this.setIfDiffers(`${tpg}/attrib/authentication`, '1');
      const existing = (await this.cfs.dirs(`${tpg}/acls`)).find((a) => sameIqn(a, initiatorIqn));
      const name = existing ?? initiatorIqn;
      const acl = aclDir(iqn, name);
      if (!existing) await this.cfs.mkdir(acl);
      if (chap) await this.applyChap(acl, chap);
      const mapped = mappedLunDir(iqn, name);
      await this.cfs.mkdir(mapped);
      const links = await this.cfs.links(mapped);
      if (!Object.values(links).includes(lunDir(iqn))) {
        for (const name of Object.keys(links)) await this.cfs.unlink(`${mapped}/${name}`);
        await this.cfs.symlink(lunDir(iqn), `${mapped}/${LINK}`);
      }
      await this.setIfDiffers(`${mapped}/write_protect`, this.readonly.get(volumeId) ? '1' : '0', true);
      if (!existing) this.log?.info({ iqn, initiator: initiatorIqn, chap: chap ? (chap.mutualUser ? 'mutual' : 'one-way') : 'unchanged' }, 'initiator allowed');
    });
  }

  /** The ACL's credentials become exactly these: one-way clears the target's own (mutual) ones. */
  private async applyChap(acl: string, chap: ChapCredentials): Promise<void> {
    const want: [string, string][] = [
      ['userid', chap.user],
      ['password', chap.password],
      ['userid_mutual', authValue(chap.mutualUser)],
      ['password_mutual', authValue(chap.mutualPassword)],
    ];
    for (const [attr, value] of want) {
      const cur = await this.cfs.read(`${acl}/auth/${attr}`);
      if (cur === value || (value === 'NULL' && (cur === '' || cur === 'NULL'))) continue;
      await this.cfs.write(`${acl}/auth/${attr}`, value, { secret: true });
    }
  }

  async revokeInitiator(volumeId: string, initiatorIqn: string): Promise<void> {
    const iqn = this.iqnFor(volumeId);
    await this.locks.run(volumeId, async () => {
      const tpg = tpgDir(iqn);
      for (const acl of (await this.cfs.dirs(`${tpg}/acls`)).filter((a) => sameIqn(a, initiatorIqn))) {
        await this.removeAcl(iqn, acl);
        this.log?.info({ iqn, initiator: initiatorIqn }, 'initiator ACL removed; its sessions ended (fence)');
      }
      // A session outside any ACL exists only in demo mode (generate_node_acls=1, set by hand): say so.
      const dynamic = (await this.cfs.read(`${tpg}/dynamic_sessions`)) ?? '';
      if (dynamic.split('\n').some((l) => sameIqn(l.trim(), initiatorIqn)))
        throw internal(`initiator ${initiatorIqn} still has a demo-mode session on ${iqn} (generate_node_acls was switched on outside sinter)`);
    });
  }

  // ---------------------------------------------------------------- size

  lunShowsSize(lun: LunInfo, bytes: number): boolean {
    // An iblock LUN reads its device's size on every READ CAPACITY.
    return lun.backingStoreType === 'iblock' || lun.sizeBytes === bytes;
  }

  /**
   * fileio serves exactly `fd_dev_size` bytes of a regular file and reads that
   * field on every READ CAPACITY (target_core_file.c fd_get_blocks); its
   * `control` attribute takes `fd_dev_size=` on a live backstore too
   * (fd_set_configfs_dev_params; target_dev_control_store does not check
   * whether the device is configured). So growth is one write: sessions,
   * LUN, identity and in-flight I/O stay, and initiators see the new size on
   * their next rescan. iblock follows its device's size by itself.
   */
  async refreshLunSize(volumeId: string, imagePath: string, opts: { force?: boolean } = {}): Promise<LunRefresh> {
    const iqn = this.iqnFor(volumeId);
    if (!isAbsolute(imagePath)) throw invalidArgument(`image path for ${volumeId} must be absolute`);
    return this.locks.run(volumeId, async () => {
      if (!(await this.cfs.exists('core'))) return 'absent';
      const so = await this.findBackstore(volumeId);
      if (!so || !Object.values(await this.cfs.links(lunDir(iqn))).includes(so.dir)) return 'absent';
      if (so.kind === 'iblock') return 'current';
      const info = await this.backstoreInfo(so.kind, so.dir);
      if (info.path !== imagePath) throw failedPrecondition(`target ${iqn} serves ${info.path ?? 'nothing'} as LUN ${LUN}, not ${imagePath}; not refreshing its size`);
      const bytes = (await this.cfs.backing(imagePath))?.bytes;
      if (bytes === undefined) throw failedPrecondition(`volume ${volumeId}: its image is missing; cannot refresh the LUN's size`);
      if (!opts.force && info.bytes === bytes) return 'current';
      await this.cfs.write(`${so.dir}/control`, `fd_dev_size=${bytes}`);
      const after = await this.backstoreInfo(so.kind, so.dir);
      if (after.bytes !== bytes) throw internal(`LIO backstore of ${iqn} shows ${after.bytes ?? '?'} bytes after setting ${bytes}`);
      this.log?.info({ iqn, bytes }, 'LIO fileio backstore grown to the image size');
      return 'refreshed';
    });
  }
}
