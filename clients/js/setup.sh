#!/usr/bin/env bash
# What building and testing the SDK needs on a clean machine: Node.js and
# npm (Debian's), and the pinned dev tools of package-lock.json (typescript,
# esbuild) in clients/js/node_modules. The package itself has no runtime
# dependencies.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "the SDK needs node and npm (install them with: sudo apt-get install -y nodejs npm)" >&2
    exit 1
  fi
  echo "installing nodejs npm (apt)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "the SDK needs Node.js >= 20, found $(node --version)" >&2
  exit 1
fi

# npm ci only when package-lock.json changed since the last install.
stamp=node_modules/.pushmesh-lock.sha256
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  sha256sum package-lock.json >"$stamp"
fi
