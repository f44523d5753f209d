#!/usr/bin/env bash
# The live saga page (/ui) and Swagger UI in a real headless Chromium, driven
# by Playwright-core (npm): place orders, watch them settle, list every route,
# "Try it out" on POST /api/orders. Screenshots go to .stack/browser/.
#
# Runs in `make test` when Chromium is installed (Debian: apt-get install
# chromium; .ci/run installs it) and is skipped, saying why, when it is not.
#   CHROMIUM=/path/to/chromium scripts/browser-test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib/system.sh"
log() { printf 'browser-test: %s\n' "$*" >&2; }

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $CHROMIUM ]]; then
  log "SKIPPED: no Chromium on this machine (apt-get install chromium, or set CHROMIUM=/path)"
  exit 0
fi
if ! command -v npm >/dev/null; then
  log "SKIPPED: no Node.js/npm on this machine to run Playwright-core"
  exit 0
fi

cd "$ROOT/tests/browser"
if [[ ! -d node_modules/playwright-core ]]; then
  log "installing playwright-core (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

start_system browser-test
log "testing $SYSTEM_URL with $CHROMIUM"
BASE_URL=$SYSTEM_URL CHROMIUM=$CHROMIUM OUT=$ROOT/.stack/browser node ui.test.mjs
