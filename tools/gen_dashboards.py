"""Generate the Grafana dashboards from code.

The JSON under ``dashboards/`` is this module's output and is committed, so that Grafana can
provision it as it is; ``tests/test_dashboards.py`` fails when the two drift apart. Metric names
come from ``agent.metricnames`` and recording-rule names from ``alerts/``, so a renamed metric
breaks the build here instead of leaving an empty panel.

    uv run python -m tools.gen_dashboards           # rewrite dashboards/*.json
    uv run python -m tools.gen_dashboards --check   # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent import metricnames as m

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards"
SCHEMA_VERSION = 39
TAGS = ["sophos-central", "sophos-central-exporter"]

# Recording rules (alerts/sophos-central-recording.rules.yml) used by the panels.
TENANTS_OK = "sophos_central:tenants_ok:count"
TENANTS_FAILING = "sophos_central:tenants_failing:count"
RATIO_401_10M = "sophos_central:api_requests_401:ratio_rate10m"
RATIO_401_1D = "sophos_central:api_requests_401:ratio_rate1d"
RATIO_403_10M = "sophos_central:api_requests_403:ratio_rate10m"
RATIO_403_1D = "sophos_central:api_requests_403:ratio_rate1d"
BUDGET_USED = "sophos_central:rate_limit_budget_used:ratio"

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

Panel = dict[str, Any]
Target = dict[str, Any]


def sel(*extra: str, instance: bool = True, tenant: bool = False) -> str:
    """A label selector with the dashboard variables (credential-level series: no tenant)."""
    parts = ['job=~"$job"']
    if instance:
        parts.append('instance=~"$instance"')
    parts.append('credential=~"$credential"')
    if tenant:
        parts.append('tenant_id=~"$tenant"')
    parts.extend(extra)
    return "{" + ", ".join(parts) + "}"


def target(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    instant: bool = False,
    table: bool = False,
) -> Target:
    return {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
    }


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Target],
    unit: str,
    grid: tuple[int, int, int, int],
    *,
    options: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
) -> Panel:
    x, y, w, h = grid
    panel: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        "targets": targets,
    }
    if transformations:
        panel["transformations"] = transformations
    return panel


def timeseries(
    title: str,
    description: str,
    targets: list[Target],
    unit: str,
    grid: tuple[int, int, int, int],
    *,
    stack: bool = False,
    max_value: float | None = None,
) -> Panel:
    defaults: dict[str, Any] = {
        "min": 0,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if max_value is not None:
        defaults["max"] = max_value
    return _panel(
        "timeseries",
        title,
        description,
        targets,
        unit,
        grid,
        defaults=defaults,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def ok_mappings(ok: str, bad: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                "1": {"text": ok, "color": "green", "index": 0},
                "0": {"text": bad, "color": "red", "index": 1},
            },
        }
    ]


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in steps],
    }


def stat(
    title: str,
    description: str,
    targets: list[Target],
    unit: str,
    grid: tuple[int, int, int, int],
    *,
    mappings: list[dict[str, Any]] | None = None,
    steps: dict[str, Any] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"mappings": mappings or []}
    if steps is not None:
        defaults["thresholds"] = steps
    return _panel(
        "stat",
        title,
        description,
        targets,
        unit,
        grid,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "horizontal",
            "justifyMode": "auto",
        },
    )


def bargauge(
    title: str,
    description: str,
    targets: list[Target],
    unit: str,
    grid: tuple[int, int, int, int],
    *,
    steps: dict[str, Any] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"min": 0}
    if steps is not None:
        defaults["thresholds"] = steps
    return _panel(
        "bargauge",
        title,
        description,
        targets,
        unit,
        grid,
        defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "basic",
            "showUnfilled": True,
        },
    )


# --- templating ----------------------------------------------------------------------------


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
        "skipUrlSync": False,
    }


def templating() -> dict[str, Any]:
    build = m.EXPORTER_BUILD_INFO
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "options": [],
                "refresh": 1,
                "regex": "",
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "skipUrlSync": False,
            },
            query_variable("job", "Job", f"label_values({build}, job)"),
            query_variable(
                "instance", "Instance", f'label_values({build}{{job=~"$job"}}, instance)'
            ),
            query_variable(
                "credential",
                "Credential",
                f"label_values({m.PROBE_SUCCESS}"
                f'{{job=~"$job", instance=~"$instance"}}, credential)',
            ),
            query_variable(
                "tenant",
                "Tenant ID",
                f"label_values({m.TENANT_INFO}"
                f'{{job=~"$job", instance=~"$instance", credential=~"$credential"}}, tenant_id)',
            ),
        ]
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "version": 1,
        "schemaVersion": SCHEMA_VERSION,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "Sophos Central dashboards",
                "type": "dashboards",
                "tags": ["sophos-central"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": templating(),
        "panels": panels,
    }


# --- the overview ------------------------------------------------------------------------------


def overview() -> dict[str, Any]:
    req = m.API_REQUESTS_TOTAL
    token = sel('probe="token"')
    whoami = sel('probe="whoami"')
    not_ok = sel('cause!="ok"')
    not_2xx = sel('status_code!~"2.."')
    status_429 = sel('status_code="429"')
    panels: list[Panel] = [
        stat(
            "Token issuance",
            "Result of the last token probe per credential: a fresh OAuth token from the Sophos "
            "token endpoint, every token_probe_interval (5m by default).",
            [target(f"min by (credential) ({m.PROBE_SUCCESS}{token})", "{{credential}}")],
            "none",
            (0, 0, 6, 5),
            mappings=ok_mappings("OK", "Failing"),
        ),
        stat(
            "whoami",
            "Result of the last whoami probe per credential (global API host, every "
            "tenant_refresh_interval).",
            [target(f"min by (credential) ({m.PROBE_SUCCESS}{whoami})", "{{credential}}")],
            "none",
            (6, 0, 6, 5),
            mappings=ok_mappings("OK", "Failing"),
        ),
        stat(
            "Tenants OK",
            "Tenants whose last probe succeeded (cause ok).",
            [target(f"sum({TENANTS_OK}{sel()})", "OK")],
            "short",
            (12, 0, 4, 5),
            steps=thresholds((None, "green")),
        ),
        stat(
            "Tenants failing",
            "Tenants whose last probe failed, whatever the cause: a 403 that is business state "
            "(no Partner Assistance) counts here too. Tenants not probed (trial accounts, not "
            "activated, host not allowed) are not counted. See the tenants dashboard.",
            [target(f"sum({TENANTS_FAILING}{sel()})", "failing")],
            "short",
            (16, 0, 4, 5),
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Exporter up",
            "Whether Prometheus can scrape each exporter instance (up).",
            [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
            "none",
            (20, 0, 4, 5),
            mappings=ok_mappings("Up", "Down"),
        ),
        timeseries(
            "Tenants OK vs failing",
            "Per credential: tenants whose last probe succeeded and failed.",
            [
                target(f"sum by (credential) ({TENANTS_OK}{sel()})", "{{credential}} ok"),
                target(
                    f"sum by (credential) ({TENANTS_FAILING}{sel()})",
                    "{{credential}} failing",
                    ref="B",
                ),
            ],
            "short",
            (0, 5, 12, 8),
        ),
        bargauge(
            "Current causes (failing probes)",
            "How many probes have each cause as their current diagnosis (probe_cause_info), "
            "cause ok left out. The runbook explains each cause.",
            [
                target(
                    f"count by (cause) ({m.PROBE_CAUSE_INFO}{not_ok})",
                    "{{cause}}",
                    instant=True,
                )
            ],
            "short",
            (12, 5, 12, 8),
            steps=thresholds((None, "orange")),
        ),
        timeseries(
            "API requests by status",
            "Calls to Sophos Central per second by HTTP status ('0': no answer).",
            [
                target(
                    f"sum by (status_code) (rate({req}{sel()}[$__rate_interval]))",
                    "{{status_code}}",
                )
            ],
            "reqps",
            (0, 13, 12, 8),
            stack=True,
        ),
        _panel(
            "table",
            "Top error codes",
            "The ten most frequent non-2xx answers in the dashboard's time range, by status and "
            "Sophos error code (empty when the body had none, e.g. an HTML 502).",
            [
                target(
                    f"topk(10, sum by (status_code, error_code) (increase("
                    f"{req}{not_2xx}[$__range])) > 0)",
                    instant=True,
                    table=True,
                )
            ],
            "short",
            (12, 13, 12, 8),
            options={"showHeader": True, "sortBy": [{"displayName": "Answers", "desc": True}]},
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "status_code": "Status",
                            "error_code": "Error code",
                            "Value": "Answers",
                        },
                    },
                }
            ],
        ),
        timeseries(
            "Request duration p95 by probe",
            "95th percentile of the duration of calls to Sophos Central, by probe.",
            [
                target(
                    f"histogram_quantile(0.95, sum by (le, probe) (rate("
                    f"{m.API_REQUEST_DURATION_SECONDS}_bucket{sel()}[$__rate_interval])))",
                    "{{probe}}",
                )
            ],
            "s",
            (0, 21, 12, 8),
        ),
        timeseries(
            "401 / 403 share: last 10m vs. 1 day",
            "Share of API calls (token probe excluded) answered 401 and 403 over 10 minutes, "
            "with the same share over one day: the baseline the spike alerts compare against.",
            [
                target(f"{RATIO_401_10M}{sel(instance=False)}", "{{credential}} 401 (10m)"),
                target(f"{RATIO_401_1D}{sel(instance=False)}", "{{credential}} 401 (1d)", ref="B"),
                target(
                    f"{RATIO_403_10M}{sel(instance=False)}", "{{credential}} 403 (10m)", ref="C"
                ),
                target(f"{RATIO_403_1D}{sel(instance=False)}", "{{credential}} 403 (1d)", ref="D"),
            ],
            "percentunit",
            (12, 21, 12, 8),
        ),
        timeseries(
            "Rate-limit utilization per window",
            "Calls the exporter made in each trailing window divided by Sophos's limit for that "
            "window (1s, 1m, 1h, 1d). Other integrations on the same credential are not counted.",
            [
                target(
                    f"max by (credential, window) ({m.RATE_LIMIT_UTILIZATION_RATIO}{sel()})",
                    "{{credential}} {{window}}",
                )
            ],
            "percentunit",
            (0, 29, 12, 8),
        ),
        timeseries(
            "Own budget used per window",
            "Calls in each trailing window divided by the exporter's own allowance, "
            "floor(budget_share x limit). Near 100 % the probe interval is stretched.",
            [
                target(
                    f"max by (credential, window) ({BUDGET_USED}{sel()})",
                    "{{credential}} {{window}}",
                )
            ],
            "percentunit",
            (12, 29, 12, 8),
        ),
        timeseries(
            "429 answers and pauses",
            "429 Too Many Requests answers and the pauses the exporter took because of them.",
            [
                target(
                    f"sum by (credential) (increase({req}{status_429}[$__rate_interval]))",
                    "{{credential}} 429s",
                ),
                target(
                    f"sum by (credential) (increase({m.RATE_LIMIT_PAUSES_TOTAL}{sel()}"
                    f"[$__rate_interval]))",
                    "{{credential}} pauses",
                    ref="B",
                ),
            ],
            "short",
            (0, 37, 8, 8),
        ),
        bargauge(
            "Token expires in",
            "Time left until the credential's cached token expires (tokens live 3600 s and are "
            "renewed before expiry).",
            [
                target(
                    f"min by (credential) ({m.TOKEN_EXPIRY_TIMESTAMP_SECONDS}{sel()}) - time()",
                    "{{credential}}",
                    instant=True,
                )
            ],
            "s",
            (8, 37, 8, 8),
            steps=thresholds((None, "red"), (300, "green")),
        ),
        timeseries(
            "Effective probe interval",
            "Period between two probes of the same tenant: probe_interval, stretched to fit the "
            "rate budget.",
            [
                target(
                    f"max by (credential) ({m.PROBE_INTERVAL_SECONDS}{sel()})",
                    "{{credential}}",
                )
            ],
            "s",
            (16, 37, 8, 8),
        ),
        timeseries(
            "Probe staleness",
            "Age of the oldest last run per probe kind. Tenant probes are stale beyond 3x the "
            "effective probe interval, token beyond 30m, whoami and tenant list beyond 1h.",
            [
                target(
                    f"max by (credential, probe) (time() - "
                    f"{m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{sel()})",
                    "{{credential}} {{probe}}",
                )
            ],
            "s",
            (0, 45, 12, 8),
        ),
        timeseries(
            "Tenants by state",
            "Listed tenants by state: probed, not_activated (no API host yet), trial_account "
            "(a trial listed without API host), host_not_allowed (API host outside "
            "allowed_api_hosts). Only probed tenants are called.",
            [
                target(
                    f"sum by (credential, state) ({m.TENANTS}{sel()})",
                    "{{credential}} {{state}}",
                )
            ],
            "short",
            (12, 45, 12, 8),
            stack=True,
        ),
    ]
    return dashboard(
        "sophos-central-overview",
        "Sophos Central API / Overview",
        "Health of the Sophos Central API as seen by sophos-central-exporter: token and whoami "
        "per credential, tenants OK vs failing, answers by status, rate-limit use, staleness.",
        panels,
    )


# --- the tenants dashboard ---------------------------------------------------------------------


def tenants() -> dict[str, Any]:
    tenant_probe = 'probe="tenant"'
    info = (
        f"max by (credential, tenant_id, tenant_name, data_region, billing_type) "
        f"({m.TENANT_INFO}{sel(tenant=True)})"
    )
    table_targets = [
        target(info, ref="A", instant=True, table=True),
        target(
            f"max by (credential, tenant_id) ({m.PROBE_SUCCESS}{sel(tenant_probe, tenant=True)})",
            ref="B",
            instant=True,
            table=True,
        ),
        target(
            f"max by (credential, tenant_id, cause) "
            f"({m.PROBE_CAUSE_INFO}{sel(tenant_probe, tenant=True)})",
            ref="C",
            instant=True,
            table=True,
        ),
        target(
            f"max by (credential, tenant_id) (time() - "
            f"{m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{sel(tenant_probe, tenant=True)})",
            ref="D",
            instant=True,
            table=True,
        ),
        target(
            f"topk by (credential, tenant_id) (1, sum by (credential, tenant_id, status_code, "
            f"error_code) (increase({m.API_REQUESTS_TOTAL}{sel(tenant_probe, tenant=True)}"
            f"[$__range])))",
            ref="E",
            instant=True,
            table=True,
        ),
    ]
    name_join = (
        f"* on (credential, tenant_id) group_left (tenant_name) "
        f"max by (credential, tenant_id, tenant_name) ({m.TENANT_INFO}{sel(tenant=True)})"
    )
    panels: list[Panel] = [
        _panel(
            "table",
            "Tenants",
            "Every listed tenant with its region and billing type, the result and cause of its "
            "last probe, how long ago that was, and its most frequent answer in the time range. "
            "A 403 on a trial tenant or a term tenant without Partner Assistance is business "
            "state, not an outage.",
            table_targets,
            "none",
            (0, 0, 24, 12),
            options={"showHeader": True, "sortBy": [{"displayName": "Last probe", "desc": False}]},
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Last probe"},
                    "properties": [
                        {"id": "mappings", "value": ok_mappings("OK", "Failed")},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Age of last probe"},
                    "properties": [{"id": "unit", "value": "s"}],
                },
                {
                    "matcher": {"id": "byName", "options": "Answers in range"},
                    "properties": [{"id": "unit", "value": "short"}],
                },
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #A": True, "Value #C": True},
                        "indexByName": {
                            "tenant_name": 0,
                            "tenant_id": 1,
                            "credential": 2,
                            "data_region": 3,
                            "billing_type": 4,
                            "Value #B": 5,
                            "cause": 6,
                            "Value #D": 7,
                            "status_code": 8,
                            "error_code": 9,
                            "Value #E": 10,
                        },
                        "renameByName": {
                            "tenant_name": "Tenant",
                            "tenant_id": "Tenant ID",
                            "credential": "Credential",
                            "data_region": "Region",
                            "billing_type": "Billing type",
                            "Value #B": "Last probe",
                            "cause": "Cause",
                            "Value #D": "Age of last probe",
                            "status_code": "Most frequent status",
                            "error_code": "Error code",
                            "Value #E": "Answers in range",
                        },
                    },
                },
            ],
        ),
        _panel(
            "state-timeline",
            "Probe result per tenant",
            "Success (1) or failure (0) of each tenant's last probe over time.",
            [
                target(
                    f"max by (credential, tenant_id) "
                    f"({m.PROBE_SUCCESS}{sel(tenant_probe, tenant=True)}) {name_join}",
                    "{{tenant_name}}",
                )
            ],
            "none",
            (0, 12, 24, 10),
            defaults={"mappings": ok_mappings("OK", "Failed")},
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        ),
        timeseries(
            "Tenants by cause",
            "How many of the selected tenants have each cause as the diagnosis of their last "
            "probe.",
            [
                target(
                    f"count by (cause) ({m.PROBE_CAUSE_INFO}{sel(tenant_probe, tenant=True)})",
                    "{{cause}}",
                )
            ],
            "short",
            (0, 22, 12, 8),
            stack=True,
        ),
        timeseries(
            "Requests by status per tenant",
            "Tenant probe calls per second by tenant and HTTP status ('0': no answer).",
            [
                target(
                    f"sum by (tenant_id, status_code) (rate("
                    f"{m.API_REQUESTS_TOTAL}{sel(tenant_probe, tenant=True)}[$__rate_interval]))",
                    "{{tenant_id}} {{status_code}}",
                )
            ],
            "reqps",
            (12, 22, 12, 8),
        ),
        timeseries(
            "Probe duration per tenant",
            "How long each tenant's last probe took.",
            [
                target(
                    f"max by (credential, tenant_id) "
                    f"({m.PROBE_DURATION_SECONDS}{sel(tenant_probe, tenant=True)}) {name_join}",
                    "{{tenant_name}}",
                )
            ],
            "s",
            (0, 30, 12, 8),
        ),
        timeseries(
            "Age of last probe per tenant",
            "Time since each tenant was last probed; compare with the effective probe interval "
            "(stale beyond 3x).",
            [
                target(
                    f"max by (credential, tenant_id) (time() - "
                    f"{m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{sel(tenant_probe, tenant=True)}) "
                    f"{name_join}",
                    "{{tenant_name}}",
                ),
                target(
                    f"3 * max by (credential) ({m.PROBE_INTERVAL_SECONDS}{sel()})",
                    "{{credential}} stale bound",
                    ref="B",
                ),
            ],
            "s",
            (12, 30, 12, 8),
        ),
    ]
    return dashboard(
        "sophos-central-tenants",
        "Sophos Central API / Tenants",
        "Per-tenant view of sophos-central-exporter: name, region, billing type, last result, "
        "cause and age of the last probe, and each tenant's history.",
        panels,
    )


# --- output ------------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model."""
    return {
        "sophos-central-overview.json": overview(),
        "sophos-central-tenants.json": tenants(),
    }


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def expressions(model: dict[str, Any]) -> Iterable[str]:
    """Every PromQL expression of a dashboard: panel targets and variable queries."""
    for panel in model["panels"]:
        for tgt in panel.get("targets", []):
            yield tgt["expr"]


def write(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    written = []
    for name, model in dashboards().items():
        path = out_dir / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def stale(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    """Committed files that differ from what the generator produces now."""
    return [
        out_dir / name
        for name, model in dashboards().items()
        if not (out_dir / name).is_file()
        or (out_dir / name).read_text(encoding="utf-8") != render(model)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
