"""The deployment files: generated ones in sync with their sources, the Docker Compose stack as
Docker Compose itself reads it (``docker-compose config``, v2, installed by the bootstrap),
every service consistent with the Dockerfile and the configurations it mounts."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
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


# --- generated files ---------------------------------------------------------------------------


def test_generated_kubernetes_manifests_are_up_to_date() -> None:
    stale = gen_k8s_rules.stale()
    assert stale == [], "run `uv run python -m tools.gen_k8s_rules` and commit the result"


def test_demo_config_is_up_to_date_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gen_demo_config.DEMO_CONFIG.read_text(encoding="utf-8") == gen_demo_config.render(), (
        "run `uv run python -m tools.gen_demo_config` and commit the result"
    )
    for key in list(os.environ):
        if key.startswith("SOPHOS_EXPORTER_"):
            monkeypatch.delenv(key)
    settings = load_settings(gen_demo_config.DEMO_CONFIG)
    assert [c.name for c in settings.credentials]


# --- Kubernetes (rendered and validated in tests/test_kubernetes.py) ----------------------------


def test_example_secret_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = load_yaml(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
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


def docker_compose(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Docker Compose v2: the bootstrap's pinned binary in the virtual environment."""
    exe = Path(sys.executable).parent / "docker-compose"
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} missing; `scripts/bootstrap --debian` installs it", pytrace=False)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SOPHOS_", "COMPOSE_"))}
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
        cwd=DEPLOY,
    )


@functools.cache
def compose_config(exporter_config: str = "") -> dict[str, Any]:
    """The stack as Docker Compose resolves it: schema-checked, interpolated, paths absolute."""
    env = {"SOPHOS_EXPORTER_CONFIG": exporter_config} if exporter_config else {}
    result = docker_compose(
        "--file", str(COMPOSE), "--profile", "demo", "config", "--format", "json", env=env
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def dockerfile(instruction: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    return re.findall(rf"^{instruction}\s+(.+)$", text, flags=re.MULTILINE)


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Container path -> volume entry."""
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, word in enumerate(command):
        if word == name:
            return command[i + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {command}")


def test_docker_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("    ports:", "    portz:", 1))
    result = docker_compose("--file", str(broken), "config", "--quiet")
    assert result.returncode != 0 and "portz" in result.stderr


def test_exporter_service_matches_the_image_and_its_configs() -> None:
    services = compose_config()["services"]
    exporter = services["sophos-central-exporter"]
    build = exporter["build"]
    assert Path(build["context"]) == ROOT and (ROOT / build["dockerfile"]).is_file()
    assert "profiles" not in exporter, "the exporter runs in every profile"
    [exposed] = dockerfile("EXPOSE")
    [volume] = json.loads(dockerfile("VOLUME")[0])
    command = exporter["command"]
    listen_port = int(flag(command, "--web.listen-address").rpartition(":")[2])
    assert listen_port == int(exposed)
    published = {p["target"]: p for p in exporter["ports"]}
    assert published[listen_port]["host_ip"] == "127.0.0.1"
    state = mounts(exporter)[volume]
    assert state["type"] == "volume" and state["source"] in compose_config()["volumes"]
    config_file = Path(flag(command, "--config"))
    config_mount = mounts(exporter)[str(config_file.parent)]
    assert config_mount["read_only"] is True
    host_config = Path(config_mount["source"]) / config_file.name
    assert host_config.is_file(), host_config
    # The compose secret lands where config.yml reads the client secret from.
    [secret] = exporter["secrets"]
    assert secret["source"] in compose_config()["secrets"]
    files = [c["client_secret_file"] for c in load_yaml(host_config)["credentials"]]
    assert files == [secret.get("target", f"/run/secrets/{secret['source']}")]
    # The default CMD reads the same file.
    assert str(config_file) in dockerfile("CMD")[0]


def test_demo_profile_runs_the_images_simulator_where_demo_yml_points() -> None:
    services = compose_config("demo.yml")["services"]
    exporter, simulator = services["sophos-central-exporter"], services["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert simulator["image"] == exporter["image"], "the simulator is the exporter's image"
    assert simulator["network_mode"] == "service:sophos-central-exporter"
    assert simulator["command"][0] == "simulate"
    sim_port = int(flag(simulator["command"], "--listen").rpartition(":")[2])
    config_file = Path(flag(exporter["command"], "--config"))
    assert config_file.name == "demo.yml"
    demo = load_yaml(Path(mounts(exporter)[str(config_file.parent)]["source"]) / "demo.yml")
    assert demo["api_url"] == f"http://127.0.0.1:{sim_port}"
    assert sim_port in {p["target"] for p in exporter["ports"]}, "its admin API is published"


def test_prometheus_scrapes_the_exporter_and_loads_every_rule_file() -> None:
    services = compose_config()["services"]
    prometheus = services["prometheus"]
    config_mount = mounts(prometheus)[flag(prometheus["command"], "--config.file")]
    config = load_yaml(Path(config_mount["source"]))
    assert Path(config_mount["source"]) == DEPLOY / "prometheus.yml"
    [pattern] = config["rule_files"]
    directory, glob = pattern.rsplit("/", 1)
    loaded = sorted(Path(mounts(prometheus)[directory]["source"]).glob(glob))
    assert loaded == sorted((ROOT / "alerts").glob("*.rules.yml"))
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    exporter_jobs = [job for job in targets if re.fullmatch(EXPORTER_DOWN_JOB_REGEX, job)]
    assert exporter_jobs, "a job SophosCentralExporterDown selects"
    for job in exporter_jobs:
        host, port = targets[job].rsplit(":", 1)
        assert int(port) in {p["target"] for p in services[host]["ports"]}
    [alertmanagers] = config["alerting"]["alertmanagers"]
    [target] = alertmanagers["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    alertmanager = services[host]
    assert int(port) in {p["target"] for p in alertmanager["ports"]}
    directory, name = flag(alertmanager["command"], "--config.file").rsplit("/", 1)
    am_config = Path(mounts(alertmanager)[directory]["source"]) / name
    assert am_config == ROOT / "alerts" / "alertmanager.example.yml"
    templates = load_yaml(am_config)["templates"]  # resolved beside the config, as it is mounted
    assert templates and all((am_config.parent / t).is_file() for t in templates)


def test_grafana_provisions_the_dashboards_and_the_stacks_prometheus() -> None:
    services = compose_config()["services"]
    grafana = services["grafana"]
    provisioning = {
        Path(volume["source"]).name: volume
        for volume in grafana["volumes"]
        if volume["target"].startswith("/etc/grafana/provisioning/")
    }
    provider = load_yaml(Path(provisioning["dashboards.yml"]["source"]))["providers"][0]
    dashboards = mounts(grafana)[provider["options"]["path"]]
    assert Path(dashboards["source"]) == ROOT / "dashboards"
    assert sorted(Path(dashboards["source"]).glob("*.json"))
    [datasource] = load_yaml(Path(provisioning["datasource.yml"]["source"]))["datasources"]
    host, port = datasource["url"].removeprefix("http://").rsplit(":", 1)
    assert int(port) in {p["target"] for p in services[host]["ports"]}


def test_every_file_the_stack_mounts_exists() -> None:
    for name, service in compose_config()["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"


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
