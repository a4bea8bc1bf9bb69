#!/usr/bin/env bash
# Installs, when missing, what building and testing dr-orchestrator needs on Debian/Ubuntu:
# PostgreSQL's server (the embedded default and the tests run it), libpq's headers (diesel
# links libpq), a C toolchain and pkg-config, ping (ping checks) and dnsmasq's binary (the dns
# check tests start one on a loopback port; `dnsmasq-base` is the binary without the system
# service that the `dnsmasq` package would start on port 53) and chromium (scripts/browser-test.sh
# tests Swagger UI in it, headless). Idempotent: installs nothing when all is there.
set -euo pipefail

packages=(postgresql libpq-dev build-essential pkg-config libssl-dev ca-certificates iputils-ping dnsmasq-base openssh-server openssh-client nginx pssh iproute2 chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# python3 runs the Postman run's webhook receiver (scripts/webhook-sink.py) and schemathesis
# (scripts/fuzz-api.sh, in a virtualenv: python3-venv); any python3 >= 3.9 will do.
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# scripts/check-compose.sh needs a Compose client; Debian's docker-compose when the v2 plugin
# is absent (only `config` is used: no Docker engine needed).
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
  || missing+=(docker-compose)

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root or install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo is not on PATH; install a Rust toolchain (rustup, stable >= 1.80) first" >&2
  exit 1
fi
