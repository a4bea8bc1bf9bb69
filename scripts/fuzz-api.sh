#!/usr/bin/env bash
# Runs schemathesis (PyPI) over every operation of the committed OpenAPI document
# (openapi/openapi.json) against a freshly started service on a fresh database, then stops it
# and cleans up.
#
#   bash scripts/fuzz-api.sh [extra `st run` arguments]
#
# - schemathesis is installed (pinned) into a virtualenv under target/schemathesis when missing.
# - The debug binary is built (cargo build --locked); the service is started by
#   scripts/lib/live-service.sh on a new database, with an admin bearer token.
# - Two passes, each with every check but one (below): no 5xx, documented status codes and
#   content types only, bodies and headers as documented, invalid requests refused,
#   authentication not ignored, deleted objects gone. The first pass fuzzes every parameter,
#   path ones included (nearly all of those name nothing: 404). Before the second the script
#   seeds one object of each kind (a credential, a host, steps, a plan, a provider, hooks
#   in and out, a drill waiting for an approval) and pins the path parameters to them
#   (target/schemathesis/seeded.toml), so fuzzed bodies and queries reach real objects.
# - Not checked: `positive_data_acceptance` (every schema-valid request accepted). The document
#   cannot say everything the service checks: a plan naming a step that does not exist, a cycle,
#   a template reading an unknown variable, a credential of the wrong kind are schema-valid and
#   refused with 400 and the field at fault.
# - FUZZ_MAX_EXAMPLES (default 25) bounds the examples generated per operation in the fuzzing
#   phase; FUZZ_SEED (default 1) makes a run repeatable.
# - Reports (JUnit XML and the failing requests as a cassette) go to target/schemathesis/.
# Exits with schemathesis's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=lib/live-service.sh
. "$ROOT/scripts/lib/live-service.sh"

BIN=$ROOT/target/debug/dr-orchestrator
SCHEMATHESIS_VERSION=4.32.5
VENV=$ROOT/target/schemathesis/venv
ST=$VENV/bin/st
REPORT_DIR=$ROOT/target/schemathesis/report
FUZZ_MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-25}
FUZZ_SEED=${FUZZ_SEED:-1}

if [ ! -x "$ST" ] || ! "$ST" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "fuzz-api.sh: installing schemathesis $SCHEMATHESIS_VERSION into ${VENV#"$ROOT"/}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --locked

export DRO_LOG=${DRO_LOG:-warn}
live_init fuzz-api
live_database
live_free_port PORT
live_start "$BIN" "$PORT"
TOKEN=$(live_token admin schemathesis)

# The committed document is what clients read; the service must serve the same one.
if ! diff <(curl -fsS "$LIVE_BASE_URL/api-docs/openapi.json" | python3 -m json.tool --sort-keys) \
  <(python3 -m json.tool --sort-keys "$ROOT/openapi/openapi.json") >/dev/null; then
  live_log "openapi/openapi.json differs from what the service serves; regenerate it with:"
  live_log "  cargo run -q -- openapi > openapi/openapi.json"
  exit 1
fi

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"

# run_pass NAME [st options]: one schemathesis run; reports under $REPORT_DIR/NAME.
run_pass() {
  local name=$1
  shift
  live_log "schemathesis pass: $name"
  local status=0
  "$ST" "$@" run "$ROOT/openapi/openapi.json" \
    --url "$LIVE_BASE_URL" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples "$FUZZ_MAX_EXAMPLES" \
    --seed "$FUZZ_SEED" \
    --workers 1 \
    --request-timeout 30 \
    --no-color \
    --report junit,vcr \
    --report-dir "$REPORT_DIR/$name" \
    "${ST_ARGS[@]}" || status=$?
  if [ "$status" -ne 0 ]; then
    live_log "schemathesis pass $name failed (exit $status); reports under ${REPORT_DIR#"$ROOT"/}/$name; the service's log ends:"
    tail -n 50 "$LIVE_SERVICE_LOG" >&2
    exit "$status"
  fi
}
ST_ARGS=("$@")

run_pass random

# --- seed one object of each kind and pin the path parameters to them -----------------------
api() {
  local method=$1 path=$2 body=$3
  curl -fsS -X "$method" "$LIVE_BASE_URL$path" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data "$body" \
    || { live_log "seeding failed: $method $path"; exit 1; }
}
api POST /api/v1/credentials '{"name":"fuzz_password","kind":"ssh_password","username":"root","secret":{"password":"fuzz-only"}}' >/dev/null
api POST /api/v1/resources '{"name":"fuzz_host","kind":"host","attributes":{"private_ip":"127.0.0.1","ssh":{"credential":"fuzz_password","user":"root","port":22}},"labels":{"env":"fuzz"}}' >/dev/null
api POST /api/v1/steps '{"name":"fuzz_wait","kind":"wait","params":{"duration":"1s"}}' >/dev/null
api POST /api/v1/steps '{"name":"fuzz_gate","kind":"manual_approval","params":{"instructions":"fuzzing"}}' >/dev/null
api POST /api/v1/plans '{"name":"fuzz_plan","target_rto":"1h","steps":[{"key":"wait","step":"fuzz_wait"},{"key":"gate","step":"fuzz_gate","depends_on":["wait"]}]}' >/dev/null
# Two providers on the built-in simulator: operations that read pin `fuzz_sim`; PUT and DELETE
# (which may point it elsewhere or remove it) pin `fuzz_sim_spare`.
live_free_port SIM_PORT
"$BIN" simulator --bind "127.0.0.1:$SIM_PORT" --hosts "$ROOT/postman/simulator-hosts.yaml" \
  >"$LIVE_WORK/simulator.log" 2>&1 &
live_background $!
live_wait_http "http://127.0.0.1:$SIM_PORT/simulator/calls" $! "the simulator" "$LIVE_WORK/simulator.log"
for provider in fuzz_sim fuzz_sim_spare; do
  api POST /api/v1/providers "{\"name\":\"$provider\",\"kind\":\"simulator\",\"base_url\":\"http://127.0.0.1:$SIM_PORT\"}" >/dev/null
done
api POST /api/v1/hooks '{"name":"fuzz_hook","action":"start","plan":"fuzz_plan","mode":"drill"}' >/dev/null
api POST /api/v1/webhooks '{"name":"fuzz_sink","url":"http://127.0.0.1:9/hook","events":["execution.started"]}' >/dev/null
EXECUTION_ID=$(api POST /api/v1/plans/fuzz_plan/executions '{"mode":"drill"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
live_log "seeded; the drill $EXECUTION_ID waits for its gate"

SEEDED_CONFIG=$ROOT/target/schemathesis/seeded.toml
{
  pin() { printf '[[operations]]\ninclude-path-regex = "%s"\nparameters = { %s }\n\n' "$1" "$2"; }
  pin '^/api/v1/credentials/' 'key = "fuzz_password"'
  pin '^/api/v1/resources/' 'key = "fuzz_host"'
  pin '^/api/v1/steps/' 'key = "fuzz_wait"'
  pin '^/api/v1/plans/' 'key = "fuzz_plan", version = 1'
  printf '[[operations]]\ninclude-path-regex = "^/api/v1/providers/[^/]+$"\ninclude-method = ["PUT", "DELETE"]\nparameters = { key = "fuzz_sim_spare" }\n\n'
  pin '^/api/v1/providers/' 'key = "fuzz_sim"'
  pin '^/api/v1/hooks/' 'key = "fuzz_hook"'
  pin '^/api/v1/webhooks/' 'key = "fuzz_sink"'
  pin '^/api/v1/executions/' "id = \"$EXECUTION_ID\", key = \"gate\""
} >"$SEEDED_CONFIG"
run_pass seeded --config-file "$SEEDED_CONFIG"
live_log "both passes green"
