#!/usr/bin/env bash
# A local stand without Docker: PostgreSQL and Apache Kafka (3.9 by default, KAFKA_VERSION for
# another, e.g. 4.1.1; the project's scripts), the
# service, and the simulator standing in for service-order, all on 127.0.0.1.
#
# Usage: scripts/stand.sh up|down|restart|reset|status
#
#   up      starts what is not running yet, builds the release binary, seeds demo couriers on
#           an empty database, starts the service and the simulator, prints where everything is
#   down    stops exactly what `up` started (a PostgreSQL or Kafka that was already running
#           stays up)
#   restart restarts only the service (PostgreSQL, Kafka and the simulator keep running): stops
#           it, builds the release binary (unless STAND_BIN) and starts it as `up` does, with
#           the caller's environment, e.g. `API_TOKEN=... scripts/stand.sh restart`
#   reset   `down`, then wipes the stand's own state: its PostgreSQL cluster, its Kafka data
#           (topics, offsets) and its logs, so the next `up` starts empty. Only state dirs
#           inside STAND_DIR are wiped, and only when nothing runs from them: a PostgreSQL or
#           Kafka the stand did not start, or a PG_STATE_DIR/KAFKA_STATE_DIR elsewhere, is
#           left alone (reset then says so and fails)
#   status  what is running
#
# Environment:
#   STAND_DIR         state: pids, logs, env (default $REPO/.cache/stand)
#   STAND_BIN         the service-courier binary (default: cargo build --release, target/release)
#   STAND_COURIERS    demo couriers hired on an empty database (default 20)
#   STAND_ORDERS      orders the simulator sends (default 2000)
#   STAND_RATE        simulator events per second, or "burst" (default 20)
#   METRICS_ADDR      the service's /metrics, /healthz, /readyz (default 127.0.0.1:9464)
#   HTTP_ADDR         the service's HTTP API and operator's page (default 127.0.0.1:8090)
#   KAFKA_VERSION     the Apache Kafka to run (default 3.9.1; 4.x runs too, with
#                     KAFKA_CLIENT=rdkafka unless set), see scripts/kafka.sh
#   KAFKA_CLIENT      the service's Kafka client (default kafka; rdkafka on Kafka 4.x)
#   PG_STATE_DIR, KAFKA_STATE_DIR  passed on to scripts/postgres.sh and scripts/kafka.sh
#                     (default KAFKA_STATE_DIR: $STAND_DIR/kafka, or kafka-VERSION for a
#                     KAFKA_VERSION other than 3.9.1)
set -euo pipefail
LOG_TAG=stand
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

STAND_DIR="${STAND_DIR:-$REPO/.cache/stand}"
export PG_STATE_DIR="${PG_STATE_DIR:-$STAND_DIR/postgres}"
STARTED="$STAND_DIR/started"   # one line per thing `up` started: postgres, kafka
KAFKA_DIR_FILE="$STAND_DIR/kafka.dir"   # the Kafka state dir `up` used, for `down` and `status`
if [ -z "${KAFKA_STATE_DIR:-}" ]; then
  if [ -n "${KAFKA_VERSION:-}" ] && [ "$KAFKA_VERSION" != 3.9.1 ]; then
    KAFKA_STATE_DIR="$STAND_DIR/kafka-$KAFKA_VERSION"
  elif [ "${1:-}" != up ] && [ -f "$KAFKA_DIR_FILE" ]; then
    KAFKA_STATE_DIR="$(cat "$KAFKA_DIR_FILE")"
  else
    KAFKA_STATE_DIR="$STAND_DIR/kafka"
  fi
fi
export KAFKA_STATE_DIR

# Alive and not a zombie (a finished simulator may wait for its reaper).
pid_alive() {
  [ -f "$1" ] || return 1
  local state
  state="$(awk "{print \$3}" "/proc/$(cat "$1")/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

binary() {
  if [ -n "${STAND_BIN:-}" ]; then
    printf '%s\n' "$STAND_BIN"
  else
    # Cargo's progress goes to stderr with this message: stdout keeps only the summary.
    log "building the release binary (the first build takes a few minutes: librdkafka is compiled from C)"
    (cd "$REPO" && cargo build --release --locked) >&2
    printf '%s\n' "$REPO/target/release/service-courier"
  fi
}

cmd_up() {
  mkdir -p "$STAND_DIR"
  "$REPO/scripts/deps.sh"
  touch "$STARTED"
  echo "$KAFKA_STATE_DIR" >"$KAFKA_DIR_FILE"
  if ! "$REPO/scripts/postgres.sh" status >/dev/null 2>&1; then
    "$REPO/scripts/postgres.sh" start
    grep -qx postgres "$STARTED" || echo postgres >>"$STARTED"
  fi
  if ! "$REPO/scripts/kafka.sh" status >/dev/null 2>&1; then
    "$REPO/scripts/kafka.sh" start
    grep -qx kafka "$STARTED" || echo kafka >>"$STARTED"
  else
    KAFKA_CREATE_TOPICS=1 "$REPO/scripts/kafka.sh" start >/dev/null
  fi
  # shellcheck disable=SC1091
  . "$PG_STATE_DIR/env"
  # shellcheck disable=SC1091
  . "$KAFKA_STATE_DIR/env"
  {
    echo "export DATABASE_URL=$DATABASE_URL"
    echo "export KAFKA_BROKERS=$KAFKA_BROKERS"
  } >"$STAND_DIR/env"

  local bin
  bin="$(binary)"
  echo "$bin" >"$STAND_DIR/bin"
  "$bin" migrate >/dev/null
  if [ "$("$bin" couriers list | wc -l)" -le 1 ]; then
    "$bin" couriers seed --count "${STAND_COURIERS:-20}"
  fi

  kafka_client_for_version

  local log_from=0
  if pid_alive "$STAND_DIR/service.pid"; then
    log "service already running (pid $(cat "$STAND_DIR/service.pid"))"
  else
    log_from="$(log_size)"
    start_service "$bin"
  fi
  if pid_alive "$STAND_DIR/simulator.pid"; then
    log "simulator already running (pid $(cat "$STAND_DIR/simulator.pid"))"
  else
    local rate=(--rate "${STAND_RATE:-20}")
    [ "${STAND_RATE:-}" = burst ] && rate=(--burst)
    setsid env KAFKA_BROKERS="$KAFKA_BROKERS" "$bin" simulate --orders "${STAND_ORDERS:-2000}" \
      "${rate[@]}" --seed "$(date +%s)" >>"$STAND_DIR/simulator.log" 2>&1 </dev/null &
    echo $! >"$STAND_DIR/simulator.pid"
  fi
  wait_listening "$log_from"

  cat <<TXT

The stand is up.
  PostgreSQL   $DATABASE_URL
  Kafka        $KAFKA_BROKERS   Apache Kafka $(cat "$KAFKA_STATE_DIR/version" 2>/dev/null || echo 3.9.1) (topics order.status.changed, order.status.changed.dlq)
$(service_summary)
  simulator    pid $(cat "$STAND_DIR/simulator.pid"), log $STAND_DIR/simulator.log

Watch it:
  . $STAND_DIR/env
  $bin stats                 # couriers: status, completed deliveries, active order
  tail -f $STAND_DIR/service.log
  kcat -C -b \$KAFKA_BROKERS -t order.status.changed.dlq -e   # dead letters, if any
Restart the service alone (e.g. with API_TOKEN=... in front), stop it all, or stop and wipe:
  scripts/stand.sh restart
  scripts/stand.sh down
  scripts/stand.sh reset
TXT
}

# Kafka 4 dropped the protocol versions the `kafka` crate speaks (docs/kafka-clients.md): on
# 4.x the stand uses librdkafka unless KAFKA_CLIENT says otherwise.
kafka_client_for_version() {
  local version
  version="$(cat "$KAFKA_STATE_DIR/version" 2>/dev/null || echo 3.9.1)"
  if [ -z "${KAFKA_CLIENT:-}" ] && [ "${version%%.*}" -ge 4 ]; then
    export KAFKA_CLIENT=rdkafka
    log "Kafka $version: KAFKA_CLIENT=rdkafka for the service and the simulator"
  fi
}

# start_service BIN: the service in the background, on the stand's database and broker, with
# the caller's environment (API_TOKEN, WORKERS, DEADLINE_POLICY...) passed through. Used by
# `up` and `restart`, so both start it the same way.
start_service() {
  # setsid: the service must not die with this shell, nor get its terminal's Ctrl-C.
  setsid env DATABASE_URL="$DATABASE_URL" KAFKA_BROKERS="$KAFKA_BROKERS" \
    METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}" HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8090}" \
    "$1" run >>"$STAND_DIR/service.log" 2>&1 </dev/null &
  echo $! >"$STAND_DIR/service.pid"
}

# The service log's size in bytes: where the lines of the next start begin (the log is
# appended to, so an earlier run's lines must not count as this one's).
log_size() { stat -c %s "$STAND_DIR/service.log" 2>/dev/null || echo 0; }

# The service log from byte FROM on.
log_since() { tail -c +$(($1 + 1)) "$STAND_DIR/service.log" 2>/dev/null || true; }

# wait_listening FROM: waits (bounded) until the service started after byte FROM of its log
# listens (metrics and HTTP API), or died trying; dies if it exited.
wait_listening() {
  local from="$1" deadline
  deadline=$(($(now_s) + 30))
  while pid_alive "$STAND_DIR/service.pid" && [ "$(now_s)" -lt "$deadline" ]; do
    [ "$(log_since "$from" | grep -c -e 'on http://' -e 'page at http://')" -ge 2 ] && break
    sleep 0.2
  done
  pid_alive "$STAND_DIR/service.pid" || die "the service exited at once: see $STAND_DIR/service.log"
}

# The service's lines of the summary, addresses from the log of its latest start.
service_summary() {
  local metrics api
  metrics="$(grep -o 'on http://[0-9.:]*' "$STAND_DIR/service.log" | tail -n1 | cut -c4-)"
  api="$(grep -o 'page at http://[0-9.:]*/' "$STAND_DIR/service.log" | tail -n1 | cut -c9-)"
  cat <<TXT
  service      pid $(cat "$STAND_DIR/service.pid"), log $STAND_DIR/service.log
               metrics and health: $metrics/metrics, /healthz, /readyz
               operator's page and HTTP API: $api
TXT
}

cmd_restart() {
  [ -f "$STAND_DIR/env" ] || die "the stand is not up (no $STAND_DIR/env): scripts/stand.sh up"
  "$REPO/scripts/postgres.sh" status >/dev/null 2>&1 \
    || die "the stand's PostgreSQL ($PG_STATE_DIR) is not running: scripts/stand.sh up"
  "$REPO/scripts/kafka.sh" status >/dev/null 2>&1 \
    || die "the stand's Kafka ($KAFKA_STATE_DIR) is not running: scripts/stand.sh up"
  # shellcheck disable=SC1091
  . "$STAND_DIR/env"
  local bin
  bin="$(binary)"
  echo "$bin" >"$STAND_DIR/bin"
  # A binary of another version may need a newer schema.
  "$bin" migrate >/dev/null
  kafka_client_for_version
  stop_pid service
  local log_from
  log_from="$(log_size)"
  start_service "$bin"
  wait_listening "$log_from"
  log "service restarted"
  service_summary
}

stop_pid() {
  local name="$1" file="$STAND_DIR/$1.pid"
  if pid_alive "$file"; then
    local pid
    pid="$(cat "$file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$file"
}

cmd_down() {
  stop_pid simulator
  stop_pid service
  if [ -f "$STARTED" ]; then
    grep -qx kafka "$STARTED" && "$REPO/scripts/kafka.sh" stop
    grep -qx postgres "$STARTED" && "$REPO/scripts/postgres.sh" stop
    rm -f "$STARTED"
  fi
  rm -f "$KAFKA_DIR_FILE"
  log "down"
}

# inside_stand_dir DIR: true if DIR lies inside STAND_DIR (not STAND_DIR itself).
inside_stand_dir() {
  local dir base
  dir="$(readlink -m "$1")"
  base="$(readlink -m "$STAND_DIR")"
  [ "$dir" != "$base" ] && [ "${dir#"$base"/}" != "$dir" ]
}

# wipe DIR WHAT RUNNING...: removes the state dir DIR unless it lies outside STAND_DIR or the
# command RUNNING... says a server still runs from it; then it is left alone and named in $left.
wipe() {
  local dir="$1" what="$2"
  shift 2
  [ -e "$dir" ] || return 0
  if ! inside_stand_dir "$dir"; then
    log "$what state $dir is outside STAND_DIR $STAND_DIR: not the stand's own, left alone"
    left+=("$dir")
  elif "$@" >/dev/null 2>&1; then
    log "$what from $dir still runs (the stand did not start it): left alone"
    left+=("$dir")
  else
    rm -rf -- "$dir"
    log "wiped $what state $dir"
  fi
}

cmd_reset() {
  # Every Kafka state dir of the stand: the one `up` used and those of other KAFKA_VERSIONs.
  local kafka_dirs=("$KAFKA_STATE_DIR") d
  for d in "$STAND_DIR"/kafka "$STAND_DIR"/kafka-[0-9]*; do
    [ -d "$d" ] && [ "$d" != "$KAFKA_STATE_DIR" ] && kafka_dirs+=("$d")
  done
  cmd_down
  local left=()
  # As root, postgres.sh may keep the cluster outside its state dir (/var/tmp/...-HASH, named
  # by cluster_dir): it belongs to this state dir alone, so it goes with it.
  local cluster=""
  [ -f "$PG_STATE_DIR/cluster_dir" ] && cluster="$(cat "$PG_STATE_DIR/cluster_dir")"
  if [ -n "$cluster" ] && ! inside_stand_dir "$cluster" && inside_stand_dir "$PG_STATE_DIR" \
      && [[ "$cluster" == /var/tmp/service-courier-postgres-* ]] && [ -e "$cluster" ]; then
    if "$REPO/scripts/postgres.sh" status >/dev/null 2>&1; then
      log "PostgreSQL from $cluster still runs (the stand did not start it): left alone"
      left+=("$cluster")
    else
      rm -rf -- "$cluster"
      log "wiped PostgreSQL cluster $cluster"
    fi
  fi
  wipe "$PG_STATE_DIR" PostgreSQL "$REPO/scripts/postgres.sh" status
  for d in "${kafka_dirs[@]}"; do
    wipe "$d" Kafka env KAFKA_STATE_DIR="$d" "$REPO/scripts/kafka.sh" status
  done
  rm -f "$STAND_DIR/env" "$STAND_DIR/bin" "$STAND_DIR/service.log" "$STAND_DIR/simulator.log"
  [ "${#left[@]}" -eq 0 ] || die "reset incomplete, left alone: ${left[*]}"
  log "reset: the next scripts/stand.sh up starts with an empty database and empty topics"
}

cmd_status() {
  local rc=0
  for name in service simulator; do
    if pid_alive "$STAND_DIR/$name.pid"; then
      echo "$name: running (pid $(cat "$STAND_DIR/$name.pid"))"
    else
      echo "$name: not running"; rc=1
    fi
  done
  "$REPO/scripts/postgres.sh" status || rc=1
  "$REPO/scripts/kafka.sh" status || rc=1
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  restart) cmd_restart ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  *) echo "usage: scripts/stand.sh up|down|restart|reset|status" >&2; exit 2 ;;
esac
