#!/bin/sh
# PID 1 of the guest's busybox initrd: load the modules that reach the root
# disk and the 9p shares, mount the root (a throw-away snapshot on /dev/vda) and
# the control share, and hand over to the run's init script, which the host
# puts in the control share (test/vm/guest-init.sh: editing it needs no rebuild).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "sinter-vm initrd: $*" >/dev/ttyS0
  echo 1 >/proc/sys/kernel/sysrq 2>/dev/null
  echo o >/proc/sysrq-trigger
  sleep 60
}
while read -r m; do insmod "/modules/$m" 2>/dev/null; done </modules/order
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ "$i" -gt 100 ] && fail "no root disk /dev/vda"
  sleep 0.1
done
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount /dev/vda"
mount -t tmpfs -o mode=0755,size=64m tmpfs /newroot/run
mkdir -p /newroot/run/sinter-ctl
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 ctl /newroot/run/sinter-ctl || fail "cannot mount the control share"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh /run/sinter-ctl/guest-init.sh
