#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the integration tests and for trying sweeps locally.
#   bash launchers/local_slurm.sh start     # munged, slurmctld, slurmd; returns once the node is idle
#   eval "$(bash launchers/local_slurm.sh env)"   # SLURM_CONF for sbatch/squeue/sinfo in this shell
#   python -m agent_align -m stage=generate data.n_train=20,40 hydra/launcher=slurm hardware.cpus_per_task=1
#   bash launchers/local_slurm.sh status
#   bash launchers/local_slurm.sh stop
# Debian packages slurm-wlm and munge (launchers/install_system_deps.sh), run as root. Everything it
# writes (config, munge key and socket, state, spool, logs) lives under $AGENT_ALIGN_SLURM_DIR
# (default /tmp/agent_align_slurm); /etc/slurm and any system munged are left alone.
# Ports: $AGENT_ALIGN_SLURM_PORT for slurmctld (default 6817) and the next one for slurmd.
set -euo pipefail
DIR="${AGENT_ALIGN_SLURM_DIR:-${TMPDIR:-/tmp}/agent_align_slurm}"
PORT="${AGENT_ALIGN_SLURM_PORT:-6817}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket.2"
HOST="$(hostname -s)"

die() { echo "local_slurm: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 700 "$DIR/munge"
  if [ ! -f "$DIR/munge/munge.key" ]; then
    # A key of our own (munged needs >= 32 bytes, owned by its user, mode 0400) so the system key,
    # if any, is never touched.
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
  # The node line comes from slurmd's own hardware probe: CPUs, sockets/cores/threads, RealMemory (MB).
  local node
  node="$(slurmd -C | head -n1 | sed -E "s/^NodeName=[^ ]+ //")"
  cat >"$CONF" <<CONF
# Written by launchers/local_slurm.sh: one node, no cgroups, no accounting database.
ClusterName=agentalign
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroup plugins: they need a delegated cgroup tree that containers rarely have.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Allocate single CPUs and memory, so two 1-CPU jobs share a 2-CPU node.
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Trust the node line below instead of draining the node when the probe differs slightly.
SlurmdParameters=config_overrides
# Finished jobs stay visible to squeue for 5 minutes (there is no sacct here).
MinJobAge=300
KillWait=5
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as their user); run it as root"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurm-wlm/munge not installed; run: bash launchers/install_system_deps.sh"
  if pid_alive "$DIR/slurmctld.pid"; then echo "local_slurm: already running (SLURM_CONF=$CONF)"; return 0; fi
  write_config
  if ! pid_alive "$DIR/munge/munged.pid"; then
    # --force: the state dir sits under /tmp (world-writable, sticky), which munged otherwise refuses.
    munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" 2>>"$DIR/log/munged.log" \
      || die "munged failed to start; see $DIR/log/munged.log"
  fi
  export SLURM_CONF="$CONF"
  slurmctld -f "$CONF" || die "slurmctld failed; see $DIR/log/slurmctld.log"
  slurmd -f "$CONF" || die "slurmd failed; see $DIR/log/slurmd.log"
  local state=""
  for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in idle|mixed|allocated) break;; esac
    sleep 0.5
  done
  case "$state" in
    idle|mixed|allocated) ;;
    *) die "node not ready after 30s (state '${state:-unknown}'); see $DIR/log/slurmctld.log and slurmd.log";;
  esac
  echo "local_slurm: up: node $HOST ($(sinfo -h -N -o '%c CPUs, %m MB')), partition 'local'"
  echo "export SLURM_CONF=$CONF"
}

drain() {
  # Jobs end before the daemons do: a job step still completing when slurmctld goes away leaves its
  # slurmstepd and srun waiting forever. Finished jobs drain in a second; the rest are cancelled.
  pid_alive "$DIR/slurmctld.pid" || return 0
  export SLURM_CONF="$CONF"
  local i ids
  for i in $(seq 1 60); do
    ids="$(squeue -h -o %A -t PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED 2>/dev/null | sort -u | tr '\n' ' ')"
    [ -z "${ids// /}" ] && return 0
    [ "$i" -eq 20 ] && scancel $ids 2>/dev/null || true
    sleep 0.5
  done
  echo "local_slurm: jobs $ids did not end; stopping anyway" >&2
}

stop() {
  local f pid
  drain
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if pid_alive "$f"; then
      pid="$(cat "$f")"
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$f"
  done
  echo "local_slurm: stopped (state kept in $DIR)"
}

status() {
  local f up=0
  for f in munge/munged slurmctld slurmd; do
    if pid_alive "$DIR/$f.pid"; then echo "$(basename "$f"): running (pid $(cat "$DIR/$f.pid"))"; up=$((up + 1))
    else echo "$(basename "$f"): stopped"; fi
  done
  [ "$up" -eq 3 ] || return 3
  export SLURM_CONF="$CONF"
  sinfo -N -o "%N %T %c CPUs %m MB"
  squeue -o "%i %j %T %M %R"
}

case "${1:-}" in
  start) start;;
  stop) stop;;
  status) status;;
  env) echo "export SLURM_CONF=$CONF";;
  *) echo "usage: bash launchers/local_slurm.sh start|stop|status|env" >&2; exit 2;;
esac
