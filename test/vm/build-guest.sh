#!/usr/bin/env bash
# Builds the VM test guest: Debian bookworm (its essential set) with the kernel and the
# storage tools sinter drives, as a sparse ext4 root image, plus the kernel and
# a small busybox initrd that boots it straight into test/vm/guest-init.sh
# (which the harness passes in at every boot: it is not part of the image).
#
#   build-guest.sh OUTDIR
#
# OUTDIR gets rootfs.img, vmlinuz, initrd.img, kernel-version and a 'done' mark.
# The caller (harness.ts / guest-image.mjs) names OUTDIR after a hash of this
# file, so editing the recipe here builds a new guest. Runs as root.
set -euo pipefail

out=${1:?usage: build-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)

# The packages the guest carries: the kernel, every initiator/target/mapper
# sinter drives, the filesystems it formats, and what node needs to run. (No
# sg3-utils, fcoe-utils or ca-certificates: nothing in the guest calls them;
# the FCoE test drives the kernel's fcoe sysfs directly.) ceph-mon, ceph-osd,
# ceph-mgr and ceph-common: the kernel rbd test (test/vm/rbd-kernel.vm.test.ts)
# starts a single-node cluster inside the guest (test/helpers/ceph-cluster.ts)
# and maps its images with the guest's rbd.ko; python3-rbd and python3-rados
# are the rbd backend's agent (ceph-mgr pulls them in anyway). fio is for
# bench/vm-targets.mjs (`npm run bench:vm`), the data path through each target
# helper against the raw LV.
PACKAGES=(
  linux-image-amd64 kmod udev dbus busybox-static util-linux mount fdisk procps iproute2
  open-iscsi multipath-tools lvm2 thin-provisioning-tools targetcli-fb tgt nvme-cli
  cryptsetup-bin xfsprogs e2fsprogs btrfs-progs libstdc++6
  ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados fio
)
# Sparse: only what the packages fill (~1.1 GiB with Ceph) takes disk space.
ROOT_SIZE_MB=3072

# What dpkg never writes into the guest: documentation, and the kernel modules
# of hardware a qemu guest with virtio disks and no network device never has
# (GPUs, sound, media, wireless and wired NICs, USB, InfiniBand …, about half
# the kernel package). Everything the tests load stays: SCSI and iSCSI, dm,
# the LIO and nvmet targets, FCoE, veth, virtio, 9p, filesystems, crypto.
DPKG_EXCLUDES=(
  '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/locale/*' '/usr/share/info/*' '/usr/share/lintian/*'
)
for d in drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/net/usb drivers/net/can drivers/net/wwan \
  drivers/infiniband drivers/usb drivers/iio drivers/staging drivers/hid drivers/input drivers/hwmon drivers/mtd drivers/isdn \
  drivers/bluetooth drivers/mmc drivers/video drivers/platform drivers/thunderbolt drivers/firewire drivers/pcmcia drivers/atm \
  drivers/leds drivers/power drivers/watchdog drivers/w1 drivers/misc sound net/wireless net/mac80211 net/bluetooth net/can; do
  DPKG_EXCLUDES+=("/lib/modules/*/kernel/$d/*" "/usr/lib/modules/*/kernel/$d/*")
done

# The Debian mirror the host's apt uses (deb822 or one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(http[^[:space:]]*\/debian\)[[:space:]]\+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

[ -e "$out/done" ] && exit 0
log() { echo "build-guest: $(date +%T) $*" >&2; }
work=$(mktemp -d "${out%/}.build.XXXXXX")
# The chroot is built in RAM (~600 MiB at most): dpkg syncs its database after
# every package and apt's downloads land there too; on a disk shared with a
# test run that waiting was most of the build. Only the finished image goes to disk.
mount -t tmpfs -o size=3g,mode=0755 sinter-guest-build "$work" 2>/dev/null || log "no tmpfs; building on disk"
root=$work/root
img=${out%/}.rootfs.$$
cleanup() {
  for m in dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
  umount -l "$work" 2>/dev/null || true
  rm -rf "$work" "$img"
}
trap cleanup EXIT

# mmdebstrap, not debootstrap: apt resolves and downloads the essential set and
# every package at once (debootstrap fetches one file at a time and unpacks its
# base twice), and dpkg runs with force-unsafe-io (no fsync per file: the image
# is rebuilt from scratch if anything goes wrong). The essential set only (no
# Priority: required extras such as tzdata); mmdebstrap keeps services from
# starting in the chroot. No initramfs: the guest boots with our own busybox
# initrd, and Debian's would cost minutes here and seconds at boot, so
# update-initramfs is diverted before the kernel package is configured.
opts=(--variant=essential --mode=root --format=directory
  --aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io)
for x in "${DPKG_EXCLUDES[@]}"; do opts+=("--dpkgopt=path-exclude=$x"); done
log "mmdebstrap bookworm from $mirror, ${#PACKAGES[@]} packages"
mkdir "$root"
mmdebstrap "${opts[@]}" \
  --essential-hook='chroot "$1" dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  bookworm "$root" "$mirror" >"$work/mmdebstrap.log" 2>&1 || {
  tail -n 40 "$work/mmdebstrap.log" >&2
  exit 1
}

kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
log "kernel $kver"

# Guest configuration: no machine-id games, a fixed host name, an initiator name.
echo sinter-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sinter-vm\n' >"$root/etc/hosts"
: >"$root/etc/machine-id"
mkdir -p "$root/etc/iscsi"
echo "InitiatorName=iqn.2005-03.org.open-iscsi:sinter-vm" >"$root/etc/iscsi/initiatorname.iscsi"
rm -f "$root/usr/sbin/policy-rc.d"

# The initrd: busybox, the modules to reach the root disk and the 9p shares,
# and an /init that mounts the root and the control share and runs the
# guest-init.sh the host put there.
initrd=$work/initrd
mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,modules}
cp "$root/bin/busybox" "$initrd/bin/busybox"
for a in sh mount umount insmod mkdir switch_root sleep cat echo; do ln -s busybox "$initrd/bin/$a"; done
: >"$initrd/modules/order"
for ko in $(modprobe -d "$root" -S "$kver" --show-depends -a virtio_pci virtio_blk ext4 9p 9pnet_virtio crc32c_generic 2>/dev/null | awk '$1=="insmod"{print $2}'); do
  base=$(basename "$ko")
  grep -qx "$base" "$initrd/modules/order" && continue
  src=$ko
  [ -e "$src" ] || src=$root$ko
  case "$ko" in
    *.xz) xz -dc "$src" >"$initrd/modules/${base%.xz}"; base=${base%.xz} ;;
    *.zst) zstd -qdc "$src" >"$initrd/modules/${base%.zst}"; base=${base%.zst} ;;
    *) cp "$src" "$initrd/modules/$base" ;;
  esac
  echo "$base" >>"$initrd/modules/order"
done
[ -s "$initrd/modules/order" ] || { echo "build-guest: no modules found for the initrd" >&2; exit 1; }
install -m 0755 "$here/initrd-init.sh" "$initrd/init"
(cd "$initrd" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.img"

cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
rm -f "$root"/boot/initrd.img* 

log "mkfs.ext4 -d (${ROOT_SIZE_MB} MiB sparse)"
truncate -s "${ROOT_SIZE_MB}M" "$img"
mkfs.ext4 -q -F -L sinter-root -E root_owner=0:0 -d "$root" "$img"

mkdir -p "$out"
mv "$work/vmlinuz" "$work/initrd.img" "$out/"
mv "$img" "$out/rootfs.img"
echo "$kver" >"$out/kernel-version"
printf '%s\n' "${PACKAGES[@]}" >"$out/packages"
touch "$out/done"
log "guest ready in $out ($(du -sh --apparent-size "$out/rootfs.img" | cut -f1) apparent, $(du -sh "$out/rootfs.img" | cut -f1) used)"
