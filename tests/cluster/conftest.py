"""Shared fixtures of the chart tests: paths, the pinned helm, rendering.

Run through `make helm-test` (which installs .tools/ first), or directly:
  .tools/venv/bin/python -m pytest tests/cluster
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pushmesh"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
HELM = ROOT / ".tools" / "bin" / "helm"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"

# Every address these tests talk to is one they made (loopback or the
# simulated cluster's bridge); a proxy from the environment must not see it.
for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make tools` (make helm-test does it for you)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check)


def render(*values_files: Path, release: str = "pm", namespace: str = "pushmesh",
           set_values: tuple[str, ...] = (), check: bool = True):
    """`helm template` → (list of manifests, CompletedProcess)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["--values", str(f)]
    for s in set_values:
        args += ["--set", s]
    proc = helm(*args, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d] if proc.returncode == 0 else []
    return docs, proc


@pytest.fixture(scope="session")
def default_manifests():
    return render()[0]


@pytest.fixture(scope="session")
def production_manifests():
    return render(PRODUCTION_VALUES, release="prod", namespace="push")[0]
