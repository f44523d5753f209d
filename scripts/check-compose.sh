#!/usr/bin/env bash
# Validates docker-compose.yml with the Compose client, which needs no Docker
# engine for `config`: the `docker compose` plugin if present, else the
# standalone `docker-compose` (Debian package docker-compose; .ci/run installs
# it). The integration test tests/integration/compose.rs checks what the schema
# cannot: each service's environment against the binary's own configuration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf 'check-compose: %s\n' "$*" >&2; }

# The credentials come from .env; the example stands in for it here.
if docker compose version >/dev/null 2>&1; then
  docker compose --env-file .env.example -f docker-compose.yml config --quiet
elif command -v docker-compose >/dev/null; then
  docker-compose --env-file .env.example -f docker-compose.yml config --quiet
else
  log "SKIPPED: no Compose client (docker compose plugin or apt-get install docker-compose)"
  exit 0
fi
log "docker-compose.yml is valid"
