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

BIN=$ROOT/target/debug/dr-orchestrator
COLLECTION=$ROOT/postman/dr-orchestrator.postman_collection.json
ENVIRONMENT=$ROOT/postman/local.postman_environment.json
NEWMAN_DIR=$ROOT/target/newman
NEWMAN=$NEWMAN_DIR/node_modules/.bin/newman
PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-60}
# Pause between requests: the Executions folder polls running executions by repeating a request
# (postman.setNextRequest, a bounded number of times), and this spaces the polls.
POSTMAN_DELAY_MS=${POSTMAN_DELAY_MS:-100}

log() { echo "postman.sh: $*" >&2; }

WORK=""
SERVICE_PID=""
SIM_PID=""
SINK_PID=""
DB_NAME=""

stop_service() {
  [ -n "$SERVICE_PID" ] || return 0
  if kill -0 "$SERVICE_PID" 2>/dev/null; then
    log "stopping the service (pid $SERVICE_PID)"
    kill -INT "$SERVICE_PID" 2>/dev/null || true
    # The service drains for up to 30 s, then stops its embedded PostgreSQL if it has one.
    for _ in $(seq 1 450); do
      kill -0 "$SERVICE_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVICE_PID" 2>/dev/null; then
      log "the service did not stop on SIGINT; sending SIGTERM"
      kill -TERM "$SERVICE_PID" 2>/dev/null || true
      sleep 5
      kill -KILL "$SERVICE_PID" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$SERVICE_PID" 2>/dev/null || rc=$?
  log "the service stopped (exit status $rc)"
  SERVICE_PID=""
}

cleanup() {
  local status=$?
  set +e
  stop_service
  for pid in "$SIM_PID" "$SINK_PID"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$DB_NAME" ]; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 \
      || psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt \
        -c "DROP DATABASE IF EXISTS \"$DB_NAME\"" >/dev/null 2>&1 \
      || log "could not drop database $DB_NAME"
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- newman --------------------------------------------------------------------------------
if [ ! -x "$NEWMAN" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      log "installing nodejs and npm"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    else
      log "npm is required to install newman (Debian/Ubuntu: apt-get install nodejs npm)"
      exit 1
    fi
  fi
  log "installing newman into ${NEWMAN_DIR#"$ROOT"/}"
  mkdir -p "$NEWMAN_DIR"
  npm install --no-audit --no-fund --loglevel=error --prefix "$NEWMAN_DIR" newman@6 >&2
fi

# --- the service binary --------------------------------------------------------------------
cargo build --locked

# --- a fresh database ----------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dro-postman.XXXXXX")
# As root the embedded PostgreSQL runs as an unprivileged user, which must traverse this dir.
chmod 711 "$WORK"
RUN_DIR=$WORK/run
mkdir -p "$RUN_DIR"
SERVICE_LOG=$WORK/service.log

unset DATABASE_URL DRO_DATA_DIR DRO_JWT_SECRET DRO_MASTER_KEY
if command -v psql >/dev/null \
  && PGCONNECT_TIMEOUT=3 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt \
    -c "SELECT 1" >/dev/null 2>&1; then
  DB_NAME="dro_postman_$(date +%Y%m%d%H%M%S)_$$_${RANDOM}"
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qAt -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null
  log "using the new database $DB_NAME on $PG_HOST:$PG_PORT"
  export DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB_NAME"
  DRO_JWT_SECRET=$(openssl rand -hex 32)
  DRO_MASTER_KEY=$(openssl rand -base64 32)
  export DRO_JWT_SECRET DRO_MASTER_KEY
else
  log "no PostgreSQL answers at $PG_HOST:$PG_PORT; using the embedded mode in $RUN_DIR"
  READY_TIMEOUT_SECS=$((READY_TIMEOUT_SECS < 120 ? 120 : READY_TIMEOUT_SECS))
fi

# --- a free port on 127.0.0.1 --------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 40000))
  if ! port_in_use "$candidate"; then
    PORT=$candidate
    break
  fi
done
[ -n "$PORT" ] || { log "found no free port"; exit 1; }
BASE_URL="http://127.0.0.1:$PORT"
SIM_PORT=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 40000))
  if [ "$candidate" != "$PORT" ] && ! port_in_use "$candidate"; then
    SIM_PORT=$candidate
    break
  fi
done
[ -n "$SIM_PORT" ] || { log "found no free port for the simulator"; exit 1; }
SIM_URL="http://127.0.0.1:$SIM_PORT"
SINK_PORT=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 40000))
  if [ "$candidate" != "$PORT" ] && [ "$candidate" != "$SIM_PORT" ] && ! port_in_use "$candidate"; then
    SINK_PORT=$candidate
    break
  fi
done
[ -n "$SINK_PORT" ] || { log "found no free port for the webhook receiver"; exit 1; }
SINK_URL="http://127.0.0.1:$SINK_PORT"
export DRO_BIND="127.0.0.1:$PORT"
export DRO_LOG="${DRO_LOG:-info}"
export DRO_WORKERS="${DRO_WORKERS:-8}"
if [ "$DRO_WORKERS" = 0 ]; then
  log "DRO_WORKERS=0 runs no steps; the Executions folder needs an executor pool"
  exit 1
fi

# --- the recovery provider simulator (the Providers folder drives a drill through it) -------
log "starting the simulator on $SIM_URL"
"$BIN" simulator --bind "127.0.0.1:$SIM_PORT" --hosts "$ROOT/postman/simulator-hosts.yaml" \
  >"$WORK/simulator.log" 2>&1 &
SIM_PID=$!

# --- a webhook receiver (the Webhooks folder subscribes it and reads back what it got) ------
log "starting the webhook receiver on $SINK_URL"
python3 "$ROOT/scripts/webhook-sink.py" 127.0.0.1 "$SINK_PORT" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!

# --- start the service and wait until it is ready ------------------------------------------
log "starting the service on $BASE_URL (log: $SERVICE_LOG)"
(cd "$RUN_DIR" && exec "$BIN" serve) >"$SERVICE_LOG" 2>&1 &
SERVICE_PID=$!

deadline=$((SECONDS + READY_TIMEOUT_SECS))
until curl -fsS --max-time 2 "$BASE_URL/readyz" >/dev/null 2>&1; do
  if ! kill -0 "$SERVICE_PID" 2>/dev/null; then
    log "the service exited before it was ready; its log:"
    cat "$SERVICE_LOG" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    log "the service was not ready after ${READY_TIMEOUT_SECS}s; its log:"
    cat "$SERVICE_LOG" >&2
    exit 1
  fi
  sleep 0.25
done
log "the service is ready"
until curl -s --max-time 2 -o /dev/null "$SINK_URL/received"; do
  kill -0 "$SINK_PID" 2>/dev/null || { log "the webhook receiver exited; its log:"; cat "$WORK/sink.log" >&2; exit 1; }
  ((SECONDS < deadline)) || { log "the webhook receiver did not answer"; exit 1; }
  sleep 0.25
done
until curl -s --max-time 2 -o /dev/null "$SIM_URL/simulator/calls"; do
  kill -0 "$SIM_PID" 2>/dev/null || { log "the simulator exited; its log:"; cat "$WORK/simulator.log" >&2; exit 1; }
  ((SECONDS < deadline)) || { log "the simulator did not answer"; exit 1; }
  sleep 0.25
done

# --- tokens (same environment and working directory as serve) -------------------------------
mint() { (cd "$RUN_DIR" && "$BIN" token --role "$1" --subject "$2" --ttl 1h) | tail -n 1; }
ADMIN_TOKEN=$(mint admin postman-admin)
VIEWER_TOKEN=$(mint viewer postman-viewer)

# --- run the collection --------------------------------------------------------------------
set +e
"$NEWMAN" run "$COLLECTION" \
  --environment "$ENVIRONMENT" \
  --env-var "baseUrl=$BASE_URL" \
  --env-var "token=$ADMIN_TOKEN" \
  --env-var "viewerToken=$VIEWER_TOKEN" \
  --env-var "simUrl=$SIM_URL" \
  --env-var "sinkUrl=$SINK_URL" \
  --reporters cli \
  --delay-request "$POSTMAN_DELAY_MS" \
  "$@"
newman_status=$?
set -e

if [ "$newman_status" -ne 0 ]; then
  log "newman failed (exit $newman_status); the service's log:"
  cat "$SERVICE_LOG" >&2
fi
exit "$newman_status"
