#!/usr/bin/env bash
# The README's test command: installs what is missing, then checks formatting and lints and
# runs every test against a real PostgreSQL (see tests/api/common.rs for how it is found).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
