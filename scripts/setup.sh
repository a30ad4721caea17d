#!/usr/bin/env bash
# Installs what sinter's demo and tests need on a Debian machine (run as root),
# then installs npm dependencies and builds dist/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Loop devices, filesystems, and the iSCSI target (tgt) and user-space initiator
# (qemu-nbd with its iscsi driver, nbdfuse, FUSE) the iSCSI tests use; iproute2
# for the two-host test's network namespaces and veth pair. podman and
# debootstrap build the container images for real (test/deploy/images-podman.test.ts:
# chroot isolation as root, kernel overlay storage, so no uidmap/fuse-overlayfs;
# the base image comes from scripts/image-base.sh); cryptsetup-bin for
# encrypted volumes (LUKS); qemu-system-x86 and mmdebstrap build and boot the
# VM stage's guest (test/vm/, built on first use; mmdebstrap installs the guest's
# packages in one apt run, much faster than debootstrap). ceph-mon, ceph-osd,
# ceph-mgr and ceph-common: the rbd tests start a single-node Ceph cluster of
# their own (test/helpers/ceph-cluster.ts; ~2 min to install, ~215 MB); tgt-rbd: tgtd's rbd backing store, the iSCSI gateway of an rbd backend;
# qemu-block-extra also carries qemu's rbd driver, the user-space rbd attach.
# python3-rbd and python3-rados: the rbd backend's agent (one librados
# connection, src/backends/rbd/rbd_agent.py; ceph-mgr already pulls them in).
PACKAGES=(util-linux mount e2fsprogs xfsprogs btrfs-progs fdisk kmod tgt qemu-utils qemu-block-extra libnbd-bin fuse3 libiscsi-bin open-iscsi iproute2
  podman debootstrap cryptsetup-bin qemu-system-x86 mmdebstrap ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados tgt-rbd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
# Package lists are needed to install and by the tests that check the image's package list.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' -e '^auxfiles$')" ]; then
  apt-get update -q >/dev/null
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  }
fi
# promtool (Prometheus' own exposition parser and linter) checks /metrics in the
# tests. Only that binary is taken from Debian's prometheus package: installing
# the package would also start a Prometheus server.
if ! command -v promtool >/dev/null; then
  echo "setup: installing promtool (from Debian's prometheus package)"
  pt=$(mktemp -d)
  chmod 0755 "$pt"
  (cd "$pt" && apt-get download -q prometheus >/dev/null 2>&1) || { apt-get update -q >/dev/null; (cd "$pt" && apt-get download -q prometheus >/dev/null 2>&1); }
  dpkg-deb --fsys-tarfile "$pt"/prometheus_*.deb | tar -x -C "$pt" ./usr/bin/promtool
  install -m 0755 "$pt/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$pt"
fi
command -v kubectl >/dev/null || echo "setup: kubectl is missing; the deploy tests need \`kubectl kustomize\`" >&2

# Loop devices are the local transport; make sure the kernel side is there.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
