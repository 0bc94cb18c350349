#!/usr/bin/env bash
# What the Redis engine's tests and `make run-redis` need on a clean machine:
# Debian's redis-server (the tests start their own instances of it).
set -euo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "the Redis engine's tests need redis-server (install it with: sudo apt-get install -y redis-server)" >&2
  exit 1
fi
echo "installing redis-server (apt)…"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system instance; the tests and make run-redis start their own.
