#!/usr/bin/env bash
# Runs one single-node Apache Kafka broker (KRaft: broker and controller in one
# process) in the foreground, for the local stack, the tests and the drill.
#
#   scripts/kafka/server.sh DIR PORT [CONTROLLER_PORT]
#
# DIR holds its configuration (server.properties, written here) and its log
# dir (DIR/data, formatted on first start and kept across restarts: delete it
# to start empty). The broker listens on 127.0.0.1:PORT (PLAINTEXT) and its
# controller on CONTROLLER_PORT (default PORT+1). The broker's jars come from
# scripts/stack.sh (`install-kafka`), cached in $ORDERSAGA_CACHE/kafka-<version>.
# KAFKA_HEAP (default 512m) sizes the JVM heap; KAFKA_EXTRA_PROPERTIES
# (lines of key=value) is appended to the configuration.
#
# Secure listeners besides PLAINTEXT (the tests of TLS and SASL use them):
#   KAFKA_TLS_KEYSTORE   PEM file with the server's private key and certificate chain
#   KAFKA_TLS_CA         PEM file of the CA that signs client certificates (mutual TLS)
#   KAFKA_SASL_SSL_PORT  a SASL_SSL listener there (SCRAM-SHA-512), users from
#   KAFKA_SCRAM_USERS    name=password[,name=password...], created when the log dir is formatted
#   KAFKA_SSL_PORT       an SSL listener there that requires a client certificate
# The script ends by exec'ing java, so its pid is the broker's (kill -9 works).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${ORDERSAGA_CACHE:-$HOME/.cache/ordersaga}
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")
LIBS=${ORDERSAGA_KAFKA_LIBS:-$CACHE/kafka-$VERSION/libs}

die() { printf 'kafka: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 2 ]] || die "usage: $0 DIR PORT [CONTROLLER_PORT]"
dir=$1 port=$2 controller=${3:-$(($2 + 1))}
command -v java >/dev/null || die "no java on PATH: install a JDK 17 or later (Debian: apt-get install openjdk-17-jre-headless)"
[[ -f $LIBS/.complete ]] || die "Kafka $VERSION is not installed in $LIBS: run 'scripts/stack.sh up kafka' first"

mkdir -p "$dir/data"
dir=$(cd "$dir" && pwd)

listeners="PLAINTEXT://127.0.0.1:$port"
protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
secure=""
if [[ -n ${KAFKA_SASL_SSL_PORT:-} || -n ${KAFKA_SSL_PORT:-} ]]; then
  [[ -n ${KAFKA_TLS_KEYSTORE:-} ]] || die "KAFKA_SASL_SSL_PORT and KAFKA_SSL_PORT need KAFKA_TLS_KEYSTORE"
  secure="ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_TLS_KEYSTORE"
  if [[ -n ${KAFKA_TLS_CA:-} ]]; then
    secure+="
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_TLS_CA"
  fi
fi
if [[ -n ${KAFKA_SASL_SSL_PORT:-} ]]; then
  listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
  protocols+=",SASL_SSL:SASL_SSL"
  secure+="
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
fi
if [[ -n ${KAFKA_SSL_PORT:-} ]]; then
  [[ -n ${KAFKA_TLS_CA:-} ]] || die "KAFKA_SSL_PORT needs KAFKA_TLS_CA (client certificates are required)"
  listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT"
  protocols+=",SSL:SSL"
  secure+="
listener.name.ssl.ssl.client.auth=required"
fi

cat >"$dir/server.properties" <<PROPS
# Written by scripts/kafka/server.sh: one node that is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=$listeners,CONTROLLER://127.0.0.1:$controller
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$secure
log.dirs=$dir/data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A new group's first member is assigned at once (the default waits 3 s for more).
group.initial.rebalance.delay.ms=0
# Two cores: fewer threads than the defaults (3 network, 8 I/O).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
# Index files of 1 MiB (the default 10 MiB is preallocated sparse and mmapped):
# a fresh partition's first index writes fault its files in, and on a disk with a
# large read-ahead (8 MiB here) each fault zero-fills megabytes; with 10 MiB
# files the first second of load on new topics stalled for up to 1 s. 1 MiB
# still indexes 512 MiB of log per segment.
log.index.size.max.bytes=1048576
${KAFKA_EXTRA_PROPERTIES:-}
PROPS

# A random cluster id, as `kafka-storage.sh random-uuid` makes (base64url of a UUID,
# never starting with '-'), without a second JVM start.
cluster_id() {
  python3 -c 'import base64,uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"): print(s); break'
}

if [[ ! -f $dir/data/meta.properties ]]; then
  scram=()
  IFS=, read -r -a users <<<"${KAFKA_SCRAM_USERS:-}"
  for u in "${users[@]}"; do
    [[ -n $u ]] && scram+=(--add-scram "SCRAM-SHA-512=[name=${u%%=*},password=${u#*=}]")
  done
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" kafka.tools.StorageTool format \
    --config "$dir/server.properties" --cluster-id "$(cluster_id)" "${scram[@]}" \
    --ignore-formatted >&2 || die "cannot format the log dir $dir/data"
fi

exec java -Xms"${KAFKA_HEAP:-512m}" -Xmx"${KAFKA_HEAP:-512m}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
  -cp "$LIBS/*" kafka.Kafka "$dir/server.properties"
