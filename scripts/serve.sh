#!/usr/bin/env bash
# The README's run command: on a fresh Debian machine, installs what is missing, builds the
# release binary and serves on the embedded default (a private PostgreSQL under ./data) unless
# DATABASE_URL is set. Extra arguments go to `dr-orchestrator serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
exec target/release/dr-orchestrator serve "$@"
