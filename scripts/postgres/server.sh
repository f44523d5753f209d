#!/usr/bin/env bash
# Runs one PostgreSQL server in the foreground on 127.0.0.1, for tests that
# need a server of their own (TLS, passwords, stopping it).
#
#   scripts/postgres/server.sh DIR PORT
#
# DIR holds the cluster (DIR/data, created on first start and kept across
# restarts). Optional environment:
#   PG_TLS_CERT, PG_TLS_KEY   PEM server certificate and key: TLS on (ssl=on)
#   PG_PASSWORD               the postgres user's password; TCP clients must then
#                             give it (scram-sha-256), and with TLS on they must use TLS
# Runs as the `postgres` system user when started as root (PostgreSQL refuses
# root). The script ends by exec'ing postgres, so its pid is the server's.
set -euo pipefail

die() { printf 'postgres: ERROR: %s\n' "$*" >&2; exit 1; }
[[ $# -eq 2 ]] || die "usage: $0 DIR PORT"
dir=$1 port=$2
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -n $bin ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
data=$dir/data
as=()
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' system user (from the postgresql package)"
  chown postgres "$dir"
  as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

if [[ ! -f $data/PG_VERSION ]]; then
  pwfile=()
  if [[ -n ${PG_PASSWORD:-} ]]; then
    printf '%s\n' "$PG_PASSWORD" >"$dir/pwfile"
    [[ ${#as[@]} -gt 0 ]] && chown postgres "$dir/pwfile"
    pwfile=(--pwfile="$dir/pwfile")
  fi
  "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=trust "${pwfile[@]}" \
    -E UTF8 >"$dir/initdb.log" 2>&1 || die "initdb failed; see $dir/initdb.log"
  rm -f "$dir/pwfile"
  if [[ -n ${PG_PASSWORD:-} ]]; then
    host=host
    [[ -n ${PG_TLS_CERT:-} ]] && host=hostssl
    {
      echo "local all all trust"
      echo "$host all all 127.0.0.1/32 scram-sha-256"
    } >"$data/pg_hba.conf"
  fi
fi

opts=(-p "$port" -c listen_addresses=127.0.0.1 -k "$dir" -c fsync=off -c max_connections=100)
if [[ -n ${PG_TLS_CERT:-} ]]; then
  # The server reads its key only if the file is its own and private.
  install -m 0644 "$PG_TLS_CERT" "$dir/server.crt"
  install -m 0600 "$PG_TLS_KEY" "$dir/server.key"
  [[ ${#as[@]} -gt 0 ]] && chown postgres "$dir/server.crt" "$dir/server.key"
  opts+=(-c ssl=on -c ssl_cert_file="$dir/server.crt" -c ssl_key_file="$dir/server.key")
fi
exec "${as[@]}" "$bin/postgres" -D "$data" "${opts[@]}"
