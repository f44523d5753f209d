#!/usr/bin/env bash
# `make bench`: builds a release ordersaga, runs `ordersaga all` against the local
# stack in a fresh database, topic prefix and Mongo database, and measures it with
# `ordersaga bench` (floors first, then the load). docs/performance.md explains the figures.
#
#   BENCH_SCENARIOS  what to run, space-separated; each is "closed:<in flight>:<secs>" or
#                    "open:<orders/s>:<secs>" (default below)
#   BENCH_OUT        folder for the reports (default .stack/bench)
#   BENCH_BIN        an ordersaga binary to measure instead of building this checkout
#                    (e.g. a copy of an earlier build, for an A/B on the same stack)
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . .stack/env; set +a
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ordersaga/target}
# Open loops first (each waits for its orders to settle), the closed loop last: it
# accepts orders faster than the saga settles them and leaves a backlog.
SCENARIOS=${BENCH_SCENARIOS:-"open:100:15 open:200:30 open:300:15 closed:8:15"}
OUT=${BENCH_OUT:-.stack/bench}
mkdir -p "$OUT"

if [[ -n ${BENCH_BIN:-} ]]; then
  BIN=$BENCH_BIN
else
  cargo build --release --bin ordersaga
  BIN=$CARGO_TARGET_DIR/release/ordersaga
fi

run=bench_$(date +%s)_$$
base=${DATABASE_URL%%\?*}
export DATABASE_URL="${base%/*}/ordersaga_$run"
export KAFKA_TOPIC_PREFIX="$run." KAFKA_GROUP_PREFIX="$run." MONGODB_DATABASE="ordersaga_$run"
export PORT=${BENCH_PORT:-18080} USER_API_PORT=${BENCH_USER_API_PORT:-18081}
export RUST_LOG=${RUST_LOG:-warn}
log="$OUT/ordersaga-all.log"

"$BIN" migrate
"$BIN" all >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  psql "${base%/*}/postgres" -qc "DROP DATABASE IF EXISTS ordersaga_$run WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "bench: ordersaga all exited; see $log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "bench: ordersaga all not ready after 30 s; see $log" >&2; exit 1; }

for s in $SCENARIOS; do
  IFS=: read -r mode n secs <<<"$s"
  case $mode in
    closed) load=(--concurrency "$n") ;;
    open) load=(--rate "$n" --concurrency 8) ;;
    *) echo "bench: unknown scenario $s (closed:N:SECS or open:RATE:SECS)" >&2; exit 2 ;;
  esac
  echo "== $s" >&2
  # Every scenario measures its floors again, on the same servers, just before its load.
  "$BIN" bench --url "http://127.0.0.1:$PORT" --pid "$pid" --duration-secs "$secs" "${load[@]}" \
    --floor-secs 5 --json "$OUT/$mode-$n.json" | tee "$OUT/$mode-$n.md"
done
echo "bench: reports in $OUT; service log $log" >&2
