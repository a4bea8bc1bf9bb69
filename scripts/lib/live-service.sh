# shellcheck shell=bash
# A live dr-orchestrator for the scripts that test or measure it from outside
# (postman.sh, fuzz-api.sh, browser-test.sh, bench-api.sh). Source it, then:
#
#   live_init NAME              temp dir $LIVE_WORK, cleanup on exit (service, helpers, database)
#   live_database               a fresh database on 127.0.0.1:5432 (dropped at exit), or the
#                               embedded mode when no PostgreSQL answers there
#   live_free_port VAR          sets VAR to a free port on 127.0.0.1 (a new one each call)
#   live_start BIN PORT         `BIN serve` on 127.0.0.1:PORT; waits for /readyz; sets
#                               $LIVE_BASE_URL, $LIVE_SERVICE_PID, $LIVE_SERVICE_LOG
#   live_background PID         a helper process (simulator, receiver) killed at exit
#   live_token ROLE SUBJECT     a bearer token minted by `BIN token` with the service's settings
#   live_exit STATUS WHAT       exits with STATUS; when not 0 says WHAT failed and shows the
#                               service's log
#
# Environment: READY_TIMEOUT_SECS (default 60; 120 in embedded mode), DRO_LOG, DRO_WORKERS.
# Settings of the calling shell (DATABASE_URL, DRO_DATA_DIR, DRO_JWT_SECRET, DRO_MASTER_KEY)
# are replaced, so a run never touches a database it did not create.

LIVE_PG_HOST=127.0.0.1
LIVE_PG_PORT=5432
LIVE_PG_USER=postgres
LIVE_NAME=live
LIVE_WORK=""
LIVE_RUN_DIR=""
LIVE_DB_NAME=""
LIVE_BIN=""
LIVE_BASE_URL=""
LIVE_SERVICE_PID=""
LIVE_SERVICE_LOG=""
LIVE_HELPER_PIDS=()
READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-60}

live_log() { echo "$LIVE_NAME: $*" >&2; }

live_psql() {
  psql -h "$LIVE_PG_HOST" -p "$LIVE_PG_PORT" -U "$LIVE_PG_USER" -d postgres -qAt "$@"
}

live_stop_service() {
  [ -n "$LIVE_SERVICE_PID" ] || return 0
  if kill -0 "$LIVE_SERVICE_PID" 2>/dev/null; then
    live_log "stopping the service (pid $LIVE_SERVICE_PID)"
    kill -INT "$LIVE_SERVICE_PID" 2>/dev/null || true
    # The service drains for up to 30 s, then stops its embedded PostgreSQL if it has one.
    for _ in $(seq 1 450); do
      kill -0 "$LIVE_SERVICE_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$LIVE_SERVICE_PID" 2>/dev/null; then
      live_log "the service did not stop on SIGINT; sending SIGTERM"
      kill -TERM "$LIVE_SERVICE_PID" 2>/dev/null || true
      sleep 5
      kill -KILL "$LIVE_SERVICE_PID" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$LIVE_SERVICE_PID" 2>/dev/null || rc=$?
  live_log "the service stopped (exit status $rc)"
  LIVE_SERVICE_PID=""
}

live_cleanup() {
  local status=$?
  set +e
  live_stop_service
  local pid
  for pid in "${LIVE_HELPER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$LIVE_DB_NAME" ]; then
    live_psql -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$LIVE_DB_NAME\" WITH (FORCE)" \
      >/dev/null 2>&1 \
      || live_psql -c "DROP DATABASE IF EXISTS \"$LIVE_DB_NAME\"" >/dev/null 2>&1 \
      || live_log "could not drop database $LIVE_DB_NAME"
  fi
  [ -n "$LIVE_WORK" ] && rm -rf "$LIVE_WORK"
  exit "$status"
}

live_init() {
  LIVE_NAME=$1
  LIVE_WORK=$(mktemp -d "${TMPDIR:-/tmp}/dro-$LIVE_NAME.XXXXXX")
  # As root the embedded PostgreSQL runs as an unprivileged user, which must traverse this dir.
  chmod 711 "$LIVE_WORK"
  LIVE_RUN_DIR=$LIVE_WORK/run
  mkdir -p "$LIVE_RUN_DIR"
  trap live_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

live_database() {
  unset DATABASE_URL DRO_DATA_DIR DRO_JWT_SECRET DRO_MASTER_KEY
  if command -v psql >/dev/null \
    && PGCONNECT_TIMEOUT=3 live_psql -c "SELECT 1" >/dev/null 2>&1; then
    LIVE_DB_NAME="dro_${LIVE_NAME//-/_}_$(date +%Y%m%d%H%M%S)_$$_${RANDOM}"
    live_psql -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$LIVE_DB_NAME\"" >/dev/null
    live_log "using the new database $LIVE_DB_NAME on $LIVE_PG_HOST:$LIVE_PG_PORT"
    export DATABASE_URL="postgres://$LIVE_PG_USER@$LIVE_PG_HOST:$LIVE_PG_PORT/$LIVE_DB_NAME"
    DRO_JWT_SECRET=$(openssl rand -hex 32)
    DRO_MASTER_KEY=$(openssl rand -base64 32)
    export DRO_JWT_SECRET DRO_MASTER_KEY
  else
    live_log "no PostgreSQL answers at $LIVE_PG_HOST:$LIVE_PG_PORT; using the embedded mode in $LIVE_RUN_DIR"
    READY_TIMEOUT_SECS=$((READY_TIMEOUT_SECS < 120 ? 120 : READY_TIMEOUT_SECS))
  fi
}

live_port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets the variable named $1 to a port of 127.0.0.1 that nothing listens on and that no
# earlier call chose.
LIVE_TAKEN_PORTS=" "
live_free_port() {
  local candidate
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    case "$LIVE_TAKEN_PORTS" in *" $candidate "*) continue ;; esac
    if ! live_port_in_use "$candidate"; then
      LIVE_TAKEN_PORTS+="$candidate "
      printf -v "$1" '%s' "$candidate"
      return 0
    fi
  done
  live_log "found no free port"
  return 1
}

live_background() { LIVE_HELPER_PIDS+=("$1"); }

# Waits until URL answers (any HTTP status) while PID lives; LABEL names it in errors.
live_wait_http() {
  local url=$1 pid=$2 label=$3 logfile=$4
  local deadline=$((SECONDS + READY_TIMEOUT_SECS))
  until curl -s --max-time 2 -o /dev/null "$url"; do
    kill -0 "$pid" 2>/dev/null || { live_log "$label exited; its log:"; cat "$logfile" >&2; return 1; }
    ((SECONDS < deadline)) || { live_log "$label did not answer at $url"; cat "$logfile" >&2; return 1; }
    sleep 0.25
  done
}

live_start() {
  LIVE_BIN=$1
  local port=$2
  LIVE_BASE_URL="http://127.0.0.1:$port"
  LIVE_SERVICE_LOG=$LIVE_WORK/service.log
  export DRO_BIND="127.0.0.1:$port"
  export DRO_LOG="${DRO_LOG:-info}"
  live_log "starting the service on $LIVE_BASE_URL (log: $LIVE_SERVICE_LOG)"
  (cd "$LIVE_RUN_DIR" && exec "$LIVE_BIN" serve) >"$LIVE_SERVICE_LOG" 2>&1 &
  LIVE_SERVICE_PID=$!
  local deadline=$((SECONDS + READY_TIMEOUT_SECS))
  until curl -fsS --max-time 2 "$LIVE_BASE_URL/readyz" >/dev/null 2>&1; do
    if ! kill -0 "$LIVE_SERVICE_PID" 2>/dev/null; then
      live_log "the service exited before it was ready; its log:"
      cat "$LIVE_SERVICE_LOG" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      live_log "the service was not ready after ${READY_TIMEOUT_SECS}s; its log:"
      cat "$LIVE_SERVICE_LOG" >&2
      return 1
    fi
    sleep 0.25
  done
  live_log "the service is ready"
}

live_token() {
  (cd "$LIVE_RUN_DIR" && "$LIVE_BIN" token --role "$1" --subject "$2" --ttl 1h) | tail -n 1
}

live_exit() {
  local status=$1 what=$2
  if [ "$status" -ne 0 ]; then
    live_log "$what failed (exit $status); the service's log:"
    cat "$LIVE_SERVICE_LOG" >&2
  fi
  exit "$status"
}

# Installs npm packages into DIR (target/...) when BIN_PATH is missing; Node.js and npm come
# from Debian when absent.
live_npm_install() {
  local dir=$1 bin_path=$2
  shift 2
  [ -x "$bin_path" ] && return 0
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      live_log "installing nodejs and npm"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    else
      live_log "npm is required (Debian/Ubuntu: apt-get install nodejs npm)"
      return 1
    fi
  fi
  live_log "installing $* into $dir"
  mkdir -p "$dir"
  npm install --no-audit --no-fund --loglevel=error --prefix "$dir" "$@" >&2
}
