#!/usr/bin/env bash
# What `make image` and its test need beyond cargo: buildah (builds the
# image without a daemon), skopeo (inspects and pushes it), strip (binutils)
# and the CA bundle the image ships (ca-certificates). Installed with apt
# when missing; nothing is done when all are there.
set -euo pipefail

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "make image needs ${missing[*]}: install them (as root, on Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt)..." >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
