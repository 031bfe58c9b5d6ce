#!/usr/bin/env bash
# Run a command (the test suite) with kd-sweep's image built: as root, install the container tools,
# build the image (or reuse it: the base is built once, about 6 min; the image on top in seconds to
# 90 s) and its Charliecloud directory, export KDSWEEP_IMAGE and KDSWEEP_CH_IMAGE, run the command.
# Not root, or KDSWEEP_NO_CONTAINER=1: run the command alone and the container tests skip, saying
# why. Under CI (CI=true) a build that fails fails.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${KDSWEEP_NO_CONTAINER:-}" ]; then
  echo "container: not built (KDSWEEP_NO_CONTAINER is set); container tests will be skipped"
elif [ "$(id -u)" != 0 ]; then
  echo "container: not built (needs root); container tests will be skipped"
else
  echo "container: installing tools (if needed) and building the image..."
  t0=$(date +%s)
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
  if "$here/install.sh" && image=$("$here/build.sh") && dir=$("$here/ch-image.sh" "$image"); then
    export KDSWEEP_IMAGE=$image KDSWEEP_CH_IMAGE=$dir KDSWEEP_CONTAINER_REQUIRED=1
    echo "container: $image ready in $(( $(date +%s) - t0 )) s (Charliecloud directory $dir)"
  else
    echo "container: failed to build the image" >&2
    if [ "${CI:-}" = "true" ]; then exit 1; fi
  fi
fi
exec "$@"
