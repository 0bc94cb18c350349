#!/usr/bin/env bash
# What the browser test needs on a clean machine: Debian's chromium (the
# test drives /usr/bin/chromium; no browser download), Node.js, and the
# pinned npm packages of package-lock.json in tests/browser/node_modules.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "browser-test needs: $* (install them with: sudo apt-get install -y $*)" >&2
    exit 1
  fi
  echo "installing $* (apt)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium
command -v curl >/dev/null || apt_install curl

# npm ci only when package-lock.json changed since the last install.
stamp=node_modules/.pushmesh-lock.sha256
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  sha256sum package-lock.json >"$stamp"
fi
