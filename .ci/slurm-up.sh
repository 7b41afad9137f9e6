#!/usr/bin/env bash
# A single-node Slurm for the tests, without systemd: munged, slurmctld and slurmd as background daemons, their
# state and logs under one folder. Prints `export SLURM_CONF=...` on success (eval it); exits non-zero, saying why,
# where Slurm or munge is missing or a daemon does not come up.
#   eval "$(.ci/slurm-up.sh /tmp/slurm-ci)"      # stop: .ci/slurm-up.sh /tmp/slurm-ci stop
set -uo pipefail
dir=${1:?usage: slurm-up.sh DIR [stop]}
if [ "${2:-}" = stop ]; then  # and wait until they are gone: slurmctld writes its state as it shuts down
  # first the jobs still running (a test run stopped mid-array): their steps would outlive the daemons
  if [ -f "$dir/slurm.conf" ] && command -v scancel >/dev/null; then
    SLURM_CONF="$dir/slurm.conf" scancel --quiet --user="$(id -un)" 2>/dev/null
    for _ in $(seq 50); do
      [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  pids=$(cat "$dir/slurmd.pid" "$dir/slurmctld.pid" 2>/dev/null)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  for _ in $(seq 50); do
    alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && exit 0
    sleep 0.2
  done
  kill -9 $pids 2>/dev/null
  exit 0
fi
for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null || { echo "slurm-up: $bin not found (Debian: apt-get install slurm-wlm munge)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "slurm-up: slurmd must run as root here" >&2; exit 1; }
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
# munge: a key, its run folder, the daemon (already running is fine)
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
munge -n >/dev/null 2>&1 || runuser -u munge -- munged --force || { echo "slurm-up: munged did not start" >&2; exit 1; }
host=$(hostname -s)
node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cat > "$dir/slurm.conf" <<CONF
ClusterName=distilbench-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$(port)
SlurmdPort=$(port)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
$node State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" || { echo "slurm-up: slurmctld did not start ($dir/log/slurmctld.log)" >&2; exit 1; }
slurmd -f "$SLURM_CONF" || { echo "slurm-up: slurmd did not start ($dir/log/slurmd.log)" >&2; exit 1; }
for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "slurm-up: the node did not become idle: $(sinfo -h -o '%T %E' 2>&1 | head -1); see $dir/log" >&2
exit 1
