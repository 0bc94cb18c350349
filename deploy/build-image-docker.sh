#!/usr/bin/env bash
# `make image-docker`: build the pushmesh image (deploy/Dockerfile) with
# docker or podman, tagged as the Helm chart's default image:
# IMAGE_REPOSITORY:appVersion. Without a container engine, `make image`
# (deploy/build-image.sh) builds the same image as an OCI archive.
set -euo pipefail
cd "$(dirname "$0")/.."

chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" helm/pushmesh/Chart.yaml; }
values_repository() { sed -n '/^image:/,/^[^ ]/s/^  repository: *//p' helm/pushmesh/values.yaml; }

IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-$(values_repository)}
IMAGE_TAG=${IMAGE_TAG:-$(chart_field appVersion)}
ENGINE=${ENGINE:-$(command -v docker || command -v podman || true)}

if [ -z "$ENGINE" ]; then
  echo "make image: neither docker nor podman is installed; install one (or set ENGINE=...)" >&2
  exit 1
fi

set -x
DOCKER_BUILDKIT=1 "$ENGINE" build \
  --file deploy/Dockerfile \
  --build-arg VERSION="$IMAGE_TAG" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --tag "$IMAGE_REPOSITORY:$IMAGE_TAG" \
  "$@" .
