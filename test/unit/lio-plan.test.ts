import { describe, expect, it } from 'vitest';
import {
  aclDir,
  backstoreAttributes,
  backstoreDir,
  backstoreName,
  controlString,
  hbaIndex,
  lunDir,
  mappedLunDir,
  npName,
  parseAclInfo,
  parseBackstoreInfo,
  unitSerial,
} from '../../src/backends/targets/lio-plan.js';

// The `info` texts below were read in the test guest (Debian bookworm, kernel 6.1) from a
// fileio backstore and an ACL with a live kernel-initiator session (.tmp/probe.sh, this branch).
const FILEIO_INFO = `Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384
        TCM FILEIO ID: 0        File: /tmp/img  Size: 134217728  Mode: Buffered-WCE Async: 0
`;
const ACL_INFO = `InitiatorName: iqn.2005-03.org.open-iscsi:sinter-vm
InitiatorAlias: sinter-vm
LIO Session ID: 1   ISID: 0x00 02 3d 00 00 03  TSIH: 3  SessionType: Normal
Session State: TARG_SESS_STATE_LOGGED_IN
---------------------[iSCSI Session Values]-----------------------
  CmdSN/WR  :  CmdSN/WC  :  ExpCmdSN  :  MaxCmdSN  :     ITT    :     TTT
 0x00000040   0x00000040   0x00000027   0x00000066   0x00000027   0x00000025
----------------------[iSCSI Connections]-------------------------
CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN
   Address 127.0.0.1 TCP  StatSN: 0xc8aeb763
`;
const VOL = 'san-0b5cf1a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b';
const IQN = `iqn.2026-12.io.sinter:${VOL}`;

describe('LIO configfs plan (pure)', () => {
  it('keeps sinter\'s backstores in an HBA of their own per prefix, named by the volume id', () => {
    const a = hbaIndex('iqn.2026-12.io.sinter:');
    expect(a).toBe(hbaIndex('iqn.2026-12.io.sinter:'));
    expect(a).not.toBe(hbaIndex('iqn.2026-12.io.other:'));
    // Far above the indexes targetcli hands out (0, 1, 2 …) and within the kernel's u32.
    expect(a).toBeGreaterThanOrEqual(700_000);
    expect(a).toBeLessThan(800_000);
    expect(backstoreDir('fileio', a, backstoreName(VOL))).toBe(`core/fileio_${a}/${VOL}`);
    expect(() => backstoreName('../x')).toThrow();
    expect(() => backstoreName('Upper')).toThrow();
  });

  it('lays out target, TPG 1, LUN 1, ACL and mapped LUN as rtslib does', () => {
    expect(lunDir(IQN)).toBe(`iscsi/${IQN}/tpgt_1/lun/lun_1`);
    expect(aclDir(IQN, 'iqn.2005-03.org.open-iscsi:n1')).toBe(`iscsi/${IQN}/tpgt_1/acls/iqn.2005-03.org.open-iscsi:n1`);
    expect(mappedLunDir(IQN, 'iqn.2005-03.org.open-iscsi:n1')).toBe(`iscsi/${IQN}/tpgt_1/acls/iqn.2005-03.org.open-iscsi:n1/lun_1`);
  });

  it('names network portals as the kernel parses them; host names are refused (LIO binds an address)', () => {
    expect(npName('127.0.0.1:3260')).toBe('127.0.0.1:3260');
    expect(npName('10.0.0.5')).toBe('10.0.0.5:3260');
    expect(npName('[fd00::1]:3261')).toBe('[fd00::1]:3261');
    expect(() => npName('storage.example:3260')).toThrow(/IP literal/);
  });

  it('configures fileio with path, exact size and buffered I/O only with the write cache on; iblock by device path', () => {
    expect(controlString('fileio', '/data/v.img', 67108864, true)).toBe('fd_dev_name=/data/v.img,fd_dev_size=67108864,fd_buffered_io=1');
    expect(controlString('fileio', '/data/v.img', 67108864, false)).toBe('fd_dev_name=/data/v.img,fd_dev_size=67108864');
    expect(controlString('iblock', '/dev/vg/lv', 0, true)).toBe('udev_path=/dev/vg/lv');
    expect(() => controlString('fileio', '/data/a,b.img', 1, true)).toThrow(/commas/);
  });

  it('plans attributes: serial before export, UNMAP per the discard switch, WCE only on fileio (iblock reports its device\'s cache)', () => {
    const f = backstoreAttributes('fileio', VOL, { writeCache: false, discard: true, blockSize: 4096 });
    expect(f).toContainEqual({ attr: 'wwn/vpd_unit_serial', value: '0b5cf1a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b', beforeExport: true });
    expect(f).toContainEqual({ attr: 'attrib/emulate_tpu', value: '1', optional: true });
    expect(f).toContainEqual({ attr: 'attrib/emulate_write_cache', value: '0' });
    expect(f).toContainEqual({ attr: 'attrib/block_size', value: '4096', beforeExport: true });
    const b = backstoreAttributes('iblock', VOL, { writeCache: true, discard: false, blockSize: 512 });
    expect(b.map((a) => a.attr)).not.toContain('attrib/emulate_write_cache');
    expect(b.map((a) => a.attr)).not.toContain('attrib/block_size');
    expect(b).toContainEqual({ attr: 'attrib/emulate_tpu', value: '0', optional: true });
    expect(unitSerial(VOL)).toBe('0b5cf1a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b');
  });

  it('reads a fileio backstore\'s path and served size, and an ACL\'s session, from the kernel\'s text', () => {
    expect(parseBackstoreInfo('fileio', FILEIO_INFO)).toEqual({ path: '/tmp/img', bytes: 134217728, buffered: true });
    expect(parseBackstoreInfo('iblock', 'Status: ACTIVATED  Max Queue Depth: 128\n        iBlock device: dm-3  UDEV PATH: /dev/vg0/lv1  readonly: 0\n')).toEqual({ path: '/dev/vg0/lv1' });
    expect(parseAclInfo('iqn.2005-03.org.open-iscsi:sinter-vm', ACL_INFO)).toEqual({
      sid: 1,
      initiator: 'iqn.2005-03.org.open-iscsi:sinter-vm',
      alias: 'sinter-vm',
      connections: [{ cid: 0, address: '127.0.0.1' }],
    });
    expect(parseAclInfo('x', 'No active iSCSI Session for Initiator Endpoint: iqn.2005-03.org.open-iscsi:sinter-vm\n')).toBeUndefined();
  });
});
