# Sourced by the scripts that test a whole running system (fuzz-api.sh,
# browser-test.sh): starts `ordersaga all` on free ports with a database,
# topic prefix, consumer groups and Mongo database of its own, and removes
# them again at exit.
#
#   . scripts/lib/system.sh
#   start_system NAME      # sets SYSTEM_URL, SYSTEM_PID, SYSTEM_LOG; waits for /ready
#   (stop_system runs at exit)

SYSTEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SYSTEM_CACHE=${ORDERSAGA_CACHE:-$HOME/.cache/ordersaga}
SYSTEM_BIN=${CARGO_TARGET_DIR:-$SYSTEM_ROOT/target}/debug/ordersaga
PYMONGO_VENV=$SYSTEM_CACHE/pymongo-4.20.0

system_log() { printf '%s: %s\n' "${SYSTEM_NAME:-system}" "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop_system() {
  [[ -n ${SYSTEM_PID:-} ]] && kill "$SYSTEM_PID" 2>/dev/null && wait "$SYSTEM_PID" 2>/dev/null || true
  [[ -n ${SYSTEM_RUN:-} ]] || return 0
  psql "${DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS ordersaga_$SYSTEM_RUN WITH (FORCE)" >/dev/null 2>&1 || true
  "$PYMONGO_VENV/bin/python" -c "import pymongo,sys; pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=3000).drop_database(sys.argv[2])" \
    "$MONGODB_URI" "ordersaga_$SYSTEM_RUN" >/dev/null 2>&1 || true
}

start_system() {
  SYSTEM_NAME=$1
  [[ -f $SYSTEM_ROOT/.stack/env ]] || { system_log "run 'make stack-up' first"; exit 1; }
  set -a; . "$SYSTEM_ROOT/.stack/env"; set +a
  [[ -x $SYSTEM_BIN ]] || { system_log "build the binary first (cargo build --bin ordersaga)"; exit 1; }
  if ! "$PYMONGO_VENV/bin/python" -c 'import pymongo' 2>/dev/null; then
    rm -rf "$PYMONGO_VENV"
    python3 -m venv "$PYMONGO_VENV" && "$PYMONGO_VENV/bin/pip" install -q "pymongo==4.20.0"
  fi
  SYSTEM_RUN=${SYSTEM_NAME//-/_}_$(date +%s)_$$
  local port stub_port
  port=$(free_port)
  stub_port=$(free_port)
  SYSTEM_URL=http://127.0.0.1:$port
  SYSTEM_LOG=$SYSTEM_ROOT/.stack/$SYSTEM_NAME.log
  trap stop_system EXIT
  DATABASE_URL=${DATABASE_URL%/*}/ordersaga_$SYSTEM_RUN PORT=$port HOST=127.0.0.1 \
    USER_API_PORT=$stub_port USER_API_URL=http://127.0.0.1:$stub_port \
    KAFKA_TOPIC_PREFIX=$SYSTEM_RUN. KAFKA_GROUP_PREFIX=$SYSTEM_RUN. KAFKA_PARTITIONS=3 \
    KAFKA_SESSION_TIMEOUT_MS=6000 KAFKA_HEARTBEAT_INTERVAL_MS=500 MONGODB_DATABASE=ordersaga_$SYSTEM_RUN \
    "$SYSTEM_BIN" all >"$SYSTEM_LOG" 2>&1 &
  SYSTEM_PID=$!
  for _ in $(seq 1 600); do
    curl -fs "$SYSTEM_URL/ready" >/dev/null 2>&1 && return 0
    kill -0 "$SYSTEM_PID" 2>/dev/null || { tail -n 20 "$SYSTEM_LOG" >&2; system_log "ordersaga exited; its log is $SYSTEM_LOG"; exit 1; }
    sleep 0.1
  done
  system_log "ordersaga did not become ready within 60 s; its log is $SYSTEM_LOG"
  exit 1
}
