import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { parsePortal } from '../../contracts/publish-context.js';
import type { TargetSession } from './target-helper.js';

/**
 * The pure half of the LIO helper: names, configfs paths, attribute plans and
 * parsers of what the kernel prints. Formats are the kernel's (Debian's 6.1:
 * drivers/target/target_core_file.c fd_show_configfs_dev_params,
 * target_core_iblock.c iblock_show_configfs_dev_params,
 * iscsi/iscsi_target_configfs.c lio_target_nacl_info_show), as recorded in the
 * test guest.
 */

export type BackstoreKind = 'fileio' | 'iblock';

/** The one TPG sinter uses per target (tgt's and Cinder's lioadm's choice too). */
export const TPG = 'tpgt_1';
/** The LUN number initiators see (publish_context `lun`): 1, as with tgt, whose LUN 0 is its controller. */
export const LUN = 1;
/** Name of the link in a LUN directory (to its backstore) and in a mapped LUN (to the TPG's LUN). */
export const LINK = 'sinter';

/**
 * HBA index of sinter's backstores: one HBA per kind (`fileio_<n>`,
 * `iblock_<n>`), n taken from the target name prefix, so every storage object
 * in it is sinter's (of this prefix) and nothing else's: targetcli numbers its
 * HBAs from 0 upwards and never reaches this range. The kernel parses n as a
 * u32 (target_core_configfs.c target_core_call_addhbatotarget).
 */
export function hbaIndex(iqnPrefix: string): number {
  return 700_000 + (createHash('sha256').update(iqnPrefix).digest().readUInt32BE(0) % 100_000);
}

export const hbaDir = (kind: BackstoreKind, index: number) => `core/${kind}_${index}`;
export const backstoreDir = (kind: BackstoreKind, index: number, name: string) => `${hbaDir(kind, index)}/${name}`;
export const targetDir = (iqn: string) => `iscsi/${iqn}`;
export const tpgDir = (iqn: string) => `${targetDir(iqn)}/${TPG}`;
export const lunDir = (iqn: string, lun = LUN) => `${tpgDir(iqn)}/lun/lun_${lun}`;
export const aclDir = (iqn: string, initiator: string) => `${tpgDir(iqn)}/acls/${initiator}`;
export const mappedLunDir = (iqn: string, initiator: string, lun = LUN) => `${aclDir(iqn, initiator)}/lun_${lun}`;

/** A storage object's name: the volume id (already [a-z0-9.-]; configfs names take it as is). */
export function backstoreName(volumeId: string): string {
  if (!/^[a-z0-9][a-z0-9.-]{0,127}$/.test(volumeId)) throw new Error(`volume id "${volumeId}" cannot name an LIO backstore`);
  return volumeId;
}

/** The unit serial number (VPD page 0x80) a volume's LUN reports: its uuid, as the tgt helper sets it. */
export function unitSerial(volumeId: string): string {
  return /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.exec(volumeId)?.[0] ?? createHash('sha256').update(volumeId).digest('hex').slice(0, 32);
}

/**
 * The network portal directory for a configured portal: LIO binds the address
 * itself, so it must be an IP literal (`1.2.3.4:3260`, `[fd00::1]:3260`), not a host name.
 */
export function npName(portal: string): string {
  const p = parsePortal(portal);
  if (!isIP(p.host)) throw new Error(`portal "${portal}": LIO listens on an IP address; give an IP literal (a host name cannot be bound)`);
  return isIP(p.host) === 6 ? `[${p.host}]:${p.port}` : `${p.host}:${p.port}`;
}

/**
 * The `control` string that configures a backstore before it is enabled.
 * fileio: path and size (the kernel serves exactly fd_dev_size bytes of a
 * regular file) and, with the write cache on, buffered I/O (the storage
 * host's page cache is the cache; SYNCHRONIZE CACHE and FUA flush it);
 * without it the file is opened O_DSYNC. iblock: the device path.
 */
export function controlString(kind: BackstoreKind, path: string, bytes: number, writeCache: boolean): string {
  if (path.includes(',') || /[\s]/.test(path)) throw new Error(`"${path}" cannot be passed to LIO's control attribute (no commas or white space)`);
  if (kind === 'iblock') return `udev_path=${path}`;
  return `fd_dev_name=${path},fd_dev_size=${bytes}${writeCache ? ',fd_buffered_io=1' : ''}`;
}

export interface AttributePlan {
  /** Path relative to the backstore directory. */
  attr: string;
  value: string;
  /** The kernel refuses the write once a LUN exports the backstore (export_count > 0). */
  beforeExport?: boolean;
  /** Not every backing device supports it (discard on an iblock device without it): a refusal is logged, not fatal. */
  optional?: boolean;
}

export interface BackstoreOptions {
  writeCache: boolean;
  discard: boolean;
  blockSize: number;
}

/**
 * What a backstore's attributes must say, applied after `enable`, written
 * only where they differ. emulate_write_cache is the WCE bit initiators see:
 * fileio reports what its open mode does; iblock reports the device's own
 * cache (the kernel refuses the attribute there). emulate_tpu advertises
 * UNMAP: fileio punches holes in the image, iblock passes discards down.
 */
export function backstoreAttributes(kind: BackstoreKind, volumeId: string, o: BackstoreOptions): AttributePlan[] {
  const plan: AttributePlan[] = [
    // iblock keeps its device's logical block size: a smaller one would send misaligned I/O down.
    ...(kind === 'fileio' ? [{ attr: 'attrib/block_size', value: String(o.blockSize), beforeExport: true }] : []),
    { attr: 'wwn/vpd_unit_serial', value: unitSerial(volumeId), beforeExport: true },
    { attr: 'wwn/vendor_id', value: 'SINTER', beforeExport: true, optional: true },
    { attr: 'wwn/product_id', value: 'volume', beforeExport: true, optional: true },
    { attr: 'attrib/emulate_tpu', value: o.discard ? '1' : '0', optional: true },
  ];
  if (kind === 'fileio') plan.push({ attr: 'attrib/emulate_write_cache', value: o.writeCache ? '1' : '0' });
  return plan;
}

/**
 * TPG attributes, written before the TPG is enabled: only initiators with an
 * ACL may log in (no demo mode), and were demo mode ever switched on by hand,
 * its LUNs would be read-only.
 */
export const TPG_ATTRIBUTES: ReadonlyArray<readonly [string, string]> = [
  ['generate_node_acls', '0'],
  ['cache_dynamic_acls', '0'],
  ['demo_mode_write_protect', '1'],
];

/** What the kernel says a backstore serves (its `info` attribute). */
export interface BackstoreInfo {
  path?: string;
  /** fileio: the size it serves (fd_dev_size); iblock: unknown here (it follows the device). */
  bytes?: number;
  buffered?: boolean;
}

/**
 * `info` of a fileio backstore: `Status: … SectorSize: 512 …\n        TCM FILEIO ID: 0        File: /x.img  Size: 67108864  Mode: Buffered-WCE Async: 0`;
 * of an iblock one: `… iBlock device: dm-3  UDEV PATH: /dev/vg/lv  readonly: 0 …`.
 */
export function parseBackstoreInfo(kind: BackstoreKind, info: string): BackstoreInfo {
  if (kind === 'fileio') {
    const m = /File: (.*?)\s+Size: (\d+)\s+Mode: (\S+)/.exec(info);
    if (!m) return {};
    return { path: m[1], bytes: Number(m[2]), buffered: m[3] === 'Buffered-WCE' };
  }
  const m = /UDEV PATH: (\S+)/.exec(info);
  return m ? { path: m[1] } : {};
}

/**
 * An ACL's `info`: `No active iSCSI Session for Initiator Endpoint: …`, or the
 * session: `LIO Session ID: 1   ISID: … TSIH: 3 …` and per connection `CID: 0  Connection State: …\n   Address 127.0.0.1 TCP …`.
 */
export function parseAclInfo(initiator: string, info: string): TargetSession | undefined {
  const sid = /LIO Session ID: (\d+)/.exec(info);
  if (!sid) return undefined;
  const connections = [...info.matchAll(/CID: (\d+)[^\n]*\n\s*Address (\S+)/g)].map((m) => ({ cid: Number(m[1]), address: m[2] }));
  const alias = /InitiatorAlias: (\S+)/.exec(info)?.[1];
  return { sid: Number(sid[1]), initiator, ...(alias ? { alias } : {}), connections };
}

/** A value for the ACL's auth attributes: the kernel treats a value starting with "NULL" as "unset". */
export function authValue(v: string | undefined): string {
  return v === undefined ? 'NULL' : v;
}
