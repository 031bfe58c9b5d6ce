#!/usr/bin/env bash
# Build kd-sweep's image on a machine with podman and no image registry (this project's test and CI
# machines), then print its name. Used by the container tests; a user runs `make image` instead.
#   1. once, kept in podman's storage: a Debian bookworm rootfs made by mmdebstrap (about 70 s),
#      imported, then a base with torch installed by pip in a build that sees the host's pip
#      configuration, CA bundle and local package folders read-only (about 4-6 min, 6 GB);
#   2. every time: `make image` on that base (about 90 s; seconds when nothing changed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
base=${KDSWEEP_BASE_IMAGE:-localhost/kd-sweep-base:torch2.14.1}
rootfs=localhost/kd-sweep-rootfs:bookworm
image=${IMAGE:-localhost/kd-sweep:test}

# what this host's pip reads: its configuration, CA bundle and local package folders (read-only)
volumes=()
for p in /etc/pip.conf /etc/xdg/pip /etc/ssl/certs /opt/wheels /opt/pypi /opt/pypi-more; do
  [ -e "$p" ] && volumes+=(-v "$p:$p:ro")
done
if ! podman image exists "$base"; then
  if ! podman image exists "$rootfs"; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "container: debootstrapping Debian bookworm (about 70 s)" >&2
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tmp/rootfs.tar" >&2
    podman import --quiet "$tmp/rootfs.tar" "$rootfs" >&2
  fi
  echo "container: installing torch into the base image (about 5 min)" >&2
  podman build --quiet "${volumes[@]}" --build-arg ROOTFS="$rootfs" -f "$here/Containerfile.base" -t "$base" "$here" >&2
fi
echo "container: building $image on $base" >&2
make -s -C "$here/../.." image IMAGE="$image" BASE_IMAGE="$base" IMAGE_BUILD_FLAGS="--quiet ${volumes[*]}" >&2
echo "$image"
