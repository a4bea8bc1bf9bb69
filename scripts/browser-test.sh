#!/usr/bin/env bash
# Tests Swagger UI in a real browser against a freshly started service on a fresh database, the
# way operators try the API by hand (tests/browser/swagger-ui.mjs): headless chromium opens
# /docs/, authorizes through the Authorize dialog, runs "list resources" with "Try it out" and
# expects a 200 listing a resource created here beforehand. Then it stops the service and cleans up.
#
#   bash scripts/browser-test.sh
#
# - The browser is Debian's chromium (/usr/bin/chromium, or $CHROMIUM; scripts/install-deps.sh
#   installs it), driven by playwright-core from the npm registry, installed into
#   target/browser-test when missing (no browser download).
# - The page must request nothing outside the service's origin: Swagger UI's assets are vendored
#   into the binary and the UI must work offline. Chromium opens the service as
#   http://dro-orchestrator.test:PORT (mapped to 127.0.0.1 inside chromium), since Swagger UI
#   behaves differently on localhost/127.0.0.1; BROWSER_TEST_PAGE_HOST=127.0.0.1 opens it directly.
# - Screenshots (CI artifacts): target/browser/swagger-ui-list-resources.png (the whole page) and
#   swagger-ui-list-resources-operation.png (the operation), or swagger-ui-failure.png.
# - The debug binary is built (cargo build --locked).
# - Database: a new, uniquely named database on the PostgreSQL at 127.0.0.1:5432 (user
#   postgres, trust auth), dropped at exit; when no server answers there, the service's
#   embedded mode (DATABASE_URL unset: a private PostgreSQL under ./data of a temp dir).
# - The service listens on a free port of 127.0.0.1 only; the admin token comes from its `token`
#   subcommand with the same environment and working directory as `serve`.
# Exits with the browser test's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=lib/live-service.sh
. "$ROOT/scripts/lib/live-service.sh"

BIN=$ROOT/target/debug/dr-orchestrator
PLAYWRIGHT_DIR=$ROOT/target/browser-test
PLAYWRIGHT=$PLAYWRIGHT_DIR/node_modules/.bin/playwright-core
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export CHROMIUM

if [ ! -x "$CHROMIUM" ]; then
  echo "browser-test.sh: no chromium at $CHROMIUM (Debian: apt-get install chromium, or run scripts/install-deps.sh)" >&2
  exit 1
fi

# playwright-core drives the system's chromium; it must not fetch browsers of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
live_npm_install "$PLAYWRIGHT_DIR" "$PLAYWRIGHT" playwright-core@1.65.1
cargo build --locked

live_init browser-test
live_database
live_free_port PORT
live_start "$BIN" "$PORT"
ADMIN_TOKEN=$(live_token admin browser-test)

# A host resource with a name of this run's own, for the UI's "list resources" to show.
RESOURCE=browser_test_$(openssl rand -hex 4)
live_log "creating the host resource $RESOURCE"
if ! curl -sS --fail-with-body --max-time 10 -o "$LIVE_WORK/created.json" \
  -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$RESOURCE\", \"kind\": \"host\",
       \"description\": \"created by scripts/browser-test.sh\",
       \"attributes\": {\"hostname\": \"${RESOURCE//_/-}\", \"os\": \"linux\", \"private_ip\": \"10.0.9.9\"},
       \"labels\": {\"env\": \"test\"}}" \
  "$LIVE_BASE_URL/api/v1/resources"; then
  live_log "could not create the resource; the answer:"
  { cat "$LIVE_WORK/created.json"; echo; } >&2 2>/dev/null || true
  exit 1
fi

mkdir -p "$ROOT/target/browser"
rm -f "$ROOT/target/browser"/swagger-ui-*.png
set +e
BROWSER_TEST_BASE_URL=$LIVE_BASE_URL \
  BROWSER_TEST_TOKEN=$ADMIN_TOKEN \
  BROWSER_TEST_RESOURCE=$RESOURCE \
  BROWSER_TEST_OUT_DIR=$ROOT/target/browser \
  BROWSER_TEST_NODE_MODULES=$PLAYWRIGHT_DIR/node_modules \
  node "$ROOT/tests/browser/swagger-ui.mjs"
test_status=$?
set -e
live_exit "$test_status" "the browser test"
