"""A credential's expiry, the SIEM collection note and the links' base URL, on every surface:
``/metrics``, ``/status``, ``check`` (table and JSON) say the same thing from one snapshot."""

from __future__ import annotations

import dataclasses
import json
import re

from agent import metricnames as m
from agent.expiry import CRITICAL_DAYS, WARNING_DAYS
from agent.metrics import AgentMetrics
from agent.probes import CredentialState, ProbeResult
from agent.snapshot import Snapshot
from agent.views.check import check_json, format_check
from agent.views.report import build_report
from agent.views.status import render_status_page
from tests.e2e.harness import parse_metrics
from tests.snapshots import NOW, snapshot_of

DAY = 86400.0
NOTE = (
    "SophosCentralSiemCollectionAtRisk cannot warn in time: each tenant's siem_events is probed "
    "every 16.5 h, ... Raise budget_share to 0.14 (now 0.1) to let it."
)


def healthy(name: str, *probes: str, last_success: float | None = None) -> CredentialState:
    state = CredentialState(name=name)
    for probe in probes:
        state.results[("t1", probe)] = ProbeResult(
            credential=name,
            tenant_id="t1",
            probe=probe,
            success=True,
            status_code=200,
            error_code="",
            cause="ok",
            remedy="",
            message="",
            timestamp=NOW - 60,
            duration=0.1,
            last_success=last_success,
        )
    return state


def with_credentials(snapshot: Snapshot, **changes: dict[str, object]) -> Snapshot:
    """The snapshot with some credentials' fields changed, by credential name."""
    credentials = tuple(
        dataclasses.replace(c, **changes.get(c.name.replace("-", "_"), {}))
        for c in snapshot.credentials
    )
    return dataclasses.replace(snapshot, credentials=credentials)


def five_credentials() -> Snapshot:
    """far (a year left), soon (20 days), urgent (3 days), gone (expired 2 days ago), none."""
    snapshot = snapshot_of(
        *(healthy(n, "tenant") for n in ("far", "soon", "urgent", "gone", "none"))
    )
    return with_credentials(
        snapshot,
        far={"expires_at": NOW + 365 * DAY},
        soon={"expires_at": NOW + 20.5 * DAY},
        urgent={"expires_at": NOW + 3.5 * DAY},
        gone={"expires_at": NOW - 2.5 * DAY},
    )


def test_every_credential_with_expires_at_says_when_and_needs_attention_within_30_days() -> None:
    report = build_report(five_credentials())
    said = {c.name: c.expiry.text if c.expiry else None for c in report.credentials}
    assert said["far"] is not None and said["far"].startswith("expires in 365 days (")
    assert said["soon"] is not None and said["soon"].startswith("expires in 20 days (")
    assert said["urgent"] is not None and said["urgent"].startswith("expires in 3 days (")
    assert said["gone"] is not None and said["gone"].startswith("expired 2 days ago (")
    assert said["none"] is None
    flagged = {a.credential: a.level for a in report.attention if a.topic == "credential expiry"}
    assert flagged == {"soon": "warning", "urgent": "failure", "gone": "failure"}
    assert 3 < CRITICAL_DAYS < 20 < WARNING_DAYS < 365  # the cases straddle both thresholds
    (soon,) = [a for a in report.attention if a.credential == "soon"]
    assert "create a new API credential" in soon.what and "Global Settings" in soon.what


def test_the_status_page_shows_it_in_the_credentials_section_and_in_needs_attention() -> None:
    page = render_status_page(five_credentials())
    assert re.search(r'id="soon--expiry" data-level="warning"', page)
    assert re.search(r'id="urgent--expiry" data-level="critical"', page)
    assert re.search(r'id="gone--expiry" data-level="expired"', page)
    assert 'data-level="ok"' in page and "The credential expires in 365 days" in page
    attention = re.findall(r'<li data-credential="(\w+)" [^>]*class="level-(\w+)"', page)
    assert ("soon", "warning") in attention and ("urgent", "failure") in attention
    assert "none--expiry" not in page


def test_check_says_it_for_each_credential_and_lists_what_needs_attention() -> None:
    report = build_report(five_credentials())
    table = format_check(report)
    assert re.search(r"^far: tenants probed .*; the credential expires in 365 days \(", table, re.M)
    assert re.search(r"^warning: soon: the credential expires in 20 days \(", table, re.M)
    assert re.search(r"^failure: gone: the credential expired 2 days ago \(", table, re.M)
    assert not re.search(r"^none: .*expire", table, re.M)
    data = json.loads(check_json(report))
    by_name = {c["name"]: c for c in data["credentials"]}
    assert by_name["urgent"]["expiry"]["level"] == "critical"
    assert by_name["none"]["expiry"] is None


def test_metrics_export_the_expiry_only_where_configured() -> None:
    page = parse_metrics(AgentMetrics(process_registry=None).render(five_credentials()).decode())
    exported = {lbl["credential"]: v for _, lbl, v in page[m.CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS]}
    assert exported == {
        "far": NOW + 365 * DAY,
        "soon": NOW + 20.5 * DAY,
        "urgent": NOW + 3.5 * DAY,
        "gone": NOW - 2.5 * DAY,
    }


def test_the_last_success_is_exported_for_the_siem_families_only() -> None:
    snapshot = snapshot_of(
        healthy("c", "tenant", "siem_events", "siem_alerts", last_success=NOW - 60)
    )
    snapshot = with_credentials(snapshot, c={"watched": ("siem_events", "siem_alerts")})
    metrics = AgentMetrics(process_registry=None)
    page = parse_metrics(metrics.render(snapshot).decode())
    exported = {lbl["probe"]: v for _, lbl, v in page[m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS]}
    assert exported == {"siem_events": NOW - 60, "siem_alerts": NOW - 60}
    again = parse_metrics(metrics.render(snapshot).decode())  # the cached lines, unchanged
    assert (
        again[m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS]
        == page[m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS]
    )


def test_the_external_url_is_exported_when_configured() -> None:
    metrics = AgentMetrics(process_registry=None)
    plain = parse_metrics(metrics.render(snapshot_of(healthy("c", "tenant"))).decode())
    assert m.EXPORTER_EXTERNAL_URL_INFO not in plain
    snapshot = dataclasses.replace(
        snapshot_of(healthy("c", "tenant")), external_url="https://monitor.example.com/sce"
    )
    page = parse_metrics(metrics.render(snapshot).decode())
    assert page[m.EXPORTER_EXTERNAL_URL_INFO] == [
        (m.EXPORTER_EXTERNAL_URL_INFO, {"external_url": "https://monitor.example.com/sce"}, 1.0)
    ]


def test_a_period_too_long_for_the_siem_alert_is_said_on_status_and_by_check() -> None:
    snapshot = with_credentials(
        snapshot_of(healthy("c", "siem_events"), healthy("d", "siem_events")),
        c={"collection_note": NOTE},
    )
    report = build_report(snapshot)
    notes = [(a.credential, a.level, a.what) for a in report.attention if a.topic]
    assert notes == [("c", "warning", NOTE)]
    page = render_status_page(snapshot)
    assert 'class="alert warning collection" id="c--collection"' in page
    assert "d--collection" not in page
    assert f"warning: c: {NOTE}" in format_check(report).splitlines()
