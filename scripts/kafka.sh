#!/usr/bin/env bash
# Run a throwaway single-node Apache Kafka (KRaft, broker+controller in one
# JVM) on 127.0.0.1, from jars fetched off Maven Central (see kafka/pom.xml).
#
# Usage: scripts/kafka.sh start|stop|status
#        scripts/kafka.sh topic NAME PARTITIONS [KEY=VALUE ...]   (topic configs)
#        scripts/kafka.sh partitions NAME PARTITIONS
#        scripts/kafka.sh txproduce TOPIC < SCRIPT
#
# Environment:
#   KAFKA_VERSION        Apache Kafka version (default: the state dir's, else
#                        3.9.1); 3.x and 4.x both work (4.x logs with log4j2)
#   KAFKA_STATE_DIR      state dir (default: $REPO/.cache/kafka/run for 3.9.1,
#                        $REPO/.cache/kafka/run-VERSION for any other):
#                        config, data, logs, pid, ports, env, version
#   KAFKA_LIBS_DIR       jar cache (default: $REPO/.cache/kafka/libs-VERSION)
#   KAFKA_PORT           force the client (PLAINTEXT) port
#   KAFKA_CONTROLLER_PORT  force the controller port
#   KAFKA_CREATE_TOPICS  0 = don't create the default topics on start
#   KAFKA_START_TIMEOUT  seconds to wait for the broker (default 90)
#   KAFKA_HEAP_OPTS      JVM heap (default "-Xmx512m -Xms256m")
#
# `start` prints KAFKA_BROKERS=127.0.0.1:PORT and writes
# `export KAFKA_BROKERS=...` to $KAFKA_STATE_DIR/env. A stop/start cycle on the
# same state dir keeps the ports, topics and committed offsets.
set -euo pipefail

LOG_TAG=kafka
# shellcheck source=scripts/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

POM="$REPO/scripts/kafka/pom.xml"
DEFAULT_VERSION=3.9.1

# The version: asked for > recorded in the given state dir (so `stop`, `topic`
# ... on a 4.x state dir need no KAFKA_VERSION) > the default. The default
# state dir of 3.9.1 keeps its old name, so existing setups carry on.
if [ -n "${KAFKA_STATE_DIR:-}" ]; then
  STATE_DIR="$KAFKA_STATE_DIR"
  VERSION="${KAFKA_VERSION:-$(cat "$STATE_DIR/version" 2>/dev/null || echo "$DEFAULT_VERSION")}"
else
  VERSION="${KAFKA_VERSION:-$DEFAULT_VERSION}"
  if [ "$VERSION" = "$DEFAULT_VERSION" ]; then
    STATE_DIR="$REPO/.cache/kafka/run"
  else
    STATE_DIR="$REPO/.cache/kafka/run-$VERSION"
  fi
fi
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
  || die "KAFKA_VERSION must look like 3.9.1 or 4.1.1, got '$VERSION'"
MAJOR="${VERSION%%.*}"
[ "$MAJOR" -ge 3 ] || die "KAFKA_VERSION $VERSION: only 3.x and 4.x run in KRaft mode here"
# One cache per version, so 3.9 and 4.x coexist.
LIBS_DIR="${KAFKA_LIBS_DIR:-$REPO/.cache/kafka/libs-$VERSION}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=45
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"

# Topics the service needs; created by `start` unless KAFKA_CREATE_TOPICS=0.
DEFAULT_TOPICS=("order.status.changed:6" "order.status.changed.dlq:1")

PROPS="$STATE_DIR/server.properties"
PIDFILE="$STATE_DIR/kafka.pid"
PORTSFILE="$STATE_DIR/ports"
VERSIONFILE="$STATE_DIR/version"
ENVFILE="$STATE_DIR/env"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"

# ---------------------------------------------------------------- jars ----

# Kafka 3.x logs through reload4j (log4j 1.x), 4.x through log4j2: the pom
# profile that brings the binding, and the JVM flag that names the config.
if [ "$MAJOR" -ge 4 ]; then
  LOGGING=log4j2
  BROKER_LOG_CONF="$STATE_DIR/log4j2.properties"
  TOOLS_LOG_CONF="$STATE_DIR/tools-log4j2.properties"
else
  LOGGING=reload4j
  BROKER_LOG_CONF="$STATE_DIR/log4j.properties"
  TOOLS_LOG_CONF="$STATE_DIR/tools-log4j.properties"
fi
# log_config_flag FILE: the JVM flag that makes the logging backend read FILE.
log_config_flag() {
  if [ "$LOGGING" = log4j2 ]; then
    echo "-Dlog4j2.configurationFile=$1"
  else
    echo "-Dlog4j.configuration=file:$1"
  fi
}

# The jar cache is complete when its stamp holds the hash of the pom and the
# version that produced it, so editing the pom refreshes it.
pom_hash() { { cat "$POM"; echo "kafka.version=$VERSION"; } | sha256sum | cut -d' ' -f1; }

ensure_libs() {
  local stamp="$LIBS_DIR/.complete" want tmp
  want="$(pom_hash)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven is needed to fetch the Kafka jars"
  command -v java >/dev/null 2>&1 || die "java not found: a JDK/JRE 11+ is needed to run Kafka"
  log "fetching Kafka $VERSION jars into $LIBS_DIR (first run only; takes a minute or two)"
  mkdir -p "$(dirname "$LIBS_DIR")"
  # Download next to the target and rename, so an interrupted run never
  # leaves a half-filled cache that looks complete.
  tmp="$(mktemp -d "$LIBS_DIR.tmp.XXXXXX")"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$VERSION" -P "$LOGGING" \
      dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    tail -n 40 "$tmp.mvn.log" >&2 || true
    rm -rf "$tmp" "$tmp.mvn.log"
    die "mvn could not fetch the Kafka $VERSION jars (see output above)"
  fi
  rm -f "$tmp.mvn.log"
  ls "$tmp/kafka_2.13-$VERSION.jar" >/dev/null 2>&1 \
    || die "mvn ran but kafka_2.13-$VERSION.jar did not arrive in $tmp"
  echo "$want" >"$tmp/.complete"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  log "jars ready: $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars, $(du -sh "$LIBS_DIR" | cut -f1)"
}

# run_tool CLASS ARGS...: run a Kafka CLI class, logging WARN+ to stderr.
run_tool() {
  local cls="$1"; shift
  java -Xmx256m -cp "$LIBS_DIR/*" "$(log_config_flag "$TOOLS_LOG_CONF")" \
    "$cls" "$@"
}

# --------------------------------------------------------------- state ----

running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  # The pid must still be *our* broker: a java process started with this
  # state dir's server.properties.
  pid_alive "$pid" && pid_cmdline_has "$pid" "$PROPS" || return 1
  echo "$pid"
}

load_ports() {
  PORT="" CPORT=""
  # shellcheck disable=SC1090
  [ -f "$PORTSFILE" ] && . "$PORTSFILE"
  return 0
}

# Choose ports: forced by env > remembered in the state dir > a fresh free one.
choose_ports() {
  load_ports
  PORT="${KAFKA_PORT:-$PORT}"
  CPORT="${KAFKA_CONTROLLER_PORT:-$CPORT}"
  [ -n "$PORT" ] || PORT="$(free_port)"
  [ -n "$CPORT" ] || CPORT="$(free_port "$PORT")"
  [ "$PORT" != "$CPORT" ] || die "client and controller port are both $PORT"
  local p
  for p in "$PORT" "$CPORT"; do
    port_in_use "$p" && die "port $p on 127.0.0.1 is taken by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT, or remove $PORTSFILE)"
  done
  printf 'PORT=%s\nCPORT=%s\n' "$PORT" "$CPORT" >"$PORTSFILE"
}

write_config() {
  cat >"$PROPS" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Fewer internal partitions than the default 50: quicker first consumer-group
# join / first transaction on a 2-core machine.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10

# Topics exist only when created explicitly (tests must not rely on typos
# silently creating topics).
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
delete.topic.enable=true

# Consumers join groups without the 3 s default delay.
group.initial.rebalance.delay.ms=0

# Small machine: fewer threads than the defaults.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
EOF

  write_log_config
}

# Broker log: everything INFO+ to logs/server.log (plus the state-change and
# controller loggers the stock config routes elsewhere, kept here); CLI tools:
# only warnings, to stderr. Same content in both backends' formats.
write_log_config() {
  if [ "$LOGGING" = log4j2 ]; then
    cat >"$BROKER_LOG_CONF" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $LOG_DIR/server.log
appender.file.filePattern = $LOG_DIR/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
    cat >"$TOOLS_LOG_CONF" <<'EOF'
status = warn
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
EOF
  else
    cat >"$BROKER_LOG_CONF" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$LOG_DIR/server.log
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
    cat >"$TOOLS_LOG_CONF" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  fi
}

format_storage() {
  # meta.properties appears once the log dir is formatted; formatting again
  # would fail (and a new cluster id would orphan the data), so skip.
  [ -f "$DATA_DIR/meta.properties" ] && return 0
  local cluster_id
  cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)"
  log "formatting $DATA_DIR (cluster id $cluster_id)"
  run_tool kafka.tools.StorageTool format --ignore-formatted \
    -t "$cluster_id" -c "$PROPS" >"$LOG_DIR/format.out" 2>&1 \
    || { cat "$LOG_DIR/format.out" >&2; die "kafka-storage format failed"; }
}

# broker_answers: true once the broker serves metadata listing itself.
broker_answers() {
  if command -v kcat >/dev/null 2>&1; then
    kcat -b "127.0.0.1:$PORT" -L -m 3 2>/dev/null | grep -q "broker 1 at"
  else
    run_tool org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$PORT" --list >/dev/null 2>&1
  fi
}

write_env() {
  printf 'export KAFKA_BROKERS=127.0.0.1:%s\n' "$PORT" >"$ENVFILE"
}

# ------------------------------------------------------------ commands ----

create_topic() {
  local name="$1" partitions="$2" out config=() kv
  [[ "$partitions" =~ ^[1-9][0-9]*$ ]] || die "partitions must be a positive integer, got '$partitions'"
  shift 2
  for kv in "$@"; do
    [[ "$kv" == *=* ]] || die "a topic config is KEY=VALUE, got '$kv'"
    config+=(--config "$kv")
  done
  if ! out="$(run_tool org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$PORT" --create --if-not-exists \
      --topic "$name" --partitions "$partitions" --replication-factor 1 "${config[@]}" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "could not create topic $name"
  fi
  # Drop TopicCommand's stock warning about '.' vs '_' in topic names.
  out="$(printf '%s\n' "$out" | grep -v "^WARNING: Due to limitations in metric names" || true)"
  # --if-not-exists prints nothing when the topic is already there.
  if [ -n "$out" ]; then log "$out"; else log "topic $name already exists"; fi
}

# check_version: refuse a state dir that holds another version's broker or
# data (a downgrade cannot read newer metadata; a silent upgrade surprises).
# State dirs from before versions were recorded hold 3.9.1.
check_version() {
  local had
  if [ -f "$VERSIONFILE" ]; then
    had="$(cat "$VERSIONFILE")"
  elif [ -f "$DATA_DIR/meta.properties" ]; then
    had="$DEFAULT_VERSION"
  else
    return 0
  fi
  [ "$had" = "$VERSION" ] \
    || die "$STATE_DIR holds Kafka $had, not $VERSION: use another KAFKA_STATE_DIR (or remove it)"
}

cmd_start() {
  mkdir -p "$STATE_DIR" "$LOG_DIR" "$DATA_DIR"
  check_version
  ensure_libs
  echo "$VERSION" >"$VERSIONFILE"

  local pid
  if pid="$(running_pid)"; then
    load_ports
    log "broker already running from $STATE_DIR (pid $pid), reusing it"
  else
    choose_ports
    write_config
    format_storage

    log "starting Kafka $VERSION on 127.0.0.1:$PORT (controller $CPORT), logs in $LOG_DIR"
    local t0
    t0="$(now_s)"
    # setsid: own session, so the broker outlives this script and a Ctrl-C
    # in the caller's terminal does not reach it. stdin from /dev/null: CI
    # has none. kafka.out catches JVM errors that bypass log4j. 9>&-: the
    # broker must not inherit (and so keep holding) the state-dir lock.
    # shellcheck disable=SC2086
    setsid java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true \
      "$(log_config_flag "$BROKER_LOG_CONF")" \
      -Dkafka.logs.dir="$LOG_DIR" \
      -cp "$LIBS_DIR/*" kafka.Kafka "$PROPS" \
      </dev/null >"$LOG_DIR/kafka.out" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"

    local deadline=$((t0 + START_TIMEOUT))
    until broker_answers; do
      if ! pid_alive "$pid"; then
        tail -n 30 "$LOG_DIR/kafka.out" "$LOG_DIR/server.log" >&2 2>/dev/null || true
        rm -f "$PIDFILE"
        die "broker exited during startup (logs above, full logs in $LOG_DIR)"
      fi
      if [ "$(now_s)" -ge "$deadline" ]; then
        tail -n 30 "$LOG_DIR/server.log" >&2 2>/dev/null || true
        stop_pid "$pid" 10 "broker"
        rm -f "$PIDFILE"
        die "broker did not answer on 127.0.0.1:$PORT within ${START_TIMEOUT}s (logs in $LOG_DIR)"
      fi
      sleep 1
    done
    log "broker up after $(($(now_s) - t0))s (pid $pid)"
  fi

  write_env
  if [ "${KAFKA_CREATE_TOPICS:-1}" != 0 ]; then
    local spec
    for spec in "${DEFAULT_TOPICS[@]}"; do
      create_topic "${spec%%:*}" "${spec##*:}"
    done
  fi
  echo "KAFKA_BROKERS=127.0.0.1:$PORT"
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    stop_pid "$pid" "$STOP_TIMEOUT" "broker"
    log "stopped"
  else
    log "no broker running from $STATE_DIR"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    load_ports
    echo "running: Kafka $VERSION, pid $pid, KAFKA_BROKERS=127.0.0.1:$PORT, state $STATE_DIR"
  else
    echo "not running (state $STATE_DIR)"
    return 1
  fi
}

cmd_topic() {
  [ $# -ge 2 ] || die "usage: $0 topic NAME PARTITIONS [KEY=VALUE ...]"
  running_pid >/dev/null || die "no broker running from $STATE_DIR; run '$0 start' first"
  load_ports
  create_topic "$@"
}

cmd_partitions() {
  [ $# -eq 2 ] || die "usage: $0 partitions NAME PARTITIONS"
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "partitions must be a positive integer, got '$2'"
  running_pid >/dev/null || die "no broker running from $STATE_DIR; run '$0 start' first"
  load_ports
  local out
  if ! out="$(run_tool org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$PORT" --alter --topic "$1" --partitions "$2" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "could not raise topic $1 to $2 partitions"
  fi
  log "topic $1 now has $2 partitions"
}

# txproduce TOPIC [TRANSACTIONAL_ID] < SCRIPT: run kafka/TxProducer.java (its
# header describes SCRIPT), compiled once per source and version into the jar
# cache. The broker is KAFKA_BROKERS when set, else this state dir's.
cmd_txproduce() {
  [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 txproduce TOPIC [TRANSACTIONAL_ID] < SCRIPT"
  local src="$REPO/scripts/kafka/TxProducer.java" brokers classes tmp
  ensure_libs
  classes="$LIBS_DIR/txproducer-$(sha256sum "$src" | cut -c1-16)"
  if [ ! -f "$classes/TxProducer.class" ]; then
    command -v javac >/dev/null 2>&1 || die "javac not found: a JDK 11+ is needed for txproduce"
    tmp="$(mktemp -d "$LIBS_DIR/txproducer.tmp.XXXXXX")"
    javac -nowarn -cp "$LIBS_DIR/*" -d "$tmp" "$src" || { rm -rf "$tmp"; die "javac failed on $src"; }
    # Another run may have compiled it meanwhile: keep the first, drop ours.
    mv -T "$tmp" "$classes" 2>/dev/null || rm -rf "$tmp"
  fi
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    brokers="$KAFKA_BROKERS"
  else
    running_pid >/dev/null || die "no broker running from $STATE_DIR and KAFKA_BROKERS is not set"
    load_ports
    brokers="127.0.0.1:$PORT"
  fi
  mkdir -p "$STATE_DIR"
  [ -f "$TOOLS_LOG_CONF" ] || write_log_config
  java -Xmx256m -cp "$classes:$LIBS_DIR/*" "$(log_config_flag "$TOOLS_LOG_CONF")" \
    TxProducer "$brokers" "$@"
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|status|topic NAME PARTITIONS [KEY=VALUE ...]|partitions NAME PARTITIONS|txproduce TOPIC
  start       fetch jars if needed, start (or reuse) the broker, create default topics
  stop        stop the broker (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s)
  status      exit 0 if running, and print its version and address
  topic       create a topic (no-op if it exists), replication factor 1, with
              topic configs given as KEY=VALUE (e.g. max.message.bytes=50000)
  partitions  raise a topic's partition count
  txproduce   commit and abort transactions of events read from stdin
              (the script format is in scripts/kafka/TxProducer.java)
Kafka version: KAFKA_VERSION (now $VERSION), state: $STATE_DIR
EOF
  exit 2
}

# Serialise start/stop/topic/partitions on one state dir (e.g. two test jobs both
# running `start`), bounded so a wedged holder can't hang CI.
lock_state() {
  mkdir -p "$STATE_DIR"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$STATE_DIR/.lock"
  flock -w 180 9 || die "another kafka.sh holds $STATE_DIR/.lock for over 180s"
}

case "${1:-}" in
  start | stop | topic | partitions) lock_state ;;
esac

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  topic) shift; cmd_topic "$@" ;;
  partitions) shift; cmd_partitions "$@" ;;
  txproduce) shift; cmd_txproduce "$@" ;;
  *) usage ;;
esac
