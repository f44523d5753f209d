#!/usr/bin/env bash
# Fuzzes the HTTP API with Schemathesis (PyPI) against its own OpenAPI document:
# starts `ordersaga all` on free ports with a database, topic prefix and Mongo
# database of its own, runs a bounded number of examples per operation, and
# fails on any 5xx or any response that does not match the documented schemas.
#
#   scripts/fuzz-api.sh            (make fuzz-api; also part of make test)
#   FUZZ_EXAMPLES=500 FUZZ_SEED=42 scripts/fuzz-api.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib/system.sh"
CACHE=${ORDERSAGA_CACHE:-$HOME/.cache/ordersaga}
VERSION=4.32.5
VENV=$CACHE/schemathesis-$VERSION
EXAMPLES=${FUZZ_EXAMPLES:-50}
SEED=${FUZZ_SEED:-1}

log() { printf 'fuzz-api: %s\n' "$*" >&2; }

if [[ ! -x $VENV/bin/st ]]; then
  log "installing schemathesis $VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

# With API keys, as a deployment should run: Schemathesis sends the key, and
# checks that a request without one (or with a wrong one) is refused.
export API_KEYS="fuzz-key-$RANDOM$RANDOM"
start_system fuzz-api

# Every check but positive_data_acceptance: Schemathesis may put control bytes in
# multipart part names, which no multipart parser accepts (docs/testing.md).
log "running schemathesis ($EXAMPLES examples per operation, seed $SEED)"
"$VENV/bin/st" --no-color run "$SYSTEM_URL/api-docs/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --header "Authorization: Bearer $API_KEYS" \
  --max-examples "$EXAMPLES" --seed "$SEED" --workers 2
