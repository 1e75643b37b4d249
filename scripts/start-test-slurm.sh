#!/usr/bin/env bash
# start-test-slurm.sh - a real two-node Slurm cluster (n1, n2) on this one machine, for the tests in
# tests/slurm/. Adapted from ../shared/tools/start-local-slurm.sh (single node) with two emulated
# slurmd daemons (`slurmd -N n1`, `slurmd -N n2`, one port each) and slurmdbd + MariaDB so that `sacct`
# works (snakemake-executor-plugin-slurm's status command).
#
# Target: Debian 12 (bookworm), Slurm 22.05 (slurm-wlm), root, no systemd needed. Every daemon is
# started by hand and tracked by PID file. Idempotent: installs only what is missing (apt-get),
# rewrites the configs, (re)starts only what is not running or whose config changed.
#
# Usage:
#   sudo scripts/start-test-slurm.sh          # start (or check) the cluster
#   sudo scripts/start-test-slurm.sh stop     # stop its daemons (by PID file)
#   sudo scripts/start-test-slurm.sh status   # exit 0 when both nodes answer
# Knobs (environment):
#   SLURM_PARTITION=batch  SLURM_CLUSTER=geofmtest  SLURM_WAIT_SECONDS=60  SLURM_SMOKE_TEST=1
#   SLURM_NODE_CPUS=4      CPUs declared per emulated node (oversubscribing a small machine is fine;
#                          slurmd uses the declared values: SlurmdParameters=config_overrides)
#   SLURM_NODE_MEM_PCT=40  memory declared per node, percent of this machine's memory
#   SLURM_MAX_SUBMIT=100   jobs a user may have queued (any state), as on Frontier: QOS `normal`
#                          MaxSubmitJobsPerUser, enforced (AccountingStorageEnforce=limits,qos)
#   SLURM_MAX_TIME=120     the partition's time limit in minutes (Frontier: 2 h for 1-91 nodes); longer
#                          requests are rejected at submission (EnforcePartLimits=ALL)
set -euo pipefail

PARTITION=${SLURM_PARTITION:-batch}
CLUSTER=${SLURM_CLUSTER:-geofmtest}
WAIT_SECONDS=${SLURM_WAIT_SECONDS:-60}
SMOKE_TEST=${SLURM_SMOKE_TEST:-1}
NODE_CPUS=${SLURM_NODE_CPUS:-4}
NODE_MEM_PCT=${SLURM_NODE_MEM_PCT:-40}
MAX_SUBMIT=${SLURM_MAX_SUBMIT:-100}
MAX_TIME=${SLURM_MAX_TIME:-120}
NODES=(n1 n2)
HOST=$(hostname -s)
ETC=/etc/slurm              # keep it here: the job steps drop SLURM_CONF
LOGDIR=/var/log/slurm
SPOOL=/var/lib/slurm
DB_PASS=slurmdbpass         # throw-away local DB, bound to 127.0.0.1 only

log() { echo "[start-test-slurm] $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd-n1.log "$LOGDIR"/slurmd-n2.log "$LOGDIR"/slurmdbd.log; do
        [ -f "$f" ] && { log "--- tail $f"; tail -n 20 "$f" >&2; }
    done
    exit 1
}
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
is_running() {  # PIDFILE NAME
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    alive "$pid" && grep -q "$2" "/proc/$pid/comm" 2>/dev/null
}
stop_pidfile() {  # PIDFILE NAME: SIGTERM that one PID, wait up to 15 s
    local pid
    is_running "$1" "$2" || return 0
    pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 30); do
        alive "$pid" || { rm -f "$1"; return 0; }
        sleep 0.5
    done
    log "$2 (pid $pid) did not stop in 15 s"
    return 1
}
stop_slurmds() { for n in "${NODES[@]}"; do stop_pidfile "/run/slurmd-$n.pid" slurmd || true; done; }
do_stop() {
    stop_slurmds
    stop_pidfile /run/slurmctld.pid slurmctld || true
    stop_pidfile /run/slurmdbd.pid slurmdbd || true
    stop_pidfile /run/mysqld/mysqld.pid mariadbd || true
    stop_pidfile /run/munge/munged.pid munged || true
}
nodes_idle() {
    local states
    states=$(sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null | sort -u) || return 1
    for n in "${NODES[@]}"; do
        grep -Eq "^$n (idle|planned|mixed|allocated)" <<<"$states" || return 1
    done
}

case "${1:-start}" in
    stop) [ "$(id -u)" -eq 0 ] || die "must run as root"; do_stop; exit 0 ;;
    status) nodes_idle && sacct -n -X -j 1 >/dev/null 2>&1; exit $? ;;
    start) ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (CI runs it as root; locally: sudo $0)"

# ---------------------------------------------------------------- 1. packages
pkgs=(slurm-wlm munge slurmdbd mariadb-server mariadb-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get (Debian/Ubuntu expected)"
    log "installing: ${missing[*]}"
    apt-get update -qq
    # postinst cannot start services without systemd (harmless "invoke-rc.d ... denied" lines)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$ETC" "$LOGDIR" "$SPOOL/slurmctld"
for n in "${NODES[@]}"; do mkdir -p "$SPOOL/slurmd-$n"; done
chown -R slurm:slurm "$LOGDIR" "$SPOOL"

# n1/n2 must resolve: ranks take MASTER_ADDR from the first host of SLURM_JOB_NODELIST
for n in "${NODES[@]}"; do
    grep -Eq "^[^#]*[[:space:]]$n([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 $n" >>/etc/hosts
done

# ------------------------------------------------------------------- 2. munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! is_running /run/munge/munged.pid munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null || die "munge round-trip failed"

# ---------------------------------------------------------------- 3. slurm.conf
MEM_TOTAL=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
NODE_MEM=$(( MEM_TOTAL * NODE_MEM_PCT / 100 ))
cat >"$ETC/slurm.conf.new" <<CONF
# Two emulated nodes on one machine (generated by scripts/start-test-slurm.sh)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
DefMemPerCPU=1000
PropagatePrioProcess=1
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
AccountingStorageEnforce=associations,limits,qos
EnforcePartLimits=ALL
JobAcctGatherType=jobacct_gather/linux
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=n[1-2] Default=YES MaxTime=$MAX_TIME State=UP OverSubscribe=NO
CONF
if ! cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf"; then
    log "slurm.conf changed; (re)starting slurmctld and slurmd"
    mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
    stop_slurmds
    stop_pidfile /run/slurmd.pid slurmd || true   # a single-node slurmd of start-local-slurm.sh
    stop_pidfile /run/slurmctld.pid slurmctld
else
    rm -f "$ETC/slurm.conf.new"
fi

# ------------------------------------------- 4. accounting: MariaDB + slurmdbd
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
[ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
if ! is_running /run/mysqld/mysqld.pid mariadbd; then
    log "starting mariadbd"
    nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
        --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
        --innodb-lock-wait-timeout=900 >"$LOGDIR/mariadb.log" 2>&1 &
fi
for _ in $(seq 1 60); do mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.5; done
mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 || die "mariadbd did not come up"
mysql --socket=/run/mysqld/mysqld.sock -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
cat >"$ETC/slurmdbd.conf.new" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
CONF
if ! cmp -s "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"; then
    mv "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"
    stop_pidfile /run/slurmdbd.pid slurmdbd
else
    rm -f "$ETC/slurmdbd.conf.new"
fi
chown slurm:slurm "$ETC/slurmdbd.conf" && chmod 600 "$ETC/slurmdbd.conf"
if ! is_running /run/slurmdbd.pid slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
fi
for _ in $(seq 1 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd not answering"

# ------------------------------------------------- 5. slurmctld and two slurmd
if ! is_running /run/slurmctld.pid slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld       # registers the cluster with slurmdbd (account 'root' exists)
fi
for _ in $(seq 1 20); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
scontrol ping >/dev/null 2>&1 || die "slurmctld not answering"
for n in "${NODES[@]}"; do
    if ! is_running "/run/slurmd-$n.pid" slurmd; then
        log "starting slurmd -N $n"
        /usr/sbin/slurmd -N "$n"
    fi
done

# ------------------------------- Frontier's per-user limit: 100 jobs queued, more rejected at submission
sacctmgr -i modify qos where name=normal set MaxSubmitJobsPerUser="$MAX_SUBMIT" >/dev/null 2>&1 || true
got=$(sacctmgr -n -P show qos where name=normal format=MaxSubmitPU 2>/dev/null | head -n 1)
[ "$got" = "$MAX_SUBMIT" ] || die "QOS normal MaxSubmitJobsPerUser is '$got', wanted $MAX_SUBMIT"
# the cluster's users (root here) have an association in account root with QOS normal
sacctmgr -i modify user where name=root set qos=normal defaultqos=normal >/dev/null 2>&1 || true

# ------------------------------------------- 6. wait for both nodes to be idle
for ((i = 0; i < WAIT_SECONDS; i++)); do
    nodes_idle && break
    for n in "${NODES[@]}"; do
        case "$(sinfo -h -N -n "$n" -o %T 2>/dev/null || true)" in
            down*|drain*) scontrol update NodeName="$n" State=RESUME 2>/dev/null || true ;;
        esac
    done
    sleep 1
done
nodes_idle || die "nodes ${NODES[*]} not idle after ${WAIT_SECONDS}s: $(sinfo -h -N -o '%N %T %E' | tr '\n' ';')"
log "nodes ${NODES[*]} up after ${i}s"
sinfo -N >&2

# ------------------------------------------------------------ 7. smoke test
if [ "$SMOKE_TEST" = 1 ]; then
    out=$(timeout 30 srun -N2 -n2 -t 1 hostname 2>&1) || die "srun -N2 failed: $out"
    jid=$(sbatch --parsable -N2 -n2 -t 1 -o /dev/null --wrap 'srun true') || die "sbatch failed"
    st=""
    for _ in $(seq 1 40); do
        st=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null || true)
        [ "$st" = COMPLETED ] && break; sleep 0.5
    done
    [ "$st" = COMPLETED ] || die "sacct does not report job $jid as COMPLETED (got '$st')"
    if sbatch --parsable -t $((MAX_TIME + 1)) -o /dev/null --wrap true >/dev/null 2>&1; then
        die "a job over the partition's ${MAX_TIME}-minute limit was accepted"
    fi
    log "smoke test passed (srun -N2, sbatch -N2, sacct, time limit ${MAX_TIME} min enforced)"
fi
