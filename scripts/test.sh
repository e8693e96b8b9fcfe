#!/usr/bin/env bash
# The test command: starts a throwaway PostgreSQL and a real Apache Kafka 3.9 broker (each in a
# temporary state dir, on free ports of 127.0.0.1), runs `cargo test` against them with CI
# semantics (a test that needs a missing service fails, never skips), then stops both.
#
# Usage: scripts/test.sh [extra cargo test arguments]
# Reuses DATABASE_URL / KAFKA_BROKERS from the environment when both are already set.
set -euo pipefail
LOG_TAG=test
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$REPO"

"$REPO/scripts/deps.sh"

started=()
cleanup() {
  local rc=$?
  for s in "${started[@]}"; do
    case "$s" in
      kafka) KAFKA_STATE_DIR="$KAFKA_STATE_DIR" "$REPO/scripts/kafka.sh" stop >/dev/null 2>&1 || true ;;
      postgres) PG_STATE_DIR="$PG_STATE_DIR" "$REPO/scripts/postgres.sh" stop >/dev/null 2>&1 || true ;;
    esac
  done
  [ -n "${TEST_STATE_ROOT:-}" ] && rm -rf "$TEST_STATE_ROOT"
  exit $rc
}
trap cleanup EXIT INT TERM

if [ -z "${DATABASE_URL:-}" ] || [ -z "${KAFKA_BROKERS:-}" ]; then
  TEST_STATE_ROOT="$(mktemp -d /tmp/service-courier-test.XXXXXX)"
  chmod 755 "$TEST_STATE_ROOT"
  export PG_STATE_DIR="$TEST_STATE_ROOT/postgres" KAFKA_STATE_DIR="$TEST_STATE_ROOT/kafka"
  "$REPO/scripts/postgres.sh" start
  started+=(postgres)
  . "$PG_STATE_DIR/env"
  "$REPO/scripts/kafka.sh" start
  started+=(kafka)
  . "$KAFKA_STATE_DIR/env"
fi
export DATABASE_URL KAFKA_BROKERS CI="${CI:-true}"
log "DATABASE_URL=${DATABASE_URL%%\?*} KAFKA_BROKERS=$KAFKA_BROKERS"

cargo build --all-targets --locked
cargo test --all-targets --locked --no-fail-fast "$@"
