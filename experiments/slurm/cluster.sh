#!/usr/bin/env bash
# A one-machine SLURM cluster on 127.0.0.1, to try `python -m rmu.train -m hydra/launcher=slurm …`
# without a real cluster (and what the SLURM test runs on). Needs root and Debian's packages.
#
#   experiments/slurm/cluster.sh install            # apt-get install slurmctld slurmd slurm-client munge
#   eval "$(experiments/slurm/cluster.sh start)"    # start munged, slurmctld, slurmd; exports SLURM_CONF
#   sinfo; python -m rmu.train -m hydra/launcher=slurm hydra.launcher.partition=local …
#   experiments/slurm/cluster.sh stop               # stop exactly the daemons `start` started (by PID)
#
# Everything (config, state, logs, PID files, the munge socket) lives in $RMU_SLURM_DIR
# (default /tmp/rmu-slurm); the system's own /etc/slurm and munge service are not touched.
# One node, named after this host, with all its cores and 90% of its memory; one partition,
# `local`. proctrack/linuxproc and task/none need no cgroups, so this runs in containers too.
# cred_expire=10: a requeued job may start again after 10 s rather than SLURM's default 120 s.
# No accounting daemon: submitit's status calls to `sacct` fail and it says so ("Bypassing
# sacct error"); it falls back to the jobs' result files, so sweeps work all the same.
set -euo pipefail
DIR=${RMU_SLURM_DIR:-/tmp/rmu-slurm}
CTLD_PORT=${RMU_SLURM_PORT:-6817}
CONF=$DIR/slurm.conf

log() { echo "cluster.sh: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    log "SLURM and munge are already installed ($(slurmctld -V))"
    return
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  log "installed $(slurmctld -V)"
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS; the node has them all
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
  cat >"$CONF" <<CONF
ClusterName=rmu-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || { log "$cmd not found: run '$0 install' first (as root)"; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { log "the daemons run as root here (SlurmUser=root): run as root"; exit 1; }
  if [ -f "$DIR/pids" ]; then
    log "$DIR/pids exists: a cluster started from $DIR may still run; '$0 stop' first"
    exit 1
  fi
  write_conf
  export SLURM_CONF=$CONF
  # A root-owned copy of the key Debian's package made: munged checks the key's owner, and
  # runs as root only with --force.
  install -m 600 /etc/munge/munge.key "$DIR/munge/munge.key"
  munged --force --foreground --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/seed" >"$DIR/munge/munged.log" 2>&1 &
  echo "$!" >>"$DIR/pids"
  for _ in $(seq 50); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$DIR/munge/munge.socket" ] || { log "munged did not start: $(tail -3 "$DIR/munge/munged.log")"; stop; exit 1; }
  slurmctld -D -i >"$DIR/slurmctld.out" 2>&1 &   # -i: ignore state a previous cluster left in $DIR/state
  echo "$!" >>"$DIR/pids"
  slurmd -D >"$DIR/slurmd.out" 2>&1 &
  echo "$!" >>"$DIR/pids"
  for _ in $(seq 120); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
  done
  if [ "${state:-}" != idle ]; then
    log "the node did not come up (sinfo: '${state:-}'); logs in $DIR:"
    tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    stop
    exit 1
  fi
  log "up: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %T'); daemons' PIDs in $DIR/pids"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  [ -f "$DIR/pids" ] || { log "no $DIR/pids: nothing started from $DIR"; return 0; }
  # Reverse order: slurmd, slurmctld, then munged, each by the PID `start` recorded.
  for pid in $(tac "$DIR/pids"); do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$DIR/pids"
  log "stopped"
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop   (state in \$RMU_SLURM_DIR, default /tmp/rmu-slurm)" >&2; exit 2 ;;
esac
