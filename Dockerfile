# syntax=docker/dockerfile:1
#
# sinter's container images, one target per role:
#
#   docker build --target controller -t sinter-controller:0.1.0 .   # non-root; tgt for the iscsi overlay
#   docker build --target node       -t sinter-node:0.1.0 .         # root; mkfs, mount, loop, iSCSI initiators
#   docker build                     -t sinter:0.1.0 .              # `all`: both tool sets, for `sinter all`
#
# podman builds it too (`podman build --format docker ...`: the docker format
# keeps the HEALTHCHECK, which the OCI format drops). Where no registry is
# reachable, NODE_IMAGE names a local base instead; scripts/image-base.sh makes
# one (debootstrap bookworm + Node.js 20), and test/deploy/images-podman.test.ts
# builds both roles that way and checks them.
#
# Build with dev dependencies (TypeScript), run with production dependencies
# only, on Debian bookworm's slim Node 20 image. tini is PID 1: it reaps the
# host tools sinter spawns and forwards SIGTERM so in-flight RPCs can finish.
# The Debian package lists below are checked against bookworm by
# test/deploy/dockerfile.test.ts.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: compile TypeScript with the dev dependencies -----------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret:
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
# npm trusts it for this step only; a secret never lands in a layer. Without
# the secret the step runs exactly as before.
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca-certificates; fi; \
    npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY src ./src
# tsc, then dist/ joined into dist/bundle (rolldown; scripts/bundle.mjs says why: faster starts).
COPY scripts/bundle.mjs ./scripts/bundle.mjs
RUN npm run build

# ---- prod-deps: production dependencies only -----------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca-certificates; fi; \
    npm ci --omit=dev --omit=optional --no-audit --no-fund && npm cache clean --force

# ---- runtime: what every role shares -------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ARG NODE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sinter" \
      org.opencontainers.image.description="OpenStack Cinder's block-storage model as a Kubernetes CSI driver" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${NODE_IMAGE}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    CSI_ENDPOINT=unix:///csi/csi.sock
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY proto ./proto
COPY --from=build /src/dist ./dist
COPY deploy/docker/healthcheck.mjs ./healthcheck.mjs
# Probe over sinter's own socket ($CSI_ENDPOINT: keep it equal to --endpoint).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
  CMD ["node", "/app/healthcheck.mjs"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/dist/bundle/main.mjs"]
CMD ["--help"]

# ---- controller: identity + controller services, backends, tgt -----------------
#   tgt            for the iscsi overlay, where tgtd runs as a second container from
#                  this image (tgtadm)
#   lvm2           driver: lvm (pvs, lvs, vgs, lvcreate, lvchange, lvextend, lvremove; the
#                  controller then runs privileged on the storage host)
#   ceph-common    driver: rbd (rbd, ceph)
#   python3-rbd python3-rados   driver: rbd, the agent (dist/backends/rbd/rbd_agent.py):
#                  one librados connection instead of an rbd process per call
#   tgt-rbd        driver: rbd with export: iscsi (tgtd's rbd backing store, the gateway)
# test/deploy/images-podman.test.ts checks every command the backends run resolves here.
FROM runtime AS controller
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tgt tgt-rbd lvm2 ceph-common python3-rbd python3-rados \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532
CMD ["controller"]

# ---- node: identity + node services and the host tools they drive --------------
# Runs as root and privileged in the node DaemonSet: it attaches devices, makes
# filesystems and mounts them for the kubelet.
#   util-linux, mount     blkid, lsblk, wipefs, blockdev, nsenter; mount, losetup
#   e2fsprogs, xfsprogs, btrfs-progs   mkfs, fsck, resize2fs, xfs_growfs, btrfs
#   open-iscsi            the kernel initiator (iscsiadm)
#   nvme-cli              NVMe/TCP: nvme connect (export: nvmeof)
#   libiscsi-bin, qemu-utils, qemu-block-extra, libnbd-bin, fuse3
#                         the user-space initiator: qemu-nbd on iscsi://, nbdfuse, fusermount3
#   multipath-tools       multipath -f, multipathd resize map (multipathed iSCSI / FC)
#   cryptsetup-bin        LUKS2 for encrypted volumes (luksFormat, open, close, resize)
#   kmod                  modprobe loop / iscsi_tcp / rbd
#   ceph-common           kernel rbd attach (rbd device map / unmap / list)
# test/deploy/images-podman.test.ts finds every command src/node runs through
# src/exec and checks that each one resolves in this image's PATH.
FROM runtime AS node
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      util-linux mount e2fsprogs xfsprogs btrfs-progs \
      open-iscsi nvme-cli multipath-tools cryptsetup-bin \
      libiscsi-bin qemu-utils qemu-block-extra libnbd-bin fuse3 \
      kmod ceph-common \
 && rm -rf /var/lib/apt/lists/*
CMD ["node"]

# ---- all (default): `sinter all` in one container, every tool ------------------
FROM node AS all
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tgt tgt-rbd lvm2 python3-rbd python3-rados \
 && rm -rf /var/lib/apt/lists/*
CMD ["all", "--data-dir", "/var/lib/sinter/backends/default"]
