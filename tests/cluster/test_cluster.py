"""The chart against the binaries: render the production values, run every
replica the way a kubelet would (kube_sim.py), then do what a user does.

Needs root (network namespaces) and the debug binaries (`cargo build --bins`).
Pods' logs are kept in target/cluster-test/logs for a failed run.
"""

import asyncio
import subprocess
import base64
import fcntl
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import CHART, PRODUCTION_VALUES, ROOT, render
from kube_sim import Cluster

NAMESPACE = "pushmesh-ct"
RELEASE = "pm"
API_KEY = "ct-api-key-0123456789abcdef"
JWT_SECRET = "ct-jwt-secret-0123456789abcdef0123456789"
CHANNELS = [f"ct.news-{i}" for i in range(24)]  # enough that every hub owns some
CLIENTS_PER_GATEWAY = 2
WORK = ROOT / "target" / "cluster-test"
HOOK_PYTHON = "/usr/bin/python3"  # world-executable, like the test image's python3

_spec = importlib.util.spec_from_file_location("smoke", CHART / "files" / "smoke-test.py")
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def the_existing_secret():
    """What the user creates before installing with production values."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "pushmesh-auth", "namespace": NAMESPACE},
        "data": {"api-keys": base64.b64encode(f"{API_KEY}:admin,another-key-0123456789:publish".encode()).decode(),
                 "jwt-secret": base64.b64encode(JWT_SECRET.encode()).decode()},
    }


@pytest.fixture(scope="module")
def manifests():
    docs, _ = render(PRODUCTION_VALUES, release=RELEASE, namespace=NAMESPACE)
    return docs


@pytest.fixture(scope="module")
def cluster(manifests):
    if os.geteuid() != 0:
        pytest.fail("the cluster test needs root: it makes network namespaces, veths and a bridge")
    binaries = {f"/usr/local/bin/{b}": str(ROOT / "target" / "debug" / b) for b in ("hub", "ws-gateway", "http-ingress")}
    missing = [p for p in binaries.values() if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"binaries missing: {missing}; run `cargo build --bins` (make helm-test does)")
    # One simulated cluster per machine at a time: a second run (another
    # checkout's `make test`) waits here instead of tearing this one down.
    lock = open("/run/pushmesh-cluster-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.chmod(WORK, 0o755)
    c = Cluster(manifests, NAMESPACE, binaries, WORK, extra_objects=[the_existing_secret()])
    try:
        c.setup()
        c.start_all()
        c.wait_until(lambda: len(c.pods) == 8 and all(p.ready for p in c.pods.values()), 90,
                     "all 8 pods (3 hubs, 3 gateways, 2 ingresses) to pass their readiness probes")
        wait_for_full_mesh(c)
        yield c
    finally:
        c.teardown()
        leftovers = [n for n in os.listdir("/run/netns") if n.startswith("pmk-")] if os.path.isdir("/run/netns") else []
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        assert not leftovers, f"namespaces left behind: {leftovers}"


def wait_for_full_mesh(cluster, timeout=30):
    """Every gateway attached to every hub, every ingress seeing every hub.

    Readiness means "attached to at least one hub", so a gateway can be
    ready while still reconnecting (backoff up to reconnectMaxMs) to a hub
    that became resolvable after it started. A subscribe it confirms in that
    window is not live on the missing hub: a publish routed there is lost
    (seen in this test before it waited; reported to the binaries' owners).
    Users see the same window right after a rollout; the PrometheusRule's
    PushmeshGatewayMissingHub alert watches for it lasting."""
    hubs = len(cluster.pods_of("hub"))
    cluster.wait_until(
        lambda: all(metric(scrape(metrics_url(g)), "pushmesh_gateway_hubs_attached") == hubs
                    for g in cluster.pods_of("ws-gateway"))
        and all(metric(scrape(metrics_url(i)), "pushmesh_ingress_hubs_up") == hubs
                for i in cluster.pods_of("http-ingress")),
        timeout, f"every gateway and ingress to reach all {hubs} hubs")


# ---- helpers: what a user has at hand ---------------------------------------------


def scrape(url):
    with _opener.open(url, timeout=5) as r:
        assert r.status == 200, url
        return r.read().decode()


def metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m[3])
            found = True
    assert found, f"no sample of {name}{labels or ''}"
    return total


def metrics_url(pod):
    port = next(p["containerPort"] for p in pod.container["ports"] if p["name"] in ("http", "admin"))
    return f"http://{pod.ip}:{port}/metrics"


async def curl(*args):
    """curl as a user runs it; returns (HTTP status, body)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl {args}: {err.decode()}"
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def publish(ingress, channel, data):
    return await curl("-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json",
                      "-d", json.dumps({"channel": channel, "data": data}), f"http://{ingress.ip}:8081/publish")


class Client:
    """One WebSocket client, recording every frame it receives."""

    def __init__(self, ws, welcome, gateway):
        self.ws, self.welcome, self.gateway = ws, welcome, gateway
        self.frames, self.closed = [], None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, gateway, user):
        token = smoke.hs256_token(JWT_SECRET, user)
        ws = await connect(f"ws://{gateway.ip}:8080/ws?token={token}", proxy=None, open_timeout=5)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and welcome["gateway"] == gateway.name, welcome
        return cls(ws, welcome, gateway)

    async def _read(self):
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.closed = (self.ws.close_code, self.ws.close_reason)

    async def subscribe(self, channels):
        for i, ch in enumerate(channels, start=1):
            await self.ws.send(json.dumps({"id": i, "op": "subscribe", "channel": ch}))
        await self.wait(lambda: len([f for f in self.frames if f.get("type") == "reply"]) >= len(channels), "replies")
        bad = [f for f in self.frames if f.get("type") == "reply" and f.get("ok") is not True]
        assert not bad, f"subscribe refused: {bad}"

    def messages(self, tag):
        return [(f["channel"], f["data"]["n"]) for f in self.frames
                if f.get("type") == "message" and isinstance(f.get("data"), dict) and f["data"].get("tag") == tag]

    async def wait(self, cond, what, timeout=10):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"client on {self.gateway.name}: timed out waiting for {what}; "
                                     f"last frames {self.frames[-5:]}, closed {self.closed}")
            await asyncio.sleep(0.02)


async def open_clients(cluster, subscribe=CHANNELS):
    clients = []
    for gw in cluster.pods_of("ws-gateway"):
        for i in range(CLIENTS_PER_GATEWAY):
            c = await Client.open(gw, f"user-{gw.name[-5:]}-{i}")
            await c.subscribe(subscribe)
            clients.append(c)
    return clients


async def close_all(clients):
    for c in clients:
        await c.ws.close()
        await c.reader


async def publish_round(cluster, clients, tag, channels=CHANNELS):
    """Publish one message per channel through alternating ingresses; every client must get all, per channel in order."""
    ingresses = cluster.pods_of("http-ingress")
    sent = []
    for n, ch in enumerate(channels):
        code, body = await publish(ingresses[n % len(ingresses)], ch, {"tag": tag, "n": n})
        assert code == 200, f"publish {ch} via {ingresses[n % len(ingresses)].name}: {code} {body}"
        sent.append((ch, n))
    for c in clients:
        await c.wait(lambda: len(c.messages(tag)) >= len(sent), f"{len(sent)} messages tagged {tag}")
        assert sorted(c.messages(tag)) == sorted(sent), f"{c.gateway.name} got {c.messages(tag)}"
    return sent


# ---- the tests ---------------------------------------------------------------------


def test_every_pod_is_ready_through_its_declared_probes(cluster, manifests):
    assert [p.name for p in cluster.pods_of("hub")] == [f"{RELEASE}-pushmesh-hub-{i}" for i in range(3)]
    assert len(cluster.pods_of("ws-gateway")) == 3 and len(cluster.pods_of("http-ingress")) == 2
    for pod in cluster.pods.values():
        assert pod.started and pod.ready
        assert any("READY" in e for _, e in pod.events)
        # The env took effect: each binary announced 0.0.0.0 listeners.
        announced = json.loads((WORK / "logs" / f"{pod.name}.stdout").read_text().splitlines()[0])
        assert all(addr.startswith("0.0.0.0:") for addr in announced["listening"].values()), announced
        # Running as the securityContext's user, as in the image.
        uid_line = next(l for l in open(f"/proc/{pod.proc.pid}/status") if l.startswith("Uid:"))
        assert uid_line.split()[1:3] == ["65532", "65532"], uid_line
        # json logs, as the ConfigMap asked.
        first_log = (WORK / "logs" / f"{pod.name}.stderr").read_text().splitlines()[0]
        assert json.loads(first_log)
    hub = cluster.pods_of("hub")[0]
    assert any("grpc" in e and "'pushmesh.v1.Hub' -> SERVING" in e for _, e in hub.events), hub.events
    # Only ready pods are in cluster DNS: the headless Service names every hub.
    records = cluster.dns_records()
    headless = f"{RELEASE}-pushmesh-hub-headless.{NAMESPACE}.svc.cluster.local"
    assert sorted(records[headless]) == sorted(p.ip for p in cluster.pods_of("hub"))
    for p in cluster.pods_of("hub"):
        assert records[f"{p.name}.{headless}"] == [p.ip]
    assert not cluster.probe_failures()


def test_user_path_websocket_publish_delivery_and_metrics(cluster, manifests):
    async def scenario():
        clients = await open_clients(cluster)
        try:
            await publish_round(cluster, clients, "first")
            # Broadcast, both forms: every client gets each once.
            ingress = cluster.pods_of("http-ingress")[0]
            code, body = await curl("-H", f"Authorization: Bearer {API_KEY}", "--json", json.dumps({"data": {"tag": "bc", "n": 0}}),
                                    f"http://{ingress.ip}:8081/broadcast")
            assert code == 200, body
            code, body = await curl("-H", f"Authorization: Bearer {API_KEY}", f"http://{ingress.ip}:8081/?content=seed-hello")
            assert (code, body.strip()) == (200, "ok")
            for c in clients:
                await c.wait(lambda: any("seed-hello" in json.dumps(f) for f in c.frames), "the seed-form broadcast")
                assert len([f for f in c.frames if f.get("type") == "message" and f.get("data") == {"tag": "bc", "n": 0}]) == 1
        finally:
            await close_all(clients)

    asyncio.run(scenario())

    scrapes = {p.name: scrape(metrics_url(p)) for p in cluster.pods.values()}
    hubs, gws, ings = (cluster.pods_of(x) for x in ("hub", "ws-gateway", "http-ingress"))
    for gw in gws:
        assert metric(scrapes[gw.name], "pushmesh_gateway_hubs_attached") == 3
    for ing in ings:
        assert metric(scrapes[ing.name], "pushmesh_ingress_hubs_up") == 3
    for hub in hubs:
        assert metric(scrapes[hub.name], "pushmesh_hub_gateways_attached") == 3
    # Rendezvous hashing spread the channels: every hub took some publishes.
    per_hub = {h.name: metric(scrapes[h.name], "pushmesh_hub_publishes_total") for h in hubs}
    assert all(v > 0 for v in per_hub.values()), per_hub
    assert sum(metric(scrapes[i.name], "pushmesh_ingress_publishes_total", result="ok") for i in ings) >= len(CHANNELS)
    # Every metric the PrometheusRule alerts on (every group) is one a pod exports:
    # its `# TYPE` line, plus a histogram's series.
    rule = next(d for d in manifests if d["kind"] == "PrometheusRule")
    names = {n for g in rule["spec"]["groups"] for r in g["rules"]
             for n in re.findall(r"pushmesh_[a-z_]+", r["expr"])}
    assert len(names) >= 5, names
    offered = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", "\n".join(scrapes.values()), re.M):
        offered.add(name)
        if kind == "histogram":
            offered |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    for n in sorted(names):
        assert n in offered, f"PrometheusRule uses {n}, which no pod exports"


def test_deleting_a_hub_pod_keeps_publishing_and_delivery_going(cluster):
    victim = cluster.pods_of("hub")[1]
    sts = next(w for w, _ in cluster.workloads() if w["kind"] == "StatefulSet")

    async def scenario():
        clients = await open_clients(cluster)
        try:
            await publish_round(cluster, clients, "before")
            # Publish continuously while the hub pod is deleted.
            result = {}
            deleter = threading.Thread(target=lambda: result.update(cluster.delete_pod(victim.name)))
            deleter.start()
            ingresses = cluster.pods_of("http-ingress")
            sent, n = [], 0
            while deleter.is_alive() or n < len(CHANNELS):
                ch = CHANNELS[n % len(CHANNELS)]
                code, body = await publish(ingresses[n % 2], ch, {"tag": "during", "n": n})
                assert code == 200, f"publish {n} to {ch} while {victim.name} terminates: {code} {body}"
                sent.append((ch, n))
                n += 1
            deleter.join()
            assert result["exit_code"] == 0 and not result["killed"], result
            assert result["total_seconds"] < result["grace"], result
            for c in clients:
                await c.wait(lambda: len(c.messages("during")) >= len(sent), f"{len(sent)} messages during the deletion")
                assert sorted(c.messages("during")) == sorted(sent)
                for ch in CHANNELS:  # per channel, in publish order
                    got = [m for cc, m in c.messages("during") if cc == ch]
                    assert got == sorted(got), f"{ch} out of order on {c.gateway.name}: {got}"
            # With the hub gone, all channels still publish and deliver.
            await publish_round(cluster, clients, "after")
            # The ingresses' health checks (every hubProbeMs) notice the hub is gone.
            cluster.wait_until(lambda: all(metric(scrape(metrics_url(i)), "pushmesh_ingress_hubs_up") == 2
                                           for i in cluster.pods_of("http-ingress")), 10,
                               "every ingress to count 2 hubs up")
            # The StatefulSet controller recreates the pod under the same name.
            cluster.start_pod(sts, ordinal=1)
            cluster.wait_until(lambda: all(p.ready for p in cluster.pods.values()) and len(cluster.pods_of("hub")) == 3,
                               60, f"{victim.name} to come back ready")
            wait_for_full_mesh(cluster)  # the gateways and ingresses find the recreated hub
            await publish_round(cluster, clients, "recreated")
            text = scrape(metrics_url(cluster.pods[victim.name]))
            assert metric(text, "pushmesh_hub_publishes_total") > 0, "the recreated hub takes its channels back"
        finally:
            await close_all(clients)

    asyncio.run(scenario())
    assert not cluster.probe_failures()


def test_scaling_hubs_is_followed_through_dns_without_a_rollout(cluster):
    """A fourth hub pod appears (as `kubectl scale` would make it): gateways
    and ingresses find it through the headless Service's DNS name, attach,
    and route its share of channels to it; it goes away again and they drop
    it. No gateway or ingress restarts meanwhile."""
    sts = next(w for w, _ in cluster.workloads() if w["kind"] == "StatefulSet")
    others = {p.name: p.proc.pid for p in cluster.pods.values() if p.labels["app.kubernetes.io/component"] != "hub"}

    async def scenario():
        clients = await open_clients(cluster)
        try:
            extra = cluster.start_pod(sts, ordinal=3)
            cluster.wait_until(lambda: extra.ready, 60, f"{extra.name} to be ready")
            wait_for_full_mesh(cluster)  # 4 hubs, found through DNS
            await publish_round(cluster, clients, "four-hubs")
            assert metric(scrape(metrics_url(extra)), "pushmesh_hub_publishes_total", target="channel") > 0, \
                "the new hub takes its share of the channels"
            result = await asyncio.to_thread(cluster.delete_pod, extra.name)
            assert result["exit_code"] == 0, result
            wait_for_full_mesh(cluster)  # back to 3
            await publish_round(cluster, clients, "three-hubs")
        finally:
            await close_all(clients)

    asyncio.run(scenario())
    assert {p.name: p.proc.pid for p in cluster.pods.values()
            if p.labels["app.kubernetes.io/component"] != "hub"} == others, "nothing was restarted"
    assert not cluster.probe_failures()


def blackhole(pod, peer, on=True):
    """Drop every packet from `pod` to `peer` (both keep their sockets: a
    partition, not a crash)."""
    subprocess.run(["ip", "-n", pod.netns, "route", "add" if on else "del", "blackhole", f"{peer.ip}/32"], check=True)


def test_a_partition_between_a_gateway_and_a_hub_loses_nothing(cluster):
    """Cut one gateway off from one hub (blackhole routes both ways) while
    publishing: the gateway stays ready through the other hubs, the
    ingresses relay the cut hub's publishes to it and replay what it missed
    before the cut was noticed; healed, it is back on all hubs. Every
    client gets every message exactly once throughout."""
    gw, hub = cluster.pods_of("ws-gateway")[1], cluster.pods_of("hub")[0]
    ingresses = cluster.pods_of("http-ingress")

    def partitioned(n):
        return all(metric(scrape(metrics_url(i)), "pushmesh_ingress_partitioned_gateways") == n for i in ingresses)

    async def publish_until(tag, done, n=0):
        sent = []
        while True:
            ch = CHANNELS[n % len(CHANNELS)]
            code, body = await publish(ingresses[n % 2], ch, {"tag": tag, "n": n})
            assert code == 200, f"publish {n} to {ch}: {code} {body}"
            sent.append((ch, n))
            n += 1
            if n % len(CHANNELS) == 0 and await asyncio.to_thread(done):
                return sent

    async def everyone_got_exactly(clients, tag, sent, in_order=False):
        for c in clients:
            await c.wait(lambda: len(c.messages(tag)) >= len(sent), f"{len(sent)} messages tagged {tag}", timeout=30)
            assert sorted(c.messages(tag)) == sorted(sent), \
                f"{c.gateway.name}: not exactly once: missing {sorted(set(sent) - set(c.messages(tag)))[:10]}, " \
                f"{len(c.messages(tag)) - len(set(c.messages(tag)))} duplicates"
            if in_order:  # each channel is published through one ingress, which replays in order
                for ch in CHANNELS:
                    got = [n for cc, n in c.messages(tag) if cc == ch]
                    assert got == sorted(got), f"{ch} out of order on {c.gateway.name}: {got}"

    async def scenario():
        clients = await open_clients(cluster)
        cut = False
        try:
            await publish_round(cluster, clients, "before-cut")
            blackhole(gw, hub)
            blackhole(hub, gw)
            cut = True
            started = time.monotonic()
            # Until the gateway noticed (keepalive) and every ingress relays to it.
            sent = await publish_until("cut", lambda: partitioned(1) and metric(
                scrape(metrics_url(gw)), "pushmesh_gateway_hubs_attached") == 2)
            noticed = time.monotonic() - started
            sent += await publish_until("cut", lambda: True, n=len(sent))  # and a round on the relayed path
            assert gw.ready, "a gateway that still has two hubs stays ready"
            await everyone_got_exactly(clients, "cut", sent, in_order=True)
            replayed = sum(metric(scrape(metrics_url(i)), "pushmesh_ingress_replayed_total") for i in ingresses)
            print(f"FIGURES cluster partition: noticed and relaying after {noticed:.1f}s, {len(sent)} publishes "
                  f"during the cut, {replayed:.0f} replayed, 0 lost, 0 duplicates, each channel in order on {len(clients)} clients")
            blackhole(gw, hub, on=False)
            blackhole(hub, gw, on=False)
            cut = False
            sent = await publish_until("heal", lambda: partitioned(0) and metric(
                scrape(metrics_url(gw)), "pushmesh_gateway_hubs_attached") == 3)
            await everyone_got_exactly(clients, "heal", sent)
            await publish_round(cluster, clients, "healed")
        finally:
            if cut:
                blackhole(gw, hub, on=False)
                blackhole(hub, gw, on=False)
            await close_all(clients)

    asyncio.run(scenario())
    assert not cluster.probe_failures()


def test_helm_test_hook_pod_passes(cluster, manifests):
    hook = next(d for d in manifests if d["kind"] == "Pod")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    code, out, err = cluster.run_pod(hook, HOOK_PYTHON, timeout=60)
    assert code == 0, f"helm test pod failed ({code}):\n{out}\n{err}"
    assert "smoke test passed" in out


def test_deleting_a_gateway_pod_drains_its_clients_with_1012(cluster):
    victim = cluster.pods_of("ws-gateway")[0]

    async def scenario():
        clients = await open_clients(cluster, subscribe=CHANNELS[:2])
        try:
            result = await asyncio.to_thread(cluster.delete_pod, victim.name)
            assert result["exit_code"] == 0 and not result["killed"], result
            pre = victim.container["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert result["total_seconds"] >= pre
            mine = [c for c in clients if c.gateway is victim]
            others = [c for c in clients if c.gateway is not victim]
            for c in mine:
                await c.wait(lambda: c.closed is not None, "the drain to close the connection")
                assert c.closed[0] == 1012, f"expected close 1012 (service restart), got {c.closed}"
            assert all(c.closed is None for c in others)
            await publish_round(cluster, others, "after-gateway", channels=CHANNELS[:2])
            # The ReplicaSet replaces the pod; clients reconnect and are served there too.
            deployment = next(w for w, _ in cluster.workloads() if w["metadata"]["name"] == victim.workload.split("/")[1])
            replacement = cluster.start_pod(deployment, ordinal=0)
            cluster.wait_until(lambda: replacement.ready, 60, f"the replacement gateway {replacement.name} to be ready")
            wait_for_full_mesh(cluster)
            back = [await Client.open(replacement, f"returning-{i}") for i in range(len(mine))]
            for c in back:
                await c.subscribe(CHANNELS[:2])
            await publish_round(cluster, others + back, "replacement", channels=CHANNELS[:2])
            await close_all(back)
        finally:
            await close_all([c for c in clients if c.closed is None])

    asyncio.run(scenario())
    assert not cluster.probe_failures()


NOTES_CLIENT = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
smoke = __import__("smoke_client")
url, subscribe, out = sys.argv[2], sys.argv[3], sys.argv[4]
ws = smoke.WebSocket(url, time.monotonic() + 40)
frames = [ws.recv_json()]
ws.send_frame(0x1, subscribe.encode())
with open(out, "w") as f:
    while True:
        frames.append(ws.recv_json())
        f.write(json.dumps(frames[-1]) + "\n")
        f.flush()
        if any("hello-everyone" in json.dumps(x) for x in frames) and any(x.get("channel") == "news" and x.get("type") == "message" for x in frames):
            break
'''


def test_notes_commands_work_as_printed(cluster, manifests):
    """The lines NOTES.txt prints, run verbatim in a user's shell (kubectl
    answered by kubectl_shim.py from the simulated cluster's state)."""
    from conftest import KUBECTL, helm

    proc = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                "--values", str(PRODUCTION_VALUES))
    notes = proc.stdout.split("NOTES:", 1)[1]
    commands = [l.strip() for l in notes.splitlines()
                if re.match(r"^\s+(kubectl |API_KEY=|curl |export PUSHMESH_JWT_SECRET=|TOKEN=)", l)]
    ws_line = next(l.strip() for l in notes.splitlines() if l.strip().startswith("websocat "))
    subscribe = next(l.strip() for l in notes.splitlines() if l.strip().startswith('{"id":1,"op":"subscribe"'))
    assert len(commands) >= 11, notes
    assert any(c.startswith("TOKEN=$(pushmesh token ") for c in commands), notes

    # What the shim answers from: Services → a ready pod, workloads, the Secret.
    services = {}
    for name, svc in cluster.by_kind["Service"].items():
        pods = [p for p in cluster.pods.values() if p.ready
                and svc["spec"]["selector"].items() <= p.labels.items()]
        if pods:
            services[name] = {"ports": {str(sp["port"]): [pods[0].ip, pods[0].port(sp["targetPort"])]
                                        for sp in svc["spec"]["ports"]}}
    workloads = {}
    for w, replicas in cluster.workloads():
        ready = len([p for p in cluster.pods.values() if p.ready and p.workload == f"{w['kind']}/{w['metadata']['name']}"])
        workloads[f"{w['kind'].lower()}/{w['metadata']['name']}"] = [ready, replicas]
    secret = the_existing_secret()
    state = {"namespace": NAMESPACE, "services": services, "workloads": workloads, "kubectl": str(KUBECTL),
             "secrets": {"pushmesh-auth": {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}}}
    d = WORK / "notes"
    (d / "bin").mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_text(json.dumps(state))
    shim = d / "bin" / "kubectl"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'kubectl_shim.py'} \"$@\"\n")
    shim.chmod(0o755)
    # The NOTES mint the client's JWT with the pushmesh CLI, as a user would.
    cli = ROOT / "target" / "debug" / "pushmesh"
    if not cli.exists():
        pytest.fail(f"{cli} missing: run `cargo build --bins` (make helm-test does)")
    (d / "bin" / "pushmesh").unlink(missing_ok=True)
    (d / "bin" / "pushmesh").symlink_to(cli)
    shutil.copy(CHART / "files" / "smoke-test.py", d / "smoke_client.py")
    (d / "client.py").write_text(NOTES_CLIENT)
    # websocat is not installed here; its URL (with the $TOKEN the NOTES
    # minted, expanded by the shell) goes to a stdlib client that sends the
    # printed subscribe line.
    url = ws_line.split('"')[1]
    assert url.endswith("?token=$TOKEN"), ws_line

    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", "wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; exit 9; }"]
    for cmd in commands:
        if "port-forward" in cmd:
            script += [f"echo {shlex.quote('>>> ' + cmd)}", cmd, f"wait_port {cmd.rsplit(':', 1)[1].split()[0]}"]
        elif cmd.startswith("curl") and "/publish" in cmd or "?content=" in cmd:
            script += [f"echo {shlex.quote('>>> ' + cmd)}", cmd, "echo"]
        else:
            script += [f"echo {shlex.quote('>>> ' + cmd)}", cmd]
        if cmd.startswith("TOKEN="):
            script += [f"python3 {d / 'client.py'} {d} \"{url}\" '{subscribe}' {d / 'frames.jsonl'} & CLIENT=$!",
                       f"until [ -s {d / 'frames.jsonl'} ]; do sleep 0.05; done"]
    script += ["wait $CLIENT"]
    (d / "notes.sh").write_text("\n".join(script) + "\n")

    netns, _ = cluster.workstation()
    try:
        env = {"PATH": f"{d / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin", "PMK_CLUSTER_STATE": str(d / "state.json"),
               "HOME": str(d)}
        run = subprocess.run(["ip", "netns", "exec", netns, "bash", str(d / "notes.sh")], env=env,
                             capture_output=True, text=True, timeout=60)
    finally:
        cluster.remove_netns(netns)
    out = run.stdout
    assert run.returncode == 0, f"NOTES commands failed ({run.returncode}):\n{out}\n{run.stderr}"
    sections = {s.split("\n", 1)[0]: s.split("\n", 1)[1] if "\n" in s else "" for s in out.split(">>> ")[1:]}
    publish_out = next(v for k, v in sections.items() if "/publish" in k)
    assert json.loads(publish_out.strip().splitlines()[0])["ok"] is True, publish_out
    seed_out = next(v for k, v in sections.items() if "?content=" in k)
    assert seed_out.strip() == "ok"
    for k, v in sections.items():
        if "/metrics" in k:
            assert v.count("pushmesh_") > 5, f"{k}:\n{v[:500]}"
        if "rollout status" in k:
            assert "successfully rolled out" in v
    frames = [json.loads(l) for l in (d / "frames.jsonl").read_text().splitlines()]
    assert {"type": "reply", "id": 1, "ok": True} in [{k: f.get(k) for k in ("type", "id", "ok")} for f in frames]
    news = [f for f in frames if f.get("type") == "message" and f.get("channel") == "news"]
    assert [f["data"] for f in news] == [{"text": "hello"}]
    assert any("hello-everyone" in json.dumps(f) for f in frames)
