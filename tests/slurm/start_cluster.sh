#!/usr/bin/env bash
# Start a private, throw-away SLURM cluster on this single machine (root, no systemd).
# Used by the core's test suite (core/tests/test_environments_slurm.py), which starts it in a session
# fixture and stops it (stop_cluster.sh) in the finalizer. Needs root: it may apt-get install the daemons.
#   TORCHPLUG_SLURM_DIR   base dir for config/state/logs/pids     (default ${TMPDIR:-/tmp}/torchplug-slurm)
#   SLURM_NODES       number of emulated nodes (slurmd's)      (default 1)
#   SLURM_NODE_CPUS   CPUs declared per emulated node          (default: real core count)
#   SLURM_CTLD_PORT   slurmctld port                           (default 6817)
#   SLURM_NODE_PORT0  first slurmd port (node i uses PORT0+i)  (default 17000)
# Afterwards:  export SLURM_CONF=$TORCHPLUG_SLURM_DIR/etc/slurm.conf  and use srun/sbatch/sinfo.
# Idempotent: if the cluster named by the pid files is alive with the same layout, it does nothing;
# otherwise it stops what its pid files name (stop_cluster.sh beside it) and starts afresh.
set -euo pipefail

D=${TORCHPLUG_SLURM_DIR:-${TMPDIR:-/tmp}/torchplug-slurm}
NODES=${SLURM_NODES:-1}
CPUS=${SLURM_NODE_CPUS:-$(nproc)}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
PORT0=${SLURM_NODE_PORT0:-17000}
export SLURM_CONF=$D/etc/slurm.conf
NODE_NAMES=$(for i in $(seq 1 "$NODES"); do printf 'n%d ' "$i"; done)

log() { echo "[start_cluster] $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

all_alive() {
  alive "$D/run/munged.pid" && alive "$D/run/slurmctld.pid" || return 1
  for n in $NODE_NAMES; do alive "$D/run/slurmd-$n.pid" || return 1; done
}

nodes_in_state() {  # regex-of-states: true when every configured node is in one of them
  local out
  out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  for n in $NODE_NAMES; do echo "$out" | grep -qE "^$n ($1)\$" || return 1; done
}
FINGERPRINT="# start_cluster: nodes=$NODES cpus=$CPUS ctld_port=$CTLD_PORT port0=$PORT0"

# ---- 0. already running with the same layout? (busy nodes count as up) ----------------
if [ -f "$SLURM_CONF" ] && grep -qxF "$FINGERPRINT" "$SLURM_CONF" && all_alive \
   && nodes_in_state 'idle|alloc|mix|comp'; then
  log "cluster already up ($NODES node(s))"; sinfo -N; exit 0
fi

# ---- 1. packages ---------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm + munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi

# ---- 2. stop leftovers of an earlier run (only what our pid files name) ---------------
STOP="$(cd "$(dirname "$0")" && pwd)/stop_cluster.sh"
if [ -x "$STOP" ]; then TORCHPLUG_SLURM_DIR=$D "$STOP" >/dev/null 2>&1 || true; fi

mkdir -p "$D"/{etc,run,log,state,spool,munge}
chmod 755 "$D" "$D/run"
chmod 700 "$D/munge"
rm -rf "$D/state"/* "$D/spool"/*      # fresh controller state: config may have changed

# ---- 3. munge (private key + private socket, runs as root) ---------------------------
if [ ! -s "$D/munge/munge.key" ]; then
  dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$D/munge/munge.key"
fi
rm -f "$D/run/munge.socket.2" "$D/run/munge.socket.2.lock"
/usr/sbin/munged --force \
  --key-file="$D/munge/munge.key" --socket="$D/run/munge.socket.2" \
  --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/munged.seed"

# ---- 4. node names must resolve (libraries derive MASTER_ADDR from SLURM_NODELIST) ---
for n in $NODE_NAMES; do
  getent hosts "$n" >/dev/null || echo "127.0.0.1 $n  # torchplug-slurm" >> /etc/hosts
done

# ---- 5. slurm.conf ---------------------------------------------------------------------
H=$(hostname -s)
{
echo "$FINGERPRINT"
cat <<EOF
ClusterName=torchplug
SlurmctldHost=${H}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/run/munge.socket.2
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
Waittime=0
EOF
i=0
for n in $NODE_NAMES; do
  i=$((i+1))
  echo "NodeName=$n NodeHostname=$H NodeAddr=127.0.0.1 Port=$((PORT0+i)) CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN"
done
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} > "$SLURM_CONF"

# ---- 6. daemons (each daemonizes itself and writes its pid file) ----------------------
/usr/sbin/slurmctld -f "$SLURM_CONF"
for n in $NODE_NAMES; do
  mkdir -p "$D/spool/$n"
  /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n"
done

# ---- 7. wait until every node is idle --------------------------------------------------
for _ in $(seq 1 120); do
  if nodes_in_state idle; then log "cluster up: $NODES node(s), SLURM_CONF=$SLURM_CONF"; sinfo -N; exit 0; fi
  sleep 0.25
done
log "timed out waiting for idle nodes"; sinfo -N || true
tail -n 20 "$D/log/slurmctld.log" "$D"/log/slurmd-*.log >&2 || true
exit 1
