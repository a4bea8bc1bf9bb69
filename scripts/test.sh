#!/usr/bin/env bash
# The README's test command: installs what is missing, then checks formatting and lints and
# runs every test against a real PostgreSQL (see tests/api/common.rs for how it is found),
# then the Postman collection with newman against a live service.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
# The Postman collection against a live service (newman from the npm registry).
bash scripts/postman.sh
