#!/usr/bin/env bash
# The README's test command: installs what is missing, then checks formatting and lints and
# runs every test against a real PostgreSQL (see tests/api/common.rs for how it is found),
# then, each against a live service on a fresh database: the Postman collection with newman,
# docker-compose.yml through the Compose client, schemathesis over the OpenAPI document and a
# Swagger UI test in headless chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
# The Postman collection against a live service (newman from the npm registry).
bash scripts/postman.sh
# docker-compose.yml through the Compose client (no Docker engine needed for `config`).
bash scripts/check-compose.sh
# schemathesis over every operation of openapi/openapi.json against a live service.
bash scripts/fuzz-api.sh
# Swagger UI in headless chromium against a live service (playwright-core from the npm registry).
bash scripts/browser-test.sh
