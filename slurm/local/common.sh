# Shared by up.sh and down.sh (sourced, not executed).
#
# Every daemon that up.sh starts gets a pid file in $RUN_DIR named after its
# executable (munged.pid, mariadbd.pid, slurmdbd.pid, slurmctld.pid,
# slurmd.pid). Those files are the only thing down.sh acts on, so a daemon
# that up.sh reused (e.g. a munged started by systemd) is never stopped.

STATE_DIR=/var/lib/slurm-local
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/log
DB_DIR=$STATE_DIR/mysql          # private MariaDB datadir: --purge resets accounting too
DB_SOCKET=$RUN_DIR/mysqld/mysqld.sock   # in a dir the mysql user may write
DB_PORT=${SLURM_LOCAL_DB_PORT:-3306}
SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf

# Start order; down.sh walks it backwards.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

_script=$(basename "$0")

# One-line error, then (optionally) the tail of the log that explains it.
die() {
    local msg=$1 log=${2:-}
    echo "$_script: ERROR: $msg" >&2
    if [[ -n $log && -s $log ]]; then
        echo "---- last lines of $log ----" >&2
        tail -n 20 "$log" >&2
    fi
    exit 1
}

need_root() {
    [[ $EUID -eq 0 ]] && return 0
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=SLURM_LOCAL_ACCOUNTING,SLURM_LOCAL_CPUS,SLURM_LOCAL_DB_PORT "$0" "$@"
    fi
    die "must run as root (no sudo found)"
}

# up.sh and down.sh may be called concurrently (parallel test sessions, CI
# steps): serialise them. The lock lives outside $STATE_DIR, which --purge deletes.
take_lock() {
    mkdir -p /run/lock
    exec 8>/run/lock/slurm-local.lock
    flock -w 300 8 || die "another up.sh/down.sh has held /run/lock/slurm-local.lock for 5 minutes"
}

# The pid recorded for daemon $1, if that process is still alive and really is
# that daemon (the /proc comm check guards against pid reuse after a reboot
# left a stale pid file behind). Prints the pid; fails otherwise.
recorded_pid() {
    local name=$1 file=$RUN_DIR/$1.pid pid
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    echo "$pid"
}

# Poll `$@` every 0.1 s until it succeeds or $timeout seconds pass. Only its
# stdout is discarded: a check that calls die() must still be heard.
wait_for() {
    local timeout=$1; shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# SIGTERM the recorded daemon $1, wait until it has exited (SIGKILL after
# $2 seconds), then drop its pid file. No-op if it is not running.
stop_daemon() {
    local name=$1 grace=${2:-30} pid
    if pid=$(recorded_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_for "$grace" _gone "$pid"; then
            echo "$_script: $name (pid $pid) ignored SIGTERM for ${grace}s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            wait_for 5 _gone "$pid" || die "$name (pid $pid) does not exit"
        fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$RUN_DIR/$name.pid"
}

# True once pid $1 has exited. A zombie counts as gone: PID 1 here is not a
# classic init and may reap orphaned daemons late (harmless <defunct> entries).
_gone() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
    [[ -z $state || $state == Z ]]
}
