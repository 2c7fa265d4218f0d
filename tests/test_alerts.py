"""The alert rules, their promtool tests, the Alertmanager example and the runbook agree.

Everything runs the real binaries (promtool, amtool, Alertmanager). A missing binary fails the
test with the command that installs it: scripts/bootstrap installs them for the test command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import collection, expiry
from agent.families import BUILTINS
from tools.shorten_for import duration_ms, scale_for_file, shorten_for_file

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
AM_CONFIG = ALERTS / "alertmanager.example.yml"
AM_TEMPLATES = ALERTS / "sophos-central.tmpl"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = (
    "https://github.com/sophos-central-exporter/sophos-central-exporter/blob/main/docs/runbook.md#"
)

# CONTRACT.md, "Alert rules": the names are fixed.
CONTRACT_ALERTS = (
    "SophosCentralTokenIssuanceFailing",
    "SophosCentralUnauthorizedSpike",
    "SophosCentralForbiddenSpike",
    "SophosCentralPersistent5xx",
    "SophosCentralApiOutage",
    "SophosCentralRateLimited",
    "SophosCentralRateBudgetHigh",
    "SophosCentralProbesStale",
    "SophosCentralExporterDown",
    "SophosCentralCredentialExpiringSoon",
    "SophosCentralSiemCollectionAtRisk",
)
SEVERITIES = {"critical", "warning", "info"}
INSTALL_HINT = "install it with: apt-get install -y prometheus prometheus-alertmanager"


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' / '.join(names)} not found on PATH; {INSTALL_HINT}", pytrace=False)


def run(*cmd: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def alerting_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


# --- promtool ---------------------------------------------------------------------------------


def test_rule_files_pass_promtool_check_rules() -> None:
    result = run(binary("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def promtool_results() -> dict[Path, subprocess.CompletedProcess[str]]:
    """Every unit-test file through ``promtool test rules``, as many at once as there are cores:
    the files that evaluate a day and more of samples every minute take promtool tens of seconds
    each, on about one core."""
    promtool = binary("promtool")
    slowest_first = sorted(TEST_FILES, key=lambda p: p.stat().st_size, reverse=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        running = {p: pool.submit(run, promtool, "test", "rules", str(p)) for p in slowest_first}
        return {path: future.result() for path, future in running.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(
    test_file: Path, promtool_results: dict[Path, subprocess.CompletedProcess[str]]
) -> None:
    result = promtool_results[test_file]
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(CONTRACT_ALERTS) - firing == set(), "alerts without a firing case"
    assert set(CONTRACT_ALERTS) - quiet == set(), "alerts without a not-firing case"


def test_unit_tests_load_every_rule_file() -> None:
    for path in TEST_FILES:
        listed = yaml.safe_load(path.read_text(encoding="utf-8"))["rule_files"]
        loaded = {(path.parent / name).resolve() for name in listed}
        assert loaded == {p.resolve() for p in RULE_FILES}, path.name


# --- the rules themselves ---------------------------------------------------------------------


def test_every_contract_alert_exists() -> None:
    names = {rule["alert"] for rule in alerting_rules()}
    assert names == set(CONTRACT_ALERTS)


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"] and "{{" not in annotations["summary"], "summary is static"
    assert "{{" in annotations["description"], "description is templated"
    assert "$labels.credential" in annotations["description"] or rule["alert"] == (
        "SophosCentralExporterDown"
    ), "the description names the credential"
    assert annotations["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()


STATUS_LINK = (
    "/status?credential={{ $labels.credential | urlquery }} "
    "{{- with $labels.tenant_id }}&tenant={{ . | urlquery }}{{ end }}"
)


def test_every_alert_about_a_credential_links_to_its_status_page() -> None:
    """One link template for every alert (a YAML anchor), ending in the /status query the page
    reads; ExporterDown, about a process that does not answer, has none."""
    links = {rule["alert"]: rule["annotations"].get("status_url") for rule in alerting_rules()}
    assert links.pop("SophosCentralExporterDown") is None
    assert len(set(links.values())) == 1, "every alert shares the one status_url template"
    template = next(iter(links.values()))
    assert template is not None and template.endswith(STATUS_LINK)
    assert "sophos_central_exporter_external_url_info" in template
    assert "http://{{ $labels.instance }}" in template  # no external_url: the scraped address


def rules_named(name: str) -> dict[str, dict[str, Any]]:
    """The rules of one alert by severity."""
    return {r["labels"]["severity"]: r for r in alerting_rules() if r["alert"] == name}


def test_credential_expiry_thresholds_are_the_agents() -> None:
    """The alert warns and pages at the whole days left /status and `check` flag."""
    rules = rules_named("SophosCentralCredentialExpiringSoon")
    assert set(rules) == {"warning", "critical"}
    for severity, days in (("warning", expiry.WARNING_DAYS), ("critical", expiry.CRITICAL_DAYS)):
        expr = re.sub(r"\s+", " ", rules[severity]["expr"]).strip()
        assert expr.endswith(f"/ 86400 ) < {days}"), expr
        assert "sophos_central_credential_expiry_timestamp_seconds" in expr


def test_siem_collection_thresholds_families_and_confirmation_are_the_agents() -> None:
    """What the rule hard-codes is what the agent plans with (agent.collection) and the families
    whose API forgets (agent.families' lookback)."""
    rules = rules_named("SophosCentralSiemCollectionAtRisk")
    assert set(rules) == {"warning", "critical"}
    forgetting = {f.name: f.lookback for f in BUILTINS.values() if f.lookback}
    (lookback,) = set(forgetting.values())
    for severity, after in (
        ("warning", collection.WARNING_AFTER),
        ("critical", collection.CRITICAL_AFTER),
    ):
        expr = re.sub(r"\s+", " ", rules[severity]["expr"])
        assert expr.startswith(f"{lookback / 3600:g} - ( time() - max by"), expr
        assert f"/ 3600 <= {(lookback - after) / 3600:g} " in expr, expr
        assert re.findall(r'probe=~"([^"]*)"', expr) == ["|".join(forgetting)] * 3
        assert "sophos_central_probe_consecutive_failures" in expr
        assert duration_ms(rules[severity]["for"]) == collection.ALERT_FOR * 1000
        assert 'kind="failure"' in expr


def test_every_runbook_url_points_at_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alerting_rules():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no '#{anchor}' heading in docs/runbook.md"


def test_runbook_mentions_the_check_and_support_bundle_commands() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    assert "sophos-central-exporter check --config" in text
    assert "sophos-central-exporter support-bundle --config" in text
    assert "New API 5xx error" in text


def test_firing_alerts_carry_the_credential_label_alertmanager_groups_and_inhibits_by() -> None:
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] == "SophosCentralExporterDown":
                    continue
                for alert in check.get("exp_alerts") or []:
                    assert "credential" in alert["exp_labels"], (path.name, check["alertname"])


# --- the test-time transform ------------------------------------------------------------------


def test_shorten_for_rewrites_every_for_and_keeps_the_rules_valid(tmp_path: Path) -> None:
    for source in RULE_FILES:
        shorten_for_file(source, tmp_path / source.name, "5s", interval="1s")
    shortened = [
        rule
        for path in tmp_path.glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]
    original = [
        r for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]
    ]
    assert len(shortened) == len(original)
    for before, after in zip(original, shortened, strict=True):
        assert after["expr"] == before["expr"]
        assert after.get("for") == ("5s" if "for" in before else None)
    result = run(binary("promtool"), "check", "rules", *map(str, tmp_path.glob("*.rules.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scale_for_divides_every_for_and_keeps_their_order(tmp_path: Path) -> None:
    for source in RULE_FILES:
        scale_for_file(source, tmp_path / source.name, 60, interval="1s")
    before = [
        (r["alert"], duration_ms(r["for"]))
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text(encoding="utf-8"))["groups"]
        for r in g["rules"]
        if "alert" in r and "for" in r
    ]
    after = [
        (r["alert"], duration_ms(r["for"]))
        for p in sorted(tmp_path.glob("*.rules.yml"))
        for g in yaml.safe_load(p.read_text(encoding="utf-8"))["groups"]
        for r in g["rules"]
        if "alert" in r and "for" in r
    ]
    assert [(name, ms // 60) for name, ms in before] == after
    # The order the Alertmanager inhibition relies on: the outage fires first.
    outage = min(ms for name, ms in after if name == "SophosCentralApiOutage")
    persistent = min(ms for name, ms in after if name == "SophosCentralPersistent5xx")
    assert outage < persistent
    result = run(binary("promtool"), "check", "rules", *map(str, tmp_path.glob("*.rules.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


# --- Alertmanager -----------------------------------------------------------------------------


def test_alertmanager_example_passes_amtool_check_config() -> None:
    result = run(binary("amtool"), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


ROUTES = [
    (["severity=critical", "alertname=SophosCentralApiOutage", "credential=msp-main"], "pager"),
    (["severity=critical", "alertname=SophosCentralSiemCollectionAtRisk", "tenant_id=t1"], "pager"),
    (["severity=warning", "alertname=SophosCentralCredentialExpiringSoon"], "chat"),
    (["severity=critical", "alertname=SophosCentralExporterDown"], "pager"),
    (["severity=warning", "alertname=SophosCentralPersistent5xx", "credential=msp-main"], "chat"),
    (["severity=warning", "alertname=SophosCentralForbiddenSpike", "scope=tenant"], "chat"),
    (["severity=info", "alertname=SophosCentralRateBudgetHigh", "window=1d"], "low-priority"),
    (["alertname=SomethingWithoutSeverity"], "chat"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=lambda v: str(v))
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    expected = f"sophos-central-{receiver}"
    result = run(
        binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        f"--verify.receivers={expected}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == expected


def test_the_example_loads_its_templates_from_beside_it() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    assert [AM_CONFIG.parent / t for t in config["templates"]] == [AM_TEMPLATES]


def test_the_chat_text_shows_each_alerts_link_to_the_exporters_status_page(
    tmp_path: Path,
) -> None:
    """amtool renders the example's templates as Alertmanager would for the chat receiver:
    each alert's summary, description and its status_url and runbook links."""
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    [chat] = [r for r in config["receivers"] if r["name"] == "sophos-central-chat"]
    [slack] = chat["slack_configs"]
    link = "https://sce.example.com/status?credential=msp-main&tenant=t1"
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "SophosCentralSiemCollectionAtRisk", "severity": "warning",
            "credential": "msp-main", "tenant_id": "t1", "probe": "siem_events",
        },
        "annotations": {
            "summary": "A tenant's SIEM collection is failing and about to lose events.",
            "description": "The siem_events probe of tenant t1 ...",
            "status_url": link,
            "runbook_url": RUNBOOK_URL + "sophoscentralsiemcollectionatrisk",
        },
    }  # fmt: skip
    data = {
        "receiver": "sophos-central-chat",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": {"alertname": "SophosCentralSiemCollectionAtRisk", "credential": "msp-main"},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data), encoding="utf-8")
    result = run(
        binary("amtool"),
        "template",
        "render",
        f"--template.glob={AM_TEMPLATES}",
        f"--template.data={tmp_path / 'data.json'}",
        f"--template.text={slack['title']}\n{slack['text']}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:5] == [
        "[FIRING:1] SophosCentralSiemCollectionAtRisk (msp-main)",
        "WARNING: A tenant's SIEM collection is failing and about to lose events.",
        "The siem_events probe of tenant t1 ...",
        f"Status: {link}",
        f"Runbook: {RUNBOOK_URL}sophoscentralsiemcollectionatrisk",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with the example configuration on a free loopback port."""
    exe = binary("prometheus-alertmanager", "alertmanager")
    port = _free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(
                        "Alertmanager did not start:\n"
                        + (tmp_path / "alertmanager.log").read_text(encoding="utf-8")
                    )
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _alert(**labels: str) -> dict[str, Any]:
    return {"labels": labels, "annotations": {"summary": "test"}}


def test_api_outage_inhibits_the_per_tenant_alerts_of_its_credential(alertmanager: str) -> None:
    outage = _alert(
        alertname="SophosCentralApiOutage", severity="critical", scope="tenants",
        job="sophos-central-exporter", credential="msp-main",
    )  # fmt: skip
    tenant_5xx = _alert(
        alertname="SophosCentralPersistent5xx", severity="warning",
        job="sophos-central-exporter", credential="msp-main", tenant_id="t1", probe="tenant",
    )  # fmt: skip
    tenant_403 = _alert(
        alertname="SophosCentralForbiddenSpike", severity="warning", scope="tenant",
        job="sophos-central-exporter", credential="msp-main", tenant_id="t2",
    )  # fmt: skip
    other_credential = _alert(
        alertname="SophosCentralPersistent5xx", severity="warning",
        job="sophos-central-exporter", credential="org-eu", tenant_id="t9", probe="tenant",
    )  # fmt: skip
    rate_limited = _alert(
        alertname="SophosCentralRateLimited", severity="warning",
        job="sophos-central-exporter", credential="msp-main",
    )  # fmt: skip
    _http(
        f"{alertmanager}/api/v2/alerts",
        [outage, tenant_5xx, tenant_403, other_credential, rate_limited],
    )

    expected = {
        ("SophosCentralApiOutage", "msp-main"): "active",
        ("SophosCentralPersistent5xx", "msp-main"): "suppressed",
        ("SophosCentralForbiddenSpike", "msp-main"): "suppressed",
        ("SophosCentralPersistent5xx", "org-eu"): "active",
        ("SophosCentralRateLimited", "msp-main"): "active",
    }
    deadline = time.monotonic() + 15
    while True:
        states = {
            (a["labels"]["alertname"], a["labels"]["credential"]): a["status"]["state"]
            for a in _http(f"{alertmanager}/api/v2/alerts")
        }
        if states == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert states == expected


def test_a_tenants_critical_silences_its_own_warning_not_another_tenants(
    alertmanager: str,
) -> None:
    """SiemCollectionAtRisk fires per tenant, warning and critical: the critical of one tenant
    inhibits that tenant's warning only. Credential-wide alerts still pair by credential."""

    def siem(severity: str, tenant: str) -> dict[str, Any]:
        return _alert(
            alertname="SophosCentralSiemCollectionAtRisk", severity=severity,
            job="sophos-central-exporter", credential="msp-main", tenant_id=tenant,
            probe="siem_events",
        )  # fmt: skip

    def expiring(severity: str) -> dict[str, Any]:
        return _alert(
            alertname="SophosCentralCredentialExpiringSoon", severity=severity,
            job="sophos-central-exporter", credential="msp-main",
        )  # fmt: skip

    _http(
        f"{alertmanager}/api/v2/alerts",
        [siem("critical", "t1"), siem("warning", "t1"), siem("warning", "t2"),
         expiring("critical"), expiring("warning")],
    )  # fmt: skip
    expected = {
        ("SophosCentralSiemCollectionAtRisk", "critical", "t1"): "active",
        ("SophosCentralSiemCollectionAtRisk", "warning", "t1"): "suppressed",
        ("SophosCentralSiemCollectionAtRisk", "warning", "t2"): "active",
        ("SophosCentralCredentialExpiringSoon", "critical", ""): "active",
        ("SophosCentralCredentialExpiringSoon", "warning", ""): "suppressed",
    }
    deadline = time.monotonic() + 15
    while True:
        states = {
            (
                a["labels"]["alertname"],
                a["labels"]["severity"],
                a["labels"].get("tenant_id", ""),
            ): a["status"]["state"]
            for a in _http(f"{alertmanager}/api/v2/alerts")
        }
        if states == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert states == expected


def test_the_readme_lists_every_alert_with_its_severities() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- alerts:begin", 1)[1].split("<!-- alerts:end -->", 1)[0]
    listed = re.findall(r"^- `(\w+)` \(([^)]*)\)", block, flags=re.MULTILINE)
    rules: dict[str, set[str]] = {}
    for rule in alerting_rules():
        rules.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert [name for name, _ in listed] == list(rules)
    for name, severities in listed:
        said = set(re.findall(r"critical|warning|info", severities))
        assert said == rules[name], name
