#!/usr/bin/env bash
# `make image`: the pushmesh container image as an OCI image archive, built
# without a container daemon (buildah, vfs storage, FROM scratch), tagged as
# the Helm chart's default image: IMAGE_REPOSITORY:IMAGE_TAG (appVersion).
#
# The image holds what deploy/Dockerfile's does: /usr/local/bin/{hub,
# ws-gateway,http-ingress,pushmesh}, the shared libraries they link (read
# from ldd: glibc, libm, libgcc_s and the loader), CA certificates,
# /etc/passwd and /etc/group with the nonroot user 65532, nothing else (no
# shell). User 65532:65532, no entrypoint, CMD hub --help: the chart picks
# the binary with `command:`. The same OCI labels as the Dockerfile.
#
# Output: target/image/pushmesh-<tag>.oci.tar (IMAGE_OUT overrides), which
#   skopeo copy oci-archive:target/image/pushmesh-<tag>.oci.tar docker://<registry>/pushmesh/pushmesh:<tag>
# pushes. With Docker at hand, deploy/build-image-docker.sh (make
# image-docker) builds the same image from deploy/Dockerfile instead.
#
# Overrides: PUSHMESH_IMAGE_BIN (a directory with the four binaries already
# built, e.g. target/debug for a quick check; default: cargo build
# --release), IMAGE_REPOSITORY, IMAGE_TAG, IMAGE_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" helm/pushmesh/Chart.yaml; }
values_repository() { sed -n '/^image:/,/^[^ ]/s/^  repository: *//p' helm/pushmesh/values.yaml; }

IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-$(values_repository)}
IMAGE_TAG=${IMAGE_TAG:-$(chart_field appVersion)}
IMAGE_OUT=${IMAGE_OUT:-target/image/pushmesh-$IMAGE_TAG.oci.tar}
BINARIES=(hub ws-gateway http-ingress pushmesh)
CERTS=/etc/ssl/certs/ca-certificates.crt

deploy/install-image-tools.sh

if [ -n "${PUSHMESH_IMAGE_BIN:-}" ]; then
  BIN=$PUSHMESH_IMAGE_BIN
else
  cargo build --release --locked --bins -p pushmesh-hub -p pushmesh-ws-gateway -p pushmesh-http-ingress -p pushmesh-cli
  BIN=${CARGO_TARGET_DIR:-target}/release
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pushmesh-image.XXXXXX")
cleanup() {
  if [ -n "${ctr:-}" ]; then buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# A private, daemonless store in the work dir: nothing is left behind in
# /var/lib/containers, and builds running side by side do not meet.
STORE=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
rootfs=$work/rootfs

# The binaries, without debug info (the workspace's release profile keeps
# some for profiling; the image does not need it).
install -d -m 0755 "$rootfs/usr/local/bin"
for b in "${BINARIES[@]}"; do
  [ -x "$BIN/$b" ] || { echo "make image: $BIN/$b is missing" >&2; exit 1; }
  strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$BIN/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done

# Exactly the shared libraries they load, at the paths the loader looks in.
libs=$(for b in "${BINARIES[@]}"; do ldd "$BIN/$b"; done \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done

# CA certificates, users, name resolution: what distroless "cc" provides.
install -D -m 0644 "$CERTS" "$rootfs$CERTS"
install -d -m 0755 "$rootfs/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot"
install -d -m 1777 "$rootfs/tmp"

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
ctr=$(buildah "${STORE[@]}" from --format oci scratch)
buildah "${STORE[@]}" copy --quiet "$ctr" "$rootfs/" / >/dev/null
buildah "${STORE[@]}" config \
  --user 65532:65532 \
  --env PUSHMESH_LOG_FORMAT=json \
  --entrypoint '[]' \
  --cmd '["/usr/local/bin/hub", "--help"]' \
  --port 50051/tcp --port 9090/tcp --port 8080/tcp --port 8081/tcp --port 8082/tcp \
  --label org.opencontainers.image.title=pushmesh \
  --label "org.opencontainers.image.description=Distributed WebSocket push: hub, ws-gateway and http-ingress" \
  --label "org.opencontainers.image.version=$IMAGE_TAG" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.created=$created" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label org.opencontainers.image.source=https://example.invalid/pushmesh \
  --label org.opencontainers.image.documentation=https://example.invalid/pushmesh/docs/kubernetes.md \
  --created-by "make image (deploy/build-image.sh)" \
  "$ctr"
mkdir -p "$(dirname "$IMAGE_OUT")"
rm -f "$IMAGE_OUT"
buildah "${STORE[@]}" commit --quiet --format oci --disable-compression=false --rm "$ctr" "oci-archive:$IMAGE_OUT:$IMAGE_REPOSITORY:$IMAGE_TAG" >/dev/null
ctr=

cat <<TXT
make image: $IMAGE_OUT ($IMAGE_REPOSITORY:$IMAGE_TAG, $(du -h "$IMAGE_OUT" | cut -f1))
Push it to your registry, then install the chart with it:
  skopeo copy oci-archive:$IMAGE_OUT docker://registry.example.com/pushmesh/pushmesh:$IMAGE_TAG
  helm install pushmesh helm/pushmesh --namespace pushmesh --create-namespace \\
    --set image.repository=registry.example.com/pushmesh/pushmesh --set image.tag=$IMAGE_TAG
TXT
