#!/usr/bin/env bash
# Builds a local stand-in for the Dockerfile's base image (node:20-bookworm-slim)
# where no container registry can be reached: Debian bookworm (debootstrap
# --variant=minbase, from the mirror apt already uses) plus this machine's
# Node.js 20 and npm, laid out where the upstream image has them (/usr/local).
#
#   scripts/image-base.sh                  # prints the path of the rootfs tarball
#   scripts/image-base.sh --import NAME    # and `podman import`s it as NAME
#
# then:  podman build --build-arg NODE_IMAGE=NAME --target node .
#
# The tarball is cached under $SINTER_IMAGE_CACHE (default
# /var/cache/sinter-test/image-base), keyed by this recipe, the Node.js and npm
# versions and the mirror, so a second run only prints the path. Run as root
# (debootstrap needs it).
set -euo pipefail

CACHE=${SINTER_IMAGE_CACHE:-/var/cache/sinter-test/image-base}
SUITE=bookworm
import_as=
case "${1:-}" in
  --import) import_as=${2:?--import needs an image name} ;;
  '') ;;
  *) echo "usage: $0 [--import NAME]" >&2; exit 2 ;;
esac

log() { echo "image-base: $*" >&2; }

NODE_BIN=$(command -v node) || { log "node is not on PATH"; exit 1; }
NODE_BIN=$(readlink -f "$NODE_BIN")
NODE_VERSION=$("$NODE_BIN" --version)
case "$NODE_VERSION" in v20.*) ;; *) log "the images run Node.js 20; this machine has $NODE_VERSION"; exit 1 ;; esac
NPM_DIR=$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")
[ -f "$NPM_DIR/package.json" ] || { log "cannot find npm's package directory (got $NPM_DIR)"; exit 1; }
NPM_VERSION=$("$NODE_BIN" -p "require('$NPM_DIR/package.json').version")

# The Debian mirror apt already uses (debian-security and -updates come along
# as sources inside the image, the way the upstream image lists them).
mirror_of() { apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$1" '$2 == s { print $1; exit }'; }
MIRROR=${SINTER_DEBIAN_MIRROR:-$(mirror_of "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian/}
SECURITY=$(mirror_of "$SUITE-security")
SECURITY=${SECURITY:-${MIRROR%/debian/}/debian-security/}

KEY=$( { cat "$0"; echo "$NODE_VERSION $NPM_VERSION $MIRROR $SECURITY $(uname -m)"; } | sha256sum | cut -c1-16)
TAR="$CACHE/$SUITE-node$NODE_VERSION-$KEY.tar"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one builder at a time; the others wait, then find the tarball

if [ ! -s "$TAR" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  started=$(date +%s)
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root" "$TAR.partial"' EXIT
  log "debootstrap --variant=minbase $SUITE from $MIRROR (cached afterwards in $CACHE)"
  debootstrap --variant=minbase --merged-usr "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
  rm -f "$root.log"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -f "$root/etc/apt/sources.list"
  # Node.js and npm where node:20-bookworm-slim has them.
  install -D -m 0755 "$NODE_BIN" "$root/usr/local/bin/node"
  mkdir -p "$root/usr/local/lib/node_modules"
  cp -a "$NPM_DIR" "$root/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
  # What a container image does not carry: package caches, lists, logs, the
  # build host's name and resolver (the runtime provides its own).
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/root/.npm
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"
  chroot "$root" /usr/local/bin/node --version >/dev/null || { log "node does not run inside the rootfs"; exit 1; }
  tar --numeric-owner --xattrs -C "$root" -cf "$TAR.partial" .
  mv "$TAR.partial" "$TAR"
  rm -rf "$root"
  trap - EXIT
  # Older recipes' tarballs are dead weight.
  find "$CACHE" -maxdepth 1 -name "$SUITE-node*.tar" ! -name "$(basename "$TAR")" -delete
  log "built $(basename "$TAR") ($(du -m "$TAR" | cut -f1) MiB) in $(( $(date +%s) - started ))s"
fi

if [ -n "$import_as" ]; then
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["node"]' \
    "$TAR" "$import_as" >/dev/null
  log "imported as $import_as"
fi
echo "$TAR"
