#!/usr/bin/env bash
# Builds the VM test guest: Debian bookworm (minbase) with the kernel and the
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
# sinter drives, the filesystems it formats, and what node needs to run.
PACKAGES=(
  linux-image-amd64 kmod udev dbus busybox-static util-linux mount fdisk procps iproute2
  open-iscsi multipath-tools lvm2 thin-provisioning-tools targetcli-fb tgt nvme-cli
  cryptsetup-bin xfsprogs e2fsprogs btrfs-progs sg3-utils fcoe-utils
  libstdc++6 ca-certificates
)
ROOT_SIZE_MB=2048

# The Debian mirror the host's apt uses (deb822 or one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(http[^[:space:]]*\/debian\)[[:space:]]\+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

[ -e "$out/done" ] && exit 0
work=$(mktemp -d "${out%/}.build.XXXXXX")
root=$work/root
cleanup() {
  for m in dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "build-guest: $(date +%T) $*" >&2; }

log "debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

# No service starts in the chroot; no initramfs (the guest boots with our own
# busybox initrd, and Debian's would cost minutes here and seconds at boot).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
chroot "$root" dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
ln -s /bin/true "$root/usr/sbin/update-initramfs"
echo 'path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*' >"$root/etc/dpkg/dpkg.cfg.d/01-sinter-nodoc"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

log "installing ${#PACKAGES[@]} packages"
chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$work/apt.log" 2>&1 || {
  tail -n 40 "$work/apt.log" >&2
  exit 1
}
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

for m in dev/pts dev proc sys; do umount "$root/$m"; done

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
truncate -s "${ROOT_SIZE_MB}M" "$work/rootfs.img"
mkfs.ext4 -q -F -L sinter-root -E root_owner=0:0 -d "$root" "$work/rootfs.img"

mkdir -p "$out"
mv "$work/rootfs.img" "$work/vmlinuz" "$work/initrd.img" "$out/"
echo "$kver" >"$out/kernel-version"
printf '%s\n' "${PACKAGES[@]}" >"$out/packages"
touch "$out/done"
log "guest ready in $out ($(du -sh --apparent-size "$out/rootfs.img" | cut -f1) apparent, $(du -sh "$out/rootfs.img" | cut -f1) used)"
