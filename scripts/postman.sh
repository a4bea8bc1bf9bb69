#!/usr/bin/env bash
# Runs the Postman collection (postman/dr-orchestrator.postman_collection.json) with newman
# against a freshly started service on a fresh database, then stops it and cleans up.
#
#   bash scripts/postman.sh [extra newman arguments, e.g. --verbose]
#
# - newman is installed from the npm registry into target/newman when missing.
# - Beside the service it starts the recovery provider simulator (`dr-orchestrator simulator`,
#   postman/simulator-hosts.yaml) and a webhook receiver (scripts/webhook-sink.py, python3).
# - The debug binary is built (cargo build --locked).
# - Database: a new, uniquely named database on the PostgreSQL at 127.0.0.1:5432 (user
#   postgres, trust auth), dropped at exit; when no server answers there, the service's
#   embedded mode (DATABASE_URL unset: a private PostgreSQL under ./data of a temp dir).
# - The service runs its executor pool (DRO_WORKERS, default 8; 0 would leave the Executions
#   folder's drills waiting forever, so it is refused here).
# - Requests are POSTMAN_DELAY_MS (default 100) apart: newman --delay-request.
# - The service listens on a free port of 127.0.0.1 only; tokens come from its `token`
#   subcommand with the same environment and working directory as `serve`.
# Exits with newman's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=lib/live-service.sh
. "$ROOT/scripts/lib/live-service.sh"

BIN=$ROOT/target/debug/dr-orchestrator
COLLECTION=$ROOT/postman/dr-orchestrator.postman_collection.json
ENVIRONMENT=$ROOT/postman/local.postman_environment.json
NEWMAN_DIR=$ROOT/target/newman
NEWMAN=$NEWMAN_DIR/node_modules/.bin/newman
# Pause between requests: the Executions folder polls running executions by repeating a request
# (postman.setNextRequest, a bounded number of times), and this spaces the polls.
POSTMAN_DELAY_MS=${POSTMAN_DELAY_MS:-100}

export DRO_WORKERS="${DRO_WORKERS:-8}"
if [ "$DRO_WORKERS" = 0 ]; then
  echo "postman.sh: DRO_WORKERS=0 runs no steps; the Executions folder needs an executor pool" >&2
  exit 1
fi

live_npm_install "$NEWMAN_DIR" "$NEWMAN" newman@6
cargo build --locked

live_init postman
live_database
live_free_port PORT
live_free_port SIM_PORT
live_free_port SINK_PORT
SIM_URL="http://127.0.0.1:$SIM_PORT"
SINK_URL="http://127.0.0.1:$SINK_PORT"

# The recovery provider simulator (the Providers folder drives a drill through it).
live_log "starting the simulator on $SIM_URL"
"$BIN" simulator --bind "127.0.0.1:$SIM_PORT" --hosts "$ROOT/postman/simulator-hosts.yaml" \
  >"$LIVE_WORK/simulator.log" 2>&1 &
live_background $!
live_wait_http "$SIM_URL/simulator/calls" $! "the simulator" "$LIVE_WORK/simulator.log"

# A webhook receiver (the Webhooks folder subscribes it and reads back what it got).
live_log "starting the webhook receiver on $SINK_URL"
python3 "$ROOT/scripts/webhook-sink.py" 127.0.0.1 "$SINK_PORT" >"$LIVE_WORK/sink.log" 2>&1 &
live_background $!
live_wait_http "$SINK_URL/received" $! "the webhook receiver" "$LIVE_WORK/sink.log"

live_start "$BIN" "$PORT"
ADMIN_TOKEN=$(live_token admin postman-admin)
VIEWER_TOKEN=$(live_token viewer postman-viewer)

set +e
"$NEWMAN" run "$COLLECTION" \
  --environment "$ENVIRONMENT" \
  --env-var "baseUrl=$LIVE_BASE_URL" \
  --env-var "token=$ADMIN_TOKEN" \
  --env-var "viewerToken=$VIEWER_TOKEN" \
  --env-var "simUrl=$SIM_URL" \
  --env-var "sinkUrl=$SINK_URL" \
  --reporters cli \
  --delay-request "$POSTMAN_DELAY_MS" \
  "$@"
newman_status=$?
set -e
live_exit "$newman_status" "newman"
