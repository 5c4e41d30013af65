#!/usr/bin/env bash
# Stop the local SLURM that slurm/local/up.sh started.
#
#   slurm/local/down.sh           # stop the daemons; keep state (job ids, accounting DB)
#   slurm/local/down.sh --purge   # also delete /var/lib/slurm-local (fresh cluster next time)
#
# Only processes whose pids up.sh recorded in /var/lib/slurm-local/run are
# signalled, in reverse start order, and each is awaited before the next: a
# munged or MariaDB that up.sh found running and reused is left alone.
# Idempotent: with nothing running it just returns.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"

_queue_empty() { [[ -z "$(squeue -h -o %i 2>/dev/null)" ]]; }

purge=0
for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (usage: down.sh [--purge])" ;;
    esac
done
need_root "$@"
take_lock

t0=$EPOCHREALTIME
# Before wiping the spool dir, let slurm itself end the jobs (their slurmstepd
# processes outlive slurmd and would be orphaned).
if ((purge)) && recorded_pid slurmctld >/dev/null && [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
    echo "cancelling all jobs before purging"
    scancel $(squeue -h -o %i) 2>/dev/null || true
    wait_for 30 _queue_empty || echo "$_script: some jobs still listed after 30 s; purging anyway" >&2
fi
if [[ -d $RUN_DIR ]]; then
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        # slurmctld saves its state on SIGTERM and takes ~4.5 s; the others < 1 s.
        stop_daemon "${DAEMONS[i]}" 60
    done
fi
if ((purge)) && [[ -d $STATE_DIR ]]; then
    rm -rf "$STATE_DIR"
    echo "purged $STATE_DIR"
fi
dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "local SLURM down in $dt s"
