#!/usr/bin/env bash
# Installs the system tools the tests and the local stand use, when missing: Debian's kcat (a
# Kafka client nobody here wrote, used to produce test events the way real services do),
# pgbouncer (the PostgreSQL tests also run through it in transaction mode),
# prometheus and promtool (the dashboard's and alerts' queries are checked against a real
# Prometheus) and chromium (the operator's page is loaded in a real browser).
# PostgreSQL binaries, a JDK, Maven and Rust are expected on the machine already.
set -euo pipefail
LOG_TAG=deps
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
# Debian puts it in /usr/sbin, which is not on every user's PATH.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "missing ${missing[*]}: install with: sudo apt-get install -y ${missing[*]}"
  fi
  log "installing ${missing[*]} from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
for tool in cargo java mvn initdb pg_ctl kcat prometheus promtool chromium; do
  command -v "$tool" >/dev/null 2>&1 || [ "$tool" = initdb ] || [ "$tool" = pg_ctl ] \
    || die "$tool not found on PATH"
done
log "ok: $(kcat -V 2>/dev/null | head -n1)"
