"""The chart with hub.colocated on a simulated cluster: no hub StatefulSet,
one hub inside each http-ingress pod, found by gateways and ingresses
through the same headless name; publishes and targeted sends go through
them, and each ingress hands its own hub its publishes without a gRPC hop.

Needs root (network namespaces) and the debug binaries, like test_cluster.py
(whose user-side helpers it uses); the two simulated clusters run one after
the other (same lock).
"""

import asyncio
import fcntl
import json
import os
import shutil

import pytest

import test_cluster as tc
from conftest import ROOT, render
from kube_sim import Cluster

NAMESPACE = "pushmesh-co"
RELEASE = "co"
WORK = ROOT / "target" / "cluster-test-colocated"
VALUES = (
    "hub.colocated=true",
    "httpIngress.replicas=2",
    "wsGateway.replicas=2",
    "hub.dnsIntervalSecs=1",
)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the cluster test needs root: it makes network namespaces, veths and a bridge")
    docs, _ = render(release=RELEASE, namespace=NAMESPACE, set_values=VALUES)
    binaries = {f"/usr/local/bin/{b}": str(ROOT / "target" / "debug" / b) for b in ("hub", "ws-gateway", "http-ingress")}
    missing = [p for p in binaries.values() if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"binaries missing: {missing}; run `cargo build --bins` (make helm-test does)")
    lock = open("/run/pushmesh-cluster-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.chmod(WORK, 0o755)
    c = Cluster(docs, NAMESPACE, binaries, WORK)
    try:
        c.setup()
        c.start_all()
        c.wait_until(lambda: len(c.pods) == 4 and all(p.ready for p in c.pods.values()), 90,
                     "all 4 pods (2 ingresses with their hubs, 2 gateways) to pass their readiness probes")
        # Full mesh: every gateway on both hubs, every ingress seeing both.
        c.wait_until(
            lambda: all(tc.metric(tc.scrape(tc.metrics_url(g)), "pushmesh_gateway_hubs_attached") == 2
                        for g in c.pods_of("ws-gateway"))
            and all(tc.metric(tc.scrape(tc.metrics_url(i)), "pushmesh_ingress_hubs_up") == 2
                    for i in c.pods_of("http-ingress")),
            30, "every gateway and ingress to reach both hubs")
        yield c
    finally:
        c.teardown()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def hub_metrics(ingress_pod):
    port = next(p["containerPort"] for p in ingress_pod.container["ports"] if p["name"] == "hub-admin")
    return tc.scrape(f"http://{ingress_pod.ip}:{port}/metrics")


def test_colocated_hubs_serve_publishes_and_sends_from_inside_the_ingress_pods(cluster):
    assert cluster.pods_of("hub") == [], "no hub pods of their own"
    ingresses = cluster.pods_of("http-ingress")
    assert len(ingresses) == 2
    for i in ingresses:
        # Each ingress pod's hub has both gateways attached.
        assert tc.metric(hub_metrics(i), "pushmesh_hub_gateways_attached") == 2

    async def scenario():
        clients = await tc.open_clients(cluster)
        try:
            # Channels spread over both hubs by rendezvous: every client gets
            # every message, through either ingress.
            await tc.publish_round(cluster, clients, "co")
            # A targeted send to each client, alternating ingresses.
            for n, c in enumerate(clients):
                ingress = ingresses[n % 2]
                code, body = await tc.curl(
                    "-H", "Content-Type: application/json",
                    "-d", json.dumps({"connection": c.welcome["connection"], "data": {"tag": "direct", "n": n}}),
                    f"http://{ingress.ip}:8081/send")
                assert code == 200, f"send via {ingress.name}: {code} {body}"
            for n, c in enumerate(clients):
                await c.wait(lambda: any(f.get("data") == {"tag": "direct", "n": n} for f in c.frames),
                             f"the direct send {n}")
        finally:
            await tc.close_all(clients)

    asyncio.run(scenario())
    # Every publish and send still goes to its target's hub by rendezvous
    # (one order per target across ingresses); where that is the ingress's
    # own hub, it was handed over in-process: both did, for some.
    for i in ingresses:
        assert tc.metric(tc.scrape(tc.metrics_url(i)), "pushmesh_ingress_colocated_publishes_total") > 0, i.name
