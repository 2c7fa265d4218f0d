"""The Kubernetes manifests as a cluster receives them.

``kubectl kustomize`` renders what users apply (``deploy/kubernetes``: one pod;
``deploy/kubernetes/shards``: a StatefulSet of shards). Every object is validated against the
Kubernetes API schemas (kubernetes-validate, strict: an unknown field is an error) for the oldest
and the newest Kubernetes the manifests support, and the Prometheus Operator's objects against
models generated from its CRD schemas. Then what a reviewer of a chart checks: the restricted Pod
Security Standard, resources from the benchmark, the Service and ServiceMonitor agreeing, the
rules and dashboards complete, egress limited to DNS, HTTPS and the proxy, and the probes and the
shard ordinal working on the real agent started with the rendered arguments and environment.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1
from kubernetes_validate.utils import latest_version

from agent.config import Settings
from tests.deploy_support import (
    Process,
    leave_out_the_big_partner,
    samples,
    wait_for_file,
    wait_http,
)
from tests.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SETUPS = {"single": K8S, "shards": K8S / "shards"}
"""What users apply: ``kubectl apply -k`` on each of these."""
OLDEST_KUBERNETES = "1.28.0"
"""The StatefulSet takes the shard from the pod-index label, which Kubernetes has since 1.28."""
EXPORTER_DOWN_JOB_REGEX = r".*sophos-central.*"
PROXY_PORT = 3128
PYTHON = (sys.executable, "-m", "agent")

pytestmark = pytest.mark.deploy


@functools.cache
def rendered(setup: str) -> tuple[dict[str, Any], ...]:
    # The bootstrap's pinned kubectl in the virtual environment, else the machine's.
    pinned = Path(sys.executable).parent / "kubectl"
    kubectl = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found; `scripts/bootstrap --debian` installs it", pytrace=False)
    result = subprocess.run(
        [kubectl, "kustomize", str(SETUPS[setup])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(setup: str) -> dict[str, dict[str, Any]]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in rendered(setup)}


def workload(setup: str) -> dict[str, Any]:
    [found] = [d for d in rendered(setup) if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def container(setup: str) -> dict[str, Any]:
    [exporter] = workload(setup)["spec"]["template"]["spec"]["containers"]
    return dict(exporter)


def test_each_setup_renders_the_exporter_its_monitoring_and_its_policy() -> None:
    common = {
        "Service/sophos-central-exporter",
        "ServiceMonitor/sophos-central-exporter",
        "PrometheusRule/sophos-central-exporter",
        "ConfigMap/sophos-central-exporter-dashboards",
        "NetworkPolicy/sophos-central-exporter",
    }
    assert objects("single").keys() == common | {"Deployment/sophos-central-exporter"}
    assert objects("shards").keys() == common | {"StatefulSet/sophos-central-exporter"}
    for setup in SETUPS:
        assert all(d["kind"] != "Secret" for d in rendered(setup)), "no secret in what is applied"


# --- schemas -------------------------------------------------------------------------------------


def _kubernetes_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for setup in SETUPS:
        for doc in rendered(setup):
            if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
                yield f"{setup}:{doc['kind']}", doc
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    yield "secret.example.yaml", secret


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, latest_version()])
def test_every_object_is_valid_for_the_kubernetes_api(version: str) -> None:
    checked = []
    for where, doc in _kubernetes_objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not valid for Kubernetes {version}: {exc}")
        checked.append(where)
    assert len(checked) == 9  # 4 built-in kinds in each setup and the example Secret
    # The validator itself refuses what the API server would (so a pass means something).
    typo = copy.deepcopy(workload("single"))
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def _validate_custom_resource(doc: dict[str, Any]) -> None:
    """Types, patterns, enums and required fields from the CRD schema; unknown fields refused.

    The models ignore fields the CRD does not know (as the API server prunes them); a field that
    does not survive the round trip is such a field, which ``kubectl apply`` would refuse.
    """
    model = getattr(monitoring_v1, doc["kind"]).model_validate(doc)
    back = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert back == doc, f"{doc['kind']}: fields the CRD does not define were dropped"


def test_prometheus_operator_objects_are_valid_for_their_crds() -> None:
    for setup in SETUPS:
        custom = [d for d in rendered(setup) if d["apiVersion"] == "monitoring.coreos.com/v1"]
        assert sorted(d["kind"] for d in custom) == ["PrometheusRule", "ServiceMonitor"]
        for doc in custom:
            _validate_custom_resource(doc)
    monitor = objects("single")["ServiceMonitor/sophos-central-exporter"]
    for broken in (
        {"portt": "metrics"},  # unknown field
        {"port": "metrics", "interval": "30 seconds"},  # not a Prometheus duration
    ):
        bad = copy.deepcopy(monitor)
        bad["spec"]["endpoints"] = [broken]
        with pytest.raises((AssertionError, ValueError)):
            _validate_custom_resource(bad)


# --- hardening -----------------------------------------------------------------------------------


def _image_uid() -> int:
    [user] = re.findall(r"^USER\s+(\d+):\d+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


@pytest.mark.parametrize("setup", SETUPS)
def test_pod_meets_the_restricted_pod_security_standard(setup: str) -> None:
    pod = workload(setup)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in volume for volume in pod["volumes"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    exporter = container(setup)
    context = exporter["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == _image_uid()
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in context
    writable = {m["mountPath"] for m in exporter["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/sophos-central-exporter", "/tmp"}
    assert Settings.model_fields["state_file"].default.parent == Path(
        "/var/lib/sophos-central-exporter"
    ), "the default state file is on the writable volume"


def _peak_rss_mib() -> float:
    """Peak RSS at 10,000 tenants, as bench/README.md reports benchmark d."""
    text = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^\| d \| peak RSS .*?\| ([\d.]+) MiB", text, re.MULTILINE)
    assert match is not None, "benchmark d's row in bench/README.md"
    return float(match.group(1))


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("setup", SETUPS)
def test_resources_are_sized_from_the_benchmarks_peak_memory(setup: str) -> None:
    resources = container(setup)["resources"]
    peak = _peak_rss_mib()
    assert _mebibytes(resources["requests"]["memory"]) >= peak, "request covers the peak"
    assert _mebibytes(resources["limits"]["memory"]) >= 2 * peak, "limit: room to double"
    assert resources["requests"]["cpu"]
    assert "cpu" not in resources["limits"], "no CPU throttling of probes and scrapes"


def test_the_shards_pod_is_the_single_pods_but_for_the_shard_and_the_volume() -> None:
    single, shards = workload("single"), workload("shards")
    one, many = copy.deepcopy(single["spec"]["template"]), copy.deepcopy(shards["spec"]["template"])
    assert [e["name"] for e in many["spec"]["containers"][0].pop("env")] == [
        "SOPHOS_EXPORTER_SHARD",
        "SOPHOS_EXPORTER_TOTAL_SHARDS",
    ]
    assert "env" not in one["spec"]["containers"][0]
    state = one["spec"]["volumes"].pop([v["name"] for v in one["spec"]["volumes"]].index("state"))
    assert state == {"name": "state", "emptyDir": {}}
    assert [c["metadata"]["name"] for c in shards["spec"]["volumeClaimTemplates"]] == ["state"]
    assert one == many


# --- scraping, rules, dashboards -----------------------------------------------------------------


@pytest.mark.parametrize("setup", SETUPS)
def test_service_monitor_scrapes_the_pods_metrics_port_through_the_service(setup: str) -> None:
    found = objects(setup)
    service = found["Service/sophos-central-exporter"]
    monitor = found["ServiceMonitor/sophos-central-exporter"]
    pod_labels = workload(setup)["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in container(setup)["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        target = service_ports[endpoint["port"]]["targetPort"]
        assert target in container_ports, f"the Service sends {endpoint['port']} to {target}"
        assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The Operator names the scrape job after the Service; SophosCentralExporterDown matches it.
    assert re.fullmatch(EXPORTER_DOWN_JOB_REGEX, service["metadata"]["name"])
    if setup == "shards":
        assert service["spec"]["clusterIP"] == "None"
        assert workload(setup)["spec"]["serviceName"] == service["metadata"]["name"]


@pytest.mark.parametrize("setup", SETUPS)
def test_prometheus_rule_carries_every_rule_in_alerts(setup: str) -> None:
    groups = []
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    assert groups
    rule = objects(setup)["PrometheusRule/sophos-central-exporter"]
    assert rule["spec"]["groups"] == groups


@pytest.mark.parametrize("setup", SETUPS)
def test_dashboards_config_map_carries_every_dashboard(setup: str) -> None:
    dashboards = {
        p.name: p.read_text(encoding="utf-8") for p in (ROOT / "dashboards").glob("*.json")
    }
    assert dashboards
    configmap = objects(setup)["ConfigMap/sophos-central-exporter-dashboards"]
    assert configmap["data"] == dashboards
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- network policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("setup", SETUPS)
def test_network_policy_lets_out_only_dns_https_and_the_proxy(setup: str) -> None:
    policy = objects(setup)["NetworkPolicy/sophos-central-exporter"]["spec"]
    pod_labels = workload(setup)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    egress = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports would allow every port"
        egress |= {(p["port"], p["protocol"]) for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (PROXY_PORT, "TCP")}
    ingress = [(p["port"], p["protocol"]) for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress == [("metrics", "TCP")]
    assert "metrics" in {p["name"] for p in container(setup)["ports"]}


def test_the_proxy_port_is_the_one_the_docs_configure() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"proxy_url: http://proxy.example.internal:{PROXY_PORT}" in readme


# --- the running agent ---------------------------------------------------------------------------


@dataclass
class Simulator:
    process: Process
    config: Path


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """The built-in simulator with the demo scenario, and the agent config it wrote."""
    workdir = tmp_path_factory.mktemp("simulator")
    config = workdir / "config.yml"
    process = Process(
        [
            *PYTHON,
            *("simulate", "--listen", f"127.0.0.1:{free_port_block(5)}", "--scenario", "demo"),
            *("--agent-config", str(config)),
        ],
        workdir,
    )
    try:
        wait_for_file(config, within=30, alive=process.gone)
        leave_out_the_big_partner(config)
        yield Simulator(process, config)
    finally:
        process.kill()


def _start_agent_as_the_manifest_does(
    setup: str, simulator: Simulator, workdir: Path, ordinal: int = 0
) -> tuple[Process, str]:
    """The agent with the container's args and env, but this test's config, state and port.

    The listen address the manifest gives must be the container port its probes use.
    """
    exporter = container(setup)
    args = list(exporter["args"])
    listen = args[args.index("--web.listen-address") + 1]
    assert (
        int(listen.rpartition(":")[2])
        == {p["name"]: p for p in exporter["ports"]}["metrics"]["containerPort"]
    )
    config = yaml.safe_load(simulator.config.read_text(encoding="utf-8"))
    config["state_file"] = str(workdir / "state.db")
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    config_path.chmod(0o600)
    port = free_port()
    args[args.index("--config") + 1] = str(config_path)
    args[args.index("--web.listen-address") + 1] = f"127.0.0.1:{port}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "SOPHOS_EXPORTER_PROBE_INTERVAL": "2s"}
    for variable in exporter.get("env", []):
        env[variable["name"]] = _kubelet_value(variable, ordinal)
    return Process([*PYTHON, *args], workdir, env), f"http://127.0.0.1:{port}"


def _kubelet_value(variable: dict[str, Any], ordinal: int) -> str:
    """What the kubelet puts into an environment variable of the pod with this ordinal."""
    if "value" in variable:
        return str(variable["value"])
    field = variable["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']", field
    return str(ordinal)


def _http_probes(setup: str) -> dict[str, dict[str, Any]]:
    exporter = container(setup)
    probes = {
        kind: exporter[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in exporter
    }
    assert {"livenessProbe", "readinessProbe"} <= probes.keys()
    named = {p["name"] for p in exporter["ports"]}
    assert all(probe["port"] in named for probe in probes.values())
    return probes


@pytest.mark.parametrize("setup", SETUPS)
def test_probes_are_answered_by_the_agent_started_as_the_pod_starts_it(
    setup: str, simulator: Simulator, tmp_path: Path
) -> None:
    agent, base = _start_agent_as_the_manifest_does(setup, simulator, tmp_path)
    try:
        for kind, probe in _http_probes(setup).items():
            # Liveness must hold from the start; readiness once every credential's first cycle
            # is over (seconds here).
            within = 60 if kind == "readinessProbe" else 20
            answer = wait_http(base + probe["path"], within, alive=agent.gone)
            assert answer.status_code == 200, f"{kind} {probe['path']}"
    finally:
        assert agent.stop() == 0, agent.output()


def test_the_statefulset_ordinal_becomes_the_shard(simulator: Simulator, tmp_path: Path) -> None:
    shards = workload("shards")
    replicas = shards["spec"]["replicas"]
    env = {v["name"]: v for v in container("shards")["env"]}
    assert env["SOPHOS_EXPORTER_TOTAL_SHARDS"]["value"] == str(replicas)
    assert "--shard" not in container("shards")["args"], "the flag would override the ordinal"
    ordinal = replicas - 1
    agent, base = _start_agent_as_the_manifest_does("shards", simulator, tmp_path, ordinal)
    try:
        metrics = wait_http(f"{base}/metrics", 20, alive=agent.gone).text
        assert samples(metrics, "sophos_central_shard_ordinal") == [({}, ordinal)]
        assert samples(metrics, "sophos_central_total_shards") == [({}, replicas)]
    finally:
        assert agent.stop() == 0, agent.output()
