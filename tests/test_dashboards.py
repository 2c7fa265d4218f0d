"""The Grafana dashboards: generated from code, complete, and made only of valid, known queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.models import dashboard as dm

from agent import metricnames
from agent.causes import CONFIRMED_AFTER, KINDS, NOT_PROBED, TABLE
from tools import gen_dashboards

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
PROVISIONING = ROOT / "dashboards" / "provisioning"
VARIABLES = ("datasource", "job", "instance", "credential", "tenant")
EXPECTED_UIDS = {
    "sophos-central-overview.json": "sophos-central-overview",
    "sophos-central-tenants.json": "sophos-central-tenants",
    "sophos-central-tenant-detail.json": "sophos-central-tenant-detail",
}
# Grafana variables and what they become for an offline parse.
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}
STANDARD_METRICS = {"up"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panel_exprs(model: dict[str, Any]) -> list[str]:
    return list(gen_dashboards.expressions(model))


def variable_queries(model: dict[str, Any]) -> list[str]:
    queries = []
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def selector_of_label_values(query: str) -> str:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"not a label_values() query: {query}"
    return match.group(1)


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def recording_rules() -> set[str]:
    names = set()
    for path in (ROOT / "alerts").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def known_metrics() -> set[str]:
    names = {
        value
        for value in vars(metricnames).values()
        if isinstance(value, str) and value.startswith(metricnames.PREFIX)
    }
    histogram = metricnames.API_REQUEST_DURATION_SECONDS
    names |= {histogram + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names | recording_rules() | STANDARD_METRICS


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (good enough for our own dashboards)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def all_panels() -> list[tuple[str, dict[str, Any]]]:
    """Every panel that shows data (rows only hold panels)."""
    return [
        (path.name, panel)
        for path in DASHBOARDS
        for panel in load(path)["panels"]
        if panel["type"] != "row"
    ]


# --- generated, committed, in sync ----------------------------------------------------------


def test_committed_dashboards_equal_the_generator_output() -> None:
    stale = gen_dashboards.stale()
    assert stale == [], "run `uv run python -m tools.gen_dashboards` and commit the result"
    assert {p.name for p in DASHBOARDS} == set(gen_dashboards.dashboards())


# --- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_model(path: Path) -> None:
    model = load(path)
    assert model["uid"] == EXPECTED_UIDS[path.name], "uids are stable: links depend on them"
    assert model["schemaVersion"] <= 42
    assert model["title"] and model["description"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert tuple(variables) == VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in VARIABLES[1:]:
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for query in variable_queries(model):
        selector_of_label_values(query)
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    assert all(len(uid) <= 40 for uid in uids)


@pytest.mark.parametrize(
    ("dashboard", "panel"), all_panels(), ids=lambda v: v if isinstance(v, str) else v["title"]
)
def test_panel_has_title_description_unit_and_uses_the_datasource_variable(
    dashboard: str, panel: dict[str, Any]
) -> None:
    assert panel["title"], dashboard
    assert panel["description"], f"{dashboard}: {panel['title']} has no description"
    assert panel["fieldConfig"]["defaults"]["unit"], f"{dashboard}: {panel['title']} has no unit"
    assert panel["datasource"]["uid"] == "${datasource}"
    assert panel["targets"], f"{dashboard}: {panel['title']} has no query"
    for target in panel["targets"]:
        assert target["datasource"]["uid"] == "${datasource}"


# --- the queries -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_only_known_metric_names(path: Path) -> None:
    model = load(path)
    known = known_metrics()
    exprs = panel_exprs(model) + [selector_of_label_values(q) for q in variable_queries(model)]
    unknown = {name: expr for expr in exprs for name in metric_names(expr) if name not in known}
    assert unknown == {}, "metric names neither in agent/metricnames.py nor recorded in alerts/"


def test_metric_name_extraction() -> None:
    expr = (
        'topk by (credential) (1, sum by (le) (rate(foo_bucket{a="b{c}", d=~"$x"}[$__rate_interval]'
        ')) * on (x) group_left (y) bar:baz:rate5m{z="1"} or up offset 5m) - time()'
    )
    assert metric_names(expr) == {"foo_bucket", "bar:baz:rate5m", "up"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_range_queries_use_grafana_intervals(path: Path) -> None:
    """rate() over $__rate_interval; increase() also over $__range (totals for the time range)."""
    windows = {
        "rate": {"$__rate_interval"},
        "irate": {"$__rate_interval"},
        "increase": {"$__rate_interval", "$__range"},
    }
    for expr in panel_exprs(load(path)):
        for function, window in re.findall(r"\b(rate|irate|increase)\([^\[]*\[([^\]]+)\]", expr):
            assert window in windows[function], f"{function}(...[{window}]) in {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_parses_with_promtool(path: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH; install it with: apt-get install -y prometheus",
            pytrace=False,
        )
    model = load(path)
    exprs = panel_exprs(model) + [selector_of_label_values(q) for q in variable_queries(model)]
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": substitute(expr)}
                    for n, expr in enumerate(exprs)
                ],
            }
        ]
    }
    rule_file = tmp_path / "queries.rules.yml"
    rule_file.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- provisioning ----------------------------------------------------------------------------


def test_provisioning_files() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards.yml").read_text(encoding="utf-8"))
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"]
    datasources = yaml.safe_load((PROVISIONING / "datasource.yml").read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]


# --- causes, results and the drill-down --------------------------------------------------------


def value_mappings(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every value-mapping option of a dashboard: in field defaults and in overrides."""
    found = []
    for panel in model["panels"]:
        config = panel.get("fieldConfig") or {}
        lists = [(config.get("defaults") or {}).get("mappings") or []]
        for override in config.get("overrides") or []:
            lists += [p["value"] for p in override["properties"] if p["id"] == "mappings"]
        for mappings in lists:
            for mapping in mappings:
                if mapping["type"] == "value":
                    found.append(mapping["options"])
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_cause_has_its_kinds_colour_and_not_probed_only_where_nothing_was_sent(
    path: Path,
) -> None:
    """One colour per kind, the same on every dashboard, from the agent's cause table; the
    words "not probed" for a cause only when nothing was sent."""
    shown = [o for o in value_mappings(load(path)) if "sophos_server_error" in o]
    for options in shown:
        assert set(options) == set(TABLE)
        for name, cause in TABLE.items():
            assert options[name]["color"] == KINDS[cause.kind].grafana, name
            assert (NOT_PROBED in options[name]["text"]) == (not cause.sent), name
    kinds = [o for o in value_mappings(load(path)) if set(o) == set(KINDS)]
    for options in kinds:
        assert {k: v["color"] for k, v in options.items()} == {
            k: style.grafana for k, style in KINDS.items()
        }
    for name, colour in gen_dashboards.cause_colour_overrides():
        assert colour == KINDS[TABLE[name].kind].grafana


def test_the_readme_shows_the_colour_of_each_kind() -> None:
    text = (ROOT / "dashboards" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| `(\w+)` \| (.+) \|$", text, flags=re.MULTILINE)
    assert rows == [(style.grafana, kind, style.words) for kind, style in KINDS.items()]


def test_last_result_values_are_coloured_by_kind_and_say_not_probed_in_words() -> None:
    (mapping,) = gen_dashboards.result_mappings()
    assert isinstance(mapping, dm.ValueMap)
    options = mapping.options
    for value, (kind, sent, text) in enumerate(gen_dashboards.RESULTS):
        assert options[str(value)].color == KINDS[kind].grafana
        assert (text == NOT_PROBED.capitalize()) == (not sent)


def test_the_confirmation_threshold_is_the_agents() -> None:
    _, confirming, confirmed = gen_dashboards.confirmation_mappings()
    assert isinstance(confirming, dm.RangeMap) and isinstance(confirmed, dm.RangeMap)
    assert confirming.options.to == CONFIRMED_AFTER - 1
    assert confirmed.options.from_val == CONFIRMED_AFTER


def test_panels_are_placed_by_the_sdks_flow_layout_in_rows() -> None:
    """No hand-placed coordinates: every panel says its size, the SDK places it, and every
    dashboard is split into titled rows."""
    source = Path(gen_dashboards.__file__).read_text(encoding="utf-8")
    assert "GridPos(" not in source and "grid_pos(" not in source
    for path in DASHBOARDS:
        panels = load(path)["panels"]
        assert panels[0]["type"] == "row"
        seen: set[tuple[int, int]] = set()
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & seen, f"{path.name}: {panel['title']} overlaps another panel"
            seen |= cells


def test_drill_down_shows_one_credential_and_one_tenant() -> None:
    variables = {
        v["name"]: v
        for v in load(ROOT / "dashboards" / "sophos-central-tenant-detail.json")["templating"][
            "list"
        ]
    }
    for name in ("credential", "tenant"):
        assert variables[name]["multi"] is False and variables[name]["includeAll"] is False
    overview = load(ROOT / "dashboards" / "sophos-central-overview.json")
    assert {v["name"]: v["multi"] for v in overview["templating"]["list"][1:]} == dict.fromkeys(
        VARIABLES[1:], True
    )


def test_tenant_links_open_the_drill_down_of_that_row() -> None:
    uids = {load(path)["uid"] for path in DASHBOARDS}
    tenants = load(ROOT / "dashboards" / "sophos-central-tenants.json")
    links = [
        link["url"]
        for panel in tenants["panels"]
        if panel["type"] != "row"
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert links
    for url in links:
        uid = re.match(r"/d/([\w-]+)\?", url)
        assert uid and uid.group(1) in uids, url
        assert "var-credential=${__data.fields.credential}" in url
        assert "var-tenant=${__data.fields.tenant_id}" in url


def test_last_result_tells_failed_ok_business_and_not_probed_apart(tmp_path: Path) -> None:
    """Evaluated by Prometheus's own engine (promtool test rules) on one tenant per way a last
    result can read: OK, a 500, a trial's 403, one not activated, one whose host is refused. The
    values are what the value mappings colour (by kind) and name."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH; install it with: apt-get install -y prometheus")
    base = 'job="sophos", instance="a:9866", credential="msp"'
    tenants = {
        "t-ok": "ok",
        "t-500": "sophos_server_error",
        "t-trial": "trial_account",
        "t-new": "not_activated",
        "t-foreign": "host_not_allowed",
    }
    series = []
    for tenant, cause in tenants.items():
        labels = f'{base}, tenant_id="{tenant}", probe="tenant"'
        kind = TABLE[cause].kind
        series.append(
            {
                "series": f'{metricnames.PROBE_CAUSE_INFO}{{{labels}, cause="{cause}", '
                f'kind="{kind}"}}',
                "values": "1x2",
            }
        )
    index = {(kind, sent): value for value, (kind, sent, _) in enumerate(gen_dashboards.RESULTS)}
    expected = [(t, index[(TABLE[c].kind, TABLE[c].sent)]) for t, c in tenants.items()]
    assert sorted(v for _, v in expected) == list(range(len(gen_dashboards.RESULTS)))
    by = "credential, tenant_id, probe"
    expr = substitute(gen_dashboards.result_expr(by, 'tenant_id!=""'))
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "1m",
                        "exp_samples": [
                            {
                                "labels": f'{{credential="msp", tenant_id="{t}", probe="tenant"}}',
                                "value": v,
                            }
                            for t, v in expected
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "result.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
