"""The deployment files: generated ones in sync with their sources, the rest well-formed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_settings
from tools import gen_demo_config, gen_k8s_rules

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
EXPORTER_DOWN_JOB_REGEX = r".*sophos-central.*"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def k8s_documents() -> dict[str, dict[str, Any]]:
    """kind/name -> manifest, for every YAML file under deploy/kubernetes."""
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            assert {"apiVersion", "kind"} <= doc.keys(), path.name
            documents[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return documents


# --- generated files ---------------------------------------------------------------------------


def test_generated_kubernetes_manifests_are_up_to_date() -> None:
    stale = gen_k8s_rules.stale()
    assert stale == [], "run `uv run python -m tools.gen_k8s_rules` and commit the result"


def test_prometheus_rule_holds_exactly_the_rule_groups_of_alerts() -> None:
    groups = []
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        groups.extend(load_yaml(path)["groups"])
    rule = load_yaml(gen_k8s_rules.PROMETHEUS_RULE)
    assert rule["kind"] == "PrometheusRule"
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == groups


def test_dashboards_configmap_holds_exactly_the_dashboards() -> None:
    configmap = load_yaml(gen_k8s_rules.DASHBOARDS_CONFIGMAP)
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    expected = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "dashboards").glob("*.json")}
    assert configmap["data"] == expected


def test_demo_config_is_up_to_date_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gen_demo_config.DEMO_CONFIG.read_text(encoding="utf-8") == gen_demo_config.render(), (
        "run `uv run python -m tools.gen_demo_config` and commit the result"
    )
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)
    settings = load_settings(gen_demo_config.DEMO_CONFIG)
    assert [c.name for c in settings.credentials]


# --- Kubernetes --------------------------------------------------------------------------------


def test_kubernetes_manifests_parse_and_kustomization_lists_existing_files() -> None:
    documents = k8s_documents()
    assert {
        "Deployment/sophos-central-exporter",
        "Service/sophos-central-exporter",
        "ServiceMonitor/sophos-central-exporter",
        "PrometheusRule/sophos-central-exporter",
        "ConfigMap/sophos-central-exporter-dashboards",
        "Secret/sophos-central-exporter-config",
    } <= documents.keys()
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "no secrets in the base"


def test_deployment_runs_non_root_with_probes_resources_and_config_from_a_secret() -> None:
    deployment = k8s_documents()["Deployment/sophos-central-exporter"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["ports"] == [{"name": "metrics", "containerPort": 9866, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_volume = volumes[mounts["/etc/sophos-central-exporter"]]
    assert config_volume["secret"]["secretName"] == "sophos-central-exporter-config"
    assert "/var/lib/sophos-central-exporter" in mounts, "a writable volume for the state file"
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/sophos-central-exporter/config.yml"


def test_service_and_service_monitor_agree_on_the_metrics_port() -> None:
    documents = k8s_documents()
    service = documents["Service/sophos-central-exporter"]
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == 9866
    monitor = documents["ServiceMonitor/sophos-central-exporter"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    pod_labels = documents["Deployment/sophos-central-exporter"]["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pod_labels["labels"].items()
    # The Operator names the scrape job after the Service; ExporterDown must match it.
    assert re.fullmatch(EXPORTER_DOWN_JOB_REGEX, service["metadata"]["name"])


def test_example_secret_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = k8s_documents()["Secret/sophos-central-exporter-config"]
    config = yaml.safe_load(secret["stringData"]["config.yml"])
    secret_path = tmp_path / "msp-main.secret"
    secret_path.write_text(secret["stringData"]["msp-main.secret"], encoding="utf-8")
    for credential in config["credentials"]:
        assert Path(credential["client_secret_file"]).name in secret["stringData"]
        credential["client_secret_file"] = str(
            tmp_path / Path(credential["client_secret_file"]).name
        )
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)
    load_settings(config_path)


# --- Docker Compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_has_the_stack() -> None:
    services = compose()["services"]
    assert {"sophos-central-exporter", "prometheus", "alertmanager", "grafana", "simulator"} <= set(
        services
    )
    exporter = services["sophos-central-exporter"]
    assert exporter["build"]["context"] == ".."
    assert any(str(p).endswith("9866:9866") for p in exporter["ports"])
    simulator = services["simulator"]
    assert simulator["profiles"] == ["demo"]
    command = " ".join(simulator["command"])
    assert "simulate --listen 0.0.0.0:9867" in command
    assert "profiles" not in exporter, "the exporter runs in every profile"


def _host_paths(service: dict[str, Any]) -> list[str]:
    paths = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            paths.append(source)
    return paths


def test_compose_references_files_that_exist() -> None:
    document = compose()
    for name, service in document["services"].items():
        for source in _host_paths(service):
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), (
                f"{name}: Dockerfile"
            )
    for name, secret in document.get("secrets", {}).items():
        if "file" in secret:
            assert (DEPLOY / secret["file"]).exists(), f"secret {name}"
    # The exporter's config files: the default and the demo one.
    exporter = document["services"]["sophos-central-exporter"]
    config_arg = exporter["command"][exporter["command"].index("--config") + 1]
    default_name = re.sub(r"\$\{SOPHOS_EXPORTER_CONFIG:-([^}]+)\}", r"\1", config_arg)
    assert (DEPLOY / "config" / Path(default_name).name).is_file()
    assert (DEPLOY / "config" / "demo.yml").is_file()


def test_compose_mounts_the_rules_where_prometheus_loads_them() -> None:
    prometheus = load_yaml(DEPLOY / "prometheus.yml")
    [pattern] = prometheus["rule_files"]
    mounts = dict(
        (v.split(":")[1], v.split(":")[0]) for v in compose()["services"]["prometheus"]["volumes"]
    )
    directory, glob = pattern.rsplit("/", 1)
    host_dir = (DEPLOY / mounts[directory]).resolve()
    loaded = sorted(host_dir.glob(glob))
    assert loaded == sorted((ROOT / "alerts").glob("*.rules.yml"))


def test_prometheus_config_is_valid_and_names_the_job_the_alerts_expect() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH; install it with: apt-get install -y prometheus",
            pytrace=False,
        )
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = [job["job_name"] for job in load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"]]
    assert any(re.fullmatch(EXPORTER_DOWN_JOB_REGEX, job) for job in jobs)


def test_default_compose_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_yaml(DEPLOY / "config" / "config.yml")
    secret = tmp_path / "secret"
    secret.write_text("not-a-real-secret", encoding="utf-8")
    for credential in config["credentials"]:
        credential["client_secret_file"] = str(secret)
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)
    load_settings(config_path)
