#!/usr/bin/env bash
# The reliability suite (tests/it/faults.rs): the real binary against its own PostgreSQL and
# Apache Kafka broker, with SIGKILLs, abrupt PostgreSQL stops, broker restarts, poison input and
# two instances on one database. Each test starts (and stops) the services it needs, so this
# needs nothing running beforehand.
#
# Usage: scripts/faults.sh [short|long]     (default short: a few minutes; long: much longer)
# Environment: FAULTS_SEED changes the seed of the fault schedule.
set -euo pipefail
LOG_TAG=faults
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$REPO"

size="${1:-short}"
case "$size" in
  short | long) ;;
  *)
    echo "usage: $0 [short|long]" >&2
    exit 2
    ;;
esac

"$REPO/scripts/deps.sh"

# The tests bring their own services: never point them at shared ones. CI semantics: a missing
# tool fails the run instead of skipping a test.
unset DATABASE_URL KAFKA_BROKERS
export FAULTS="$size" CI="${CI:-true}"

log "building (release)"
cargo test --release --locked --test it --no-run
log "running the $size fault suite"
t0="$(now_s)"
cargo test --release --locked --test it -- faults:: --nocapture --test-threads=1
log "done in $(($(now_s) - t0))s"
