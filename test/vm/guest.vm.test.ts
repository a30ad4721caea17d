import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { initiatorName, moduleLoaded, requireGuest, scratchDisks } from './guest.js';

// The guest itself: what the VM tests rely on is really there (a real kernel
// with the storage modules this host lacks, scratch disks, loopback portals).
describe('the VM test guest (Debian bookworm, its own 6.1 kernel under qemu TCG)', () => {
  requireGuest();

  it('runs Debian 12 with its own 6.1 kernel, not the host kernel', async () => {
    expect(readFileSync('/etc/debian_version', 'utf8')).toMatch(/^12\./);
    expect((await execa('uname', ['-r'])).stdout).toMatch(/^6\.1\.\d+-\d+-amd64$/);
  });

  it('loads the kernel modules the host lacks: iscsi_tcp, dm-multipath, dm-crypt, dm-thin, LIO, nvmet-tcp', async () => {
    for (const m of ['iscsi_tcp', 'dm_multipath', 'dm_crypt', 'dm_thin_pool', 'target_core_mod', 'nvmet_tcp']) {
      await execa('modprobe', [m]);
      expect(moduleLoaded(m), m).toBe(true);
    }
    expect(readFileSync('/proc/misc', 'utf8')).toMatch(/device-mapper/);
  });

  it('has the harness\'s sparse scratch disks as virtio block devices, blank', async () => {
    const disks = scratchDisks();
    expect(disks.length).toBeGreaterThanOrEqual(2);
    for (const d of disks) {
      expect(Number((await execa('blockdev', ['--getsize64', d])).stdout)).toBeGreaterThan(1024 ** 3);
      expect((await execa('blkid', ['-p', d], { reject: false })).exitCode).toBe(2); // nothing on it
    }
  });

  it('has no network device but loopback, with 127.0.0.2 answering as a second portal address', async () => {
    const links = (await execa('ip', ['-o', 'link'])).stdout.split('\n').map((l) => l.split(': ')[1]);
    expect(links).toEqual(['lo']);
    // Routed to lo with nothing listening: refused at once, not unreachable.
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      const c = connect({ host: '127.0.0.2', port: 1 });
      c.once('connect', () => resolve(Object.assign(new Error('connected'), { code: 'CONNECTED' })));
      c.once('error', resolve);
    });
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('has an initiator name and the tools sinter drives', async () => {
    expect(initiatorName()).toMatch(/^iqn\.\d{4}-\d{2}\./);
    for (const t of ['iscsiadm', 'iscsid', 'tgtd', 'tgtadm', 'multipath', 'multipathd', 'cryptsetup', 'lvm', 'targetcli', 'nvme', 'mkfs.xfs', 'mkfs.ext4', 'udevadm']) {
      expect((await execa('bash', ['-c', `command -v ${t}`], { reject: false })).exitCode, t).toBe(0);
    }
  });
});
