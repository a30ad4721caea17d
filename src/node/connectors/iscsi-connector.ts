import { readdir, readlink, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Logger } from 'pino';
import { chapFromRequestSecrets } from '../../contracts/chap.js';
import type { PublishContext } from '../../contracts/publish-context.js';
import { failedPrecondition } from '../../csi/errors.js';
import type { DaemonSpawner, Executor } from '../../exec/run.js';
import type { Connector, DeviceCondition } from './connector.js';
import { createIscsiInitiator, KernelIscsiInitiator, UserspaceIscsiInitiator, type IscsiInitiator, type IscsiTarget, type InitiatorMode } from './iscsi/index.js';

type IscsiContext = Extract<PublishContext, { transport: 'iscsi' }>;

export interface IscsiConnectorConfig {
  mode: InitiatorMode;
  /** This node's initiator name, as carried in its node id; undefined when the host has none. */
  initiatorName?: string;
  /** Private state of the user-space initiator. */
  stateDir: string;
  sysfsRoot?: string;
}

function asIscsi(ctx: PublishContext): IscsiContext {
  if (ctx.transport !== 'iscsi') throw new Error(`iscsi connector got a ${ctx.transport} context`);
  return ctx;
}

const targetOf = (ctx: IscsiContext): IscsiTarget => ({ portals: ctx.portals, iqn: ctx.iqn, lun: ctx.lun });

/**
 * The `iscsi` transport (os-brick's ISCSIConnector) over the initiator the
 * node config picks: the kernel's (iscsiadm) or the user-space one (libiscsi
 * via qemu-nbd, nbdfuse and a loop device) for hosts without iscsi_tcp.
 */
export class IscsiConnector implements Connector {
  readonly transport = 'iscsi' as const;
  private initiator?: Promise<IscsiInitiator>;

  constructor(
    private readonly cfg: IscsiConnectorConfig,
    private readonly exec: Executor & DaemonSpawner,
    private readonly log: Logger,
  ) {}

  private get(): Promise<IscsiInitiator> {
    this.initiator ??= createIscsiInitiator(this.cfg.mode, { userspace: { stateDir: this.cfg.stateDir }, kernel: { sysfsRoot: this.cfg.sysfsRoot } }, this.exec, this.log);
    return this.initiator;
  }

  async validate(ctx: PublishContext): Promise<void> {
    asIscsi(ctx);
    if (!this.cfg.initiatorName)
      throw failedPrecondition('this node has no iSCSI initiator name (install open-iscsi or set node.iscsiInitiatorName), so no target will let it log in');
  }

  async connect(ctx: PublishContext, secrets: Record<string, string>): Promise<string> {
    const c = asIscsi(ctx);
    await this.validate(c);
    const chap = chapFromRequestSecrets(secrets);
    const att = await (await this.get()).connect(targetOf(c), { initiatorName: this.cfg.initiatorName!, chap });
    return att.devicePath;
  }

  async find(ctx: PublishContext): Promise<string | undefined> {
    const c = asIscsi(ctx);
    const ini = await this.get();
    if (ini instanceof UserspaceIscsiInitiator) {
      const hit = (await ini.list()).find((a) => a.iqn === c.iqn && a.lun === c.lun && a.mounted && a.devicePath);
      return hit?.devicePath;
    }
    if (ini instanceof KernelIscsiInitiator) {
      for (const s of await ini.sessions()) {
        if (s.target !== c.iqn) continue;
        const d = s.devices.find((x) => x.lun === c.lun && x.disk);
        if (d) return `/dev/${d.disk}`;
      }
    }
    return undefined;
  }

  async disconnect(ctx: PublishContext): Promise<void> {
    await (await this.get()).disconnect(targetOf(asIscsi(ctx)));
  }

  async rescan(ctx: PublishContext, device: string): Promise<void> {
    asIscsi(ctx);
    const ini = await this.get();
    // The user-space initiator sees a LUN at the size it had at login (see
    // staleSizeReason); the kernel initiator grows online.
    if (ini instanceof UserspaceIscsiInitiator) return;
    // SCSI disks re-read their capacity when 1 is written to device/rescan; a
    // multipath map's slaves each need it.
    const name = basename(device);
    const sys = this.cfg.sysfsRoot ?? '/sys';
    const slaves = name.startsWith('dm-') ? await readdir(`${sys}/block/${name}/slaves`).catch(() => []) : [name];
    for (const s of slaves) {
      await writeFile(`${sys}/block/${s}/device/rescan`, '1').catch((e: Error) => {
        throw failedPrecondition(`cannot make ${s} re-read its capacity: ${e.message}`);
      });
    }
  }

  async staleSizeReason(ctx: PublishContext): Promise<string | undefined> {
    asIscsi(ctx);
    if (!((await this.get()) instanceof UserspaceIscsiInitiator)) return undefined;
    // qemu-nbd reads the LUN's capacity once, at login, and NBD has no way to
    // announce a new size; nbdfuse's file and the loop device over it keep theirs.
    return (
      'the user-space iSCSI initiator cannot see an attached LUN grow (qemu-nbd and nbdfuse fix its size at login); ' +
      'the filesystem grows at the next stage: unstage and stage the volume again (e.g. restart the pod), then expand; or use the kernel initiator (node.initiator: kernel)'
    );
  }

  /** Every iSCSI attachment on this node, so start-up can report those no staged volume explains. */
  async attached(): Promise<{ device: string; source: string }[]> {
    const ini = await this.get();
    if (ini instanceof UserspaceIscsiInitiator)
      return (await ini.list()).filter((a) => a.devicePath).map((a) => ({ device: a.devicePath!, source: `${a.iqn} lun ${a.lun} via ${a.portal}` }));
    if (ini instanceof KernelIscsiInitiator) {
      const out: { device: string; source: string }[] = [];
      for (const s of await ini.sessions()) for (const d of s.devices) if (d.disk) out.push({ device: `/dev/${d.disk}`, source: `${s.target} lun ${d.lun}` });
      return out;
    }
    return [];
  }

  async condition(ctx: PublishContext, device: string): Promise<DeviceCondition> {
    const found = await this.find(ctx).catch(() => undefined);
    if (!found) return { abnormal: true, attached: false, message: `no iSCSI session serves ${asIscsi(ctx).iqn} LUN ${asIscsi(ctx).lun} any more` };
    const same = found === device || (await readlink(device).catch(() => device)) === found;
    if (!same) return { abnormal: true, attached: false, message: `${device} no longer belongs to ${asIscsi(ctx).iqn}` };
    return { abnormal: false, attached: true, message: `attached as ${device}` };
  }
}
