import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onlineInitiatorWwpns } from '../../src/node/connectors/fc.js';
import { mountCap, NodeEnv } from '../helpers/node-env.js';
import { requireGuest } from './guest.js';

/**
 * A real Fibre Channel stack without an FC HBA: software FCoE (the kernel's
 * fcoe + libfc, VN2VN mode, no switch) on both ends of a veth pair inside the
 * guest, and LIO's FCoE target (tcm_fc) on one end exporting a fileio LUN to
 * the other end's WWPN. The kernel then shows what an HBA would:
 * /sys/class/fc_host/hostN (port_name, Online), fc_remote_ports with the
 * target's WWPN and the "FCP Target" role, and the LUN as
 * .../hostN/rport-N:0-0/targetN:0:0/N:0:0:1/block/sdX. The FC connector
 * (src/node/connectors/fc.ts) stages it unchanged.
 */
const CFG = '/sys/kernel/config/target';
const SETUP = `
set -e
modprobe fcoe; modprobe tcm_fc; modprobe target_core_file
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
ip link add sfc0 type veth peer name sfc1
for v in sfc0 sfc1; do ip link set $v mtu 2500; ip link set $v up; done
sleep 1
echo sfc0 > /sys/bus/fcoe/ctlr_create
echo sfc1 > /sys/bus/fcoe/ctlr_create
for c in /sys/class/net/sfc0/ctlr_* /sys/class/net/sfc1/ctlr_*; do echo vn2vn > $c/mode; done
`;

function hostOf(netdev: string): string {
  const ctlr = readdirSync(`/sys/class/net/${netdev}`).find((e) => e.startsWith('ctlr_'))!;
  return readdirSync(`/sys/class/net/${netdev}/${ctlr}`).find((e) => /^host\d+$/.test(e))!;
}
const wwpnOf = (host: string) => readFileSync(`/sys/class/fc_host/${host}/port_name`, 'utf8').trim().replace(/^0x/, '');
const colons = (w: string) => w.replace(/(..)(?!$)/g, '$1:');
// While VN2VN discovery settles, libfc adds and deletes transient rports: one
// listed by readdir can be gone by the time its attributes are read.
function sysfsAttr(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
}

describe('FC over software FCoE (fcoe VN2VN + LIO tcm_fc on a veth pair in the VM guest)', () => {
  requireGuest();
  let env: NodeEnv;
  let initiatorHost: string;
  let targetWwpn: string;
  let initiatorWwpn: string;

  beforeAll(async () => {
    await execa('sh', ['-c', SETUP]);
    initiatorHost = hostOf('sfc0');
    targetWwpn = wwpnOf(hostOf('sfc1'));
    initiatorWwpn = wwpnOf(initiatorHost);
    const tw = colons(targetWwpn);
    const iw = colons(initiatorWwpn);
    await execa('sh', [
      '-c',
      `set -e
mkdir -p ${CFG}/core/fileio_0/sfc; truncate -s 128M /tmp/sinter-fc-lun.img
echo fd_dev_name=/tmp/sinter-fc-lun.img,fd_dev_size=134217728 > ${CFG}/core/fileio_0/sfc/control; echo 1 > ${CFG}/core/fileio_0/sfc/enable
mkdir -p ${CFG}/fc/${tw}/tpgt_1/lun/lun_1; ln -s ${CFG}/core/fileio_0/sfc ${CFG}/fc/${tw}/tpgt_1/lun/lun_1/sfc
mkdir -p ${CFG}/fc/${tw}/tpgt_1/acls/${iw}/lun_1; ln -s ${CFG}/fc/${tw}/tpgt_1/lun/lun_1 ${CFG}/fc/${tw}/tpgt_1/acls/${iw}/lun_1/sfc
echo 1 > /sys/class/net/sfc1/$(ls /sys/class/net/sfc1 | grep ctlr_)/enabled; sleep 3
echo 1 > /sys/class/net/sfc0/$(ls /sys/class/net/sfc0 | grep ctlr_)/enabled`,
    ]);
    // Wait for the fabric login (VN2VN FIP, then PLOGI/PRLI): the rport shows the target role.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const rports = readdirSync('/sys/class/fc_remote_ports').map((r) => `/sys/class/fc_remote_ports/${r}`);
      const ready = rports.some(
        (r) => sysfsAttr(`${r}/port_name`) === `0x${targetWwpn}` && sysfsAttr(`${r}/roles`).includes('FCP Target') && sysfsAttr(`${r}/port_state`) === 'Online',
      );
      if (ready) break;
      if (Date.now() > deadline) throw new Error('the FCoE target port never came online with the FCP Target role');
      await new Promise((r) => setTimeout(r, 500));
    }
    env = await NodeEnv.create();
  });

  afterAll(async () => {
    await env?.cleanup();
    const tw = targetWwpn ? colons(targetWwpn) : 'none';
    const iw = initiatorWwpn ? colons(initiatorWwpn) : 'none';
    await execa('sh', [
      '-c',
      `for b in /sys/block/sd*; do [ -e "$b/device/delete" ] && echo 1 > "$b/device/delete"; done
for n in sfc0 sfc1; do c=$(ls /sys/class/net/$n 2>/dev/null | grep ctlr_); [ -n "$c" ] && echo 0 > /sys/class/net/$n/$c/enabled; echo $n > /sys/bus/fcoe/ctlr_destroy; done
rm -f ${CFG}/fc/${tw}/tpgt_1/acls/${iw}/lun_1/sfc; rmdir ${CFG}/fc/${tw}/tpgt_1/acls/${iw}/lun_1 ${CFG}/fc/${tw}/tpgt_1/acls/${iw}
rm -f ${CFG}/fc/${tw}/tpgt_1/lun/lun_1/sfc; rmdir ${CFG}/fc/${tw}/tpgt_1/lun/lun_1 ${CFG}/fc/${tw}/tpgt_1 ${CFG}/fc/${tw}
rmdir ${CFG}/core/fileio_0/sfc ${CFG}/core/fileio_0
ip link del sfc0; rm -f /tmp/sinter-fc-lun.img`,
    ], { reject: false });
  });

  it('the node id finds the software HBA\'s WWPN; stage scans exactly the LUN, mounts it; unstage deletes the disk', async () => {
    expect(onlineInitiatorWwpns('/sys')).toContain(initiatorWwpn);
    const vol = 'san-fc-1';
    const req = env.stageReq(vol, '', mountCap('ext4'), { publish_context: { transport: 'fc', wwns: targetWwpn, lun: '1' } });
    await env.h.NodeStageVolume(req);
    const disks = readdirSync('/sys/block').filter((d) => /^sd[a-z]+$/.test(d));
    expect(disks).toHaveLength(1);
    // Laid out as under an FC HBA: host, rport, target, H:C:T:L.
    expect(readlinkSync(`/sys/block/${disks[0]}`)).toMatch(new RegExp(`/${initiatorHost}/rport-\\d+:\\d+-\\d+/target\\d+:0:\\d+/\\d+:0:\\d+:1/block/${disks[0]}$`));
    const path = readFileSync(`/sys/block/${disks[0]}/dev`, 'utf8').trim();
    const mount = (await env.mountsUnder()).find((m) => m.mountPoint === req.staging_target_path);
    expect(mount?.majMin).toBe(path);
    await writeFile(join(req.staging_target_path, 'over-fc.txt'), 'written through FCoE');
    expect(await readFile(join(req.staging_target_path, 'over-fc.txt'), 'utf8')).toBe('written through FCoE');
    await env.h.NodeUnstageVolume({ volume_id: vol, staging_target_path: req.staging_target_path });
    expect(readdirSync('/sys/block').filter((d) => /^sd[a-z]+$/.test(d))).toEqual([]);
    expect(await env.mountsUnder()).toEqual([]);
    expect(existsSync(`/sys/block/${disks[0]}`)).toBe(false);
  });
});
