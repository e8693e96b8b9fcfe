#!/usr/bin/env bash
# The benchmark, one command, all figures from one run (so machine noise hits them alike):
#   1. a fixed-seed backlog of BENCH_ORDERS short order lifecycles (created, pending half of
#      the time, then completed 70% / cancelled 30%: about 2.5 events each) on a 6-partition
#      topic, BENCH_COURIERS couriers;
#   2. drain it with the release binary for each worker count in BENCH_WORKERS, BENCH_RUNS
#      times each (fresh database, fresh consumer group): events/s, CPU seconds, peak RSS;
#      then the same with BENCH_DEFAULT_WORKERS for every other client in BENCH_CLIENTS
#      (KAFKA_CLIENT; the first drains used the default, kafka);
#   3. SIGTERM under full load: time to exit, and a restart that finishes the backlog;
#   4. a steady phase at STEADY_RATE events/s for STEADY_SECS: event-to-commit latency p50/p99
#      (the simulator stamps created_at at send; the service's courier_event_age_seconds);
#   5. pgbench with WORKERS clients, twice: the batch ceiling, the statements the service sends
#      for a batch of BATCH_MAX events (scripts/bench/batch.sql.in, filled with the SQL of
#      src/repository/postgres/tx.rs), which the drain is measured against; and the per-event
#      ceiling, one transaction per event (scripts/bench/per_event.sql), what batching gained.
#      The ceiling replays each order's events in order; the unkeyed backlog does not (events
#      of one order land on different partitions, so some `completed` come before their
#      `created` and cost almost nothing), so the judged ratio is that of a keyed backlog
#      (`simulate --keyed`: an order's events in order on one partition), drained BENCH_RUNS
#      times with BENCH_DEFAULT_WORKERS;
#   6. a sample of what PostgreSQL backends wait on during a drain (the profile);
#   7. with BENCH_BASELINE=<commit>: that commit built from git (into $BENCH_DIR) and the same
#      backlog drained BENCH_RUNS more times by it and by this tree, in ABBA pairs, with
#      BENCH_DEFAULT_WORKERS and the `kafka` client, so a regression shows as a ratio measured
#      in one run.
# Prints a table of medians.
#
# Usage: scripts/bench.sh            (defaults below; BENCH_ORDERS=20000 BENCH_RUNS=1 for a quick look)
#        BENCH_BASELINE=HEAD~1 scripts/bench.sh
set -euo pipefail
LOG_TAG=bench
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$REPO"

ORDERS="${BENCH_ORDERS:-200000}"
COURIERS="${BENCH_COURIERS:-1000}"
RUNS="${BENCH_RUNS:-3}"
WORKER_SET="${BENCH_WORKERS:-1 2 4 8}"
BATCH="${BENCH_BATCH_MAX:-256}"
DEFAULT_WORKERS="${BENCH_DEFAULT_WORKERS:-4}"
CLIENTS="${BENCH_CLIENTS:-kafka rdkafka}"
STEADY_RATE="${STEADY_RATE:-2000}"
STEADY_SECS="${STEADY_SECS:-20}"
DIR="${BENCH_DIR:-$REPO/.cache/bench}"
export PG_STATE_DIR="$DIR/postgres" KAFKA_STATE_DIR="$DIR/kafka"
METRICS_PORT="${BENCH_METRICS_PORT:-19464}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/service-courier"
mkdir -p "$DIR"

"$REPO/scripts/deps.sh"
BASE_BIN=
if [ -n "${BENCH_BASELINE:-}" ]; then
  base_rev="$(git -C "$REPO" rev-parse --short "$BENCH_BASELINE^{commit}")" \
    || die "BENCH_BASELINE=$BENCH_BASELINE is not a commit of this repository"
  rm -rf "$DIR/baseline-src" && mkdir -p "$DIR/baseline-src"
  git -C "$REPO" archive "$base_rev" | tar -x -C "$DIR/baseline-src"
  log "building the baseline $base_rev (its own target dir: the first build takes minutes)"
  CARGO_TARGET_DIR="$DIR/baseline-target" cargo build --release --locked \
    --manifest-path "$DIR/baseline-src/Cargo.toml" >&2
  BASE_BIN="$DIR/baseline-target/release/service-courier"
fi
# Cargo's progress to stderr: stdout keeps only the benchmark's figures.
log "building the release binary (the first build takes a few minutes: librdkafka is compiled from C)"
cargo build --release --locked >&2
"$REPO/scripts/postgres.sh" start >/dev/null
KAFKA_CREATE_TOPICS=0 "$REPO/scripts/kafka.sh" start >/dev/null
. "$PG_STATE_DIR/env"
. "$KAFKA_STATE_DIR/env"
export DATABASE_URL KAFKA_BROKERS
cleanup() {
  [ -n "${SERVICE_PID:-}" ] && kill -KILL "$SERVICE_PID" 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    "$REPO/scripts/kafka.sh" stop >/dev/null 2>&1 || true
    "$REPO/scripts/postgres.sh" stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
metric_sum() { curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }

reset_db() { # [binary whose schema to create] [couriers]
  local bin="${1:-$BIN}" couriers="${2:-$COURIERS}"
  psql -q "$DATABASE_URL" -c "DROP TABLE IF EXISTS courier_orders, orders, couriers, schema_migrations CASCADE; DROP SEQUENCE IF EXISTS orders_waiting_seq;" >/dev/null
  "$bin" migrate >/dev/null
  "$bin" couriers seed --count "$couriers" --seed 7 >/dev/null
}

start_service() { # workers group [extra env...]
  local workers="$1" group="$2"; shift 2
  env KAFKA_ORDER_TOPIC="$TOPIC" KAFKA_GROUP_ID="$group" WORKERS="$workers" BATCH_MAX="$BATCH" \
    QUEUE_CAPACITY=1024 METRICS_ADDR="127.0.0.1:$METRICS_PORT" LOG_LEVEL=warn \
    KAFKA_COMMIT_INTERVAL_MS=200 "$@" "${RUN_BIN:-$BIN}" run 2>>"$DIR/service.log" &
  SERVICE_PID=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$METRICS_PORT/readyz" >/dev/null && return; sleep 0.1; done
  die "the service did not become ready: see $DIR/service.log"
}

wait_committed() { # total
  while [ "$(metric_sum courier_committed_offset)" -lt "$1" ]; do
    kill -0 "$SERVICE_PID" 2>/dev/null || die "the service died: see $DIR/service.log"
    sleep 0.1
  done
}

stop_service() {
  kill -TERM "$SERVICE_PID"; wait "$SERVICE_PID" || true; SERVICE_PID=
}

# 1. The backlog.
TOPIC="bench.backlog.$ORDERS"
if ! [ -f "$DIR/$TOPIC.events" ]; then
  "$REPO/scripts/kafka.sh" topic "$TOPIC" 6 >/dev/null
  log "producing the backlog: $ORDERS lifecycles (seed 42)"
  "$BIN" simulate --orders "$ORDERS" --burst --short --seed 42 --concurrency 1000 \
    --cancel-ratio 0.3 --topic "$TOPIC" | tee "$DIR/produce.out"
  grep -o 'sent [0-9]*' "$DIR/produce.out" | awk '{print $2}' >"$DIR/$TOPIC.events"
fi
TOTAL="$(cat "$DIR/$TOPIC.events")"
log "backlog: $TOTAL events on $TOPIC"

# 1b. The keyed backlog: the same lifecycles, each order's events in order on one partition.
KEYED_TOPIC="bench.keyed.$ORDERS"
if ! [ -f "$DIR/$KEYED_TOPIC.events" ]; then
  "$REPO/scripts/kafka.sh" topic "$KEYED_TOPIC" 6 >/dev/null
  log "producing the keyed backlog: $ORDERS lifecycles (seed 42, keyed by order)"
  "$BIN" simulate --orders "$ORDERS" --burst --short --seed 42 --concurrency 1000 \
    --cancel-ratio 0.3 --keyed --topic "$KEYED_TOPIC" | tee "$DIR/produce-keyed.out"
  grep -o 'sent [0-9]*' "$DIR/produce-keyed.out" | awk '{print $2}' >"$DIR/$KEYED_TOPIC.events"
fi
KEYED_TOTAL="$(cat "$DIR/$KEYED_TOPIC.events")"

# 2. Drains, and 6. the profile (sampled during the first drain with the default workers).
declare -A RATE CPU RSS
for w in $WORKER_SET; do
  for r in $(seq 1 "$RUNS"); do
    reset_db
    t0=$(date +%s.%N)
    start_service "$w" "bench-$w-$r-$RANDOM"
    if [ "$w" = "$DEFAULT_WORKERS" ] && [ "$r" = 1 ]; then
      ( for _ in $(seq 1 40); do
          psql -qAt "$DATABASE_URL" -c "SELECT CASE WHEN state = 'active' THEN coalesce(wait_event, 'on CPU') ELSE state || ' (' || coalesce(wait_event, '-') || ')' END FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
          sleep 0.1
        done | sort | uniq -c | sort -rn >"$DIR/profile.txt" ) &
      PROFILER=$!
    fi
    wait_committed "$TOTAL"
    t1=$(date +%s.%N)
    cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$SERVICE_PID/stat")
    rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$SERVICE_PID/status")
    stop_service
    rate=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
    RATE[$w]+="$rate "; CPU[$w]+="$cpu "; RSS[$w]+="$rss "
    log "drain: $w workers, run $r: $rate events/s, cpu ${cpu}s, peak RSS ${rss} MB"
  done
done
if [ -n "${PROFILER:-}" ]; then wait "$PROFILER" || true; fi

# 2b. The other clients, with the default worker count (the kafka rows are the drains above).
declare -A CRATE CCPU CRSS
CRATE[kafka]="${RATE[$DEFAULT_WORKERS]:-}"; CCPU[kafka]="${CPU[$DEFAULT_WORKERS]:-}"
CRSS[kafka]="${RSS[$DEFAULT_WORKERS]:-}"
for client in $CLIENTS; do
  # The kafka drains above are reused when they ran with the default worker count.
  [ "$client" = kafka ] && [ -n "${CRATE[kafka]}" ] && continue
  for r in $(seq 1 "$RUNS"); do
    reset_db
    t0=$(date +%s.%N)
    start_service "$DEFAULT_WORKERS" "bench-$client-$r-$RANDOM" KAFKA_CLIENT="$client"
    wait_committed "$TOTAL"
    t1=$(date +%s.%N)
    cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$SERVICE_PID/stat")
    rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$SERVICE_PID/status")
    stop_service
    rate=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
    CRATE[$client]+="$rate "; CCPU[$client]+="$cpu "; CRSS[$client]+="$rss "
    log "drain: KAFKA_CLIENT=$client, $DEFAULT_WORKERS workers, run $r: $rate events/s, cpu ${cpu}s, peak RSS ${rss} MB"
  done
done

# 2c. The keyed backlog, with the default worker count: what the batch ceiling is compared with.
KRATE=
for r in $(seq 1 "$RUNS"); do
  reset_db
  t0=$(date +%s.%N)
  TOPIC="$KEYED_TOPIC" start_service "$DEFAULT_WORKERS" "bench-keyed-$r-$RANDOM"
  wait_committed "$KEYED_TOTAL"
  t1=$(date +%s.%N)
  stop_service
  rate=$(awk -v n="$KEYED_TOTAL" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
  KRATE+="$rate "
  log "drain: keyed backlog, $DEFAULT_WORKERS workers, run $r: $rate events/s"
done

# 7. The baseline: drains by it and by this tree in pairs, ABBA: the binary that drains second
#    in a pair runs about 10% faster (a warmer page cache and broker), so the order flips every
#    run and an even BENCH_RUNS cancels it. The judged ratio is the geometric mean of the pairs'.
declare -A BRATE BCPU BRSS
PAIRS=""
if [ -n "$BASE_BIN" ]; then
  for r in $(seq 1 "$RUNS"); do
    order="head base"; [ $((r % 2)) -eq 0 ] && order="base head"
    declare -A PAIR=()
    for which in $order; do
      bin="$BIN"; [ "$which" = base ] && bin="$BASE_BIN"
      reset_db "$bin"
      t0=$(date +%s.%N)
      RUN_BIN="$bin" start_service "$DEFAULT_WORKERS" "bench-$which-$r-$RANDOM"
      wait_committed "$TOTAL"
      t1=$(date +%s.%N)
      cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$SERVICE_PID/stat")
      rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$SERVICE_PID/status")
      stop_service
      rate=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
      BRATE[$which]+="$rate "; BCPU[$which]+="$cpu "; BRSS[$which]+="$rss "; PAIR[$which]=$rate
      log "drain: $which ($([ "$which" = base ] && echo "$base_rev" || echo "this tree")), run $r: $rate events/s, cpu ${cpu}s, peak RSS ${rss} MB"
    done
    PAIRS+="$(awk -v a="${PAIR[head]}" -v b="${PAIR[base]}" 'BEGIN {printf "%.4f", a / b}') "
  done
fi

# 3. SIGTERM under full load, then a restart that finishes.
reset_db
group="bench-sigterm-$RANDOM"
start_service "$DEFAULT_WORKERS" "$group"
sleep 3
t0=$(date +%s.%N); kill -TERM "$SERVICE_PID"
if wait "$SERVICE_PID"; then code=0; else code=$?; fi
t1=$(date +%s.%N); SERVICE_PID=
STOP_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
start_service "$DEFAULT_WORKERS" "$group"
wait_committed "$TOTAL"
stop_service
ended=$(psql -qAt "$DATABASE_URL" -c "SELECT count(*) FROM orders WHERE state IN ('completed', 'cancelled')")
log "SIGTERM under load: exit $code after ${STOP_SECS}s; after the restart $ended of $ORDERS orders ended"

# 4. Steady phase: STEADY_RATE events/s of full lifecycles, once with each client. A topic of
# its own each time, so the backlog topic stays exactly the backlog; the simulator starts once
# the service owns all six partitions (rdkafka joins its group first), so no event waits for
# an assignment.
quantile() { # q file
  awk -v q="$1" '{ match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n = $NF;
      b[NR] = (le == "+Inf") ? 1e9 : le; c[NR] = n }
    END { total = c[NR]; want = q * total; prev_b = 0; prev_c = 0;
      for (i = 1; i <= NR; i++) { if (c[i] >= want) {
          f = (c[i] == prev_c) ? 0 : (want - prev_c) / (c[i] - prev_c);
          printf "%.1f", 1000 * (prev_b + f * (b[i] - prev_b)); exit }
        prev_b = b[i]; prev_c = c[i] } }' "$2"
}
declare -A P50 P99 PP50 PP99 STEADY_N
for client in $CLIENTS; do
  reset_db
  STEADY_TOPIC="bench.steady.$client.$(date +%s)"
  "$REPO/scripts/kafka.sh" topic "$STEADY_TOPIC" 6 >/dev/null
  TOPIC="$STEADY_TOPIC" start_service "$DEFAULT_WORKERS" "bench-steady-$RANDOM" KAFKA_CLIENT="$client"
  for _ in $(seq 1 600); do
    [ "$(curl -s "127.0.0.1:$METRICS_PORT/metrics" | grep -c '^courier_consumer_lag{')" -ge 6 ] && break
    sleep 0.1
  done
  "$BIN" simulate --orders $((STEADY_RATE * STEADY_SECS / 7)) --rate "$STEADY_RATE" --seed 43 \
    --topic "$STEADY_TOPIC" >/dev/null
  sleep 2
  curl -s "127.0.0.1:$METRICS_PORT/metrics" >"$DIR/steady-$client.metrics"
  grep '^courier_event_age_seconds_bucket' "$DIR/steady-$client.metrics" >"$DIR/age-$client.txt"
  grep '^courier_event_processing_seconds_bucket' "$DIR/steady-$client.metrics" >"$DIR/processing-$client.txt"
  stop_service
  P50[$client]=$(quantile 0.5 "$DIR/age-$client.txt"); P99[$client]=$(quantile 0.99 "$DIR/age-$client.txt")
  # The service's part: from the poller's receipt to the worker's report (queue, transaction,
  # commit); the rest of the age is the producer, the broker and the fetch.
  PP50[$client]=$(quantile 0.5 "$DIR/processing-$client.txt"); PP99[$client]=$(quantile 0.99 "$DIR/processing-$client.txt")
  STEADY_N[$client]=$(tail -n1 "$DIR/age-$client.txt" | awk '{print $NF}')
  log "steady: KAFKA_CLIENT=$client: p50 ${P50[$client]} ms, p99 ${P99[$client]} ms (${STEADY_N[$client]} events)"
done

# 5. pgbench: the batch ceiling and the per-event ceiling, WORKERS clients.
# The batch script: the template with the service's statements in place, each `$n` a variable.
tx_sql() { # const name, then sed expression for its parameters
  awk -v name="$1" 'index($0, "const " name ": &str = \"") { on = 1; sub(/.*= "/, "") }
    on { if (index($0, "\";")) { sub(/";.*/, ""); print; exit } print }' \
    "$REPO/src/repository/postgres/tx.rs" | sed -E "$2"
}
tx_sql LOCK_ORDERS 's/\$1([^0-9]|$)/:l1\1/g' >"$DIR/lock_orders.sql"
# Its $4 (waiting orders for ends of orders the batch itself assigns) is 0: in the template's mix
# every ending is of an order created in the client's previous transaction.
tx_sql LOCK_COURIERS_AND_QUEUE 's/\$1([^0-9]|$)/:carriers\1/g; s/\$2([^0-9]|$)/:per_side\1/g; s/\$3([^0-9]|$)/:per_side\1/g; s/\$4([^0-9]|$)/0\1/g' \
  >"$DIR/lock_couriers_and_queue.sql"
tx_sql WRITE_CHANGES 's/\$([0-9]+)/:w\1/g' >"$DIR/write_changes.sql"
for f in lock_orders lock_couriers_and_queue write_changes; do
  [ -s "$DIR/$f.sql" ] || die "no ${f^^} statement found in src/repository/postgres/tx.rs"
done
awk -v dir="$DIR" '/^@[A-Z_]+@$/ { f = dir "/" tolower(substr($0, 2, length($0) - 2)) ".sql";
    while ((getline line < f) > 0) print line; close(f); next } { print }' \
  "$REPO/scripts/bench/batch.sql.in" >"$DIR/batch.sql"
declare -A CEIL BCEIL
# Every worker count drained, the keyed drain's default included.
for w in $(printf '%s\n' $WORKER_SET "$DEFAULT_WORKERS" | sort -nu); do
  # Enough couriers that no order waits: each client holds up to 4/5 BATCH_MAX of them.
  reset_db "$BIN" $((COURIERS > 2 * w * BATCH ? COURIERS : 2 * w * BATCH))
  tps=$(pgbench -n -M prepared -c "$w" -j "$w" -T 10 -D batch="$BATCH" -D prev=0 -f "$DIR/batch.sql" \
    "$DATABASE_URL" 2>"$DIR/pgbench.err" | awk '/^tps/ {print $3; exit}')
  [ -n "$tps" ] || die "pgbench on the batch statements failed: see $DIR/pgbench.err"
  BCEIL[$w]=$(awk -v t="$tps" -v b="$BATCH" 'BEGIN {printf "%.0f", b * t}')
  log "pgbench, $w clients: ${BCEIL[$w]} events/s (the service's batch statements, $BATCH events a transaction)"
done
reset_db
for w in $WORKER_SET; do
  tps=$(pgbench -n -M prepared -c "$w" -j "$w" -T 10 -f "$REPO/scripts/bench/per_event.sql" "$DATABASE_URL" 2>/dev/null \
    | awk '/^tps/ {print $3; exit}')
  CEIL[$w]=$(awk -v t="$tps" 'BEGIN {printf "%.0f", 2 * t}')
  log "pgbench, $w clients: ${CEIL[$w]} events/s (one transaction per event)"
done

# The table.
echo
echo "service-courier benchmark: $TOTAL events ($ORDERS short lifecycles), $COURIERS couriers,"
echo "6 partitions, BATCH_MAX=$BATCH, medians of $RUNS runs, $(nproc) cores; $(date -u +%F)"
echo
printf '| workers | drain events/s | CPU s | peak RSS MB | batch ceiling events/s | drain / batch ceiling | per-event ceiling events/s | drain / per-event |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for w in $WORKER_SET; do
  r=$(echo "${RATE[$w]}" | tr ' ' '\n' | grep . | median)
  c=$(echo "${CPU[$w]}" | tr ' ' '\n' | grep . | median)
  m=$(echo "${RSS[$w]}" | tr ' ' '\n' | grep . | median)
  ratio=$(awk -v a="$r" -v b="${CEIL[$w]}" 'BEGIN {printf "%.2f", a / b}')
  bratio=$(awk -v a="$r" -v b="${BCEIL[$w]}" 'BEGIN {printf "%.0f%%", 100 * a / b}')
  printf '| %s | %s | %s | %.1f | %s | %s | %s | %sx |\n' "$w" "$r" "$c" "$m" "${BCEIL[$w]}" "$bratio" "${CEIL[$w]}" "$ratio"
done
keyed=$(echo "$KRATE" | tr ' ' '\n' | grep . | median)
if [ -n "${BCEIL[$DEFAULT_WORKERS]:-}" ]; then
  awk -v k="$keyed" -v c="${BCEIL[$DEFAULT_WORKERS]}" -v w="$DEFAULT_WORKERS" -v n="$KEYED_TOTAL" \
    'BEGIN {printf "\nkeyed backlog (%d events, each order in order, as the ceiling replays them), %d workers: drain %d events/s = %.0f%% of the batch ceiling (goal: at least 70%%)\n", n, w, k, 100 * k / c}'
fi
echo
printf '| KAFKA_CLIENT (%s workers) | drain events/s | CPU s | peak RSS MB | vs kafka |\n' "$DEFAULT_WORKERS"
printf '|---|---:|---:|---:|---:|\n'
base=$(echo "${CRATE[kafka]:-}" | tr ' ' '\n' | grep . | median)
for client in $CLIENTS; do
  r=$(echo "${CRATE[$client]:-}" | tr ' ' '\n' | grep . | median)
  c=$(echo "${CCPU[$client]:-}" | tr ' ' '\n' | grep . | median)
  m=$(echo "${CRSS[$client]:-}" | tr ' ' '\n' | grep . | median)
  ratio=$(awk -v a="$r" -v b="$base" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')
  printf '| %s | %s | %s | %.1f | %sx |\n' "$client" "$r" "$c" "$m" "$ratio"
done
if [ -n "$BASE_BIN" ]; then
  echo
  printf '| binary (%s workers, kafka) | drain events/s | CPU s | peak RSS MB |\n' "$DEFAULT_WORKERS"
  printf '|---|---:|---:|---:|\n'
  for which in head base; do
    label="this tree"; [ "$which" = base ] && label="baseline $base_rev"
    r=$(echo "${BRATE[$which]}" | tr ' ' '\n' | grep . | median)
    c=$(echo "${BCPU[$which]}" | tr ' ' '\n' | grep . | median)
    m=$(echo "${BRSS[$which]}" | tr ' ' '\n' | grep . | median)
    printf '| %s | %s | %s | %.1f |\n' "$label" "$r" "$c" "$m"
    eval "B_${which}_R=$r B_${which}_C=$c B_${which}_M=$m"
  done
  awk -v r1="$B_head_R" -v r0="$B_base_R" -v c1="$B_head_C" -v c0="$B_base_C" -v m1="$B_head_M" -v m0="$B_base_M" \
    'BEGIN {printf "this tree / baseline (medians): drain %.2fx, CPU %.2fx, peak RSS %.2fx\n", r1 / r0, c1 / c0, m1 / m0}'
  echo "$PAIRS" | tr ' ' '\n' | grep . | awk -v runs="$RUNS" '{s += log($1); n++; l = l sprintf(" %.2f", $1)}
    END {printf "this tree / baseline, pair by pair (ABBA):%s; geometric mean %.2fx%s\n", l, exp(s / n),
         (runs % 2 ? " (odd BENCH_RUNS: this tree drained first once more; use an even count)" : "")}'
fi
echo
for client in $CLIENTS; do
  echo "steady phase, KAFKA_CLIENT=$client: $STEADY_RATE events/s for ${STEADY_SECS}s (${STEADY_N[$client]} events): event-to-commit p50 ${P50[$client]} ms, p99 ${P99[$client]} ms; receipt to applied (queue and transaction) p50 ${PP50[$client]} ms, p99 ${PP99[$client]} ms"
done
echo "SIGTERM under full load ($DEFAULT_WORKERS workers): exit code $code after ${STOP_SECS} s; restart finished the backlog ($ended/$ORDERS orders ended)"
echo
echo "where PostgreSQL backends spent the drain ($DEFAULT_WORKERS workers; samples of pg_stat_activity):"
cat "$DIR/profile.txt"
