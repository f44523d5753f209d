#!/usr/bin/env bash
# The live saga page (/ui) and Swagger UI in a real headless Chromium, driven
# by Playwright-core (npm): place orders, watch them settle, list every route,
# "Try it out" on POST /api/orders. Screenshots go to .stack/browser/.
#
# Runs in `make test` when Chromium and Node.js/npm are installed (Debian:
# apt-get install chromium nodejs npm; .ci/run installs them) and is skipped,
# saying why, when they are not; in CI (the variable CI set and not empty,
# as .ci/run and GitHub Actions set it) a missing one fails the run instead,
# so the browser test can never be skipped there unnoticed.
#   CHROMIUM=/path/to/chromium scripts/browser-test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib/system.sh"
log() { printf 'browser-test: %s\n' "$*" >&2; }
# Skips (exit 0) on a developer's machine; fails in CI.
missing() {
  if [[ -n ${CI:-} ]]; then
    log "FAILED: $* (CI is set: the browser test must run here)"
    exit 1
  fi
  log "SKIPPED: $*"
  exit 0
}

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[[ -n $CHROMIUM ]] || missing "no Chromium on this machine (apt-get install chromium, or set CHROMIUM=/path)"
command -v node >/dev/null || missing "no Node.js on this machine to run Playwright-core (apt-get install nodejs npm)"
command -v npm >/dev/null || missing "no npm on this machine to install Playwright-core (apt-get install npm)"

cd "$ROOT/tests/browser"
if [[ ! -d node_modules/playwright-core ]]; then
  log "installing playwright-core (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

start_system browser-test
log "testing $SYSTEM_URL with $CHROMIUM"
BASE_URL=$SYSTEM_URL CHROMIUM=$CHROMIUM OUT=$ROOT/.stack/browser node ui.test.mjs
