#!/usr/bin/env bash
# Install the container tools the tests use from Debian's packages (idempotent; needs root): podman
# (with runc: crun 1.8 refuses this kind of host's cgroups), mmdebstrap for the offline base image,
# and Charliecloud's ch-run, the unprivileged HPC runtime the Slurm jobs run in.
set -euo pipefail
need=()
for cmd in podman:podman runc:runc newuidmap:uidmap slirp4netns:slirp4netns mmdebstrap:mmdebstrap ch-run:charliecloud-runtime; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
[ -e /usr/lib/cni/bridge ] || [ -e /usr/libexec/cni/bridge ] || need+=(containernetworking-plugins)
[ ${#need[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# with their recommended packages (netavark, iptables ...): what the builds' network needs
apt-get install -y -q "${need[@]}" >/dev/null
echo "installed: ${need[*]}" >&2
