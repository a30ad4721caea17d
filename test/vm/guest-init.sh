#!/bin/sh
# PID 1 of the VM test guest, run by the initrd from the control share (the
# host copies this file there at every boot). The host (test/vm/harness.mjs)
# put the run's settings in /run/sinter-ctl/env and the command in
# /run/sinter-ctl/cmd.sh: mount the shares, start udev (and D-Bus),
# run the command with its output on the second serial port, write its exit
# status to /run/sinter-ctl/status and power off. Never returns.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
ctl=/run/sinter-ctl
out=/dev/ttyS1
# Progress on the console (ttyS0, a file on the host): a boot that sticks says where.
step() { echo "sinter-vm: $*" >/dev/ttyS0 2>/dev/null; }
step "init started"

halt() {
  sync
  # qemu runs with -no-reboot: a reboot ends it at once.
  busybox reboot -f
  echo b >/proc/sysrq-trigger
  sleep 600
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# Sparse volume images live here; the file backend checks free space against the limit.
mount -t tmpfs -o mode=1777,size=16g tmpfs /tmp
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/lock /run/dbus /run/lvm /run/multipathd
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
stty -F "$out" raw -echo 115200 2>/dev/null
hostname sinter-vm
ip link set lo up

. "$ctl/env"

# Shares: "tag path opts" per line; the mount point is made in the snapshot.
if [ -s "$ctl/shares" ]; then
  while read -r tag path opts; do
    [ -n "$tag" ] || continue
    mkdir -p "$path"
    if ! mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$opts" "$tag" "$path"; then
      echo "sinter-vm: cannot mount share $tag at $path" >"$out"
      echo 125 >"$ctl/status"
      halt
    fi
  done <"$ctl/shares"
fi
step "shares mounted"
[ -n "${SINTER_VM_NODE:-}" ] && ln -sf "$SINTER_VM_NODE" /usr/local/bin/node

# udev for /dev/disk/by-*, device-mapper and LVM; only block devices are
# coldplugged (all of them costs seconds under TCG and gives nothing here).
/lib/systemd/systemd-udevd --daemon >/dev/null 2>&1
udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
case " ${SINTER_VM_SERVICES:-} " in
  *" dbus "*) dbus-daemon --system --fork >/dev/null 2>&1 ;;
esac
udevadm settle --timeout=30 >/dev/null 2>&1
step "udev settled"

read -r up _ </proc/uptime
echo "sinter-vm: ready after ${up}s" >"$out"
cd "${SINTER_VM_CWD:-/}" || cd /
# Through a pipe, not straight to the serial tty: programs see what they would
# in CI (no terminal), and the status comes from the command, not from cat.
{
  sh "$ctl/cmd.sh" </dev/null 2>&1
  echo $? >"$ctl/status"
} | cat >"$out"
sync
for m in $(awk '$3 == "9p" && $2 != "/run/sinter-ctl" {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null; done
halt
