#!/usr/bin/env bash
# Stop the test cluster's daemons (munge is left running: it is harmless and shared).
state=${KDSWEEP_SLURM_STATE:-/tmp/kdsweep-slurm}
for pidfile in slurmd slurmctld slurmdbd mariadb; do
  pid=$(cat "$state/$pidfile.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
done
for _ in $(seq 50); do pgrep -x 'slurmd|slurmctld|slurmdbd|mariadbd' >/dev/null || exit 0; sleep 0.2; done
pkill -9 -x 'slurmd|slurmctld|slurmdbd|mariadbd' 2>/dev/null
exit 0
