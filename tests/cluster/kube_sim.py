"""A small Kubernetes node, simulated with Linux network namespaces.

It runs what `helm template` rendered, the way a kubelet would, without
containers: for every replica of every Deployment and StatefulSet it starts
the container's `command`/`args` with the container's environment (ConfigMap
and Secret references resolved, downward-API fields filled in) as a process
in its own network namespace, with its own IP on a bridge, under the pod's
runAsUser/runAsGroup. The image's binaries are the ones `cargo build` made
(IMAGE_BINARIES maps the image paths to them).

What it stands in for, and how closely:
- Pod networking: one netns per pod, a veth into one bridge, one IP each on
  SUBNET. No default route: pods reach each other and nothing else.
- Cluster DNS: /etc/netns/<ns>/hosts, which `ip netns exec` bind-mounts as
  /etc/hosts. A Service name resolves to the IPs of the ready pods its
  selector matches (for a headless Service that is exactly cluster DNS; for
  a ClusterIP Service it stands in for the virtual IP), a StatefulSet pod's
  <pod>.<serviceName> name to its IP while it is ready, short names as the
  pod's search path would. resolv.conf points at the pod's own loopback, so
  an unknown name fails at once and no query leaves the sandbox.
- Kubelet: startup, then readiness and liveness probes (httpGet, grpc,
  tcpSocket) at their declared ports, paths, services and timings; a pod is
  ready only while its readiness probe passes. A failed startup or liveness
  probe is recorded (a real kubelet would restart the container; a test
  asserts it never happened).
- Termination: deletion takes the pod out of DNS, runs the preStop `sleep`,
  sends SIGTERM, and SIGKILLs whatever still runs when
  terminationGracePeriodSeconds is up.

Everything it makes is named with PREFIX, and `Cluster.cleanup_stale()`
removes leftovers of an aborted run before a new one starts.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PREFIX = "pmk"
BRIDGE = f"{PREFIX}br0"
SUBNET = ipaddress.ip_network("10.213.0.0/24")
GATEWAY_IP = SUBNET[1]  # the host's address on the bridge: the "node"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def http_get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with _no_proxy.open(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def grpc_health(address: str, service: str, timeout: float) -> str:
    """The grpc.health.v1 status of `service` at `address`, as a kubelet asks it."""
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    finally:
        channel.close()


def expand_refs(value: str, defined: dict[str, str]) -> str:
    """`$(NAME)` in an env value, as the kubelet expands it: the value of a
    variable defined before it (envFrom, then earlier env entries); `$$` is a
    literal `$`; a reference to nothing defined stays as it is."""
    def one(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        return defined.get(m[1], m[0])
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, value)


def selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class ProbeResult:
    ok: bool
    detail: str


@dataclass
class Pod:
    name: str
    namespace: str
    workload: str  # "StatefulSet/<name>" or "Deployment/<name>"
    labels: dict
    spec: dict  # the pod template's spec
    ip: str
    netns: str
    # For StatefulSet pods: the governing headless Service (pod DNS names).
    subdomain: str | None = None
    # A StatefulSet's volumeClaimTemplates (their names).
    claims: list = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: bool = False
    ready: bool = False
    terminating: bool = False
    exit_code: int | None = None
    events: list = field(default_factory=list)
    log_dir: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def container(self) -> dict:
        return self.spec["containers"][0]

    def port(self, port) -> int:
        """A probe's port: a number, or the name of a containerPort."""
        if isinstance(port, int):
            return port
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        raise KeyError(f"pod {self.name}: no container port named {port!r}")

    def event(self, what: str) -> None:
        self.events.append((round(time.monotonic(), 2), what))

    def logs(self, tail: int = 40) -> str:
        out = []
        for f in ("stdout", "stderr"):
            p = self.log_dir / f"{self.name}.{f}"
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {self.name} {f} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)


class Cluster:
    """One simulated node running the workloads of a rendered chart."""

    def __init__(self, manifests: list[dict], namespace: str, binaries: dict[str, str], work_dir: Path,
                 cluster_domain: str = "cluster.local", extra_objects: list[dict] = ()):
        self.namespace = namespace
        self.domain = cluster_domain
        self.binaries = binaries
        self.work = work_dir
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        objs = [m for m in manifests if m] + list(extra_objects)
        self.objects = objs
        self.by_kind: dict[str, dict[str, dict]] = {}
        for o in objs:
            self.by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
        self.pods: dict[str, Pod] = {}
        self.gone: list[Pod] = []
        self._next_host = 10
        self._lock = threading.RLock()
        self._setup_done = False

    # ---- lifecycle of the sandbox -------------------------------------------------

    @staticmethod
    def cleanup_stale() -> None:
        """Remove namespaces, links and processes left by an earlier run."""
        listed = sh(IP, "netns", "list", check=False).stdout.split()
        for ns in [n for n in listed if n.startswith(f"{PREFIX}-")]:
            for pid in sh(IP, "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(IP, "netns", "del", ns, check=False)
        links = sh(IP, "-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                sh(IP, "link", "del", name, check=False)
        netns_etc = Path("/etc/netns")
        if netns_etc.is_dir():
            for d in netns_etc.glob(f"{PREFIX}-*"):
                shutil.rmtree(d, ignore_errors=True)

    def setup(self) -> None:
        self.cleanup_stale()
        sh(IP, "link", "add", BRIDGE, "type", "bridge")
        sh(IP, "addr", "add", f"{GATEWAY_IP}/{SUBNET.prefixlen}", "dev", BRIDGE)
        sh(IP, "link", "set", BRIDGE, "up")
        self._setup_done = True

    def teardown(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove everything made."""
        for pod in list(self.pods.values()):
            pod._stop.set()
            if pod.proc and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pod in list(self.pods.values()):
            if pod.proc:
                try:
                    pod.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()
        self.pods.clear()
        self.cleanup_stale()

    # ---- rendering workloads into pods --------------------------------------------

    def workloads(self) -> list[tuple[dict, int]]:
        """(workload, replicas) for every Deployment and StatefulSet; an HPA's minReplicas stands in for replicas it leaves out."""
        hpa_min = {
            h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
            for h in self.by_kind.get("HorizontalPodAutoscaler", {}).values()
        }
        out = []
        for kind in ("StatefulSet", "Deployment"):
            for name, w in self.by_kind.get(kind, {}).items():
                replicas = w["spec"].get("replicas", hpa_min.get(name, 1))
                out.append((w, replicas))
        return out

    def start_all(self) -> None:
        for w, replicas in self.workloads():
            for i in range(replicas):
                self.start_pod(w, ordinal=i)

    def _pod_name(self, w: dict, ordinal: int) -> str:
        name = w["metadata"]["name"]
        if w["kind"] == "StatefulSet":
            return f"{name}-{ordinal}"
        template_hash = hashlib.sha256(json.dumps(w["spec"]["template"], sort_keys=True).encode()).hexdigest()[:10]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        return f"{name}-{template_hash}-{suffix}"

    def _new_pod(self, name: str, workload: str, metadata: dict, spec: dict, subdomain: str | None) -> Pod:
        assert self._setup_done, "setup() first"
        host = self._next_host
        self._next_host += 1
        if host >= SUBNET.num_addresses - 1:
            raise RuntimeError("simulated cluster is out of pod IPs")
        pod = Pod(
            name=name,
            namespace=self.namespace,
            workload=workload,
            labels=dict(metadata.get("labels", {})),
            spec=spec,
            ip=str(SUBNET[host]),
            netns=f"{PREFIX}-{name}",
            subdomain=subdomain,
            log_dir=self.logs,
        )
        self._make_netns(pod, host)
        with self._lock:
            self.pods[name] = pod
            self.write_dns()
        return pod

    def start_pod(self, w: dict, ordinal: int) -> Pod:
        template = w["spec"]["template"]
        pod = self._new_pod(
            self._pod_name(w, ordinal),
            f"{w['kind']}/{w['metadata']['name']}",
            template["metadata"],
            template["spec"],
            w["spec"].get("serviceName") if w["kind"] == "StatefulSet" else None,
        )
        pod.claims = [t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])]
        self._spawn(pod)
        pod._thread = threading.Thread(target=self._kubelet, args=(pod,), name=f"kubelet-{pod.name}", daemon=True)
        pod._thread.start()
        return pod

    def _make_netns(self, pod: Pod, host: int) -> None:
        ns = pod.netns
        veth, peer = f"{PREFIX}v{host}", f"{PREFIX}p{host}"
        sh(IP, "netns", "add", ns)
        sh(IP, "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh(IP, "link", "set", veth, "master", BRIDGE)
        sh(IP, "link", "set", veth, "up")
        sh(IP, "link", "set", peer, "netns", ns)
        sh(IP, "-n", ns, "link", "set", peer, "name", "eth0")
        sh(IP, "-n", ns, "addr", "add", f"{pod.ip}/{SUBNET.prefixlen}", "dev", "eth0")
        sh(IP, "-n", ns, "link", "set", "eth0", "up")
        sh(IP, "-n", ns, "link", "set", "lo", "up")
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        # Unknown names fail fast on the pod's own loopback; nothing leaves.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")

    # ---- what a container sees ----------------------------------------------------

    def field_ref(self, pod: Pod, path: str) -> str:
        values = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "status.podIP": pod.ip,
            "status.hostIP": str(GATEWAY_IP),
            "spec.nodeName": "sim-node",
            "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        }
        if path not in values:
            raise KeyError(f"downward API field {path!r} is not simulated")
        return values[path]

    def _secret_value(self, name: str, key: str) -> str | None:
        s = self.by_kind.get("Secret", {}).get(name)
        if s is None:
            return None
        if key in s.get("stringData", {}):
            return s["stringData"][key]
        if key in s.get("data", {}):
            return base64.b64decode(s["data"][key]).decode()
        return None

    def container_env(self, pod: Pod, container: dict | None = None) -> dict[str, str]:
        """The container's environment: envFrom, then env (later wins), as the kubelet builds it."""
        c = container or pod.container
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                cm = self.by_kind.get("ConfigMap", {}).get(ref["name"])
                if cm is None:
                    if ref.get("optional"):
                        continue
                    raise KeyError(f"pod {pod.name}: ConfigMap {ref['name']} not found")
                env.update({prefix + k: v for k, v in cm.get("data", {}).items()})
            elif "secretRef" in src:
                ref = src["secretRef"]
                s = self.by_kind.get("Secret", {}).get(ref["name"])
                if s is None:
                    if ref.get("optional"):
                        continue
                    raise KeyError(f"pod {pod.name}: Secret {ref['name']} not found")
                for k in list(s.get("data", {})) + list(s.get("stringData", {})):
                    env[prefix + k] = self._secret_value(ref["name"], k)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand_refs(str(e["value"]), env)
                continue
            vf = e.get("valueFrom", {})
            if "fieldRef" in vf:
                env[e["name"]] = self.field_ref(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                v = self._secret_value(ref["name"], ref["key"])
                if v is None:
                    if ref.get("optional"):
                        continue
                    raise KeyError(f"pod {pod.name}: Secret {ref['name']} has no key {ref['key']}")
                env[e["name"]] = v
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                v = self.by_kind.get("ConfigMap", {}).get(ref["name"], {}).get("data", {}).get(ref["key"])
                if v is None:
                    if ref.get("optional"):
                        continue
                    raise KeyError(f"pod {pod.name}: ConfigMap {ref['name']} has no key {ref['key']}")
                env[e["name"]] = v
            else:
                raise KeyError(f"pod {pod.name}: env {e['name']}: unsupported valueFrom {vf}")
        env.setdefault("HOSTNAME", pod.name)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def mount_configmaps(self, pod: Pod, container: dict) -> dict[str, str]:
        """Volumes as host directories: {mountPath: host dir}. Paths in the
        command are rewritten to them (processes share the host's filesystem).
        ConfigMap volumes are written out; an emptyDir, or a StatefulSet's
        volumeClaimTemplate (a PersistentVolumeClaim), is a directory owned by
        the pod's fsGroup, kept across a restart of the same pod name as a
        claim's volume would be."""
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for claim in pod.claims:
            volumes.setdefault(claim, {"name": claim, "persistentVolumeClaim": {}})
        mounts = {}
        for m in container.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "emptyDir" in v or "persistentVolumeClaim" in v:
                kind = "claims" if "persistentVolumeClaim" in v else "volumes"
                d = self.work / kind / pod.name / m["name"]
                if kind == "volumes":
                    shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True, exist_ok=True)
                psc = pod.spec.get("securityContext", {})
                owner = psc.get("fsGroup", psc.get("runAsUser"))
                if owner is not None:
                    os.chown(d, psc.get("runAsUser", owner), owner)
                os.chmod(d, 0o770)
                for parent in (d.parent, d.parent.parent):
                    os.chmod(parent, 0o755)
                mounts[m["mountPath"]] = str(d)
                continue
            if "configMap" not in v:
                raise KeyError(f"pod {pod.name}: volume {m['name']}: only configMap, emptyDir and claim volumes are simulated")
            cm = self.by_kind["ConfigMap"][v["configMap"]["name"]]
            d = self.work / "volumes" / pod.name / m["name"]
            d.mkdir(parents=True, exist_ok=True)
            for k, text in cm.get("data", {}).items():
                (d / k).write_text(text)
            os.chmod(d, 0o755)
            for p in d.iterdir():
                os.chmod(p, 0o644)
            mounts[m["mountPath"]] = str(d)
        return mounts

    def command_line(self, pod: Pod, container: dict) -> list[str]:
        argv = list(container.get("command", [])) + list(container.get("args", []))
        if not argv:
            raise ValueError(f"pod {pod.name}: container {container['name']} has no command (the image has no entrypoint)")
        if argv[0] not in self.binaries:
            raise KeyError(f"pod {pod.name}: {argv[0]} is not a binary of the image: {sorted(self.binaries)}")
        argv[0] = self.binaries[argv[0]]
        return self._with_mounts(pod, container, argv)

    def _with_mounts(self, pod: Pod, container: dict, argv: list[str]) -> list[str]:
        mounts = self.mount_configmaps(pod, container)
        for i, a in enumerate(argv):
            for mount_path, host_dir in mounts.items():
                if a == mount_path.rstrip("/") or a.startswith(mount_path.rstrip("/") + "/"):
                    argv[i] = host_dir + a[len(mount_path.rstrip("/")):]
        return argv

    def identity(self, pod: Pod, container: dict) -> list[str]:
        """setpriv arguments for the securityContext's user and group."""
        psc, csc = pod.spec.get("securityContext", {}), container.get("securityContext", {})
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and not uid:
            raise ValueError(f"pod {pod.name}: runAsNonRoot without a non-zero runAsUser (the image's user is not known here)")
        if uid is None:
            return []
        args = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--pdeathsig=KILL"]
        if csc.get("allowPrivilegeEscalation") is False:
            args.append("--no-new-privs")
        return args

    def exec_in(self, pod: Pod, container: dict, argv: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
        full = [IP, "netns", "exec", pod.netns] + self.identity(pod, container) + argv
        return subprocess.Popen(full, env=env, cwd="/", **popen)

    def _spawn(self, pod: Pod) -> None:
        c = pod.container
        argv = self.command_line(pod, c)
        env = self.container_env(pod)
        out = open(self.logs / f"{pod.name}.stdout", "ab")
        err = open(self.logs / f"{pod.name}.stderr", "ab")
        pod.proc = self.exec_in(pod, c, argv, env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        pod.event(f"started pid {pod.proc.pid}: {' '.join(argv)}")

    # ---- the kubelet: probes and readiness ----------------------------------------

    def probe(self, pod: Pod, spec: dict) -> ProbeResult:
        timeout = spec.get("timeoutSeconds", 1)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                url = f"http://{pod.ip}:{pod.port(h['port'])}{h.get('path', '/')}"
                code, _ = http_get(url, timeout)
                return ProbeResult(200 <= code < 400, f"GET {url} -> {code}")
            if "grpc" in spec:
                g = spec["grpc"]
                status = grpc_health(f"{pod.ip}:{g['port']}", g.get("service", ""), timeout)
                return ProbeResult(status == "SERVING", f"grpc {pod.ip}:{g['port']} {g.get('service', '')!r} -> {status}")
            if "tcpSocket" in spec:
                import socket

                with socket.create_connection((pod.ip, pod.port(spec["tcpSocket"]["port"])), timeout=timeout):
                    return ProbeResult(True, "tcp connect ok")
        except (OSError, grpc.RpcError) as e:
            return ProbeResult(False, f"{type(e).__name__}: {str(e)[:200]}")
        raise ValueError(f"pod {pod.name}: unsupported probe handler {sorted(spec)}")

    def _kubelet(self, pod: Pod) -> None:
        c = pod.container
        startup, readiness, liveness = c.get("startupProbe"), c.get("readinessProbe"), c.get("livenessProbe")
        # Startup: nothing else runs until it passes once.
        if startup:
            failures = 0
            while not pod._stop.is_set():
                if pod.proc.poll() is not None:
                    pod.event(f"container exited with {pod.proc.returncode} before its startup probe passed")
                    return
                r = self.probe(pod, startup)
                if r.ok:
                    break
                failures += 1
                if failures >= startup.get("failureThreshold", 3):
                    pod.event(f"STARTUP PROBE FAILED ({r.detail}): a kubelet would restart the container")
                    return
                pod._stop.wait(startup.get("periodSeconds", 10))
        pod.started = True
        pod.event("started (startup probe passed)")
        now = time.monotonic()
        next_ready, next_live = now, now + (liveness or {}).get("periodSeconds", 10)
        ready_failures = live_failures = 0
        while not pod._stop.is_set():
            if pod.proc.poll() is not None:
                pod.event(f"container exited with {pod.proc.returncode}")
                self._set_ready(pod, False)
                return
            now = time.monotonic()
            if readiness and now >= next_ready:
                r = self.probe(pod, readiness)
                if r.ok:
                    ready_failures = 0
                    self._set_ready(pod, True, r.detail)
                else:
                    ready_failures += 1
                    if ready_failures >= readiness.get("failureThreshold", 3):
                        self._set_ready(pod, False, r.detail)
                next_ready = now + readiness.get("periodSeconds", 10)
            elif not readiness:
                self._set_ready(pod, True, "no readiness probe")
            if liveness and now >= next_live:
                r = self.probe(pod, liveness)
                live_failures = 0 if r.ok else live_failures + 1
                if live_failures >= liveness.get("failureThreshold", 3):
                    pod.event(f"LIVENESS PROBE FAILED ({r.detail}): a kubelet would restart the container")
                    live_failures = 0
                next_live = now + liveness.get("periodSeconds", 10)
            pod._stop.wait(0.1)

    def _set_ready(self, pod: Pod, ready: bool, detail: str = "") -> None:
        if pod.terminating:
            ready = False
        if pod.ready != ready:
            pod.ready = ready
            pod.event(f"{'READY' if ready else 'NOT READY'} ({detail})")
            with self._lock:
                self.write_dns()

    # ---- cluster DNS ----------------------------------------------------------------

    def dns_records(self) -> dict[str, list[str]]:
        """name -> IPs, as cluster DNS (and a pod's search path) would answer."""
        records: dict[str, list[str]] = {}

        def add(names, ip):
            for n in names:
                records.setdefault(n, [])
                if ip not in records[n]:
                    records[n].append(ip)

        ns, dom = self.namespace, self.domain
        for svc in self.by_kind.get("Service", {}).values():
            name = svc["metadata"]["name"]
            selector = svc["spec"].get("selector", {})
            not_ready_ok = svc["spec"].get("publishNotReadyAddresses", False)
            for pod in self.pods.values():
                if not selector_matches(selector, pod.labels) or pod.terminating:
                    continue
                if pod.ready or not_ready_ok:
                    add([f"{name}.{ns}.svc.{dom}", f"{name}.{ns}.svc", f"{name}.{ns}", name], pod.ip)
                    if pod.subdomain == name:
                        add([f"{pod.name}.{name}.{ns}.svc.{dom}", f"{pod.name}.{name}.{ns}.svc",
                             f"{pod.name}.{name}.{ns}", f"{pod.name}.{name}"], pod.ip)
        return records

    def write_dns(self) -> None:
        records = self.dns_records()
        body = "".join(f"{ip} {name}\n" for name, ips in sorted(records.items()) for ip in ips)
        for pod in list(self.pods.values()):
            own = f"{pod.ip} {pod.name}\n"
            hosts = Path("/etc/netns") / pod.netns / "hosts"
            if hosts.exists():
                # Rewritten in place: `ip netns exec` bind-mounted this inode.
                with open(hosts, "r+") as f:
                    f.seek(0)
                    f.write("127.0.0.1 localhost\n" + own + body)
                    f.truncate()

    def run_pod(self, manifest: dict, python: str, timeout: float) -> tuple[int, str, str]:
        """Run a bare Pod (e.g. a `helm test` hook) to completion: (exit code, stdout, stderr).
        `python3` in its command is the interpreter given (its image is a stock Python)."""
        pod = self._new_pod(manifest["metadata"]["name"], "Pod", manifest["metadata"], manifest["spec"], None)
        c = pod.container
        argv = list(c.get("command", [])) + list(c.get("args", []))
        if argv[0] in ("python3", "python"):
            argv[0] = python
        else:
            raise ValueError(f"pod {pod.name}: expected a python3 command, got {argv[0]}")
        argv = self._with_mounts(pod, c, argv)
        env = self.container_env(pod)
        pod.proc = self.exec_in(pod, c, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = pod.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pod.proc.kill()
            out, err = pod.proc.communicate()
            err += f"\n(killed after {timeout}s)"
        with self._lock:
            del self.pods[pod.name]
            self.write_dns()
        sh(IP, "netns", "del", pod.netns, check=False)
        shutil.rmtree(Path("/etc/netns") / pod.netns, ignore_errors=True)
        return pod.proc.returncode, out, err

    def workstation(self, name: str = "workstation") -> tuple[str, str]:
        """A network namespace on the bridge for a user's shell: (netns, ip).
        It has the cluster's DNS too (as if kubectl port-forward and a VPN
        were all the user had, the tests use only 127.0.0.1 in it)."""
        host = self._next_host
        self._next_host += 1
        pod = Pod(name=name, namespace=self.namespace, workload="none", labels={}, spec={"containers": [{}]},
                  ip=str(SUBNET[host]), netns=f"{PREFIX}-{name}", log_dir=self.logs)
        self._make_netns(pod, host)
        return pod.netns, pod.ip

    def remove_netns(self, netns: str) -> None:
        for pid in sh(IP, "netns", "pids", netns, check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        sh(IP, "netns", "del", netns, check=False)
        shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)

    # ---- deleting pods ------------------------------------------------------------

    def delete_pod(self, name: str, force: bool = False) -> dict:
        """Delete a pod as the API server and kubelet would; returns what happened.
        `force` is `kubectl delete --grace-period=0 --force`, or a node lost:
        SIGKILL at once, no preStop, no drain."""
        pod = self.pods[name]
        t0 = time.monotonic()
        if force:
            pod.spec = dict(pod.spec, terminationGracePeriodSeconds=0)
            pod.spec["containers"] = [dict(pod.container, lifecycle={})] + pod.spec["containers"][1:]
        pod.terminating = True
        self._set_ready(pod, False, "deleted")
        with self._lock:
            self.write_dns()
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        pre = pod.container.get("lifecycle", {}).get("preStop")
        if pre:
            if "sleep" not in pre:
                raise ValueError(f"pod {name}: only the preStop sleep action is simulated")
            pod.event(f"preStop: sleep {pre['sleep']['seconds']}s")
            time.sleep(min(pre["sleep"]["seconds"], grace))
        pod.event("SIGKILL (forced)" if force else "SIGTERM")
        sigterm_at = time.monotonic()
        if pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGKILL if force else signal.SIGTERM)
        killed = False
        try:
            pod.proc.wait(timeout=max(0.0, grace - (sigterm_at - t0)))
        except subprocess.TimeoutExpired:
            pod.event("grace period over: SIGKILL")
            pod.proc.kill()
            pod.proc.wait()
            killed = True
        pod._stop.set()
        pod.exit_code = pod.proc.returncode
        pod.event(f"exited with {pod.exit_code}")
        with self._lock:
            del self.pods[name]
            self.gone.append(pod)
            self.write_dns()
        for pid in sh(IP, "netns", "pids", pod.netns, check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        sh(IP, "netns", "del", pod.netns, check=False)
        shutil.rmtree(Path("/etc/netns") / pod.netns, ignore_errors=True)
        return {
            "exit_code": pod.exit_code,
            "killed": killed,
            "seconds_after_sigterm": time.monotonic() - sigterm_at,
            "total_seconds": time.monotonic() - t0,
            "grace": grace,
        }

    # ---- queries --------------------------------------------------------------------

    def pods_of(self, component: str) -> list[Pod]:
        return sorted(
            (p for p in self.pods.values() if p.labels.get("app.kubernetes.io/component") == component),
            key=lambda p: p.name,
        )

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")

    def describe(self) -> str:
        lines = []
        for pod in sorted(list(self.pods.values()) + self.gone, key=lambda p: p.name):
            state = "ready" if pod.ready else ("started" if pod.started else "starting")
            lines.append(f"pod {pod.name} ip={pod.ip} {state} exit={pod.exit_code}")
            lines += [f"    {t} {e}" for t, e in pod.events[-8:]]
            lines.append(pod.logs(15))
        return "\n".join(lines)

    def probe_failures(self) -> list[str]:
        return [
            f"{p.name}: {e}"
            for p in list(self.pods.values()) + self.gone
            for _, e in p.events
            if "PROBE FAILED" in e or ("exited" in e and not p.terminating)
        ]
