import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { blockCap, MiB } from '../helpers/sinter-process.js';
import { exportYaml, Lab, sh } from './fixtures/lab.js';
import { requireGuest, scratchDisks } from './guest.js';

const VG = 'sinter-devices';
const NQN_PREFIX = 'nqn.2026-11.io.sinter.lvm-devices:';
const TRAP = 'sinter-lvm-trap';
/** What one sinter RPC may take in the guest (TCG, a loaded host): a blocked LVM scan takes until the trap is sprung. */
const PROMPT_MS = 90_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A disk outside the volume group whose every read waits: a loop device (direct I/O) over a suspended
 * device-mapper device, as an iSCSI disk logged in from the host's own tgtd waits while a classic snapshot
 * suspends the LV tgtd serves. LVM skips a suspended dm device itself, not a disk in front of one.
 */
class ReadTrap {
  loop = '';
  private armed = false;
  private made = false;
  private readers: ResultPromise[] = [];

  async arm(): Promise<void> {
    await execa('dmsetup', ['create', TRAP, '--table', '0 65536 zero']);
    this.made = true;
    this.loop = (await execa('losetup', ['-f', '--show', '--direct-io=on', `/dev/mapper/${TRAP}`])).stdout.trim();
    // udev's blkid reads the new loop device: before the suspend, or that read is the one that waits.
    await execa('udevadm', ['settle']);
    await execa('dmsetup', ['suspend', TRAP]);
    this.armed = true;
    // Nothing of it in the page cache for a reader to find instead.
    await sh('echo 3 > /proc/sys/vm/drop_caches');
  }

  /** A command that waits on the trap; it ends once the trap is sprung. */
  reader(cmd: string, args: string[]): ResultPromise {
    const p = execa(cmd, args, { reject: false });
    this.readers.push(p);
    return p;
  }

  /** Resumes the device (every waiting read completes), waits for the readers, removes loop and dm device. */
  async spring(): Promise<void> {
    if (this.armed) await execa('dmsetup', ['resume', TRAP], { reject: false });
    this.armed = false;
    await Promise.all(this.readers);
    this.readers = [];
    if (this.loop) await execa('losetup', ['-d', this.loop], { reject: false });
    this.loop = '';
    if (this.made) await execa('dmsetup', ['remove', '--retry', TRAP], { reject: false });
    this.made = false;
  }
}

/**
 * sinter's LVM commands open only the volume group's physical volumes (`--devices`): on a storage host that is
 * also a node, a scan of every disk reads the iSCSI disks of its own exports, which wait while a classic
 * snapshot suspends the LV behind them (lvm.vm's thick test once hung so, lvs and lvchange blocked in the
 * kernel for minutes). Here a disk outside the VG that blocks every reader is present through a thick
 * volume's whole life: create, classic snapshot, block-copy clone, deletes.
 */
describe('LVM backend on a host with a disk whose reads wait (hyperconverged storage host)', () => {
  requireGuest();
  const disks = scratchDisks();
  const pv = disks[0] ?? 'no scratch disk';
  const lab = new Lab({
    name: 'lvm-devices',
    nqnPrefix: NQN_PREFIX,
    modules: true,
    readyTimeoutMs: 240_000,
    vgs: [{ vg: VG, pv }],
    controllerYaml: (l) => [
      'backends:',
      '  - name: thick',
      '    driver: lvm',
      `    dataDir: ${join(l.dir, 'thick')}`,
      `    volumeGroup: ${VG}`,
      '    lvmType: thick',
      '    thickSnapshotPercent: 50',
      ...exportYaml('nvmet', { portal: '127.0.0.1:4421', prefix: NQN_PREFIX }),
    ],
  });
  const trap = new ReadTrap();

  beforeAll(async () => {
    // sinter finds the VG's PVs at start, with one scan of every disk: before the trap exists.
    await lab.start();
  });
  afterEach(async () => {
    await trap.spring();
  });
  afterAll(async () => {
    await trap.spring();
    await lab.stop();
  });

  /** The RPC's answer, or a failure naming it when it takes longer than PROMPT_MS (it goes on; the trap's spring ends it). */
  const prompt = async <T>(what: string, p: Promise<T>): Promise<T> => {
    const late = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not finish within ${PROMPT_MS / 1000} s: an LVM command is waiting on a disk outside volume group ${VG}`)), PROMPT_MS).unref());
    p.catch(() => undefined);
    return Promise.race([p, late]);
  };
  const lvNames = async () => (await sh(`lvs --devices ${pv} --noheadings -o lv_name ${VG}`)).stdout.split('\n').map((s) => s.trim()).filter(Boolean).sort();

  it('create, classic snapshot, clone from it and deletes all finish while plain lvs waits on the trap disk', async () => {
    const c = lab.ctl.client.controller;
    const cap = blockCap();
    const made: { volumes: string[]; snapshots: string[] } = { volumes: [], snapshots: [] };
    await trap.arm();
    try {
      // The trap holds: LVM without a device list reads it and waits.
      const plain = trap.reader('lvs', []);
      const plainEnded = await Promise.race([plain.then(() => true), sleep(15_000).then(() => false)]);
      expect(plainEnded, `plain lvs finished while ${trap.loop} was suspended: the trap does not block a scan, so this test could not fail`).toBe(false);

      const t0 = Date.now();
      const vol = (await prompt('CreateVolume', c.CreateVolume({ name: 'devices-vol', parameters: { backend: 'thick' }, capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap] }))).volume!;
      made.volumes.push(vol.volume_id ?? '');
      await sh(`printf 'devices-lvm-mark' | dd of=/dev/${VG}/v-${vol.volume_id} bs=4096 conv=sync,notrunc oflag=direct status=none`);
      const snap = (await prompt('CreateSnapshot', c.CreateSnapshot({ name: 'devices-snap', source_volume_id: vol.volume_id }))).snapshot!;
      made.snapshots.push(snap.snapshot_id ?? '');
      const clone = (await prompt('CreateVolume from a snapshot (block copy)', c.CreateVolume({ name: 'devices-clone', parameters: { backend: 'thick' }, capacity_range: { required_bytes: 16 * MiB }, volume_capabilities: [cap], volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } }))).volume!;
      made.volumes.push(clone.volume_id ?? '');
      const head = (await execa('dd', [`if=/dev/${VG}/v-${clone.volume_id}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], { encoding: 'buffer' })).stdout;
      expect(Buffer.from(head).subarray(0, 16).toString()).toBe('devices-lvm-mark');

      await prompt('DeleteVolume of the clone', c.DeleteVolume({ volume_id: clone.volume_id }));
      await prompt('DeleteSnapshot', c.DeleteSnapshot({ snapshot_id: snap.snapshot_id }));
      await prompt('DeleteVolume', c.DeleteVolume({ volume_id: vol.volume_id }));
      made.volumes.length = 0;
      made.snapshots.length = 0;
      console.log(`[lvm-devices.vm] create, snapshot, clone, three deletes: ${((Date.now() - t0) / 1000).toFixed(1)} s with the trap armed`);
      expect(await lvNames()).toEqual([]);
      // Still waiting: everything above ran while a scan of every disk could not finish.
      expect(plain.exitCode).toBeNull();
    } finally {
      await trap.spring();
      // What a failed case left (after the spring: a waiting RPC has finished by now).
      for (const id of made.snapshots) await c.DeleteSnapshot({ snapshot_id: id }).catch(() => undefined);
      for (const id of made.volumes.reverse()) await c.DeleteVolume({ volume_id: id }).catch(() => undefined);
    }
  }, 600_000);
});
