import { lstat, mkdir, open, readdir, realpath, rmdir, unlink } from 'node:fs/promises';
import { basename } from 'node:path';
import { sameStringMap } from '../contracts/string-map.js';
import { encodePublishContext, type PublishContext } from '../contracts/publish-context.js';
import { alreadyExists, DomainError, failedPrecondition } from '../errors/domain-error.js';
import { isReadOnlyMode, resolveFsType, sameFlags, type Capability } from '../csi/capability.js';
import { blockStagingFile, describeMount, deviceMajMin, liesOnDevice, mountsOfDevice, showsDevice, stagedAt, volumeDevice, type NodeDeps } from './context.js';
import { exclusiveClaim } from './device-claim.js';
import { activeBacking, closeEncrypted, encryptionOf, mapperName, mapperPath, openEncrypted } from './encryption.js';
import { decideFormat, mkfs, parseMkfsOptions, probe, type FsType } from './format.js';
import { doing, toHostError } from './host-errors.js';
import { isReadOnly, type MountSnapshot } from './mount.js';
import type { StageRecord } from './stage-state.js';
import { shown } from '../errors/domain-error.js';

export interface StageRequest {
  volumeId: string;
  /** As sent, and as the kernel shows it (symlinks resolved). */
  stagingPath: string;
  stagingResolved: string;
  stagingExists: boolean;
  capability: Capability;
  publishContext: PublishContext;
  volumeContext: Record<string, string>;
  secrets: Record<string, string>;
}

function sameCapability(rec: StageRecord, cap: Capability, fsType: string | undefined): boolean {
  if (rec.access !== cap.access) return false;
  if (isReadOnlyMode(rec.accessMode) !== isReadOnlyMode(cap.mode)) return false;
  if (cap.access === 'mount') return rec.fsType === fsType && sameFlags(rec.mountFlags, cap.mountFlags);
  return true;
}

function describeStaged(rec: StageRecord): string {
  const ro = isReadOnlyMode(rec.accessMode) ? ', read-only' : '';
  return rec.access === 'block' ? `block access${ro}` : `${rec.fsType} with mount flags [${rec.mountFlags.join(',')}]${ro}`;
}

/** The staging mount's options: the requested flags, ro for a reader-only mode, nouuid for xfs (clones share a UUID). */
function stageMountOptions(fsType: string, mountFlags: string[], readOnly: boolean): string[] {
  const options = [...mountFlags];
  if (readOnly && !options.includes('ro')) options.push('ro');
  if (fsType === 'xfs' && !options.includes('nouuid')) options.push('nouuid');
  return options;
}

const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';

/**
 * NodeStageVolume: attach the device, make sure it holds the requested
 * filesystem (formatting only a blank device), mount it at the staging path;
 * for block access, bind the device onto a file in the staging directory.
 * Every step first looks whether it is already done, so a retry after a
 * crash at any point finishes the job.
 */
export async function stageVolume(d: NodeDeps, req: StageRequest): Promise<void> {
  const { volumeId, capability: cap } = req;
  const connector = d.connectors.for(req.publishContext);
  await connector.validate(req.publishContext);
  const fsType: FsType | undefined = cap.access === 'mount' ? resolveFsType(cap, req.volumeContext) : undefined;
  const mkfsArgs = fsType ? parseMkfsOptions(req.volumeContext.mkfsOptions, fsType) : [];
  const readOnly = isReadOnlyMode(cap.mode);
  // Checked before anything changes: an encrypted volume without its passphrase stages nothing.
  const encryption = encryptionOf(volumeId, req.volumeContext, req.secrets);

  const prev = await d.state.get(volumeId);
  const visibleAt = stagedAt({ access: cap.access, volumeId }, req.stagingResolved);
  if (prev) {
    if (prev.stagingPath !== req.stagingPath && prev.phase !== 'error')
      throw failedPrecondition(
        `volume ${volumeId} is already staged on this node at ${prev.stagingPath}; a volume is staged once per node: unstage it there first`,
      );
    if (!sameCapability(prev, cap, fsType)) {
      const snap = await d.mounter.snapshot();
      if (prev.phase === 'staged' || snap.at(stagedAt(prev, req.stagingResolved)))
        throw alreadyExists(
          `volume ${volumeId} is already staged at ${prev.stagingPath} as ${describeStaged(prev)}, which does not match this request; unstage it first to change how it is staged`,
        );
    }
    if (prev.phase === 'staged' && Boolean(prev.mapper) !== Boolean(encryption))
      throw alreadyExists(
        `volume ${volumeId} is already staged ${prev.mapper ? 'encrypted' : 'unencrypted'} at ${prev.stagingPath}, and this request's volume_context says ${prev.mapper ? 'unencrypted' : 'encrypted'}; unstage it first`,
      );
    // A device in use stays the record's: a request leading elsewhere must not take its place (the mounts would then be nobody's).
    const prevDevice = volumeDevice(prev);
    if (prevDevice && !sameStringMap(encodePublishContext(req.publishContext), prev.publishContext)) {
      const snap = await d.mounter.snapshot();
      if (mountsOfDevice(snap, prevDevice, await deviceMajMin(prevDevice)).length > 0)
        throw alreadyExists(
          `volume ${volumeId} is staged on this node from another connection (publish_context ${shown(JSON.stringify(prev.publishContext), 200)}); unstage it first to stage it from a different one`,
        );
    }
  }
  if (prev && prev.phase !== 'error') {
    // A volume staged from one connection is never re-attached from another:
    // that would leave the first device mounted with no record of it.
    if (!sameStringMap(prev.publishContext, encodePublishContext(req.publishContext)))
      throw alreadyExists(`volume ${volumeId} is already staged on this node from another publish_context (${prev.publishContext.transport ?? 'unknown'} transport); unstage it first`);
  }
  // The index names candidates; each one's record file is read again to confirm.
  for (const other of await d.state.volumesAt(req.stagingPath)) {
    if (other === volumeId) continue;
    const rec = await d.state.get(other).catch(() => undefined);
    if (rec?.stagingPath === req.stagingPath) throw alreadyExists(`staging_target_path ${req.stagingPath} is already used by volume ${other}`);
  }
  // A mount already there is ours only if it shows the device we recorded
  // (the device is recorded before anything is mounted). Refuse a foreign one
  // before writing anything.
  {
    const there = await d.mounter.at(visibleAt);
    if (there) {
      const known = prev ? volumeDevice(prev) : undefined;
      const ours = known !== undefined && showsDevice(there, known, await deviceMajMin(known));
      if (!ours)
        throw alreadyExists(`staging_target_path ${req.stagingPath} already has something mounted (${describeMount(there)}) that is not volume ${volumeId}; unstage that first`);
    }
  }

  // The staging directory: the CO normally creates it; create it if not.
  let createdStagingDir = prev?.stagingPath === req.stagingPath ? prev.createdStagingDir : false;
  await doing(`preparing staging_target_path ${req.stagingPath}`, async () => {
    if (!req.stagingExists) {
      await mkdir(req.stagingResolved, { recursive: true, mode: 0o750 });
      createdStagingDir = true;
    }
    const st = await lstat(req.stagingResolved);
    if (!st.isDirectory()) throw failedPrecondition(`staging_target_path ${req.stagingPath} exists but is not a directory`);
  });

  const rec: StageRecord = {
    version: 1,
    volumeId,
    stagingPath: req.stagingPath,
    createdStagingDir,
    access: cap.access,
    fsType,
    mountFlags: cap.access === 'mount' ? cap.mountFlags : [],
    accessMode: cap.mode,
    publishContext: encodePublishContext(req.publishContext),
    device: prev?.device,
    // Named before it is opened, so an unstage after a crash at any point closes it.
    ...(encryption ? { mapper: prev?.mapper ?? mapperName(volumeId) } : {}),
    phase: 'staging',
    publishes: prev?.publishes ?? [],
    updatedAt: '',
  };
  await d.state.put(rec);

  // Whether this call made the attachment: only then does a failure below undo it.
  let attachedHere = false;
  let openedHere = false;
  let device: string | undefined;
  try {
    if (connector.attach) {
      ({ device, attached: attachedHere } = await connector.attach(req.publishContext, req.secrets));
    } else {
      const before = await connector.find(req.publishContext).catch(() => undefined);
      device = await connector.connect(req.publishContext, req.secrets);
      attachedHere = !before;
    }
    const majMin = await deviceMajMin(device);
    if (!majMin) throw new Error(`the connector returned ${device}, which is not a block device`);
    if (rec.device !== device) {
      rec.device = device;
      await d.state.put(rec);
    }

    // From here to the mount, this device's filesystem is decided by this call alone (see NodeDeps.devices).
    const raw = device;
    await d.devices.run(`device:${majMin}`, async () => {
      // An encrypted volume's filesystem (or block volume) is its dm-crypt mapping, opened (and first formatted, if blank) here.
      let dev = raw;
      let devMajMin: string | undefined = majMin;
      if (encryption && rec.mapper) {
        const opened = await openEncrypted(d, { volumeId, device: raw, name: rec.mapper, readOnly, encryption });
        openedHere = opened.opened;
        dev = opened.path;
        devMajMin = await deviceMajMin(dev);
        if (!devMajMin) throw new Error(`the dm-crypt mapping ${dev} is not a block device`);
      }
      const existing = await d.mounter.at(visibleAt);
      if (existing) {
        const ours = showsDevice(existing, dev, devMajMin);
        if (!ours)
          throw alreadyExists(`staging_target_path ${req.stagingPath} already has another volume mounted (${describeMount(existing)}); unstage that one first`);
        if (cap.access === 'mount' && existing.fsType !== fsType)
          throw alreadyExists(`volume ${volumeId} is mounted at ${req.stagingPath} as ${existing.fsType}, not ${fsType}`);
        if (isReadOnly(existing) !== readOnly)
          throw alreadyExists(`volume ${volumeId} is mounted at ${req.stagingPath} ${isReadOnly(existing) ? 'read-only' : 'read-write'}, which does not match access mode ${cap.mode}`);
      } else if (cap.access === 'mount' && fsType) {
        const found = await probe(d.exec, dev);
        if (decideFormat(found, dev, fsType)) {
          if (readOnly)
            throw failedPrecondition(
              `volume ${volumeId} has no filesystem yet and access mode ${cap.mode} is read-only; sinter only formats a volume staged writable: stage it once with a writable mode first`,
            );
          d.log.info({ volume_id: volumeId, device: dev, fsType }, 'formatting blank volume');
          await mkfs(d.exec, dev, fsType, mkfsArgs);
        }
        await d.mounter.mount(dev, req.stagingResolved, fsType, stageMountOptions(fsType, cap.mountFlags, readOnly));
      } else {
        const file = blockStagingFile(req.stagingResolved, volumeId);
        await doing(`creating the device file ${file}`, async () => {
          const fh = await open(file, 'a', 0o600);
          await fh.close();
        });
        await d.mounter.bind(dev, file, readOnly);
      }
    });
    rec.phase = 'staged';
    delete rec.lastError;
    await d.state.put(rec);
  } catch (e) {
    const err = toHostError(`staging volume ${volumeId}`, e);
    rec.phase = 'error';
    rec.lastError = err.message;
    await d.state.put(rec).catch((pe: unknown) => d.log.error({ volume_id: volumeId, err: errorText(pe) }, 'could not record failed stage'));
    // Undo only what this call did: a mapping it opened and an attachment it made, that nothing uses.
    const shownAs = device && (openedHere ? volumeDevice(rec) : device);
    if (device && shownAs && (attachedHere || openedHere)) {
      const snap = await d.mounter.snapshot().catch(() => undefined);
      const used = snap ? mountsOfDevice(snap, shownAs, await deviceMajMin(shownAs)).length > 0 : true;
      let closed = !openedHere;
      if (!used && openedHere && rec.mapper)
        closed = await closeEncrypted(d, volumeId, rec.mapper).then(
          () => true,
          (ce: unknown) => (d.log.warn({ volume_id: volumeId, mapper: rec.mapper, err: errorText(ce) }, 'could not close the mapping after failed stage'), false),
        );
      if (!used && closed && attachedHere)
        await connector.disconnect(req.publishContext, device).catch((de: unknown) => d.log.warn({ volume_id: volumeId, device, err: errorText(de) }, 'could not detach after failed stage'));
    }
    throw err;
  }
}

/** How an unstage goes, decided before anything changes. */
interface UnstagePlan {
  /** The staging path shows this volume: unmount it (every layer there). */
  staged: boolean;
  /** The staging path holds a mount that is not this volume's: it is left alone, and so is the directory. */
  foreign: boolean;
  /** The table read to decide (undefined: decided without it). */
  snap?: MountSnapshot;
  /** Decided without the table: once the stage's own mount is gone, the device must be found unclaimed. */
  checkClaim: boolean;
  refuse?: DomainError;
}

const stillMounted = (volumeId: string, where: string[]) =>
  failedPrecondition(`volume ${volumeId} is still mounted at ${where.join(', ')}; unpublish it (NodeUnpublishVolume) before unstaging`);

/**
 * The unstage decided from the whole mount table: only a mount showing the
 * recorded device is ours to unmount, anything else at the staging path is
 * left alone, and any other mount of the device (a publish, recorded or not)
 * refuses the unstage.
 */
async function fromTable(d: NodeDeps, rec: StageRecord, visibleAt: string, vdev: string | undefined, majMin: string | undefined): Promise<UnstagePlan> {
  const snap = await d.mounter.snapshot();
  const there = snap.at(visibleAt);
  const staged = there && vdev && showsDevice(there, vdev, majMin) ? there : undefined;
  if (there && !staged)
    d.log.warn({ volume_id: rec.volumeId, path: rec.stagingPath, mount: describeMount(there) }, 'staging path holds a mount that is not this volume; leaving it');
  const users = vdev ? mountsOfDevice(snap, vdev, majMin, staged) : [];
  const elsewhere = new Set(users.filter((m) => m.mountPoint !== visibleAt).map((m) => m.mountPoint));
  for (const p of rec.publishes) {
    // Read-only block publishes go through their own loop device, so look at the recorded targets too.
    const where = await realpath(p.targetPath).catch(() => undefined);
    if (where && snap.at(where)) elsewhere.add(p.targetPath);
  }
  return { staged: staged !== undefined, foreign: there !== undefined && !staged, snap, checkClaim: false, refuse: elsewhere.size ? stillMounted(rec.volumeId, [...elsewhere]) : undefined };
}

/**
 * The unstage of a filesystem stage decided without the mount table, whose
 * rendering by the kernel grows with every mount on the node (two per
 * published volume): each recorded publish is asked whether it is still a
 * mount point (its mount id against its parent directory's); the staging
 * path likewise, and a mount there is this volume's when the directory lies
 * on the device's filesystem (its st_dev is the device's number). A publish
 * nobody recorded is found after the stage's mount is gone, by the device
 * itself (stillHeld): any other mount of the filesystem, in any mount
 * namespace, keeps it claimed. Undefined (nothing changed) when the kernel
 * cannot answer so: nsenter mode, btrfs's anonymous device numbers, a mount
 * there that is not this volume's. Block access never comes here: a device
 * node bind-mounted elsewhere does not hold the device open.
 */
async function withoutTable(d: NodeDeps, rec: StageRecord, visibleAt: string, vdev: string | undefined, majMin: string | undefined): Promise<UnstagePlan | undefined> {
  const here = await d.mounter.mountPoint(visibleAt);
  if (here === undefined) return undefined;
  const published: string[] = [];
  for (const p of rec.publishes) {
    const where = await realpath(p.targetPath).catch(() => undefined);
    if (!where) continue;
    const m = await d.mounter.mountPoint(where);
    if (m === undefined) return undefined;
    if (m) published.push(p.targetPath);
  }
  if (published.length) return { staged: false, foreign: false, checkClaim: false, refuse: stillMounted(rec.volumeId, published) };
  if (here && !(vdev && majMin && (await liesOnDevice(visibleAt, vdev)))) return undefined;
  return { staged: here, foreign: false, checkClaim: true };
}

/**
 * After the staging mount is gone: the refusal when the device is still
 * claimed, naming the mounts of it the table shows (or, with none there and
 * nothing stacked on the device, saying it is held elsewhere). An open that can say
 * nothing (not EBUSY) leaves the table to decide, as before. A claim with no
 * mount in this namespace's table is looked at twice more (a holder that
 * was just letting go) before it refuses.
 */
async function stillHeld(d: NodeDeps, volumeId: string, vdev: string, majMin: string): Promise<DomainError | undefined> {
  for (let attempt = 0; ; attempt++) {
    // Under the device's lock: a stage of the same device (another id) must not meet this open instead of its mkfs's.
    const claim = await d.devices.run(`device:${majMin}`, () => exclusiveClaim(vdev));
    if (claim === 'free') return undefined;
    const users = [...new Set(mountsOfDevice(await d.mounter.snapshot(), vdev, majMin).map((m) => m.mountPoint))];
    if (users.length) return stillMounted(volumeId, users);
    if (claim === 'unknown') return undefined;
    // A device-mapper or md device stacked on it (a multipath map that claimed the path once it was unmounted) is
    // the connector's to take down on detach, as it always was; a mount elsewhere or an exclusive opener is not.
    if ((await stackedOn(vdev)).length) return undefined;
    if (attempt >= 2)
      return failedPrecondition(
        `volume ${volumeId}'s device ${vdev} is still in use after its staging path was unmounted, and this node's mount table shows no other mount of it (a mount in another mount namespace, a device-mapper table, or a process holding it open exclusively); release it, then retry NodeUnstageVolume`,
      );
    await new Promise((r) => setTimeout(r, 20 * (attempt + 1)));
  }
}

/** The devices stacked on a block device (sysfs holders: dm, md), by kernel name; none when that cannot be read. */
async function stackedOn(device: string): Promise<string[]> {
  const name = basename(await realpath(device).catch(() => device));
  return readdir(`/sys/class/block/${name}/holders`).catch(() => []);
}

export interface UnstageRequest {
  volumeId: string;
  stagingPath: string;
  stagingResolved: string;
}

/**
 * NodeUnstageVolume: refuse while the volume is still published, unmount the
 * staging mount, detach the device, remove what staging created, forget the
 * volume. A volume this node has no record of is already unstaged.
 * Answers the transport of the record it removed (undefined: there was none).
 */
export async function unstageVolume(d: NodeDeps, req: UnstageRequest, decode: (c: Record<string, string>) => PublishContext): Promise<string | undefined> {
  const { volumeId } = req;
  const rec = await d.state.get(volumeId);
  if (!rec) {
    const snap = await d.mounter.snapshot();
    for (const where of [req.stagingResolved, blockStagingFile(req.stagingResolved, volumeId)]) {
      const m = snap.at(where);
      if (m)
        throw failedPrecondition(
          `staging_target_path ${req.stagingPath} has a mount (${describeMount(m)}) that this node has no record of staging for volume ${volumeId}; sinter will not unmount it: check it and unmount it by hand if it is stale`,
        );
    }
    return undefined;
  }
  if (rec.stagingPath !== req.stagingPath)
    throw failedPrecondition(`volume ${volumeId} is staged at ${rec.stagingPath}, not at ${shown(req.stagingPath, 200)}; unstage it with that path`);

  const ctx = decode(rec.publishContext);
  const connector = d.connectors.for(ctx);
  // Refusing while published changes nothing, so the record keeps its phase.
  const visibleAt = stagedAt(rec, req.stagingResolved);
  // After a reboot the recorded device name may belong to something else now; then it is not ours.
  const wasStaged = rec.phase === 'staged';
  const recordedDevice = rec.device;
  const original: StageRecord = structuredClone(rec);
  if (rec.device && !(await connector.condition(ctx, rec.device)).attached) delete rec.device;
  // An encrypted volume is mounted through its mapping, named after the volume: while that mapping is open, a mount
  // of it is this volume's even when the connector no longer finds the device under it (a session lost, a LUN
  // gone). Unmounting it and closing the mapping is then what lets this unstage, or its retry, finish.
  const mapperOpen = rec.mapper !== undefined && (await activeBacking(d.exec, rec.mapper)) !== undefined;
  const vdev = mapperOpen ? mapperPath(rec.mapper!) : volumeDevice(rec);
  const majMin = vdev ? await deviceMajMin(vdev) : undefined;

  // A filesystem stage is judged without the mount table where the kernel can answer for the paths and the device
  // themselves (see withoutTable); else (block access, nsenter mode, btrfs, a mount there that is not this
  // volume's) from the table, as it always was.
  const plan = (rec.access === 'mount' ? await withoutTable(d, rec, visibleAt, vdev, majMin) : undefined) ?? (await fromTable(d, rec, visibleAt, vdev, majMin));
  if (plan.refuse) throw plan.refuse;
  const { staged } = plan;
  // The 'unstaging' mark is written only when it changes more than the phase.
  // A record that still reads 'staged' with its (attached) device recovers
  // from a crash at every later point just as well: before or after the
  // unmount, the device stays claimed (orphan clean-up leaves it alone) and
  // an unstage retry unmounts what is still there, detaches and forgets; a
  // stage retry re-adopts the device and mounts it; a publish meanwhile is
  // refused (nothing mounted at the staging path); after the detach the
  // retry finds the device gone and records that before going on.
  rec.phase = 'unstaging';
  if (!wasStaged || rec.device !== recordedDevice) await d.state.put(rec);
  let refused: DomainError | undefined;
  try {
    if (staged) {
      if (plan.snap) await d.mounter.umountAll(visibleAt, plan.snap);
      else await d.mounter.umountStack(visibleAt);
    }
    if (plan.checkClaim && vdev && majMin) {
      // After the stage's own mount is gone, the device is free unless another mount of its filesystem (a publish
      // nobody recorded, a mount in another namespace) or another opener still holds it.
      refused = await stillHeld(d, volumeId, vdev, majMin);
      if (refused) {
        // Refusing changes nothing: the stage's mount goes back (the same filesystem, still mounted elsewhere) and
        // the record reads as before. If that mount fails (a crash here does the same), the record still says
        // staged with its device: a NodeStageVolume retry mounts it again, an unstage retry refuses until the
        // holder is gone and then finishes; a publish meanwhile is refused (nothing at the staging path).
        if (staged && rec.fsType)
          await d.mounter
            .mount(vdev, req.stagingResolved, rec.fsType, stageMountOptions(rec.fsType, rec.mountFlags, isReadOnlyMode(rec.accessMode)))
            .catch((e: unknown) => d.log.warn({ volume_id: volumeId, err: errorText(e) }, 'could not mount the staging path again after refusing to unstage'));
        if (!wasStaged || rec.device !== recordedDevice) await d.state.put(original);
        throw refused;
      }
    }
    if (rec.access === 'block') {
      await doing(`removing the device file ${visibleAt}`, async () => {
        const st = await lstat(visibleAt).catch(() => undefined);
        const mounted = await d.mounter.mounted(visibleAt);
        if (st && !mounted && (st.isFile() || st.isBlockDevice())) await unlink(visibleAt);
      });
    }
    if (rec.access === 'block' && vdev) await d.roBlock.release(vdev, await d.mounter.snapshot());
    // The mapping goes before its device (it holds the device open), even when the device itself is gone.
    if (rec.mapper) await closeEncrypted(d, volumeId, rec.mapper);
    await connector.disconnect(ctx, rec.device);
    if (rec.createdStagingDir && !plan.foreign) {
      await rmdir(req.stagingResolved).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') d.log.warn({ volume_id: volumeId, path: req.stagingPath, err: e.code }, 'left staging directory in place');
      });
    }
    await d.state.remove(volumeId);
    return rec.publishContext.transport;
  } catch (e) {
    if (refused && e === refused) throw e;
    const err = e instanceof DomainError ? e : toHostError(`unstaging volume ${volumeId}`, e);
    rec.phase = 'error';
    rec.lastError = err.message;
    await d.state.put(rec).catch(() => undefined);
    throw err;
  }
}
