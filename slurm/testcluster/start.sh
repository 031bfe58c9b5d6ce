#!/usr/bin/env bash
# Start the one-node test cluster: munge, MariaDB, slurmdbd, slurmctld, slurmd. Needs root.
# State and logs live under $KDSWEEP_SLURM_STATE (default /tmp/kdsweep-slurm); the config is
# rendered there from this folder's templates. Prints the line to source for SLURM_CONF.
# (slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${KDSWEEP_SLURM_STATE:-/tmp/kdsweep-slurm}
host=$(hostname -s)
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root" >&2; exit 1; }
"$here/stop.sh" >/dev/null 2>&1 || true
rm -rf "$state"
mkdir -p "$state"/{ctld,d,log,db,dev}
touch "$state"/dev/gpu0 "$state"/dev/gpu1
render() { sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$(nproc)|g" "$here/$1.in" > "$state/$1"; }
render slurm.conf; render gres.conf; render slurmdbd.conf
chmod 600 "$state/slurmdbd.conf"
export SLURM_CONF="$state/slurm.conf"

wait_for() {  # wait_for SECONDS WHAT CMD...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start.sh: $what did not come up; logs in $state/log" >&2; tail -n 20 "$state"/log/* >&2 || true; exit 1
}

# munge: the authentication every Slurm daemon and client uses
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
wait_for 10 munge munge -n

# MariaDB for accounting, in the state folder
mariadb-install-db --user=root --datadir="$state/db" --auth-root-authentication-method=socket >"$state/log/mariadb-install.log" 2>&1
(setsid mariadbd --user=root --datadir="$state/db" --socket="$state/mysql.sock" --port=13306 \
   --bind-address=127.0.0.1 --pid-file="$state/mariadb.pid" --log-error="$state/log/mariadb.log" \
   </dev/null >/dev/null 2>&1 &)
wait_for 30 mariadb mariadb --socket="$state/mysql.sock" -e "select 1"
mariadb --socket="$state/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'kdsweep-test';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'kdsweep-test';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

setsid slurmdbd </dev/null >/dev/null 2>&1
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster kdsweep >/dev/null 2>&1 || true
setsid slurmctld </dev/null >/dev/null 2>&1
wait_for 30 slurmctld scontrol ping
setsid slurmd </dev/null >/dev/null 2>&1
wait_for 30 "the compute node" bash -c "sinfo -h -N -o '%T' | grep -Eq '^(idle|mixed|allocated)'"
echo "export SLURM_CONF=$state/slurm.conf"
