#!/usr/bin/env bash
# `make bench`: builds a release ordersaga and ordersaga-bench, runs `ordersaga all`
# against the local stack in a fresh database, topic prefix and Mongo database, and
# measures it with `ordersaga-bench` (floors first, then the load). docs/performance.md
# explains the figures.
#
#   BENCH_SCENARIOS  what to run, space-separated; each is "closed:<in flight>:<secs>",
#                    "open:<orders/s>:<secs>" or "api:<in flight>:<secs>" (default below).
#                    "api" measures the API alone: `ordersaga api` with no relay and no
#                    admission limit, on a database of its own, whose orders never settle;
#                    `ordersaga all` is stopped meanwhile (and started again if a later
#                    scenario needs it)
#   BENCH_OUT        folder for the reports (default .stack/bench)
#   BENCH_BIN        the ordersaga binary to measure instead of this checkout's
#                    (e.g. a copy of an earlier build, for an A/B on the same stack)
#   BENCH_TOOL       the ordersaga-bench binary that measures instead of this checkout's,
#                    so an A/B can measure both builds with one tool and the same floors
#   BENCH_FLOOR_CONNECTIONS  connections of the PostgreSQL floor, in every scenario
#                    (default 8: where it does best on two cores; more connections
#                    take fewer inserts a second)
#   BENCH_PORT, BENCH_USER_API_PORT, BENCH_API_PORT  where `ordersaga all`, its stub user
#                    API and `ordersaga api` listen (default 18080, 18081, 18082); a run
#                    refuses to start while any of them is taken
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . .stack/env; set +a
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ordersaga/target}
# Open loops first (each waits for its orders to settle), the closed loop last: it
# accepts orders faster than the saga settles them and leaves a backlog. The API alone
# twice: at 8 in flight it waits on its round trips (a quarter of the cores idle), at 32
# it is near what the machine can take (docs/performance.md, twenty-first session).
SCENARIOS=${BENCH_SCENARIOS:-"open:100:15 open:200:30 open:300:15 closed:8:15 api:8:10 api:32:10"}
# Floor (a)'s settings, the same in every scenario.
floor=(--floor-secs 5 --floor-connections "${BENCH_FLOOR_CONNECTIONS:-8}")
OUT=${BENCH_OUT:-.stack/bench}
mkdir -p "$OUT"

# Builds from this checkout only what BENCH_BIN and BENCH_TOOL do not name.
# The target folder may be shared with other clones (.ci/run's, an A/B's): cargo
# copies a binary to release/ only when it builds it, so a binary another clone
# built since would be measured instead. Touching the entry points makes cargo
# build and copy this checkout's (about half a minute: the binaries' own crates).
[[ -n ${BENCH_BIN:-} ]] || touch src/main.rs
[[ -n ${BENCH_TOOL:-} ]] || touch src/bin/ordersaga-bench/main.rs
build=()
[[ -n ${BENCH_BIN:-} ]] || build+=(--bin ordersaga)
[[ -n ${BENCH_TOOL:-} ]] || build+=(--bin ordersaga-bench)
((${#build[@]} == 0)) || cargo build --release "${build[@]}"
BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/ordersaga}
TOOL=${BENCH_TOOL:-$CARGO_TARGET_DIR/release/ordersaga-bench}
run=bench_$(date +%s)_$$
base=${DATABASE_URL%%\?*}
export DATABASE_URL="${base%/*}/ordersaga_$run"
export KAFKA_TOPIC_PREFIX="$run." KAFKA_GROUP_PREFIX="$run." MONGODB_DATABASE="ordersaga_$run"
export PORT=${BENCH_PORT:-18080} USER_API_PORT=${BENCH_USER_API_PORT:-18081}
API_PORT=${BENCH_API_PORT:-18082}
API_DB="${base%/*}/ordersaga_${run}_api"
export RUST_LOG=${RUST_LOG:-warn}
log="$OUT/ordersaga-all.log"

# A port another process already holds (another bench run, a `make run`) would
# answer the readiness check for the service this run starts, and the run would
# measure the other one: refuse instead.
for p in "$PORT" "$USER_API_PORT" "$API_PORT"; do
  if (: >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench: port $p is already in use (another bench or service running?); stop it, or set BENCH_PORT, BENCH_USER_API_PORT and BENCH_API_PORT" >&2
    exit 1
  fi
done

# wait_ready PORT PID WHAT LOG: until the process answers /ready (30 s at most).
wait_ready() {
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench: $3 exited; see $4" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: $3 not ready after 30 s; see $4" >&2
  exit 1
}

"$BIN" migrate
: >"$log"
pid=
api_pid=
cleanup() {
  kill $pid $api_pid 2>/dev/null || true
  wait $pid $api_pid 2>/dev/null || true
  # The run's topics go too: partitions left behind would slow the runs after it.
  "$TOOL" --delete-topics >/dev/null 2>&1 || echo "bench: could not delete the topics under $KAFKA_TOPIC_PREFIX" >&2
  for db in "ordersaga_$run" "ordersaga_${run}_api"; do
    psql "${base%/*}/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# `ordersaga all` runs only for the scenarios that measure it: idle, its consumers
# still poll the broker, which the API alone
# would otherwise share the machine with. A restart resumes its unsettled sagas.
start_all() {
  [[ -n $pid ]] && return 0
  "$BIN" all >>"$log" 2>&1 &
  pid=$!
  wait_ready "$PORT" "$pid" "ordersaga all" "$log"
}
stop_all() {
  [[ -z $pid ]] && return 0
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

for s in $SCENARIOS; do
  IFS=: read -r mode n secs <<<"$s"
  echo "== $s" >&2
  case $mode in
    closed) load=(--concurrency "$n") ;;
    open) load=(--rate "$n" --concurrency 8) ;;
    api)
      stop_all
      DATABASE_URL=$API_DB "$BIN" migrate
      DATABASE_URL=$API_DB PORT=$API_PORT RELAY_EMBEDDED=false API_MAX_PROCESSING=0 \
        "$BIN" api >"$OUT/ordersaga-api.log" 2>&1 &
      api_pid=$!
      wait_ready "$API_PORT" "$api_pid" "ordersaga api" "$OUT/ordersaga-api.log"
      DATABASE_URL=$API_DB "$TOOL" --url "http://127.0.0.1:$API_PORT" --pid "$api_pid" --api-only \
        --concurrency "$n" --duration-secs "$secs" "${floor[@]}" --json "$OUT/api-$n.json" | tee "$OUT/api-$n.md"
      kill "$api_pid"; wait "$api_pid" 2>/dev/null || true; api_pid=
      continue ;;
    *) echo "bench: unknown scenario $s (closed:N:SECS, open:RATE:SECS or api:N:SECS)" >&2; exit 2 ;;
  esac
  start_all
  # Every scenario measures its floors again, on the same servers, just before its load.
  "$TOOL" --url "http://127.0.0.1:$PORT" --pid "$pid" --duration-secs "$secs" "${load[@]}" \
    "${floor[@]}" --json "$OUT/$mode-$n.json" | tee "$OUT/$mode-$n.md"
done
echo "bench: reports in $OUT; service log $log" >&2
