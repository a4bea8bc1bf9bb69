#!/usr/bin/env bash
# Checks docker-compose.yml with the Compose client that is here: `docker compose` (the v2
# plugin) when it answers, else `docker-compose` (Debian's package, installed by
# install-deps.sh). Only the client is needed: `config` parses, validates and interpolates the
# file without a Docker engine.
#
#   bash scripts/check-compose.sh
#
# Proves: the file is valid Compose with the secrets set; it refuses to start without
# DRO_JWT_SECRET or DRO_MASTER_KEY, naming the missing one; the service is built from this
# directory's Dockerfile, reaches PostgreSQL by its service name, waits for it to be healthy and
# publishes its port on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "check-compose.sh: no Compose client (docker compose or docker-compose); run scripts/install-deps.sh" >&2
  exit 1
fi
echo "check-compose.sh: using $("${compose[@]}" version | head -n 1)" >&2

fail() { echo "check-compose.sh: $*" >&2; exit 1; }

config=$(env -u DRO_DB_PASSWORD DRO_JWT_SECRET=jwt-placeholder DRO_MASTER_KEY=key-placeholder \
  "${compose[@]}" -f docker-compose.yml config) || fail "docker-compose.yml is not valid Compose"

expect() { grep -Eq -- "$1" <<<"$config" || fail "the resolved file lacks: $2"; }
expect "context: $PWD\$" "a build of this directory"
expect "DATABASE_URL: postgres://dro:dro@postgres:5432/dr_orchestrator" "DATABASE_URL on the postgres service"
expect "condition: service_healthy" "a wait for PostgreSQL's health check"
expect "127\.0\.0\.1:8080:8080" "the API port on loopback only"
expect "/readyz" "a readiness health check"
[ -f Dockerfile ] || fail "no Dockerfile"

for secret in DRO_JWT_SECRET DRO_MASTER_KEY; do
  other=DRO_MASTER_KEY
  [ "$secret" = DRO_MASTER_KEY ] && other=DRO_JWT_SECRET
  if out=$(env -u "$secret" "$other=placeholder" "${compose[@]}" -f docker-compose.yml config -q 2>&1); then
    fail "the file resolves without $secret"
  fi
  grep -q "set $secret" <<<"$out" || fail "the error without $secret does not name it: $out"
done
echo "check-compose.sh: docker-compose.yml is valid" >&2
