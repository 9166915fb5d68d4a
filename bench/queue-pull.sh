#!/usr/bin/env bash
# Queue-pull load test of the admin API: builds a database with TASKS open tasks
# (`carepath bench-api --no-serve`, timed), serves it from a fresh process, drives
# GET /queues/tasks from wrk in a second process (a warm-up, then the measured run), and prints
# requests/s, p50, p99 and the server's peak RSS for each backend.
#
#   bench/queue-pull.sh [sqlite|postgres|both]          (default: both)
#
# With RATE set (e.g. RATE=500), the load is open loop instead: `carepath bench-load` starts RATE
# requests a second whatever the server does and measures each latency from the instant the
# request was due (wrk's closed loop of CONNECTIONS measures saturation throughput, not latency).
#
# Environment: RATE (unset: wrk), TASKS (1000000), DURATION (30s), WARMUP (5s), TIMEOUT (30s, per request), CONNECTIONS (64), THREADS (2),
# PORT (8088), REUSE=1 to serve a database an earlier run built, WORKDIR (/tmp/carepath-bench),
# PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres), PG_DB (carepath_bench),
# BIN (a carepath binary; by default the release build, built first).
set -euo pipefail
cd "$(dirname "$0")/.."

TASKS=${TASKS:-1000000}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
TIMEOUT=${TIMEOUT:-30s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-8088}
WORKDIR=${WORKDIR:-/tmp/carepath-bench}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=${PG_DB:-carepath_bench}
which_backends=${1:-both}

[[ -n "${RATE:-}" ]] || command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
mkdir -p "$WORKDIR"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q
  # A private copy: a shared target folder may be rebuilt from another checkout meanwhile.
  cp "${CARGO_TARGET_DIR:-target}/release/carepath" "$WORKDIR/carepath"
  BIN=$WORKDIR/carepath
fi

server_pid=
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}
trap stop_server EXIT

run_backend() {
  local backend=$1 url
  case "$backend" in
    sqlite) url="sqlite:$WORKDIR/queue.db" ;;
    postgres) url="${PG_ADMIN_URL%/*}/$PG_DB" ;;
    *) echo "unknown backend $backend (sqlite, postgres or both)" >&2; exit 2 ;;
  esac
  echo "== $backend: $TASKS open tasks"
  if [[ "${REUSE:-}" != 1 ]]; then
    if [[ $backend == sqlite ]]; then
      rm -f "$WORKDIR/queue.db" "$WORKDIR/queue.db-wal" "$WORKDIR/queue.db-shm"
    else
      psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB" -c "CREATE DATABASE $PG_DB"
    fi
    local started=$SECONDS
    CAREPATH_LOG=error "$BIN" bench-api --db "$url" --tasks "$TASKS" --no-serve | grep -v '^token ' || true
    echo "dataset build: $((SECONDS - started))s (wall clock, including migrations and ANALYZE)"
  fi

  local log="$WORKDIR/$backend-server.log"
  "$BIN" bench-api --db "$url" --reuse --addr "127.0.0.1:$PORT" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
  done
  curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "the server did not become ready" >&2; cat "$log" >&2; exit 1; }
  CAREPATH_TOKENS=$(awk '$1 == "token" { printf "%s%s:%s:%s", sep, $2, $3, $4; sep = "," }' "$log")
  export CAREPATH_TOKENS

  if [[ -n "${RATE:-}" ]]; then
    # Open loop: a fixed arrival rate, latency from each request's due instant.
    "$BIN" bench-load --url "http://127.0.0.1:$PORT" --rate "$RATE" --duration 5 >/dev/null
    local open
    open=$("$BIN" bench-load --url "http://127.0.0.1:$PORT" --rate "$RATE" --duration "${DURATION%s}")
    echo "$open"
    local rss
    rss=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$server_pid/status")
    stop_server
    summary+=("$backend: open loop at $RATE/s: $(echo "$open" | tr -d '\n ' ) peak_rss_mib=$rss")
    return
  fi
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s bench/queue-pull.lua "http://127.0.0.1:$PORT" >/dev/null
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "$TIMEOUT" --latency -s bench/queue-pull.lua "http://127.0.0.1:$PORT")
  echo "$out" | sed -n '/Latency Distribution/,/requests in/p'
  local result rss
  result=$(echo "$out" | grep '^RESULT' | sed 's/^RESULT //')
  rss=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$server_pid/status")
  stop_server
  echo "$backend: $result peak_rss_mib=$rss"
  summary+=("$backend: $result peak_rss_mib=$rss")
}

summary=()
case "$which_backends" in
  both) run_backend sqlite; run_backend postgres ;;
  *) run_backend "$which_backends" ;;
esac
echo "== summary (wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $TASKS open tasks)"
printf '%s\n' "${summary[@]}"
