#!/usr/bin/env bash
# API throughput and latency with wrk (Debian's package): the release binary on a fresh
# database, DURATION seconds (default 20) of `wrk -t2 -c64 --latency` on each of
#
#   baseline  GET /healthz                 no database, no token check (the floor of the stack:
#                                          actix, the observing middleware, JSON encoding)
#   read      GET /api/v1/resources/{id}   bearer token (viewer) + one primary-key SELECT
#   list      GET /api/v1/resources        bearer token + COUNT(*) + one page (default 50)
#
# all three with the same `Authorization: Bearer` header, after SEED resources (default 100)
# were created over the API and every endpoint was warmed up for WARMUP seconds (default 5).
# Prints one markdown table row (requests/s and p99 of each, and how many times the baseline's
# requests/s each endpoint costs); with --append it adds a dated block (command, machine,
# PostgreSQL, git commit) to BENCHMARKS.md under "## API — scripts/bench-api.sh".
#
#   scripts/bench-api.sh [--append]
#
# Environment:
#   DURATION (20), WARMUP (5), SEED (100), THREADS (2), CONNECTIONS (64)   wrk and data
#   BENCH_SKIP_BUILD=1   use the existing target/release/dr-orchestrator (no cargo build)
#   BENCH_WAIT_QUIET (300)   the machine is shared: before measuring, wait at most this many
#                        seconds for it to be under 20% busy (0: do not wait)
#   DRO_LOG (here: warn), DRO_WORKERS, DRO_HTTP_WORKERS, DRO_HTTP_DB_THREADS, DRO_DB_POOL_SIZE
#                        passed to the service
#   PGSSLMODE            read by libpq in the service: the library's DATABASE_URL names
#                        127.0.0.1, so by default (prefer) the pool talks TLS to a local server
#                        that offers it; PGSSLMODE=disable measures without
# Beside the table: p50s, wrk's socket errors, how busy the machine was before, and the share
# of the CPU other processes took during each run (the machine is shared).
# Target (the issue): the read endpoint at >= 10000 requests/s with p99 < 10 ms, wrk and the
# service (and PostgreSQL) sharing the machine's cores. The exit status is 0 whether or not
# the target is met; it is non-zero when a run fails or answers anything but 2xx.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=lib/live-service.sh
. "$ROOT/scripts/lib/live-service.sh"

APPEND=0
for arg in "$@"; do
  case "$arg" in
    --append) APPEND=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench-api.sh: unknown argument $arg (use --append or --help)" >&2
      exit 2
      ;;
  esac
done

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
SEED=${SEED:-100}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
TARGET_RPS=10000
TARGET_P99_MS=10
export DRO_LOG=${DRO_LOG:-warn}
BIN=$ROOT/target/release/dr-orchestrator
BENCHMARKS=$ROOT/BENCHMARKS.md
SECTION="## API — scripts/bench-api.sh"

command -v wrk >/dev/null || { echo "bench-api.sh: wrk is missing (apt-get install wrk)" >&2; exit 1; }

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
  [ -x "$BIN" ] || { echo "bench-api.sh: $BIN does not exist; run without BENCH_SKIP_BUILD" >&2; exit 1; }
else
  cargo build --release --locked
fi

# The settings that shape the figures, as they would be typed before the command.
settings=""
for var in DURATION WARMUP SEED THREADS CONNECTIONS DRO_LOG DRO_WORKERS DRO_HTTP_WORKERS \
  DRO_HTTP_DB_THREADS DRO_DB_POOL_SIZE PGSSLMODE BENCH_SKIP_BUILD; do
  case "$var" in
    DRO_LOG) [ "$DRO_LOG" = warn ] && continue ;;
    *) [ -n "${!var+x}" ] && [ -n "${!var}" ] || continue ;;
  esac
  case "$var:${!var}" in DURATION:20 | WARMUP:5 | SEED:100 | THREADS:2 | CONNECTIONS:64) continue ;; esac
  settings+="$var=${!var} "
done
COMMAND="${settings}scripts/bench-api.sh"
if [ "$APPEND" = 1 ]; then COMMAND+=" --append"; fi

live_init bench-api
live_database
live_free_port PORT
live_start "$BIN" "$PORT"
ADMIN_TOKEN=$(live_token admin bench-admin)
VIEWER_TOKEN=$(live_token viewer bench-viewer)

# Seed: hosts of a realistic size (about 600 bytes of JSON each).
live_log "creating $SEED resources"
READ_ID=""
for i in $(seq -f '%03g' 1 "$SEED"); do
  body=$(
    cat <<JSON
{"name": "bench_host_$i", "kind": "host",
 "description": "WordPress node $i in docker-compose (production VMware VM, replicated to the DR site)",
 "attributes": {"hostname": "wp-prod-$i", "os": "linux", "private_ip": "10.0.$((10#$i / 250)).$((10#$i % 250 + 1))",
   "provider": "hyperbdr", "provider_host_id": "6a1f0c3e-$i",
   "extra": {"compose_dir": "/opt/wordpress", "via_jump": "jump01"}},
 "labels": {"app": "wordpress", "tier": "web", "env": "prod"}}
JSON
  )
  status=$(curl -sS -o "$LIVE_WORK/created.json" -w '%{http_code}' -X POST \
    "$LIVE_BASE_URL/api/v1/resources" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' --data-binary "$body")
  if [ "$status" != 201 ]; then
    live_log "creating bench_host_$i answered $status: $(cat "$LIVE_WORK/created.json")"
    live_exit 1 "seeding"
  fi
  id=$(jq -r .id "$LIVE_WORK/created.json")
  # The read endpoint reads one from the middle of the table.
  if [ "$((10#$i))" = "$(((SEED + 1) / 2))" ]; then READ_ID=$id; fi
done
[ -n "$READ_ID" ] && [ "$READ_ID" != null ] || live_exit 1 "seeding (no id came back)"

AUTH="Authorization: Bearer $VIEWER_TOKEN"
NAMES=(baseline read list)
declare -A URL=(
  [baseline]="$LIVE_BASE_URL/healthz"
  [read]="$LIVE_BASE_URL/api/v1/resources/$READ_ID"
  [list]="$LIVE_BASE_URL/api/v1/resources"
)
for name in "${NAMES[@]}"; do
  curl -fsS -o /dev/null -H "$AUTH" "${URL[$name]}" \
    || live_exit 1 "GET ${URL[$name]} before the benchmark"
done
LIST_ITEMS=$(curl -fsS -H "$AUTH" "${URL[list]}" | jq '.items | length')

# wrk's latency to milliseconds: "812.00us", "1.23ms", "2.01s", "1.00m".
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
    if (f < 0) { print "?"; exit 1 }
    printf "%.2f", n * f }'
}

# CPU ticks (USER_HZ) since boot: the whole machine's busy time, and that of the processes
# given by pid (the service, its PostgreSQL backends); wrk's comes from `times` (children).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
idle_ticks() { awk '/^cpu / {print $5 + $6; exit}' /proc/stat; }
pid_ticks() {
  local total=0 pid rest
  for pid in "$@"; do
    rest=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
  done
  echo "$total"
}
# (`times` in this shell, not in a subshell, whose children are its own.)
children_ticks() {
  times >"$LIVE_WORK/times"
  CHILDREN_TICKS=$(awk -v hz="$(getconf CLK_TCK)" 'NR == 2 {split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz}' "$LIVE_WORK/times")
}
percent_busy() { # over $1 seconds
  local b0 i0 b1 i1
  b0=$(busy_ticks); i0=$(idle_ticks); sleep "$1"; b1=$(busy_ticks); i1=$(idle_ticks)
  awk -v b=$((b1 - b0)) -v i=$((i1 - i0)) 'BEGIN {printf "%.0f", (b + i) ? 100 * b / (b + i) : 0}'
}
BACKEND_PIDS=()
backend_pids() {
  mapfile -t BACKEND_PIDS < <(psql "$DATABASE_URL" -qAt -c \
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()" \
    2>/dev/null)
}

# The machine is shared: wait (at most BENCH_WAIT_QUIET seconds) until it is nearly idle.
BENCH_WAIT_QUIET=${BENCH_WAIT_QUIET:-300}
wait_quiet() {
  local deadline=$((SECONDS + BENCH_WAIT_QUIET)) busy
  while :; do
    busy=$(percent_busy 3)
    if [ "$busy" -lt 20 ] || ((SECONDS >= deadline)); then break; fi
    live_log "the machine is ${busy}% busy; waiting for it to calm down"
  done
  echo "$busy"
}

declare -A RPS P50 P99 ERRORS OTHERS
for name in "${NAMES[@]}"; do
  live_log "warming up $name (${WARMUP}s)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -H "$AUTH" "${URL[$name]}" >/dev/null
done
# PostgreSQL's own processes for this database; the pool is full after the warm-up.
backend_pids
TLS_BACKENDS=$(psql "$DATABASE_URL" -qAt -c "SELECT count(*) FILTER (WHERE s.ssl) || ' of ' || count(*)
  FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
  WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()" 2>/dev/null || echo "?")
BUSY_BEFORE=$(wait_quiet)
for name in "${NAMES[@]}"; do
  live_log "measuring $name: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency GET ${URL[$name]#"$LIVE_BASE_URL"}"
  b0=$(busy_ticks); s0=$(pid_ticks "$LIVE_SERVICE_PID" "${BACKEND_PIDS[@]}"); children_ticks; w0=$CHILDREN_TICKS
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$AUTH" "${URL[$name]}")
  b1=$(busy_ticks); s1=$(pid_ticks "$LIVE_SERVICE_PID" "${BACKEND_PIDS[@]}"); children_ticks; w1=$CHILDREN_TICKS
  echo "$out" | sed "s/^/  $name| /" >&2
  if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then
    live_exit 1 "the $name run (non-2xx answers: its figures would mean nothing)"
  fi
  RPS[$name]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  P50[$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  P99[$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  ERRORS[$name]=$(awk '/Socket errors:/ {sub(/^.*Socket errors: /, ""); print; found = 1}
    END {if (!found) print "none"}' <<<"$out")
  # The share of the machine's CPU that went to anything but wrk, the service and its backends.
  OTHERS[$name]=$(awk -v o=$(((b1 - b0) - (s1 - s0) - (w1 - w0))) -v hz="$(getconf CLK_TCK)" \
    -v d="$DURATION" -v n="$(nproc)" 'BEGIN {o = o < 0 ? 0 : o; printf "%.0f", 100 * o / (hz * d * n)}')
  [ -n "${RPS[$name]}" ] && [ "${RPS[$name]}" -gt 0 ] \
    || live_exit 1 "reading requests/s from wrk's output for $name"
done
live_log "pool after the runs: $(curl -fsS "$LIVE_BASE_URL/metrics" | grep '^dro_db_pool' | tr '\n' ' ')"

ratio() { awk -v b="${RPS[baseline]}" -v x="$1" 'BEGIN {printf "%.1fx", b / x}'; }
if [ "${RPS[read]}" -ge "$TARGET_RPS" ] \
  && awk -v p="${P99[read]}" -v t="$TARGET_P99_MS" 'BEGIN {exit !(p < t)}'; then
  VERDICT="met"
else
  VERDICT="missed"
fi

HEADER="| healthz: req/s | p99 ms | read: req/s | p99 ms | vs healthz | list: req/s | p99 ms | vs healthz | read target (≥ $TARGET_RPS req/s, p99 < $TARGET_P99_MS ms) |
|---|---|---|---|---|---|---|---|---|"
ROW="| ${RPS[baseline]} | ${P99[baseline]} | ${RPS[read]} | ${P99[read]} | $(ratio "${RPS[read]}") | ${RPS[list]} | ${P99[list]} | $(ratio "${RPS[list]}") | $VERDICT |"
P50_LINE="p50 (ms): healthz ${P50[baseline]}, read ${P50[read]}, list ${P50[list]} ($LIST_ITEMS items a page).
wrk's socket errors (a timeout: no answer within 2 s): healthz ${ERRORS[baseline]}; read ${ERRORS[read]}; list ${ERRORS[list]}.
CPU busy before the runs: ${BUSY_BEFORE}%; other processes' share of the CPU during the runs: healthz ${OTHERS[baseline]}%, read ${OTHERS[read]}%, list ${OTHERS[list]}%.
The pool's database connections using TLS: $TLS_BACKENDS."

echo
echo "$HEADER"
echo "$ROW"
echo
echo "$P50_LINE"

[ "$APPEND" = 1 ] || exit 0

# The machine and software the figures come from.
CORES=$(nproc)
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
VIRT=$(systemd-detect-virt 2>/dev/null || true)
MEM_GIB=$(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
if [ -n "${DATABASE_URL:-}" ]; then
  PG=$(psql "$DATABASE_URL" -qAt -c 'SHOW server_version' 2>/dev/null | awk '{print $1}')
  PG="PostgreSQL ${PG:-?} on the same machine (127.0.0.1:5432)"
else
  PG="PostgreSQL (the service's embedded cluster)"
fi
OS=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-Linux}")
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# What the binary is built from (read-only git commands).
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src migrations Cargo.toml \
  Cargo.lock 2>/dev/null)" ]; then
  COMMIT+=" with uncommitted changes to the source"
fi
WRK_VERSION=$(wrk --version 2>&1 | awk 'NR == 1 {print $2}' || true)
DATE=$(date -u +%F)
HTTP_WORKERS=${DRO_HTTP_WORKERS:-$CORES}
POOL=${DRO_DB_POOL_SIZE:-16}
DB_THREADS=${DRO_HTTP_DB_THREADS:-2}

BLOCK=$(
  cat <<EOF
### $DATE — $CORES cores ($CPU${VIRT:+, $VIRT}), $MEM_GIB GiB, $PG

Command: \`$COMMAND\` (git $COMMIT; $OS; wrk $WRK_VERSION).
Service: $HTTP_WORKERS HTTP workers with $DB_THREADS database threads each, a pool of $POOL
connections, \`DRO_LOG=$DRO_LOG\`; wrk
\`-t$THREADS -c$CONNECTIONS -d${DURATION}s --latency\`; $SEED resources, $LIST_ITEMS a page.

$HEADER
$ROW

$P50_LINE
EOF
)

INTRO=$(
  cat <<'EOF'
## API — scripts/bench-api.sh

What it measures: requests per second and the 99th percentile latency that `wrk` (Debian's
4.1, `-t2 -c64 --latency`, keep-alive) gets from the release binary on a fresh database of the
local PostgreSQL, with wrk, the service and PostgreSQL on the same cores:

- **healthz** (the baseline): `GET /healthz`, which touches neither the database nor the token;
  it is what actix, the observing middleware (request id, metrics, access log) and JSON
  encoding cost;
- **read**: `GET /api/v1/resources/{id}` with a viewer's bearer token: HS256 verification and
  one primary-key `SELECT` through the r2d2 pool on a blocking thread;
- **list**: `GET /api/v1/resources` with the default page (50 of the 100 seeded hosts): a
  `COUNT(*)` and one page of rows, serialized.

All three send the same `Authorization` header. "vs healthz" is the baseline's requests/s
divided by the endpoint's: what authentication and the database cost. Target (the issue):
read at ≥ 10000 requests/s with p99 < 10 ms on this 2-core machine.
EOF
)

python3 - "$BENCHMARKS" "$SECTION" "$INTRO" "$BLOCK" <<'PY'
import sys

path, section, intro, block = sys.argv[1:5]
with open(path, encoding="utf-8") as f:
    lines = f.read().rstrip("\n").split("\n")
if section not in lines:
    lines += [""] + intro.split("\n")
start = lines.index(section)
# The block goes at the end of the section: before the next "## " heading, or at the end.
end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
while end > start + 1 and lines[end - 1] == "":
    end -= 1
lines[end:end] = [""] + block.split("\n") + ([""] if end < len(lines) else [])
with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
PY
live_log "appended the figures to $BENCHMARKS"
