#!/usr/bin/env bash
# The image as a Charliecloud directory image, readable by every user, kept per image id under
# /var/tmp/kdsweep-ch (older ones removed). Prints its path.   ch-image.sh IMAGE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
image=$1
top=/var/tmp/kdsweep-ch
dir=$top/$(podman image inspect --format '{{.Id}}' "$image" | cut -c1-12)
if [ ! -d "$dir" ]; then
  mkdir -p "$top" && chmod 755 "$top"
  find "$top" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  echo "container: exporting $image to the directory image $dir (about 45 s)" >&2
  make -s -C "$here/../.." ch-image ENGINE=podman IMAGE="$image" CH_IMAGE="$dir" >&2
fi
echo "$dir"
