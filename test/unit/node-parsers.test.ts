import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { parseCapability, resolveFsType, checkMountFlags } from '../../src/csi/capability.js';
import { decideFormat, parseBlkidExport, parseMkfsOptions } from '../../src/node/format.js';
import { deviceMountPoint, MountSnapshot, parseMountInfo } from '../../src/node/mount.js';
import { checkVolumeId } from '../../src/node/volume-id.js';
import { objectContaining, stringContaining } from '../helpers/matchers.js';
import { tempDir } from '../helpers/scratch-fs.js';

describe('mountinfo', () => {
  const text = [
    '22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw',
    '42 22 7:0 / /var/lib/kubelet/staging/a\\040b rw,relatime shared:7 - ext4 /dev/loop0 rw',
    '43 22 7:0 / /var/lib/kubelet/pods/p/mount ro,relatime - ext4 /dev/loop0 rw',
    '44 22 0:6 /loop1 /var/lib/kubelet/blk ro,relatime - devtmpfs devtmpfs rw,mode=755',
    '45 22 0:50 / /var/lib/kubelet/pods/p/mount rw - tmpfs tmpfs rw',
  ].join('\n');

  it('decodes escapes, optional fields and per-mount options', () => {
    const m = parseMountInfo(text);
    expect(m).toHaveLength(5);
    expect(m[1]).toMatchObject({ majMin: '7:0', root: '/', mountPoint: '/var/lib/kubelet/staging/a b', fsType: 'ext4', source: '/dev/loop0' });
    expect(m[2].options).toContain('ro');
    expect(m[3]).toMatchObject({ root: '/loop1', fsType: 'devtmpfs' });
  });

  it('where a device is mounted, before its removal: as a filesystem (major:minor) or as its device node bound from devtmpfs (a block volume), not where only a name matches; unknown when there is no table', async () => {
    const t = tempDir('sinter-mountinfo-');
    try {
      const file = join(t.dir, 'mountinfo');
      // Many other volumes' mounts first, as on a node with hundreds (the answer must not depend on their count).
      const others = Array.from({ length: 600 }, (_, i) => `${100 + i} 22 259:${i + 10} / /var/lib/kubelet/pods/x${i}/mount rw - ext4 /dev/nvme${i + 10}n1 rw`);
      // A directory named like a device, bound from ext4, is not that device.
      writeFileSync(file, [...others, text, '48 22 0:40 / /mnt/7:7 rw - tmpfs tmpfs rw', '49 22 8:1 /loop7 /srv/x rw - ext4 /dev/sda1 rw', ''].join('\n'));
      expect(await deviceMountPoint(file, 'loop0', '7:0')).toBe('/var/lib/kubelet/staging/a b');
      expect(await deviceMountPoint(file, 'loop1', '7:1')).toBe('/var/lib/kubelet/blk');
      expect(await deviceMountPoint(file, 'nvme300n1', '259:310')).toBe('/var/lib/kubelet/pods/x300/mount');
      expect(await deviceMountPoint(file, 'loop7', '7:7')).toBeUndefined();
      expect(await deviceMountPoint(file, 'loop7', undefined)).toBeUndefined();
      expect(await deviceMountPoint(join(t.dir, 'missing'), 'loop0', '7:0')).toBeUndefined();
    } finally {
      t.cleanup();
    }
  });

  it('the visible mount at a path is the last one stacked there', () => {
    const s = new MountSnapshot(parseMountInfo(text));
    expect(s.at('/var/lib/kubelet/pods/p/mount')?.fsType).toBe('tmpfs');
    expect(s.allAt('/var/lib/kubelet/pods/p/mount')).toHaveLength(2);
    expect(s.at('/nowhere')).toBeUndefined();
  });

  it('a snapshot read from the text answers as the parsed one: escaped paths, stacks, a path that is also a bind\'s root, one object per mount', () => {
    const more = `${text}\n46 22 7:0 /var/lib/kubelet/pods/p/mount /elsewhere rw - ext4 /dev/loop0 rw\n47 22 7:2 / /var/lib/kubelet/pods/p/mount/sub rw - ext4 /dev/loop2 rw\n`;
    const parsed = new MountSnapshot(parseMountInfo(more));
    for (const path of ['/var/lib/kubelet/pods/p/mount', '/var/lib/kubelet/staging/a b', '/var/lib/kubelet/blk', '/elsewhere', '/', '/nowhere', '/var/lib/kubelet/pods/p']) {
      const lazy = MountSnapshot.fromText(more);
      expect(lazy.at(path), path).toEqual(parsed.at(path));
      expect(lazy.allAt(path), path).toEqual(parsed.allAt(path));
      const found = lazy.at(path);
      if (found) expect(lazy.entries.includes(found), path).toBe(true);
      expect(lazy.entries).toEqual(parsed.entries);
    }
    expect(MountSnapshot.fromText(more).at('/var/lib/kubelet/staging/a b')?.source).toBe('/dev/loop0');
    // withAnyField keeps every line a field filter could keep, in table order (a source at the end of its line included).
    const last = `${more}48 22 7:3 / /last rw - ext4 /dev/loop3`;
    for (const fields of [['7:0'], ['/dev/loop0'], ['/loop1'], ['/dev/loop3'], ['7:2', '/dev/loop0'], ['/nothing'], ['/var/lib/kubelet/staging/a b']]) {
      const lazy = MountSnapshot.fromText(last);
      const want = parseMountInfo(last).filter((e) => [e.majMin, e.root, e.mountPoint, e.source].some((f) => fields.includes(f)));
      const got = lazy.withAnyField(fields).filter((e) => [e.majMin, e.root, e.mountPoint, e.source].some((f) => fields.includes(f)));
      expect(got, fields.join()).toEqual(want);
      for (const e of got) expect(lazy.entries.includes(e)).toBe(true);
    }
  });
});

describe('formatting decisions', () => {
  it('parses blkid export output', () => {
    expect(parseBlkidExport('DEVNAME=/dev/loop0\nTYPE=ext4\nPTTYPE=dos\n')).toEqual({ DEVNAME: '/dev/loop0', TYPE: 'ext4', PTTYPE: 'dos' });
  });

  it('formats only blank devices', () => {
    expect(decideFormat({ kind: 'blank' }, '/dev/loop0', 'ext4')).toBe(true);
    expect(decideFormat({ kind: 'filesystem', type: 'xfs' }, '/dev/loop0', 'xfs')).toBe(false);
    for (const p of [
      { kind: 'filesystem', type: 'ext4' },
      { kind: 'filesystem', type: 'LVM2_member' },
      { kind: 'partitioned', ptType: 'gpt' },
      { kind: 'partitioned', ptType: 'dos', type: 'xfs' },
      { kind: 'ambivalent', detail: 'ambivalent result' },
    ] as const) {
      let err: { code?: number; message?: string } = {};
      try {
        decideFormat(p, '/dev/loop0', 'xfs');
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code, JSON.stringify(p)).toBe(Code.FAILED_PRECONDITION);
      expect(err.message).toContain('/dev/loop0');
    }
  });

  it('mkfsOptions: splits on whitespace, refuses force, populate and path options', () => {
    expect(parseMkfsOptions(undefined, 'ext4')).toEqual([]);
    expect(parseMkfsOptions('  -L data  -m 1 -E lazy_itable_init=0 ', 'ext4')).toEqual(['-L', 'data', '-m', '1', '-E', 'lazy_itable_init=0']);
    expect(parseMkfsOptions('-d agcount=4', 'xfs')).toEqual(['-d', 'agcount=4']);
    const bad: [string, 'ext4' | 'xfs' | 'btrfs'][] = [
      ['-F', 'ext4'],
      ['-qF', 'ext4'],
      ['-d', 'ext4'],
      ['-f', 'xfs'],
      ['-p', 'xfs'],
      ['--force', 'btrfs'],
      ['-f', 'btrfs'],
      ['--rootdir', 'btrfs'],
      ['-L /etc', 'ext4'],
      ['-L $(reboot)', 'ext4'],
      ['-L a;b', 'ext4'],
    ];
    for (const [opts, fs] of bad) expect(() => parseMkfsOptions(opts, fs), `${fs} ${opts}`).toThrow(/mkfsOptions/);
  });
});

describe('volume capability', () => {
  it('reads mount and block capabilities as the loader delivers them', () => {
    expect(parseCapability({ access_type: 'mount', mount: { fs_type: 'xfs', mount_flags: ['noatime'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } })).toEqual({
      access: 'mount',
      fsType: 'xfs',
      mountFlags: ['noatime'],
      mode: 'SINGLE_NODE_WRITER',
    });
    expect(parseCapability({ access_type: 'block', block: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } })).toEqual({ access: 'block', mode: 'MULTI_NODE_MULTI_WRITER' });
  });

  it('names the field at fault', () => {
    const cases: [unknown, string, string][] = [
      [undefined, Code.INVALID_ARGUMENT, 'volume_capability is required'],
      [{ mount: {} }, Code.INVALID_ARGUMENT, 'volume_capability.access_mode.mode is required'],
      [{ mount: {}, access_mode: { mode: 'UNKNOWN' } }, Code.INVALID_ARGUMENT, 'access_mode.mode is required'],
      [{ access_mode: { mode: 'SINGLE_NODE_WRITER' } }, Code.INVALID_ARGUMENT, 'access_type'],
      [{ mount: { fs_type: 'ntfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, Code.INVALID_ARGUMENT, 'volume_capability.mount.fs_type'],
      [{ mount: { mount_flags: ['bind'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, Code.INVALID_ARGUMENT, 'mount_flags'],
      [{ mount: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } }, Code.INVALID_ARGUMENT, 'MULTI_NODE_MULTI_WRITER'],
    ];
    for (const [raw, code, msg] of cases) {
      expect(() => parseCapability(raw), JSON.stringify(raw)).toThrow(objectContaining({ code, message: stringContaining(msg) }));
    }
  });

  it('fs type: capability, then volume_context fsType, then ext4', () => {
    const cap = { access: 'mount' as const, mountFlags: [], mode: 'SINGLE_NODE_WRITER' as const };
    expect(resolveFsType({ ...cap, fsType: 'btrfs' }, { fsType: 'xfs' })).toBe('btrfs');
    expect(resolveFsType(cap, { fsType: 'xfs' })).toBe('xfs');
    expect(resolveFsType(cap, {})).toBe('ext4');
    expect(() => resolveFsType(cap, { fsType: 'vfat' })).toThrow(/volume_context.fsType/);
  });

  it('mount flags refuse remount/bind tricks and odd characters', () => {
    expect(checkMountFlags(['noatime', 'discard', 'commit=30'], 'f')).toEqual(['noatime', 'discard', 'commit=30']);
    for (const bad of [['rw,bind'], ['remount'], ['a b'], [''], ['make-shared']]) expect(() => checkMountFlags(bad, 'f'), bad.join()).toThrow();
  });
});

describe('volume id', () => {
  it('missing is INVALID_ARGUMENT, malformed is NOT_FOUND', () => {
    expect(checkVolumeId('file-0b7c1e6a-2f8e-4bd1-9d6c-1a2b3c4d5e6f')).toBe('file-0b7c1e6a-2f8e-4bd1-9d6c-1a2b3c4d5e6f');
    expect(() => checkVolumeId('')).toThrow(objectContaining({ code: Code.INVALID_ARGUMENT }));
    expect(() => checkVolumeId(undefined)).toThrow(objectContaining({ code: Code.INVALID_ARGUMENT }));
    for (const bad of ['a/b', '..', '.x', 'a\0b', 'x'.repeat(129), 'white space']) {
      expect(() => checkVolumeId(bad), JSON.stringify(bad)).toThrow(objectContaining({ code: Code.NOT_FOUND }));
    }
  });
});
