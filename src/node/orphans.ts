import { readdir, realpath } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Remedy } from '../contracts/finding.js';
import type { PublishContext } from '../contracts/publish-context.js';
import { deviceMajMin, mountsOfDevice, stagedAt, type NodeDeps } from './context.js';
import type { MountEntry, MountSnapshot } from './mount.js';
import { ReadOnlyBlock } from './readonly-block.js';
import type { StageRecord } from './stage-state.js';

export type Orphan = { remedy: Remedy; detail: string } & (
  | { kind: 'unreadable-record'; file: string }
  | { kind: 'stray-temp'; file: string }
  | { kind: 'unfinished'; volumeId: string }
  | { kind: 'staging-mount-missing'; volumeId: string }
  | { kind: 'device-missing'; volumeId: string }
  | { kind: 'publish-mount-missing'; volumeId: string }
  /** A device attached from sinter's roots or by a transport (or a read-only view of one) that no record explains. */
  | { kind: 'untracked-device'; device: string; source: string; transport: PublishContext['transport'] }
  /** A mount of one of sinter's devices that no record explains: possibly someone's, never unmounted by sinter. */
  | { kind: 'untracked-mount'; device: string; mountPoint: string }
);

/** What start-up does with an iSCSI attachment no record explains and nothing uses (node config `orphanSessions`). */
export type OrphanSessions = 'report' | 'clean';

/** A device start-up tore down (cleanOrphans). */
export interface Released {
  device: string;
  source: string;
  transport: PublishContext['transport'];
}

const resolved = (p: string) => realpath(p).catch(() => p);

/** Devices holding device (device-mapper maps, md …); read from the configured sysfs for device nodes under the configured /dev. */
async function holders(d: NodeDeps, device: string): Promise<string[]> {
  const devRoot = d.devRoot ?? '/dev';
  const sys = device.startsWith(`${devRoot}/`) ? (d.sysfsRoot ?? '/sys') : '/sys';
  return readdir(`${sys}/block/${basename(device)}/holders`).catch(() => []);
}

function mountsOfView(snap: MountSnapshot, view: string, majMin: string | undefined): MountEntry[] {
  return snap.entries.filter((m) => ReadOnlyBlock.isViewMount(m, view) || (majMin !== undefined && m.majMin === majMin) || m.source === view);
}

/**
 * Compares the node's records with the host: volumes whose last operation did
 * not finish, staging or publish mounts that vanished (a reboot), devices that
 * are gone, devices attached from sinter's roots that no record explains, and
 * mounts of sinter's devices that no record explains.
 *
 * Every mount and device sinter makes is recorded before it is made, so a
 * crash never leaves one unexplained. An unexplained device nothing uses is a
 * leftover (a lost record): start-up detaches it (remedy `restart`). An
 * unexplained mount may be a person's (a volume mounted by hand to rescue
 * data): sinter only reports it.
 *
 * A transport whose leftovers look like an administrator's (iSCSI: a session
 * someone logged in by hand) is torn down only with `orphanSessions: clean`,
 * and then only while every record of this node reads (an unreadable one may
 * be what explains it); otherwise its unused leftovers are `operator`.
 */
export async function findOrphans(
  d: NodeDeps,
  decode: (c: Record<string, string>) => PublishContext,
  orphanSessions: OrphanSessions = 'report',
): Promise<Orphan[]> {
  const out: Orphan[] = [];
  const { records, corrupt, strayTemps } = await d.state.list();
  for (const c of corrupt) out.push({ kind: 'unreadable-record', file: c.file, detail: c.why, remedy: 'operator' });
  for (const f of strayTemps)
    out.push({ kind: 'stray-temp', file: f, detail: 'temp file of a record write a crash interrupted; a start removes it', remedy: 'restart' });
  const snap = await d.mounter.snapshot();

  /** Devices a record names, and the record. */
  const claimed = new Map<string, StageRecord>();
  /** Image files of records whose device may not be recorded yet (a stage or unstage in progress): every device of them is explained. */
  const pendingSources = new Set<string>();
  /** Devices with a read-only block publish whose view may not be recorded yet. */
  const pendingViews = new Set<string>();
  const viewsClaimed = new Set<string>();
  /** Where records say their volume is mounted (resolved). */
  const explainedAt = new Set<string>();

  /** Records that do not say which connection they use (unreadable, or an unusable publish_context): they may explain any attachment. */
  let unexplainable = corrupt.length;
  for (const rec of records) {
    try {
      decode(rec.publishContext);
    } catch {
      unexplainable++;
    }
  }

  for (const rec of records) {
    if (rec.device) claimed.set(rec.device, rec);
    for (const p of rec.publishes) {
      if (p.roDevice) viewsClaimed.add(p.roDevice);
      else if (rec.access === 'block' && p.readonly && rec.device) pendingViews.add(rec.device);
      explainedAt.add(await resolved(p.targetPath));
    }
    const stagingReal = await realpath(rec.stagingPath).catch(() => undefined);
    explainedAt.add(stagedAt(rec, stagingReal ?? rec.stagingPath));
    if (rec.phase !== 'staged') {
      try {
        const ctx = decode(rec.publishContext);
        if (ctx.transport === 'local') pendingSources.add(await resolved(ctx.path));
        // Any transport: the attachment a retry would adopt (or an unstage detach).
        const found = await d.connectors.for(ctx).find(ctx).catch(() => undefined);
        if (found) claimed.set(found, rec);
      } catch {
        /* an unusable context is reported by the retry itself */
      }
      out.push({
        kind: 'unfinished',
        volumeId: rec.volumeId,
        detail: `last node operation ${rec.phase === 'error' ? `failed: ${rec.lastError ?? ''}` : `was interrupted while ${rec.phase}`}; the CO's NodeStageVolume or NodeUnstageVolume retry finishes it`,
        remedy: 'retry',
      });
      continue;
    }
    if (!stagingReal || !snap.at(stagedAt(rec, stagingReal)))
      out.push({ kind: 'staging-mount-missing', volumeId: rec.volumeId, detail: `nothing is mounted at ${rec.stagingPath}; a NodeStageVolume retry mounts it again`, remedy: 'retry' });
    if (rec.device) {
      try {
        const ctx = decode(rec.publishContext);
        const cond = await d.connectors.for(ctx).condition(ctx, rec.device);
        if (cond.abnormal) out.push({ kind: 'device-missing', volumeId: rec.volumeId, detail: cond.message, remedy: 'retry' });
      } catch (e) {
        out.push({ kind: 'device-missing', volumeId: rec.volumeId, detail: (e as Error).message, remedy: 'retry' });
      }
    }
    // A transport whose unexplained attachments start-up may tear down: the attachment this record's
    // connection leads to is the volume's, whatever device the record names (a stage retry adopts it).
    try {
      const ctx = decode(rec.publishContext);
      const c = d.connectors.for(ctx);
      const found = c.releaseOptIn ? await c.find(ctx).catch(() => undefined) : undefined;
      if (found) claimed.set(found, rec);
    } catch {
      /* counted in unexplainable above */
    }
    for (const p of rec.publishes) {
      const t = await realpath(p.targetPath).catch(() => undefined);
      if (!t || !snap.at(t))
        out.push({ kind: 'publish-mount-missing', volumeId: rec.volumeId, detail: `nothing is mounted at ${p.targetPath}; a NodePublishVolume retry (or an unpublish) settles it`, remedy: 'retry' });
    }
  }

  // Devices from sinter's roots (and each transport's attachments), and read-only views layered on them.
  const attached: { device: string; source: string; transport: PublishContext['transport']; releasable: boolean; optIn: boolean; notReleasable?: string }[] = [];
  for (const c of d.connectors.all())
    if (c.attached)
      for (const a of await c.attached()) attached.push({ ...a, transport: c.transport, releasable: c.release !== undefined && a.notReleasable === undefined, optIn: c.releaseOptIn === true });
  const ours = new Set(attached.map((a) => a.device));
  const transportOf = new Map(attached.map((a) => [a.device, a.transport]));
  const views = (await d.roBlock.layered()).filter((v) => ours.has(v.device));

  const untrackedMounts = (device: string, mounts: MountEntry[], explained: boolean) => {
    for (const m of mounts) {
      if (explained && explainedAt.has(m.mountPoint)) continue;
      out.push({
        kind: 'untracked-mount',
        device,
        mountPoint: m.mountPoint,
        detail: `${device} is mounted at ${m.mountPoint}, which no record of this node explains; sinter never unmounts it (it may be someone's): check it and unmount it by hand`,
        remedy: 'operator',
      });
    }
  };

  const cleanableViews = new Set<string>();
  const viewsOf = new Map<string, string[]>();
  for (const v of views) {
    viewsOf.set(v.device, [...(viewsOf.get(v.device) ?? []), v.view]);
    const explained = viewsClaimed.has(v.view) || pendingViews.has(v.device);
    const mounts = mountsOfView(snap, v.view, await deviceMajMin(v.view));
    untrackedMounts(v.view, mounts, explained);
    if (explained) continue;
    const unused = mounts.length === 0 && (await holders(d, v.view)).length === 0;
    if (unused) cleanableViews.add(v.view);
    out.push({
      kind: 'untracked-device',
      device: v.view,
      source: v.device,
      transport: transportOf.get(v.device) ?? 'local',
      detail: `${v.view} is a read-only view of ${v.device} that no publish records; ${unused ? 'nothing uses it: a start detaches it' : 'it is in use, so sinter leaves it'}`,
      remedy: unused ? 'restart' : 'operator',
    });
  }

  for (const a of attached) {
    const explained = claimed.has(a.device) || pendingSources.has(a.source);
    const mounts = mountsOfDevice(snap, a.device, await deviceMajMin(a.device));
    untrackedMounts(a.device, mounts, explained);
    if (explained) continue;
    const busyViews = (viewsOf.get(a.device) ?? []).filter((v) => !cleanableViews.has(v));
    const unused = mounts.length === 0 && busyViews.length === 0 && (await holders(d, a.device)).length === 0;
    // A transport that can tell its own leftovers (local: images in sinter's roots) detaches them at start;
    // one whose leftovers may be an administrator's (iSCSI sessions) only when the node config says so.
    const consented = !a.optIn || (orphanSessions === 'clean' && unexplainable === 0);
    const cleanable = unused && a.releasable && consented;
    let why: string;
    if (!unused) why = 'it is in use, so sinter leaves it';
    else if (!a.releasable) why = a.notReleasable ?? 'sinter does not detach this transport on its own';
    else if (cleanable) why = a.optIn ? `nothing uses it: a start tears it down (node.orphanSessions: clean)` : 'nothing uses it: a start detaches it';
    else if (orphanSessions === 'clean')
      why = 'nothing uses it, but a stage record of this node cannot be read (or names no usable connection) and may be what explains it, so sinter leaves it: repair or remove that record';
    else
      why = `nothing uses it, but sinter only reports ${a.transport} attachments no record explains (node.orphanSessions: report), since one may be an administrator's: tear it down by hand (log out), or set node.orphanSessions: clean and restart the node plugin`;
    out.push({
      kind: 'untracked-device',
      device: a.device,
      source: a.source,
      transport: a.transport,
      detail: `${a.device} is attached to ${a.source} but no record of this node claims it; ${why}`,
      remedy: cleanable ? 'restart' : 'operator',
    });
  }
  return out;
}

/**
 * Start-up clean-up of what findOrphans marks `restart` among devices: detaches
 * unexplained, unused devices (views first), each through the connector of its
 * transport (an iSCSI one: the whole attachment, its session kept while a
 * volume with a stage record uses the target). It runs before the plugin
 * serves, so no RPC races it; each device is checked again right before.
 * Never unmounts anything. A device still open elsewhere (a mount in another
 * mount namespace, a process reading it) is not torn away: the kernel then
 * only marks it to detach on last close. One that cannot be torn down is
 * logged and left (the report shows it again). Returns what it tore down.
 */
export async function cleanOrphans(d: NodeDeps, orphans: Orphan[], decode: (c: Record<string, string>) => PublishContext): Promise<Released[]> {
  const done: Released[] = [];
  const devices = orphans.filter((o): o is Extract<Orphan, { kind: 'untracked-device' }> => o.kind === 'untracked-device' && o.remedy === 'restart');
  const views = devices.filter((o) => o.source.startsWith('/dev/'));
  const images = devices.filter((o) => !o.source.startsWith('/dev/'));
  const failed = (o: Released, e: unknown) =>
    d.log.warn({ device: o.device, source: o.source, transport: o.transport, err: (e as Error).message }, 'could not tear down a device no record of this node explains; it stays');
  for (const o of views) {
    try {
      if (await d.roBlock.detachUnused(o.device, o.source, await d.mounter.snapshot())) done.push({ device: o.device, source: o.source, transport: o.transport });
    } catch (e) {
      failed(o, e);
    }
  }
  /** What volumes with a record are connected through: a release never takes what they share. */
  const inUse: PublishContext[] = [];
  for (const rec of (await d.state.list()).records) {
    try {
      inUse.push(decode(rec.publishContext));
    } catch {
      /* findOrphans marks nothing of an opt-in transport `restart` while such a record exists */
    }
  }
  for (const o of images) {
    const snap = await d.mounter.snapshot();
    if (mountsOfDevice(snap, o.device, await deviceMajMin(o.device)).length > 0 || (await holders(d, o.device)).length > 0) continue;
    if ((await d.roBlock.views(o.device)).length > 0) continue;
    const c = d.connectors.all().find((x) => x.transport === o.transport);
    if (!c?.release) continue;
    try {
      if (await c.release(o.device, o.source, inUse)) done.push({ device: o.device, source: o.source, transport: o.transport });
    } catch (e) {
      failed(o, e);
    }
  }
  return done;
}
