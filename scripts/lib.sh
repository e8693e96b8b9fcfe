# Shared helpers for scripts/kafka.sh and scripts/postgres.sh.
# Sourced, not executed. Expects the caller to have `set -euo pipefail`.

# Repository root, from this file's location (works from any cwd and through
# a symlinked scripts/ dir).
REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"

# Prefix for messages; each script sets LOG_TAG before using these.
LOG_TAG="${LOG_TAG:-scripts}"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# now_s: seconds since the epoch (for bounded waits).
now_s() { date +%s; }

# port_in_use PORT: true if something listens on (or holds) 127.0.0.1:PORT.
port_in_use() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    # Any TCP socket bound to the port on any address counts: a listener on
    # 0.0.0.0:PORT would also make our bind to 127.0.0.1:PORT fail.
    [ -n "$(ss -Htan "( sport = :$port )" 2>/dev/null | grep -v TIME-WAIT || true)" ]
  else
    # Fallback: a successful connect means a listener.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# free_port [EXCLUDE...]: print a TCP port free on 127.0.0.1, chosen at random
# from 15000-32000 (below Linux's default ephemeral range 32768-60999, so an
# outgoing connection is unlikely to grab it between our runs).
free_port() {
  local tries=0 port ex skip
  while [ "$tries" -lt 200 ]; do
    tries=$((tries + 1))
    port=$((15000 + RANDOM % 17000))
    skip=0
    for ex in "$@"; do [ "$ex" = "$port" ] && skip=1; done
    [ "$skip" = 1 ] && continue
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  die "could not find a free TCP port on 127.0.0.1"
}

# pid_alive PID: true if the process exists and is not a zombie (an exited
# child that nobody reaped yet still answers kill -0).
pid_alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local state
  # Field 3 of /proc/PID/stat, after "(comm)" which may contain spaces.
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1 || true)"
  [ "$state" != "Z" ]
}

# pid_cmdline_has PID STRING: true if the process's command line contains
# STRING (guards against a stale pid file whose pid got reused).
pid_cmdline_has() {
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# stop_pid PID TIMEOUT_S NAME: SIGTERM, wait up to TIMEOUT_S, then SIGKILL.
stop_pid() {
  local pid="$1" timeout="$2" name="$3" deadline
  pid_alive "$pid" || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(($(now_s) + timeout))
  while pid_alive "$pid"; do
    if [ "$(now_s)" -ge "$deadline" ]; then
      log "$name did not stop within ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
}
