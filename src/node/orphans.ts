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
  /** A device attached from sinter's roots (or a read-only view of one) that no record explains. */
  | { kind: 'untracked-device'; device: string; source: string }
  /** A mount of one of sinter's devices that no record explains: possibly someone's, never unmounted by sinter. */
  | { kind: 'untracked-mount'; device: string; mountPoint: string }
);

const resolved = (p: string) => realpath(p).catch(() => p);

async function holders(device: string, sysBlock = '/sys/block'): Promise<string[]> {
  return readdir(`${sysBlock}/${basename(device)}/holders`).catch(() => []);
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
 */
export async function findOrphans(d: NodeDeps, decode: (c: Record<string, string>) => PublishContext): Promise<Orphan[]> {
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
    for (const p of rec.publishes) {
      const t = await realpath(p.targetPath).catch(() => undefined);
      if (!t || !snap.at(t))
        out.push({ kind: 'publish-mount-missing', volumeId: rec.volumeId, detail: `nothing is mounted at ${p.targetPath}; a NodePublishVolume retry (or an unpublish) settles it`, remedy: 'retry' });
    }
  }

  // Devices from sinter's roots (and each transport's attachments), and read-only views layered on them.
  const attached: { device: string; source: string; releasable: boolean }[] = [];
  for (const c of d.connectors.all()) if (c.attached) for (const a of await c.attached()) attached.push({ ...a, releasable: c.release !== undefined });
  const ours = new Set(attached.map((a) => a.device));
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
    const unused = mounts.length === 0 && (await holders(v.view)).length === 0;
    if (unused) cleanableViews.add(v.view);
    out.push({
      kind: 'untracked-device',
      device: v.view,
      source: v.device,
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
    const unused = mounts.length === 0 && busyViews.length === 0 && (await holders(a.device)).length === 0;
    // Only a transport that can tell its own leftovers (local: images in sinter's roots) detaches at start.
    const cleanable = unused && a.releasable;
    out.push({
      kind: 'untracked-device',
      device: a.device,
      source: a.source,
      detail: `${a.device} is attached to ${a.source} but no record of this node claims it; ${cleanable ? 'nothing uses it: a start detaches it' : unused ? 'sinter does not detach this transport on its own' : 'it is in use, so sinter leaves it'}`,
      remedy: cleanable ? 'restart' : 'operator',
    });
  }
  return out;
}

/**
 * Start-up clean-up of what findOrphans marks `restart` among devices: detaches
 * unexplained, unused devices (views first). It runs before the plugin serves,
 * so no RPC races it; each device is checked again right before. Never
 * unmounts anything. A device still open elsewhere (a mount in another mount
 * namespace, a process reading it) is not torn away: the kernel then only
 * marks it to detach on last close. Returns what it detached.
 */
export async function cleanOrphans(d: NodeDeps, orphans: Orphan[]): Promise<string[]> {
  const done: string[] = [];
  const devices = orphans.filter((o): o is Extract<Orphan, { kind: 'untracked-device' }> => o.kind === 'untracked-device' && o.remedy === 'restart');
  const views = devices.filter((o) => o.source.startsWith('/dev/'));
  const images = devices.filter((o) => !o.source.startsWith('/dev/'));
  for (const o of views) {
    if (await d.roBlock.detachUnused(o.device, o.source, await d.mounter.snapshot())) done.push(o.device);
  }
  for (const o of images) {
    const snap = await d.mounter.snapshot();
    if (mountsOfDevice(snap, o.device, await deviceMajMin(o.device)).length > 0 || (await holders(o.device)).length > 0) continue;
    if ((await d.roBlock.views(o.device)).length > 0) continue;
    for (const c of d.connectors.all()) {
      if (c.release && (await c.release(o.device, o.source))) {
        done.push(o.device);
        break;
      }
    }
  }
  return done;
}
