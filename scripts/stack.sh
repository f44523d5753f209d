#!/usr/bin/env bash
# The local stack without Docker: PostgreSQL, Apache Kafka (a single KRaft
# node, from Maven Central) and a MongoDB-protocol server (SecantusDB), on
# 127.0.0.1, under .stack/.
#
#   scripts/stack.sh up [postgres|kafka|mongo ...]    install what is missing, start, wait until each answers
#   scripts/stack.sh down [postgres|kafka|mongo ...]  stop what this script started
#   scripts/stack.sh status                           what runs, where
#   scripts/stack.sh env                              the variables to reach it (also in .stack/env)
#
# Idempotent: what already runs is left alone. Heavy installs are cached under
# $ORDERSAGA_CACHE (default ~/.cache/ordersaga) and reused by every checkout.
# A PostgreSQL already answering at DATABASE_URL's server (default
# 127.0.0.1:5432, user postgres) is reused; otherwise one is installed with
# apt and run from .stack/postgres.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${ORDERSAGA_STACK_DIR:-$ROOT/.stack}
CACHE=${ORDERSAGA_CACHE:-$HOME/.cache/ordersaga}
SECANTUS_VERSION=0.5.3-beta.196 # crates.io secantus-mdb, which builds secantusd-rs
SECANTUS_PY_VERSION=0.7.0b3    # PyPI SecantusDB fallback (no compile)
PG_PORT=${STACK_PG_PORT:-5432}
KAFKA_PORT=${STACK_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-9093}
MONGO_PORT=${STACK_MONGO_PORT:-27017}
WAIT_SECONDS=${STACK_WAIT_SECONDS:-60}

mkdir -p "$STACK_DIR" "$CACHE"
log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { # pidfile
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_port() { # name port logfile pidfile
  local name=$1 port=$2 logfile=$3 pidfile=$4 i
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    if port_open "$port"; then return 0; fi
    if [[ -n $pidfile ]] && ! pid_alive "$pidfile"; then
      tail -n 20 "$logfile" >&2 || true
      die "$name exited during start-up; its log is $logfile"
    fi
    sleep 0.1
  done
  tail -n 20 "$logfile" >&2 || true
  die "$name did not answer on 127.0.0.1:$port within ${WAIT_SECONDS}s; its log is $logfile"
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install it yourself, or run as root)"
  fi
}

apt_install() {
  log "installing $* with apt"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

stop_pidfile() { # name pidfile
  local name=$1 pidfile=$2 pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "$name stopped"
}

# ---------------------------------------------------------------- PostgreSQL
PG_DIR=$STACK_DIR/postgres
PG_USER_URL="postgres://postgres@127.0.0.1:${PG_PORT}"

pg_answers() { psql "$PG_USER_URL/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d ]] && echo "$d"
}

pg_up() {
  if ! command -v psql >/dev/null; then apt_install postgresql-client; fi
  if pg_answers; then
    log "postgres: reusing the server at 127.0.0.1:$PG_PORT"
    return 0
  fi
  if [[ -f $PG_DIR/PG_VERSION ]] && [[ -f $PG_DIR/postmaster.pid ]] && pg_answers; then return 0; fi
  if port_open "$PG_PORT"; then
    die "something listens on 127.0.0.1:$PG_PORT but does not accept user postgres without a password; set STACK_PG_PORT to a free port (and DATABASE_URL accordingly)"
  fi
  local bin
  bin=$(pg_bin) || true
  if [[ -z $bin ]]; then apt_install postgresql; bin=$(pg_bin) || die "postgresql installed but no server binaries under /usr/lib/postgresql"; fi
  local run=()
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' system user (from the postgresql package)"
    run=(runuser -u postgres --)
    mkdir -p "$PG_DIR"; chown postgres "$PG_DIR"; chmod 700 "$PG_DIR"
  fi
  if [[ ! -f $PG_DIR/PG_VERSION ]]; then
    log "postgres: creating a cluster in $PG_DIR"
    "${run[@]}" "$bin/initdb" -D "$PG_DIR" -U postgres --auth=trust -E UTF8 >"$STACK_DIR/postgres-initdb.log" 2>&1 ||
      die "initdb failed; see $STACK_DIR/postgres-initdb.log"
  fi
  log "postgres: starting on 127.0.0.1:$PG_PORT"
  touch "$STACK_DIR/postgres.log"; [[ ${#run[@]} -gt 0 ]] && chown postgres "$STACK_DIR/postgres.log"
  "${run[@]}" "$bin/pg_ctl" -D "$PG_DIR" -l "$STACK_DIR/postgres.log" -w -t "$WAIT_SECONDS" \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c max_connections=300 -c fsync=off" start >/dev/null ||
    die "postgres did not start; its log is $STACK_DIR/postgres.log"
  pg_answers || die "postgres started but does not answer; its log is $STACK_DIR/postgres.log"
  echo "$bin" >"$STACK_DIR/postgres.bin"
}

pg_down() {
  if [[ -f $STACK_DIR/postgres.bin && -f $PG_DIR/postmaster.pid ]]; then
    local bin run=()
    bin=$(cat "$STACK_DIR/postgres.bin")
    [[ $(id -u) -eq 0 ]] && run=(runuser -u postgres --)
    "${run[@]}" "$bin/pg_ctl" -D "$PG_DIR" -m fast stop >/dev/null 2>&1 || true
    log "postgres stopped"
  else
    log "postgres: not started by this script; left alone"
  fi
}

# --------------------------------------------------------------------- Kafka
# The Apache Kafka broker from Maven Central: scripts/kafka/pom.xml names the
# release; Maven copies it and its runtime dependencies into the cache once,
# and scripts/kafka/server.sh runs it as a single KRaft node.
KAFKA_POM=$ROOT/scripts/kafka/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_SERVER=$ROOT/scripts/kafka/server.sh
KAFKA_HEAP=${STACK_KAFKA_HEAP:-1g}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }

kafka_install() {
  [[ -f $KAFKA_HOME/libs/.complete ]] && return 0
  if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    local pkgs=()
    command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || pkgs+=(maven)
    command -v apt-get >/dev/null ||
      die "Kafka needs Java 17 or later and Maven, and this machine has no apt-get: install ${pkgs[*]} (or their equivalents) and run this again"
    apt_install "${pkgs[@]}" || die "cannot install ${pkgs[*]} with apt; install a Java 17+ runtime and Maven yourself"
  fi
  local major
  major=$(java_major)
  [[ -n $major && $major -ge 17 ]] ||
    die "Kafka $KAFKA_VERSION needs Java 17 or later; 'java' here is version ${major:-unknown}: install openjdk-17-jre-headless (or set PATH to a newer java)"
  log "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies from Maven Central (once; cached in $KAFKA_HOME)"
  rm -rf "$KAFKA_HOME.tmp"
  if ! mvn -B -q -f "$KAFKA_POM" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME.tmp/libs" \
    >"$STACK_DIR/kafka-install.log" 2>&1; then
    tail -n 20 "$STACK_DIR/kafka-install.log" >&2
    if grep -qiE 'could not (transfer|resolve)|unknown ?host|connect(ion)? (timed out|refused)|failed to read artifact descriptor|network is unreachable' "$STACK_DIR/kafka-install.log"; then
      die "Maven Central is unreachable (or does not serve it): cannot fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION; full log in $STACK_DIR/kafka-install.log"
    fi
    die "mvn could not copy org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies; full log in $STACK_DIR/kafka-install.log"
  fi
  ls "$KAFKA_HOME.tmp/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 ||
    die "mvn ran but kafka_2.13-$KAFKA_VERSION.jar is not among what it copied; see $STACK_DIR/kafka-install.log"
  touch "$KAFKA_HOME.tmp/libs/.complete"
  rm -rf "$KAFKA_HOME"
  mv "$KAFKA_HOME.tmp" "$KAFKA_HOME"
}

kafka_up() {
  local pidfile=$STACK_DIR/kafka.pid logfile=$STACK_DIR/kafka.log
  # Installed even when a broker already answers: failure tests and the drill start private brokers.
  kafka_install
  if pid_alive "$pidfile" && port_open "$KAFKA_PORT"; then log "kafka: already up on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  if port_open "$KAFKA_PORT"; then
    log "kafka: something already listens on 127.0.0.1:$KAFKA_PORT; using it"
    return 0
  fi
  log "kafka: starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (KRaft, log dir $STACK_DIR/kafka/data)"
  KAFKA_HEAP=$KAFKA_HEAP nohup "$KAFKA_SERVER" "$STACK_DIR/kafka" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  wait_port kafka "$KAFKA_PORT" "$logfile" "$pidfile"
}

kafka_down() { stop_pidfile kafka "$STACK_DIR/kafka.pid"; }

# ------------------------------------------------------------------- MongoDB
SECANTUS_ROOT=$CACHE/secantus-$SECANTUS_VERSION
SECANTUS_PY_VENV=$CACHE/secantus-py-$SECANTUS_PY_VERSION

mongo_bin() {
  if [[ ${STACK_MONGO_IMPL:-rs} == rs && -x $SECANTUS_ROOT/bin/secantusd-rs ]]; then echo "$SECANTUS_ROOT/bin/secantusd-rs"; return 0; fi
  if [[ -x $SECANTUS_PY_VENV/bin/secantusd-py ]]; then echo "$SECANTUS_PY_VENV/bin/secantusd-py"; return 0; fi
  return 1
}

mongo_install() {
  if mongo_bin >/dev/null; then return 0; fi
  if [[ ${STACK_MONGO_IMPL:-rs} == rs ]]; then
    command -v cmake >/dev/null || apt_install cmake
    log "mongo: building secantusd-rs $SECANTUS_VERSION with cargo (about 10 minutes, once; cached in $SECANTUS_ROOT)"
    if cargo install secantus-mdb --version "$SECANTUS_VERSION" --ignore-rust-version --locked \
      --root "$SECANTUS_ROOT" >"$STACK_DIR/mongo-install.log" 2>&1; then
      return 0
    fi
    log "mongo: cargo install failed (see $STACK_DIR/mongo-install.log); falling back to secantusd-py"
  fi
  log "mongo: installing secantusd-py (PyPI SecantusDB==$SECANTUS_PY_VERSION)"
  rm -rf "$SECANTUS_PY_VENV"
  python3 -m venv "$SECANTUS_PY_VENV" || die "python3 -m venv failed"
  "$SECANTUS_PY_VENV/bin/pip" install -q --pre "SecantusDB==$SECANTUS_PY_VERSION" || die "pip install SecantusDB failed"
  mongo_bin >/dev/null || die "no MongoDB-protocol server could be installed"
}

mongo_up() {
  local pidfile=$STACK_DIR/mongo.pid logfile=$STACK_DIR/mongo.log bin
  # Installed even when a server already answers: failure tests start private servers.
  mongo_install
  if pid_alive "$pidfile" && port_open "$MONGO_PORT"; then log "mongo: already up on 127.0.0.1:$MONGO_PORT"; return 0; fi
  if port_open "$MONGO_PORT"; then
    log "mongo: something already listens on 127.0.0.1:$MONGO_PORT; using it"
    return 0
  fi
  bin=$(mongo_bin)
  mkdir -p "$STACK_DIR/mongo-data"
  log "mongo: starting $(basename "$bin") on 127.0.0.1:$MONGO_PORT"
  if [[ $bin == *secantusd-rs ]]; then
    nohup "$bin" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$STACK_DIR/mongo-data" \
      --log-file-max 10MB --cache-size 256M >"$logfile" 2>&1 &
  else
    nohup "$bin" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$STACK_DIR/mongo-data" >"$logfile" 2>&1 &
  fi
  echo $! >"$pidfile"
  wait_port mongo "$MONGO_PORT" "$logfile" "$pidfile"
}

mongo_down() { stop_pidfile mongo "$STACK_DIR/mongo.pid"; }

# ---------------------------------------------------------------------------
write_env() {
  local mongo
  mongo=$(mongo_bin || true)
  cat >"$STACK_DIR/env" <<EOF
export DATABASE_URL=$PG_USER_URL/ordersaga
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export MONGODB_URI=mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true
# The servers' own programs, for tests and drills that start private servers to stop and restart them
export ORDERSAGA_KAFKA_SERVER=$KAFKA_SERVER
export ORDERSAGA_MONGO_BIN=$mongo
EOF
}

services() { if [[ $# -eq 0 ]]; then echo postgres kafka mongo; else echo "$@"; fi; }

cmd=${1:-up}; shift || true
case $cmd in
  up)
    for s in $(services "$@"); do
      case $s in postgres) pg_up ;; kafka) kafka_up ;; mongo) mongo_up ;; *) die "unknown service $s" ;; esac
    done
    write_env
    log "up; variables in $STACK_DIR/env"
    ;;
  down)
    for s in $(services "$@"); do
      case $s in postgres) pg_down ;; kafka) kafka_down ;; mongo) mongo_down ;; *) die "unknown service $s" ;; esac
    done
    ;;
  status)
    pg_answers && echo "postgres  up   127.0.0.1:$PG_PORT" || echo "postgres  down"
    port_open "$KAFKA_PORT" && echo "kafka     up   127.0.0.1:$KAFKA_PORT" || echo "kafka     down"
    port_open "$MONGO_PORT" && echo "mongo     up   127.0.0.1:$MONGO_PORT" || echo "mongo     down"
    ;;
  env) write_env; cat "$STACK_DIR/env" ;;
  *) die "usage: $0 up|down|status|env [postgres|kafka|mongo ...]" ;;
esac
