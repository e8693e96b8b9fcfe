#!/usr/bin/env bash
# The test command. Starts a throwaway PostgreSQL and real Apache Kafka brokers (each in a
# temporary state dir, on free ports of 127.0.0.1), runs `cargo test` against them with CI
# semantics (a test that needs a missing service fails, never skips), then stops them.
#
# Usage:
#   scripts/test.sh              the matrix (what CI runs), one phase after another:
#     1. suite/kafka-3.9.1/kafka          the whole suite, default client; kafka_groups in it
#                                         runs each test with the client it names (scale-out
#                                         and codecs with both, groups/transactions/added
#                                         partitions with rdkafka)
#     2. service/kafka-4.1.1/rdkafka      on a Kafka 4.x broker, every test module that runs
#                                         the service against Kafka, with KAFKA_CLIENT=rdkafka
#                                         (tests of a `kafka`-crate feature assert what
#                                         rdkafka does instead; tests with a broker of their
#                                         own run it on 3.9.1); in kafka_groups the
#                                         `kafka`-crate tests assert that the crate is refused
#                                         (exit 3): Kafka 4 dropped the protocol versions it
#                                         speaks (Produce v0, Fetch v0-v3)
#   scripts/test.sh ARGS...      one run of `cargo test ARGS` on Kafka
#                                $KAFKA_VERSION (default 3.9.1), e.g. `--test it kafka_groups::`
#
# Environment:
#   KAFKA_VERSION     the broker of a run with ARGS (default 3.9.1)
#   KAFKA4_VERSION    the Kafka 4.x of the matrix (default 4.1.1)
#   KAFKA_CLIENT      passed on to the tests (a run with ARGS)
#   TEST_PHASES       the matrix phases to run (default "1 2"), e.g. "2"
#   DATABASE_URL + KAFKA_BROKERS  both set: reuse those services for one run (no matrix)
#
# Every phase prints its name and, at the end, its wall time; a failed phase does not stop the
# next ones, but the exit code is non-zero.
set -euo pipefail
LOG_TAG=test
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$REPO"

"$REPO/scripts/deps.sh"

KAFKA4_VERSION="${KAFKA4_VERSION:-4.1.1}"
started=()   # "kind:state dir" of every service this script started
cleanup() {
  local rc=$? s
  for s in "${started[@]}"; do
    case "$s" in
      kafka:*) KAFKA_STATE_DIR="${s#kafka:}" "$REPO/scripts/kafka.sh" stop >/dev/null 2>&1 || true ;;
      postgres:*) PG_STATE_DIR="${s#postgres:}" "$REPO/scripts/postgres.sh" stop >/dev/null 2>&1 || true ;;
    esac
  done
  [ -n "${TEST_STATE_ROOT:-}" ] && rm -rf "$TEST_STATE_ROOT"
  exit $rc
}
trap cleanup EXIT INT TERM

new_state_root() {
  if [ -z "${TEST_STATE_ROOT:-}" ]; then
    TEST_STATE_ROOT="$(mktemp -d /tmp/service-courier-test.XXXXXX)"
    chmod 755 "$TEST_STATE_ROOT"
  fi
}

start_postgres() {
  new_state_root
  export PG_STATE_DIR="$TEST_STATE_ROOT/postgres"
  started+=("postgres:$PG_STATE_DIR")
  "$REPO/scripts/postgres.sh" start
  . "$PG_STATE_DIR/env"
  export DATABASE_URL
}

# start_kafka VERSION: a broker of VERSION in a state dir of its own.
start_kafka() {
  new_state_root
  local dir="$TEST_STATE_ROOT/kafka-$1"
  started+=("kafka:$dir")
  KAFKA_VERSION="$1" KAFKA_STATE_DIR="$dir" "$REPO/scripts/kafka.sh" start
}

# use_kafka VERSION: point the tests (KAFKA_BROKERS) and scripts/kafka.sh (KAFKA_STATE_DIR,
# which records the version) at the broker of VERSION.
use_kafka() {
  export KAFKA_STATE_DIR="$TEST_STATE_ROOT/kafka-$1"
  unset KAFKA_VERSION
  . "$KAFKA_STATE_DIR/env"
  export KAFKA_BROKERS
}

phases=()    # "name: result, seconds"
failed=0
# phase NAME CLIENT CARGO-TEST-ARGS...: one cargo test run, timed, with KAFKA_CLIENT=CLIENT.
phase() {
  local name="$1" client="$2" t0 rc=0
  shift 2
  case " $TEST_PHASES " in
    *" ${name%% *} "*) ;;
    *) log "== phase $name: skipped (TEST_PHASES=$TEST_PHASES)"; return 0 ;;
  esac
  log "== phase $name: KAFKA_BROKERS=$KAFKA_BROKERS KAFKA_CLIENT=$client: cargo test $*"
  t0="$(now_s)"
  KAFKA_CLIENT="$client" cargo test --locked --no-fail-fast "$@" || rc=$?
  local took=$(($(now_s) - t0))
  if [ "$rc" = 0 ]; then
    phases+=("$name: ok, ${took}s")
  else
    phases+=("$name: FAILED (exit $rc), ${took}s")
    failed=1
  fi
  log "== phase $name: ${phases[-1]#*: }"
}

export CI="${CI:-true}"
TEST_PHASES="${TEST_PHASES:-1 2}"
t_start="$(now_s)"

if [ $# -gt 0 ] || { [ -n "${DATABASE_URL:-}" ] && [ -n "${KAFKA_BROKERS:-}" ]; }; then
  # One run: the given services, or a fresh PostgreSQL and one broker of KAFKA_VERSION.
  if [ -z "${DATABASE_URL:-}" ] || [ -z "${KAFKA_BROKERS:-}" ]; then
    version="${KAFKA_VERSION:-3.9.1}"
    start_postgres
    start_kafka "$version"
    use_kafka "$version"
  fi
  export DATABASE_URL KAFKA_BROKERS
  log "DATABASE_URL=${DATABASE_URL%%\?*} KAFKA_BROKERS=$KAFKA_BROKERS"
  cargo build --all-targets --locked
  # With ARGS (`--test NAME`, `--lib`, a filter…) exactly what they select: `--all-targets`
  # beside `--test NAME` would run every target.
  if [ $# -gt 0 ]; then
    cargo test --locked --no-fail-fast "$@"
  else
    cargo test --all-targets --locked --no-fail-fast
  fi
  exit 0
fi

# The modules of the test crate (tests/it) that run the service against Kafka: phase 2 runs
# them with rdkafka (a `MODULE::` filter each).
SERVICE_TESTS=(api dead_letters deadlines dlq_replay faults kafka_edge_service kafka_groups
  kafka_service lag
  observability ops page reliability_db reliability_kafka security)

# The matrix. The Kafka 4.x broker starts in the background while phase 1 runs (its start-up
# overlaps with the build); phase 2 waits for it.
start_postgres
start_kafka 3.9.1
kafka4_pid=
if [[ " $TEST_PHASES " == *" 2 "* ]]; then
  new_state_root
  started+=("kafka:$TEST_STATE_ROOT/kafka-$KAFKA4_VERSION")
  KAFKA_VERSION="$KAFKA4_VERSION" KAFKA_STATE_DIR="$TEST_STATE_ROOT/kafka-$KAFKA4_VERSION" \
    "$REPO/scripts/kafka.sh" start >"$TEST_STATE_ROOT/kafka4-start.log" 2>&1 &
  kafka4_pid=$!
fi

use_kafka 3.9.1
log "DATABASE_URL=${DATABASE_URL%%\?*}"
cargo build --all-targets --locked

phase "1 suite/kafka-3.9.1/kafka" kafka --all-targets

if [ -z "$kafka4_pid" ]; then
  log "== phase 2 service/kafka-$KAFKA4_VERSION/rdkafka: skipped (TEST_PHASES=$TEST_PHASES)"
elif wait "$kafka4_pid"; then
  cat "$TEST_STATE_ROOT/kafka4-start.log" >&2
  use_kafka "$KAFKA4_VERSION"
  phase "2 service/kafka-$KAFKA4_VERSION/rdkafka" rdkafka --test it -- "${SERVICE_TESTS[@]/%/::}"
else
  cat "$TEST_STATE_ROOT/kafka4-start.log" >&2
  phases+=("2 service/kafka-$KAFKA4_VERSION: FAILED (the broker did not start)")
  failed=1
fi

log "== summary (wall time $(($(now_s) - t_start))s):"
for p in "${phases[@]}"; do log "   $p"; done
exit "$failed"
