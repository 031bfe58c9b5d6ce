#!/usr/bin/env bash
# Stop the test cluster's daemons (munge is left running: it is harmless and shared).
state=${KDSWEEP_SLURM_STATE:-/tmp/kdsweep-slurm}
daemons="slurmd slurmctld slurmdbd mariadbd"
for pidfile in slurmd slurmctld slurmdbd mariadb; do
  pid=$(cat "$state/$pidfile.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
done
running() { for d in $daemons; do pgrep -x "$d" >/dev/null && return 0; done; return 1; }
for _ in $(seq 50); do running || exit 0; sleep 0.2; done
for d in $daemons; do pkill -9 -x "$d" 2>/dev/null; done
exit 0
