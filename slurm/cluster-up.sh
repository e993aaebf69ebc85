#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on loopback (Debian/Ubuntu, as root): for tests and CI.
# Idempotent: re-running leaves a running cluster running. `slurm/cluster-up.sh --check` only reports.
set -euo pipefail

if [[ "${1:-}" == "--check" ]]; then
  sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mix|alloc" && echo "slurm: up" && exit 0
  echo "slurm: down"; exit 1
fi
if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mix|alloc"; then
  echo "slurm: already up"; exit 0
fi
[[ $EUID -eq 0 ]] || { echo "error: run as root (it installs packages and starts daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munge: a key owned by munge, mode 400; run the daemon as munge.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# Requeued jobs may start again at once (the default holds them for minutes).
JobRequeue=1
KillWait=30
MinJobAge=600
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "slurm: up (node ${host}, ${cpus} CPUs)"; exit 0
  fi
  sleep 1
done
echo "error: slurm did not come up; see /var/log/slurm/*.log" >&2
exit 1
