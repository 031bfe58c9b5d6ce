#!/usr/bin/env bash
# Run a command (the test suite) with the test cluster up: as root, install and start it, export
# SLURM_CONF, run the command, stop the cluster. Not root, or KDSWEEP_NO_SLURM=1: run the command
# alone and the SLURM tests skip, saying why. Under CI (CI=true) a cluster that fails to start fails.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
started=0
if [ -n "${KDSWEEP_NO_SLURM:-}" ]; then
  echo "test cluster: not started (KDSWEEP_NO_SLURM is set); SLURM tests will be skipped"
elif [ "$(id -u)" != 0 ]; then
  echo "test cluster: not started (needs root); SLURM tests will be skipped"
else
  echo "test cluster: installing (if needed) and starting..."
  t0=$(date +%s)
  if "$here/install.sh" && line=$("$here/start.sh"); then
    eval "$line"
    export SLURM_CONF KDSWEEP_SLURM_REQUIRED=1
    started=1
    echo "test cluster: up in $(( $(date +%s) - t0 )) s ($SLURM_CONF)"
  else
    echo "test cluster: failed to start" >&2
    if [ "${CI:-}" = "true" ]; then exit 1; fi
  fi
fi
"$@"
status=$?
[ $started = 1 ] && "$here/stop.sh"
exit $status
