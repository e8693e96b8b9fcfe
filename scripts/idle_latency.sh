#!/usr/bin/env bash
# Event-to-commit of single events into an idle service, for each Kafka client, measured the
# way courier_event_age_seconds measures it: from the event's created_at (stamped here just
# before it is produced) to the moment the poller takes the worker's report (issue #21, item
# 2). One event at a time, each after the previous one was taken and a pause, so the loop is
# idle (waiting in its poll) when each arrives. Prints every client's median and quartiles;
# figures, not a pass/fail.
#
# Usage: scripts/idle_latency.sh   (with DATABASE_URL and KAFKA_BROKERS set, e.g. from
#        .cache/postgres/env and .cache/kafka/run/env after scripts/postgres.sh start and
#        scripts/kafka.sh start)
# Environment:
#   LATENCY_EVENTS    events per client (default 40)
#   LATENCY_GAP       seconds between events (default 0.5)
#   LATENCY_CLIENTS   the clients (default "kafka rdkafka")
#   BIN               the binary (default $CARGO_TARGET_DIR or target, /release if built, else
#                     /debug)
set -euo pipefail
LOG_TAG=latency
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$REPO"

: "${DATABASE_URL:?set DATABASE_URL (scripts/postgres.sh start)}"
: "${KAFKA_BROKERS:?set KAFKA_BROKERS (scripts/kafka.sh start)}"
EVENTS="${LATENCY_EVENTS:-40}"
GAP="${LATENCY_GAP:-0.5}"
CLIENTS="${LATENCY_CLIENTS:-kafka rdkafka}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
if [ -z "${BIN:-}" ]; then
  BIN="$TARGET/release/service-courier"
  [ -x "$BIN" ] || BIN="$TARGET/debug/service-courier"
fi
[ -x "$BIN" ] || die "no binary at $BIN: cargo build first"
PORT="$(free_port)"
LOG="$(mktemp -t idle-latency.XXXXXX)"
SERVICE_PID=
cleanup() { [ -n "$SERVICE_PID" ] && kill -KILL "$SERVICE_PID" 2>/dev/null || true; }
trap cleanup EXIT

metric() { curl -s "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

for client in $CLIENTS; do
  topic="latency.$client.$(date +%s%N)"
  "$REPO/scripts/kafka.sh" topic "$topic" 1 >/dev/null
  env KAFKA_CLIENT="$client" KAFKA_ORDER_TOPIC="$topic" KAFKA_GROUP_ID="$topic" \
    METRICS_ADDR="127.0.0.1:$PORT" HTTP_ADDR= LOG_LEVEL=warn "$BIN" run 2>>"$LOG" &
  SERVICE_PID=$!
  for _ in $(seq 1 300); do
    curl -sf "127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 0.1
  done
  curl -sf "127.0.0.1:$PORT/readyz" >/dev/null || die "the service did not become ready: see $LOG"
  ages=()
  # Event 0 warms up (connections, the partition's assignment); it is not counted.
  for i in $(seq 0 "$EVENTS"); do
    before="$(metric courier_event_age_seconds_count)"; before="${before:-0}"
    sum_before="$(metric courier_event_age_seconds_sum)"; sum_before="${sum_before:-0}"
    printf '{"order_id":"lat-%s-%s","status":"created","created_at":"%s"}\n' \
      "$client" "$i" "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" \
      | kcat -P -b "$KAFKA_BROKERS" -t "$topic" -p 0
    for _ in $(seq 1 300); do
      [ "$(metric courier_event_age_seconds_count)" != "$before" ] && break
      sleep 0.01
    done
    sum_after="$(metric courier_event_age_seconds_sum)"
    [ "$i" -gt 0 ] && ages+=("$(awk -v a="$sum_before" -v b="$sum_after" 'BEGIN {printf "%.2f", 1000 * (b - a)}')")
    sleep "$GAP"
  done
  kill -TERM "$SERVICE_PID"; wait "$SERVICE_PID" || true; SERVICE_PID=
  printf '%s\n' "${ages[@]}" | sort -g | awk -v c="$client" '{a[NR] = $1}
    END {printf "%-8s idle single event, event-to-commit (ms, %d events): p25 %.2f  median %.2f  p75 %.2f\n",
      c, NR, a[int(NR / 4) + 1], (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2, a[int(3 * NR / 4) + 1]}'
done
