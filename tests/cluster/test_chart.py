"""The chart on paper: lint, Kubernetes schema validation of what it renders,
the values schema refusing wrong input, and the contracts between the chart,
the image and the docs. (test_cluster.py then runs what it renders.)"""

import copy
import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import values_doc
from conftest import CHART, KUBECTL, PRODUCTION_VALUES, ROOT, helm, render

KUBERNETES_VERSION = "1.35"  # the validator's schemas; same minor as the pinned kubectl
INVALID = sorted((Path(__file__).parent / "invalid-values").glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet")
BINARIES = ("hub", "ws-gateway", "http-ingress")
ALERTS_FILE = CHART / "files" / "pushmesh-alerts.yaml"
DASHBOARD_FILE = CHART / "files" / "pushmesh-dashboard.json"


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def announce_line(argv, env=None):
    """Start a service binary, read its first stdout line (the announce line,
    once its ports are bound), stop it; (that line, its stderr)."""
    proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    return line, proc.stderr.read()


def containers(docs):
    for d in docs:
        if d["kind"] in WORKLOADS:
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


# Subsets of the prometheus-operator CRD schemas (monitoring.coreos.com/v1):
# the fields the chart uses, strict, so a typo or a wrong type fails here as
# it would at `kubectl apply` with the CRDs installed.
_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_META = {"type": "object", "required": ["name", "namespace"], "properties": {"labels": _LABELS}}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "namespaceSelector": {"type": "object", "additionalProperties": False,
                                          "properties": {"any": {"type": "boolean"},
                                                         "matchNames": {"type": "array", "items": _STR}}},
                    "selector": {"type": "object", "additionalProperties": False,
                                 "properties": {"matchLabels": _LABELS}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"port": _STR, "path": _STR,
                                       "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                       "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}}}},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
                "groups": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                      "required": ["name", "rules"], "properties": {
                    "name": _STR,
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"],
                        "properties": {"alert": _STR, "record": _STR, "expr": {"type": ["string", "integer"]},
                                       "for": _STR, "labels": _LABELS, "annotations": _LABELS}}},
                }}}}},
        },
    },
}


def validate(doc):
    """Raise if `doc` is not a valid object of its kind (Kubernetes schemas, strict)."""
    if doc["kind"] in CRD_SCHEMAS:
        import jsonschema

        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# ---- lint and schema validation of rendered output --------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lint_strict(values):
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("which", ["default", "production"])
def test_rendered_manifests_are_valid_kubernetes_objects(which, default_manifests, production_manifests):
    docs = default_manifests if which == "default" else production_manifests
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap", "Pod"} <= kinds
    if which == "production":
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
                "NetworkPolicy", "Ingress"} <= kinds
    errors = []
    for d in docs:
        try:
            validate(d)
        except Exception as e:  # noqa: BLE001 - every kind of failure is reported
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("kind,mutate", [
    ("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={})),
    ("Deployment", lambda d: d["spec"].update(replicas="three")),
    ("Service", lambda d: d["spec"]["ports"][0].update(port="grpc")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval="30 seconds")),
    ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update(expresion="up")),
])
def test_the_validator_rejects_broken_objects(kind, mutate, production_manifests):
    """The validation above can fail: one wrong field in a rendered object is caught."""
    doc = copy.deepcopy(next(d for d in production_manifests if d["kind"] == kind))
    mutate(doc)
    with pytest.raises(Exception) as err:
        validate(doc)
    # A real validation error, not "no schema for this kind".
    assert "Couldn't find schema" not in str(err.value)


# ---- alerts and dashboard: one copy each, in files/ ----------------------------------


def alert_names(groups):
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_prometheus_rule_holds_exactly_the_alerts_of_the_file(production_manifests):
    want = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    [rule] = by_kind(production_manifests, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == want, "the PrometheusRule is files/pushmesh-alerts.yaml's groups, unchanged"
    names = alert_names(want)
    assert len(names) >= 5 and len(set(names)) == len(names), names
    # Prometheus's own template syntax reaches Prometheus, not Helm.
    assert any("{{ $labels.instance }}" in r["annotations"]["summary"] for g in rule["spec"]["groups"]
               for r in g["rules"])


def test_extra_rules_get_a_group_of_their_own():
    docs, _ = render(set_values=("metrics.prometheusRule.enabled=true",
                                 "metrics.prometheusRule.extraRules[0].alert=MyAlert",
                                 "metrics.prometheusRule.extraRules[0].expr=up == 0"))
    [rule] = by_kind(docs, "PrometheusRule").values()
    validate(rule)
    groups = rule["spec"]["groups"]
    assert groups[:-1] == yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    assert groups[-1] == {"name": "pushmesh.extra", "rules": [{"alert": "MyAlert", "expr": "up == 0"}]}


def test_alerts_the_cluster_test_and_docs_name_exist():
    """Names written in prose (the cluster test, the Kubernetes guide) follow a rename."""
    names = set(alert_names(yaml.safe_load(ALERTS_FILE.read_text())["groups"]))
    for f in (Path(__file__).parent / "test_cluster.py", ROOT / "docs" / "kubernetes.md"):
        for used in set(re.findall(r"\bPushmesh[A-Z][A-Za-z]+\b", f.read_text())):
            assert used in names, f"{f.name} names the alert {used}, which files/pushmesh-alerts.yaml lacks"


def test_grafana_dashboard_configmap_is_opt_in_and_holds_the_dashboard(default_manifests, production_manifests):
    assert "pm-pushmesh-dashboard" not in by_kind(default_manifests, "ConfigMap"), "off by default"
    cm = by_kind(production_manifests, "ConfigMap")["prod-pushmesh-dashboard"]
    assert cm["metadata"]["namespace"] == "push"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", "the sidecar's default label"
    assert list(cm["data"]) == ["pushmesh-dashboard.json"]
    dashboard = json.loads(cm["data"]["pushmesh-dashboard.json"])
    assert dashboard == json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "pushmesh-overview" and dashboard["panels"]

    docs, _ = render(set_values=("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring",
                                 "grafanaDashboard.labels.grafana_dashboard=null",
                                 "grafanaDashboard.labels.dashboards=pushmesh",
                                 "grafanaDashboard.annotations.grafana_folder=Pushmesh"))
    cm = by_kind(docs, "ConfigMap")["pm-pushmesh-dashboard"]
    validate(cm)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dashboards"] == "pushmesh"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Pushmesh"}
    assert json.loads(cm["data"]["pushmesh-dashboard.json"]) == dashboard


def test_the_chart_holds_the_only_copy_of_the_alerts_and_dashboard():
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    tracked = proc.stdout.split()
    for f in (ALERTS_FILE, DASHBOARD_FILE):
        copies = [t for t in tracked if Path(t).name == f.name]
        assert copies == [str(f.relative_to(ROOT))], f"one copy of {f.name}, in the chart: {copies}"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_wrong_values_are_refused_with_a_clear_message(path):
    expected = re.findall(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expected, f"{path.name} needs '# expect: <text of the error>' lines"
    docs, proc = render(path, check=False)
    assert proc.returncode != 0, f"{path.name} was accepted; rendered {len(docs)} objects"
    for text in expected:
        assert text in proc.stderr, f"{path.name}: error does not say {text!r}:\n{proc.stderr}"


def test_values_yaml_and_production_values_pass_the_schema():
    # helm validates values against the schema before rendering; the defaults
    # and the production file both rendering at all proves they pass it.
    for f in (None, PRODUCTION_VALUES):
        _, proc = render(*([f] if f else []), check=False)
        assert proc.returncode == 0, proc.stderr


def test_every_schema_field_is_described():
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []

    def walk(node, path):
        node = values_doc._resolve(schema, node)
        if path and not node.get("description"):
            missing.append(path)
        for k, child in node.get("properties", {}).items():
            walk(child, f"{path}.{k}" if path else k)

    walk(schema, "")
    assert not missing, f"schema fields without a description: {missing}"


# ---- what the pods get -------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production"])
def test_every_container_is_probed_hardened_and_sized(which, default_manifests, production_manifests):
    docs = default_manifests if which == "default" else production_manifests
    seen = set()
    for w, c in containers(docs):
        name = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        seen.add(c["name"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{name}: no {probe}"
        ready = c["readinessProbe"]
        if c["name"] == "hub":
            assert ready["grpc"] == {"port": 50051, "service": "pushmesh.v1.Hub"}
            assert c["startupProbe"]["grpc"]["service"] == ""
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        else:
            assert ready["httpGet"] == {"path": "/readyz", "port": "http"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["command"] == [f"/usr/local/bin/{c['name']}"]
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod["terminationGracePeriodSeconds"] > pre
        labels = w["metadata"]["labels"]
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                  "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert k in labels, f"{name}: label {k} missing"
        assert pod["topologySpreadConstraints"], f"{name}: no topologySpreadConstraints"
    assert seen == set(BINARIES)


def test_gateway_termination_leaves_room_to_drain(default_manifests):
    gw = by_kind(default_manifests, "Deployment")["pm-pushmesh-ws-gateway"]
    pod = gw["spec"]["template"]["spec"]
    pre = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    assert pod["terminationGracePeriodSeconds"] - pre >= 30, "drain time after SIGTERM"
    assert gw["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_gateways_and_ingresses_find_every_hub_through_the_headless_service(production_manifests):
    sts = by_kind(production_manifests, "StatefulSet")["prod-pushmesh-hub"]
    headless = by_kind(production_manifests, "Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    # Hubs warming up must be found: they wait for gateways before serving.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    cms = by_kind(production_manifests, "ConfigMap")
    for name in ("prod-pushmesh-ws-gateway", "prod-pushmesh-http-ingress"):
        data = cms[name]["data"]
        assert data["PUSHMESH_HUB_DNS"] == f"{headless['metadata']['name']}.push.svc.cluster.local:50051"
        assert data["PUSHMESH_HUB_DNS_INTERVAL_SECS"] == "5"
        assert "PUSHMESH_HUBS" not in data, "a static list would need a rollout to follow the hubs"
    for _, c in containers(production_manifests):
        assert {"configMapRef": {"name": f"prod-pushmesh-{c['name']}"}} in c["envFrom"]


def test_services_select_their_pods_on_ports_that_exist(production_manifests):
    workloads = [d for d in production_manifests if d["kind"] in WORKLOADS]
    for svc in by_kind(production_manifests, "Service").values():
        sel = svc["spec"]["selector"]
        matched = [w for w in workloads if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
        ports = {p["name"] for p in matched[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports


def test_scaling_hubs_rolls_nothing():
    """Hubs are found through DNS: a new replica count changes no pod's config."""
    base, _ = render()
    scaled, _ = render(set_values=("hub.replicas=2",))

    def checksums(docs):
        return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for w in docs if w["kind"] in WORKLOADS}

    assert checksums(base) == checksums(scaled)


def test_production_has_budgets_autoscaling_and_the_existing_secret(production_manifests):
    pdbs = by_kind(production_manifests, "PodDisruptionBudget")
    assert set(pdbs) == {"prod-pushmesh-hub", "prod-pushmesh-ws-gateway", "prod-pushmesh-http-ingress"}
    hpa = by_kind(production_manifests, "HorizontalPodAutoscaler")["prod-pushmesh-ws-gateway"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    gw = by_kind(production_manifests, "Deployment")["prod-pushmesh-ws-gateway"]
    assert "replicas" not in gw["spec"], "with an HPA the Deployment must not fight it over replicas"
    assert not by_kind(production_manifests, "Secret"), "existingSecret: the chart renders no Secret"
    env = {e["name"]: e for _, c in containers(production_manifests) for e in c.get("env", [])}
    assert env["PUSHMESH_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "pushmesh-auth"
    assert env["PUSHMESH_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "pushmesh-auth"
    ing = by_kind(production_manifests, "Ingress")["prod-pushmesh-ws-gateway"]
    assert int(ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_default_install_renders_no_disruption_budget_for_a_single_hub(default_manifests):
    # A budget for one replica would block every node drain.
    assert set(by_kind(default_manifests, "PodDisruptionBudget")) == {
        "pm-pushmesh-ws-gateway", "pm-pushmesh-http-ingress"}


def test_chart_secret_holds_the_given_credentials():
    docs, _ = render(set_values=("auth.apiKeys={0123456789abcdef01,fedcba9876543210fe}",
                                 "auth.jwtSecret=0123456789abcdef0123456789abcdef"))
    [secret] = by_kind(docs, "Secret").values()
    import base64

    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "0123456789abcdef01,fedcba9876543210fe"
    assert base64.b64decode(secret["data"]["jwt-secret"]).decode() == "0123456789abcdef0123456789abcdef"


# ---- network policy, evaluated ------------------------------------------------------


def _admits(policy, pod_labels, ns_labels, port_name):
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and not any(p["port"] == port_name for p in rule["ports"]):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            pod_ok = "podSelector" not in peer or peer["podSelector"].get("matchLabels", {}).items() <= pod_labels.items()
            ns_sel = peer.get("namespaceSelector")
            ns_ok = (ns_sel is None and ns_labels.get("same")) or (
                ns_sel is not None and ns_sel.get("matchLabels", {}).items() <= ns_labels.items())
            if pod_ok and ns_ok:
                return True
    return False


def test_network_policy_lets_only_gateways_and_ingresses_reach_hub_grpc(production_manifests):
    policies = by_kind(production_manifests, "NetworkPolicy")
    hub_policy = policies["prod-pushmesh-hub"]
    pod_labels = {w["metadata"]["name"].removeprefix("prod-pushmesh-"): w["spec"]["template"]["metadata"]["labels"]
                  for w in production_manifests if w["kind"] in WORKLOADS}
    same = {"same": True}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert hub_policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels["hub"].items()
    assert _admits(hub_policy, pod_labels["ws-gateway"], same, "grpc")
    assert _admits(hub_policy, pod_labels["http-ingress"], same, "grpc")
    assert not _admits(hub_policy, {"app": "something-else"}, same, "grpc")
    assert not _admits(hub_policy, pod_labels["hub"], same, "grpc"), "hubs never talk to each other"
    assert _admits(hub_policy, {"app": "prometheus"}, monitoring, "admin")
    assert not _admits(hub_policy, {"app": "prometheus"}, {"kubernetes.io/metadata.name": "other"}, "admin")
    assert _admits(policies["prod-pushmesh-ws-gateway"], {"any": "client"}, {"any": "ns"}, "http")
    # Every port the policies name exists on the pods they select.
    for name, pol in policies.items():
        component = pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        w = next(w for w in production_manifests if w["kind"] in WORKLOADS
                 and w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        ports = {p["name"] for p in w["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for rule in pol["spec"]["ingress"]:
            for p in rule["ports"]:
                assert p["port"] in ports, f"{name}: port {p['port']} not on {component}"


# ---- the image, the Makefile and the docs ------------------------------------------


def test_dockerfile_agrees_with_the_chart(default_manifests):
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert final.startswith("gcr.io/distroless/"), "final stage: a distroless runtime"
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user, "the final stage runs as a numeric non-root user"
    psc = next(iter(by_kind(default_manifests, "StatefulSet").values()))["spec"]["template"]["spec"]["securityContext"]
    assert (int(user[1]), int(user[2])) == (psc["runAsUser"], psc["runAsGroup"])
    exposed = {int(p) for p in re.findall(r"(\d+)/tcp", re.search(r"^EXPOSE (.+)$", final, re.M)[1])}
    chart_ports = {p["containerPort"] for _, c in containers(default_manifests) for p in c["ports"]}
    assert chart_ports <= exposed, f"EXPOSE {exposed} lacks {chart_ports - exposed}"
    for b in BINARIES:
        assert f"target/release/{b}" in text
        assert (ROOT / "services" / b).is_dir()
    # The packages it builds exist in the workspace (a rename breaks `make image` here first).
    packages = {re.search(r'^name = "([^"]+)"', f.read_text(), re.M)[1] for f in ROOT.glob("services/*/Cargo.toml")}
    built = set(re.findall(r" -p (pushmesh[-a-z]*)", text))
    assert built and built <= packages, f"Dockerfile builds {built - packages}, not in {packages}"
    assert "/usr/local/bin/" in final
    for label in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{label}=" in final
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".tools/" in ignore


def test_make_image_tags_the_chart_default_image(tmp_path):
    # ENGINE=echo prints the build command make image-docker would run.
    # (make image, the daemonless OCI archive, is built and checked by
    # tests/e2e/image.rs.)
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "build-image-docker.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "ENGINE": "echo"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"--tag {values['image']['repository']}:{chart['appVersion']}" in proc.stdout
    assert "--file deploy/Dockerfile" in proc.stdout


def test_chart_version_matches_the_workspace():
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S)[1]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version, "appVersion is the image tag `make image` builds"


def test_docs_values_reference_is_in_step():
    want, have = values_doc.generate(), values_doc.current()
    assert have == want, (
        "docs/kubernetes.md's values reference is out of date: run "
        "`.tools/venv/bin/python tests/cluster/values_doc.py --write`")


def test_notes_print_the_commands_for_this_release():
    proc = helm("install", "shop", str(CHART), "--namespace", "apps", "--dry-run=client",
                "--values", str(PRODUCTION_VALUES))
    notes = proc.stdout.split("NOTES:", 1)[1]
    docs = [d for d in yaml.safe_load_all(proc.stdout.split("NOTES:", 1)[0].split("HOOKS:", 1)[1]) if d]
    services = set(by_kind(docs, "Service"))
    forwards = re.findall(r"kubectl --namespace (\S+) port-forward svc/(\S+) (\d+):(\d+)", notes)
    assert len(forwards) == 2
    for ns, svc, local, remote in forwards:
        assert ns == "apps" and svc in services
    assert "helm test shop --namespace apps" in notes
    assert re.search(r"curl .*--json '\{\"channel\":\"news\".*http://127\.0\.0\.1:8081/publish", notes)
    assert "ws://127.0.0.1:8080/ws" in notes
    assert 'Authorization: Bearer $API_KEY' in notes  # credentials are on in production values
    # The Secret lookup line runs as written: check it with kubectl's own jsonpath.
    line = re.search(r"API_KEY=\$\((kubectl .*?) \| base64 -d \| cut -d, -f1 \| cut -d: -f1\)", notes)[1]
    jsonpath = re.search(r"-o jsonpath='([^']+)'", line)[1]
    out = subprocess.run(
        [str(KUBECTL), "create", "secret", "generic", "pushmesh-auth", "--dry-run=client",
         "--from-literal=api-keys=key-one,key-two", "-o", f"jsonpath={jsonpath}"],
        capture_output=True, text=True, check=True).stdout
    import base64

    assert base64.b64decode(out).decode().split(",")[0] == "key-one"


# Variables the chart delivers ahead of the binary that will read them (the
# chart and the binaries land separately); tolerated, not required, unknown.
NOT_YET_IN_BINARIES: dict = {}


def binary_env_names(binary):
    path = ROOT / "target" / "debug" / binary
    if not path.exists():
        pytest.fail(f"{path} missing: run `cargo build --bins` (make helm-test does)")
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: (PUSHMESH_[A-Z0-9_]+)[=\]]", out))


def test_every_variable_the_chart_sets_is_one_the_binary_reads():
    docs, _ = render(PRODUCTION_VALUES, set_values=("httpIngress.config.corsAllowOrigins={https://app.example.com}",
                                                    "hub.tls.enabled=true", "auth.jwtIssuer=https://id.example",
                                                    "auth.jwtAudience=pushmesh", "auth.jwtAlgorithm=ES256",
                                                    "auth.jwksUrl=https://id.example/jwks"))
    cms = by_kind(docs, "ConfigMap")
    docs += [d for d in render(set_values=("engine.type=redis", "redis.enabled=true",
                                          "engine.redis.existingSecret=r", "engine.redis.sentinelMaster=m",
                                          "engine.redis.tls.caSecret=ca"))[0]
             if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-hub")]
    for w, c in containers(docs):
        if c["name"] == "redis":
            continue
        names = {e["name"] for e in c.get("env", [])}
        for src in c["envFrom"]:
            names |= set(cms[src["configMapRef"]["name"]]["data"])
        known = binary_env_names(c["name"])
        tolerated = {k for k, b in NOT_YET_IN_BINARIES.items() if b == c["name"]}
        unknown = names - known - tolerated
        assert not unknown, f"{c['name']}: the chart sets {sorted(unknown)}, which `{c['name']} --help` does not list"


def test_the_redis_engine_reaches_the_hubs_from_values_and_a_secret():
    docs, _ = render(set_values=(
        "engine.type=redis", r"engine.redis.url=rediss://redis-a:6380\,rediss://redis-b:6380",
        "engine.redis.cluster=true", "engine.redis.existingSecret=my-redis",
        "engine.redis.tls.caSecret=redis-ca", "engine.timeoutMs=300"))
    hub_cm = next(c for n, c in by_kind(docs, "ConfigMap").items() if n.endswith("-hub"))["data"]
    assert hub_cm["PUSHMESH_ENGINE"] == "redis"
    assert hub_cm["PUSHMESH_REDIS_URL"] == "rediss://redis-a:6380,rediss://redis-b:6380"
    assert hub_cm["PUSHMESH_REDIS_CLUSTER"] == "true"
    assert hub_cm["PUSHMESH_ENGINE_TIMEOUT_MS"] == "300"
    assert hub_cm["PUSHMESH_REDIS_TLS_CA"] == "/etc/pushmesh/redis-ca/ca.crt"
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    hub = sts["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in hub["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs["PUSHMESH_REDIS_URL"] == {"name": "my-redis", "key": "redis-url", "optional": True}
    assert refs["PUSHMESH_REDIS_PASSWORD"] == {"name": "my-redis", "key": "redis-password", "optional": True}
    assert hub["volumeMounts"] == [{"name": "redis-ca", "mountPath": "/etc/pushmesh/redis-ca", "readOnly": True}]
    assert sts["spec"]["template"]["spec"]["volumes"] == [{"name": "redis-ca", "secret": {"secretName": "redis-ca"}}]
    assert not [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-redis")], \
        "no bundled Redis unless redis.enabled"
    # The memory engine (the default) sets no Redis variable.
    docs, _ = render()
    hub_cm = next(c for n, c in by_kind(docs, "ConfigMap").items() if n.endswith("-hub"))["data"]
    assert hub_cm["PUSHMESH_ENGINE"] == "memory"
    assert not [k for k in hub_cm if "REDIS" in k]


def test_the_bundled_redis_is_one_persistent_pod_only_the_hubs_may_reach():
    docs, _ = render(set_values=("engine.type=redis", "redis.enabled=true", "networkPolicy.enabled=true"),
                     release="pm", namespace="ns")
    redis = by_kind(docs, "StatefulSet")["pm-pushmesh-redis"]
    spec = redis["spec"]
    assert spec["replicas"] == 1
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    c = spec["template"]["spec"]["containers"][0]
    assert c["command"][0] == "redis-server" and "--appendonly" in c["command"]
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = by_kind(docs, "Service")["pm-pushmesh-redis"]
    assert svc["spec"]["clusterIP"] == "None"
    hub_cm = by_kind(docs, "ConfigMap")["pm-pushmesh-hub"]["data"]
    assert hub_cm["PUSHMESH_REDIS_URL"] == "redis://pm-pushmesh-redis.ns.svc.cluster.local:6379"
    np = by_kind(docs, "NetworkPolicy")["pm-pushmesh-redis"]
    assert np["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pushmesh", "app.kubernetes.io/instance": "pm",
                                         "app.kubernetes.io/component": "hub"}}}]
    # Without persistence: an emptyDir.
    docs, _ = render(set_values=("engine.type=redis", "redis.enabled=true", "redis.persistence.enabled=false"))
    redis = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-redis"))
    assert "volumeClaimTemplates" not in redis["spec"]
    assert redis["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


# ---- hub mutual TLS (hub.tls) ------------------------------------------------------


def _san(pem: str) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem,
                         capture_output=True, text=True, check=True)
    return out.stdout


def _env(docs, component):
    cm = by_kind(docs, "ConfigMap")[f"pm-pushmesh-{component}"]
    return cm["data"]


def test_hub_tls_generates_certificates_with_roles_and_mounts_them_everywhere():
    import base64
    docs, _ = render(set_values=("hub.tls.enabled=true",))
    secret = by_kind(docs, "Secret")["pm-pushmesh-hub-tls"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"ca.crt", "hub.crt", "hub.key", "ws-gateway.crt", "ws-gateway.key",
                         "http-ingress.crt", "http-ingress.key"}
    domain = "pm-pushmesh-hub-headless.pushmesh.svc.cluster.local"
    assert f"DNS:{domain}" in _san(data["hub.crt"])
    # The role-only names the hub reads (services/hub/src/identity.rs).
    assert "DNS:pushmesh-gateway" in _san(data["ws-gateway.crt"])
    assert "DNS:pushmesh-ingress" in _san(data["http-ingress.crt"])

    hub_env = _env(docs, "hub")
    assert hub_env["PUSHMESH_TLS_CLIENT_CA"] == "/etc/pushmesh/hub-tls/ca.crt"
    assert hub_env["PUSHMESH_TLS_CERT"] == "/etc/pushmesh/hub-tls/tls.crt"
    for component in ("ws-gateway", "http-ingress"):
        env = _env(docs, component)
        assert env["PUSHMESH_HUB_TLS_DOMAIN"] == domain
        assert env["PUSHMESH_HUB_TLS_CERT"] == "/etc/pushmesh/hub-tls/tls.crt"
    for w, c in containers(docs):
        component = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        assert mounts.get("hub-tls") == "/etc/pushmesh/hub-tls", component
        vol = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == "hub-tls")
        items = {i["key"]: i["path"] for i in vol["secret"]["items"]}
        assert vol["secret"]["secretName"] == "pm-pushmesh-hub-tls"
        assert items == {"ca.crt": "ca.crt", f"{component}.crt": "tls.crt", f"{component}.key": "tls.key"}
        if component == "hub":
            # The kubelet's gRPC probe speaks no TLS: the admin port instead.
            assert "grpc" not in c["readinessProbe"] and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert "grpc" not in c["startupProbe"]


def test_hub_tls_from_existing_secrets_and_all_or_none():
    sets = ("hub.tls.enabled=true", "hub.tls.existingSecrets.hub=hub-cert",
            "hub.tls.existingSecrets.wsGateway=gw-cert", "hub.tls.existingSecrets.httpIngress=ing-cert")
    docs, _ = render(set_values=sets)
    assert "pm-pushmesh-hub-tls" not in by_kind(docs, "Secret")
    want = {"hub": "hub-cert", "ws-gateway": "gw-cert", "http-ingress": "ing-cert"}
    for w, _c in containers(docs):
        component = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        vol = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == "hub-tls")
        assert vol["secret"]["secretName"] == want[component]
        assert {i["key"] for i in vol["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    _, proc = render(set_values=sets[:2], check=False)
    assert proc.returncode != 0 and "give all three Secrets" in proc.stderr
    # Off by default: no certificate, no TLS flag, the native gRPC probes.
    docs, _ = render()
    assert "PUSHMESH_TLS_CERT" not in _env(docs, "hub")
    assert all("hub-tls" not in str(w) for w in docs)


def test_namespaces_values_become_the_file_the_gateway_and_the_hub_read(tmp_path):
    values = tmp_path / "ns.yaml"
    values.write_text(yaml.safe_dump({"namespaces": {
        "proxy": {"endpoint": "http://backend.apps:3000/pushmesh", "connect": True, "timeout_ms": 800},
        "list": [{"prefix": "chat:", "client_publish": True, "join_leave": True,
                  "require_claims": {"role": "member", "level": 3},
                  "history_size": 3, "history_ttl_secs": 60},
                 {"prefix": ""}],
    }}))
    docs, _ = render(values)
    cm = by_kind(docs, "ConfigMap")["pm-pushmesh-ws-gateway-namespaces"]
    text = cm["data"]["namespaces.toml"]
    import tomllib
    parsed = tomllib.loads(text)
    assert parsed["proxy"] == {"endpoint": "http://backend.apps:3000/pushmesh", "connect": True, "timeout_ms": 800}
    assert parsed["namespace"][0]["require_claims"] == {"role": "member", "level": 3}
    dep = by_kind(docs, "Deployment")["pm-pushmesh-ws-gateway"]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["checksum/namespaces"]
    (c,) = pod["spec"]["containers"]
    assert {"name": "namespaces", "mountPath": "/etc/pushmesh/namespaces", "readOnly": True} in c["volumeMounts"]
    assert pod["spec"]["volumes"] == [{"name": "namespaces", "configMap": {"name": "pm-pushmesh-ws-gateway-namespaces"}}]
    env = by_kind(docs, "ConfigMap")["pm-pushmesh-ws-gateway"]["data"]
    assert env["PUSHMESH_NAMESPACES"] == "/etc/pushmesh/namespaces/namespaces.toml"
    # The gateway itself accepts the file: it gets as far as binding its port.
    f = tmp_path / "namespaces.toml"
    f.write_text(text)
    line, stderr = announce_line([ROOT / "target" / "debug" / "ws-gateway", "--namespaces", f,
                                  "--listen-addr", "127.0.0.1:0", "--hub", "http://127.0.0.1:1"])
    assert '"listening"' in line, stderr
    # The hubs mount the same file (history_size / history_ttl_secs per
    # namespace), and the real hub accepts it whole, gateway keys included.
    assert parsed["namespace"][0]["history_size"] == 3
    sts = by_kind(docs, "StatefulSet")["pm-pushmesh-hub"]
    hub_pod = sts["spec"]["template"]
    assert hub_pod["metadata"]["annotations"]["checksum/namespaces"] == pod["metadata"]["annotations"]["checksum/namespaces"]
    (h,) = hub_pod["spec"]["containers"]
    assert {"name": "namespaces", "mountPath": "/etc/pushmesh/namespaces", "readOnly": True} in h["volumeMounts"]
    assert {"name": "namespaces", "configMap": {"name": "pm-pushmesh-ws-gateway-namespaces"}} in hub_pod["spec"]["volumes"]
    hub_env = by_kind(docs, "ConfigMap")["pm-pushmesh-hub"]["data"]
    assert hub_env["PUSHMESH_NAMESPACES"] == "/etc/pushmesh/namespaces/namespaces.toml"
    hub_bin = ROOT / "target" / "debug" / "hub"
    line, stderr = announce_line([hub_bin, "--namespaces", f, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
    assert '"listening"' in line, stderr
    # A file the hub refuses is refused before it binds, naming the line.
    f.write_text(text + "\nhistory_ttl_secs = 0\n")
    bad = subprocess.run([str(hub_bin), "--namespaces", str(f), "--grpc-addr", "127.0.0.1:0",
                          "--admin-addr", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and bad.stdout == "", bad.stdout
    assert f"line {(text + chr(10)).count(chr(10)) + 1}: history_ttl_secs must be" in bad.stderr, bad.stderr
    # Without namespaces values: no file, no mount, no variable.
    default, _ = render()
    assert "pm-pushmesh-ws-gateway-namespaces" not in by_kind(default, "ConfigMap")
    for component in ("ws-gateway", "hub"):
        assert "PUSHMESH_NAMESPACES" not in by_kind(default, "ConfigMap")[f"pm-pushmesh-{component}"]["data"]
    (h,) = by_kind(default, "StatefulSet")["pm-pushmesh-hub"]["spec"]["template"]["spec"]["containers"]
    assert not any(m["name"] == "namespaces" for m in h.get("volumeMounts", []))


def test_the_deprecated_wsgateway_namespaces_value_still_renders_the_same_file(tmp_path):
    ns = {"proxy": {"endpoint": "grpc://backend.apps:50051", "rpc": True},
          "list": [{"prefix": "chat:", "history_size": 3, "require_claims": {"role": "member"}}]}
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump({"wsGateway": {"namespaces": ns}}))
    new.write_text(yaml.safe_dump({"namespaces": ns}))
    files = []
    for values in (old, new):
        docs, _ = render(values)
        files.append(by_kind(docs, "ConfigMap")["pm-pushmesh-ws-gateway-namespaces"]["data"]["namespaces.toml"])
        sts = by_kind(docs, "StatefulSet")["pm-pushmesh-hub"]
        assert {"name": "namespaces", "configMap": {"name": "pm-pushmesh-ws-gateway-namespaces"}} \
            in sts["spec"]["template"]["spec"]["volumes"]
    assert files[0] == files[1]
    import tomllib
    assert tomllib.loads(files[0])["namespace"][0]["history_size"] == 3


def test_colocated_hubs_run_in_the_ingress_pods_behind_the_same_headless_name(tmp_path):
    values = tmp_path / "colocated.yaml"
    values.write_text(yaml.safe_dump({
        "hub": {"colocated": True},
        "httpIngress": {"replicas": 2},
        "networkPolicy": {"enabled": True},
        "engine": {"type": "redis"}, "redis": {"enabled": True},
        "namespaces": {"list": [{"prefix": "chat:", "history_size": 3}]},
    }))
    docs, _ = render(values)
    workloads = {d["metadata"]["name"] for d in docs if d["kind"] in WORKLOADS}
    assert "pm-pushmesh-hub" not in workloads, "no hub StatefulSet"
    assert "pm-pushmesh-hub" not in by_kind(docs, "ConfigMap"), "no ConfigMap for hub pods that do not exist"
    assert "pm-pushmesh-hub" not in by_kind(docs, "PodDisruptionBudget")

    # The hubs' headless name now answers the ingress pods, on their hub ports:
    # gateways and ingresses find hubs exactly as before.
    svc = by_kind(docs, "Service")["pm-pushmesh-hub-headless"]
    ingress = by_kind(docs, "Deployment")["pm-pushmesh-http-ingress"]
    pod = ingress["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"grpc": "hub-grpc", "admin": "hub-admin"}
    (c,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8081, "grpc": 8082, "hub-grpc": 50051, "hub-admin": 9090}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # Its URL in the hub set is what the headless name resolves to for this pod.
    assert env["PUSHMESH_COLOCATED_HUB_URL"]["value"] == "http://$(POD_IP):50051"
    assert env["PUSHMESH_HUB_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    data = by_kind(docs, "ConfigMap")["pm-pushmesh-http-ingress"]["data"]
    assert data["PUSHMESH_COLOCATED_HUB_ADDR"] == "0.0.0.0:50051"
    assert data["PUSHMESH_COLOCATED_HUB_ADMIN_ADDR"] == "0.0.0.0:9090"
    assert data["PUSHMESH_HUB_DNS"] == "pm-pushmesh-hub-headless.pushmesh.svc.cluster.local:50051"
    assert data["PUSHMESH_ENGINE"] == "redis" and data["PUSHMESH_REDIS_URL"].startswith("redis://pm-pushmesh-redis.")
    assert data["PUSHMESH_NAMESPACES"] == "/etc/pushmesh/namespaces/namespaces.toml"
    assert "PUSHMESH_QUERY_TIMEOUT_MS" not in data, "the ingress's own query deadline stays its default"
    assert {"name": "namespaces", "mountPath": "/etc/pushmesh/namespaces", "readOnly": True} in c["volumeMounts"]
    assert pod["metadata"]["annotations"]["checksum/namespaces"]

    # Network policy: the hub port of the ingress pods takes gateways and
    # ingresses; the bundled Redis takes the ingress pods (their hubs).
    policies = by_kind(docs, "NetworkPolicy")
    labels = {w["metadata"]["name"].removeprefix("pm-pushmesh-"): w["spec"]["template"]["metadata"]["labels"]
              for w in docs if w["kind"] in WORKLOADS}
    hub_policy = policies["pm-pushmesh-hub"]
    same = {"same": True}
    assert hub_policy["spec"]["podSelector"]["matchLabels"].items() <= labels["http-ingress"].items()
    assert _admits(hub_policy, labels["ws-gateway"], same, "hub-grpc")
    assert _admits(hub_policy, labels["http-ingress"], same, "hub-grpc")
    assert not _admits(hub_policy, {"app": "something-else"}, same, "hub-grpc")
    assert _admits(policies["pm-pushmesh-redis"], labels["http-ingress"], same, "redis")

    # The printed instructions wait for no hub StatefulSet.
    notes = helm("template", "pm", str(CHART), "--namespace", "pushmesh", "--values", str(values),
                 "--show-only", "templates/NOTES.txt", check=False)
    assert "statefulset/pm-pushmesh-hub" not in notes.stdout


def test_colocated_ingress_starts_its_hub_from_the_rendered_environment(tmp_path):
    docs, _ = render(set_values=("hub.colocated=true",))
    data = by_kind(docs, "ConfigMap")["pm-pushmesh-http-ingress"]["data"]
    env = dict(data)
    # On this machine: loopback and free ports instead of the pod's.
    env.update({"PUSHMESH_LISTEN_ADDR": "127.0.0.1:0", "PUSHMESH_GRPC_ADDR": "127.0.0.1:0",
                "PUSHMESH_COLOCATED_HUB_ADDR": "127.0.0.1:0", "PUSHMESH_COLOCATED_HUB_ADMIN_ADDR": "127.0.0.1:0",
                "PUSHMESH_LOG_FORMAT": "text", "PATH": "/usr/bin:/bin"})
    env.pop("PUSHMESH_HUB_DNS")  # no cluster DNS here: the hub set is the pod's own hub
    line, stderr = announce_line([ROOT / "target" / "debug" / "http-ingress"], env=env)
    assert line, stderr
    assert {"http", "grpc", "hub-grpc", "hub-admin"} <= json.loads(line)["listening"].keys(), line
