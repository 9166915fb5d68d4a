#!/usr/bin/env bash
# Worker curve of the scheduler on PostgreSQL: for each worker count, a fresh database seeded with
# ENROLMENTS enrolments and `carepath bench --workers N` (N passes at once sharing the catch-up and
# the nightly pass through SKIP LOCKED). Prints one line per count: catch-up and nightly
# enrolment-steps/s, the speed-up over one worker, the same-run insert ceiling and peak RSS; the
# full JSON of each run is kept in WORKDIR.
#
#   bench/worker-curve.sh [COUNTS...]          (default: 1 2 4)
#
# Environment: ENROLMENTS (100000), BATCH (500), WORKDIR (/tmp/carepath-bench),
# PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres), PG_DB (carepath_workers),
# BIN (a carepath binary; by default the release build, built first).
set -euo pipefail
cd "$(dirname "$0")/.."

ENROLMENTS=${ENROLMENTS:-100000}
BATCH=${BATCH:-500}
WORKDIR=${WORKDIR:-/tmp/carepath-bench}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=${PG_DB:-carepath_workers}
counts=("$@")
[[ ${#counts[@]} -gt 0 ]] || counts=(1 2 4)

command -v psql >/dev/null || { echo "psql is not installed" >&2; exit 2; }
mkdir -p "$WORKDIR"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q
  cp "${CARGO_TARGET_DIR:-target}/release/carepath" "$WORKDIR/carepath"
  BIN=$WORKDIR/carepath
fi

base=
printf '%-8s %14s %14s %9s %14s %9s\n' workers catch_up/s nightly/s speed-up ceiling_rows/s rss_MiB
for n in "${counts[@]}"; do
  psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB" -c "CREATE DATABASE $PG_DB"
  out="$WORKDIR/workers-$n.json"
  "$BIN" bench --enrolments "$ENROLMENTS" --batch-size "$BATCH" --workers "$n" \
    --db "${PG_ADMIN_URL%/*}/$PG_DB" > "$out"
  python3 - "$out" "${base:-}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
catch, nightly = (p["enrolment_steps_per_second"] for p in r["passes"])
base = float(sys.argv[2]) if sys.argv[2] else catch
print(f'{r["workers"]:<8} {catch:14.0f} {nightly:14.0f} {catch / base:9.2f} '
      f'{r["insert_ceiling_rows_per_second"]:14.0f} {r["peak_rss_mib"]:9.0f}')
PY
  [[ -n "$base" ]] || base=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["passes"][0]["enrolment_steps_per_second"])' "$out")
done
psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB"
