"""Generate the Grafana dashboards from code, with Grafana's own dashboards-as-code library.

The JSON under ``dashboards/`` is this module's output and is committed, so that Grafana can
provision it as it is; ``tests/test_dashboards.py`` fails when the two drift apart. The panels are
built with ``grafana-foundation-sdk`` (a dev dependency: the exporter does not need it at run
time), pinned to the build for the Grafana version of ``deploy/docker-compose.yml`` so that the
JSON carries that version's ``schemaVersion``. Metric names come from ``agent.metricnames`` and
recording-rule names from ``alerts/``, so a renamed metric breaks the build here instead of
leaving an empty panel. What a cause means (its kind, whether anything was sent) and the
"confirmed after N failures" threshold come from the agent's cause table (``agent.causes``): the
colours and texts here are derived, never kept. Panels are laid out by the SDK's own flow layout
(rows of panels given a width and a height), not by hand-placed coordinates.

    uv run python -m tools.gen_dashboards           # rewrite dashboards/*.json
    uv run python -m tools.gen_dashboards --check   # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, table
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from agent import metricnames as m
from agent.causes import CONFIRMED_AFTER, KINDS, NOT_PROBED, TABLE, TENANT_STATES, Kind, names
from agent.collection import CRITICAL_AFTER, WARNING_AFTER
from agent.expiry import CRITICAL_DAYS, WARNING_DAYS
from agent.families import BUILTINS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards"
TAGS = ["sophos-central", "sophos-central-exporter"]

OVERVIEW_UID = "sophos-central-overview"
TENANTS_UID = "sophos-central-tenants"
DETAIL_UID = "sophos-central-tenant-detail"

# Recording rules (alerts/sophos-central-recording.rules.yml) used by the panels.
TENANTS_OK = "sophos_central:tenants_ok:count"
TENANTS_FAILING = "sophos_central:tenants_failing:count"
TENANTS_BUSINESS = "sophos_central:tenants_business:count"
RATIO_401_10M = "sophos_central:api_requests_401:ratio_rate10m"
RATIO_401_1D = "sophos_central:api_requests_401:ratio_rate1d"
RATIO_403_10M = "sophos_central:api_requests_403:ratio_rate10m"
RATIO_403_1D = "sophos_central:api_requests_403:ratio_rate1d"
BUDGET_USED = "sophos_central:rate_limit_budget_used:ratio"

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
Size = tuple[int, int]
"""A panel's width (of the grid's 24 columns) and height; the SDK's flow layout places it."""
PanelBuilder = Any  # a grafana_foundation_sdk panel builder (each panel kind has its own class)
Section = tuple[str, Sequence[PanelBuilder]]
"""A row of the dashboard: its title and its panels, laid out left to right, then down."""

# --- causes (from the agent's cause table) ---------------------------------------------------

NOT_SENT_RE = "|".join(names(sent=False, per_probe=True))
"""The causes of tenants the agent sends nothing for: "not probed", whatever their kind."""

_RESULT_ORDER: tuple[tuple[Kind, bool, str], ...] = (
    ("failure", True, "Failed"),
    ("ok", True, "OK"),
    ("business", True, "Business state"),
    ("business", False, NOT_PROBED.capitalize()),
    ("failure", False, NOT_PROBED.capitalize()),
)
RESULTS: tuple[tuple[Kind, bool, str], ...] = tuple(
    result
    for result in _RESULT_ORDER
    if any((c.kind, c.sent) == result[:2] for c in TABLE.values())
)
"""A probe's last result as the dashboards show it, valued by its index (see ``result_expr``):
the cause's kind, and whether a call was sent. Failed sorts first in an ascending table."""


def colour(kind: Kind) -> str:
    return KINDS[kind].grafana


def cause_text(name: str) -> str:
    """A cause as a cell shows it: "not probed" in words when nothing was sent."""
    return name if TABLE[name].sent else f"{name} ({NOT_PROBED})"


def colour_legend() -> str:
    """The colours in words, for panel descriptions."""
    kinds = "; ".join(f"{style.grafana}: {style.words}" for style in KINDS.values())
    return (
        f"Colours follow the cause's kind ({kinds}). '{NOT_PROBED}': the exporter sends nothing "
        "for such a tenant (see docs/troubleshooting.md)."
    )


def cause_mappings() -> list[dm.ValueMapping]:
    """Cause text -> colour, for table cells that show a cause."""
    options = {
        name: dm.ValueMappingResult(text=cause_text(name), color=colour(c.kind), index=index)
        for index, (name, c) in enumerate(TABLE.items())
    }
    return [dm.ValueMap(options=options)]


def kind_mappings() -> list[dm.ValueMapping]:
    """Kind -> its colour, for table cells that show a kind."""
    options: dict[str, dm.ValueMappingResult] = {
        kind: dm.ValueMappingResult(text=kind, color=style.grafana, index=index)
        for index, (kind, style) in enumerate(KINDS.items())
    }
    return [dm.ValueMap(options=options)]


def cause_colour_overrides() -> list[tuple[str, str]]:
    """(series name, colour) for panels with one series per cause (legend ``{{cause}}``)."""
    return [(name, colour(c.kind)) for name, c in TABLE.items()]


def kind_colour_overrides(suffix: str = "") -> list[tuple[str, str]]:
    """(series name, colour) for panels with one series per kind (legend ``{{kind}}``)."""
    return [(f"{kind}{suffix}", style.grafana) for kind, style in KINDS.items()]


def result_mappings() -> list[dm.ValueMapping]:
    """The values of ``result_expr``: coloured by kind, "not probed" said in words."""
    return [
        dm.ValueMap(
            options={
                str(value): dm.ValueMappingResult(text=text, color=colour(kind), index=value)
                for value, (kind, _, text) in enumerate(RESULTS)
            }
        )
    ]


def confirmation_mappings() -> list[dm.ValueMapping]:
    """Consecutive failures: 0 ok, fewer than the threshold still being re-probed, then
    confirmed."""
    return [
        dm.ValueMap(options={"0": dm.ValueMappingResult(text="0 ok", color=colour("ok"), index=0)}),
        dm.RangeMap(
            options=dm.DashboardRangeMapOptions(
                from_val=1,
                to=CONFIRMED_AFTER - 1,
                result=dm.ValueMappingResult(text="confirming", color="orange", index=1),
            )
        ),
        dm.RangeMap(
            options=dm.DashboardRangeMapOptions(
                from_val=CONFIRMED_AFTER,
                to=None,
                result=dm.ValueMappingResult(text="confirmed", color=colour("failure"), index=2),
            )
        ),
    ]


CONFIRMING = f"1-{CONFIRMED_AFTER - 1}" if CONFIRMED_AFTER > 2 else "1"
CONFIRMATION_WORDS = (
    f"0 ok, {CONFIRMING} a failure being re-probed (after confirm_interval, then twice that) to "
    f"confirm it, {CONFIRMED_AFTER} or more confirmed"
)


def ok_mappings(ok: str, bad: str) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                "1": dm.ValueMappingResult(text=ok, color="green", index=0),
                "0": dm.ValueMappingResult(text=bad, color="red", index=1),
            }
        )
    ]


# --- queries -----------------------------------------------------------------------------------


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


def result_expr(by: str, *extra: str) -> str:
    """A probe's last result as the index of its ``RESULTS`` entry, from the cause's kind and
    whether the cause is one of a tenant the agent sends nothing for (``NOT_SENT_RE``)."""
    arms = []
    for value, (kind, sent, _) in enumerate(RESULTS):
        matchers = [f'kind="{kind}"']
        if sum(other == kind for other, _, _ in RESULTS) > 1:  # sent and not sent: say which
            matchers.append(f'cause!~"{NOT_SENT_RE}"' if sent else f'cause=~"{NOT_SENT_RE}"')
        selector = sel(*extra, *matchers, tenant=True)
        arms.append(f"({value} * max by ({by}) ({m.PROBE_CAUSE_INFO}{selector}))")
    return " or ".join(arms)


def latest(by: str, metric: str, selector: str) -> str:
    """The repeated building block of the tables: one value per ``by`` label set."""
    return f"max by ({by}) ({metric}{selector})"


def target(
    expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, table: bool = False
) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .ref_id(ref)
        .expr(expr)
        .legend_format(legend or "__auto")
        .format(pm.PromQueryFormat.TABLE if table else pm.PromQueryFormat.TIME_SERIES)
    )
    return query.instant() if instant else query.range()


def table_queries(*exprs: str) -> list[prometheus.Dataquery]:
    """The instant queries of one table, in order with refs A, B, C, ...: a column takes the
    value of the query with ref X as ``Value #X`` (``value_of``)."""
    return [
        target(expr, ref=chr(ord("A") + index), instant=True, table=True)
        for index, expr in enumerate(exprs)
    ]


def value_of(ref: str) -> str:
    return f"Value #{ref}"


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


# --- one function per panel kind ---------------------------------------------------------------


class _Common(Protocol):
    """What every panel builder of the SDK has; enough for ``_common``."""

    def title(self, title: str) -> Any: ...
    def description(self, description: str) -> Any: ...
    def datasource(self, datasource: dm.DataSourceRef) -> Any: ...
    def span(self, w: int) -> Any: ...
    def height(self, h: int) -> Any: ...
    def unit(self, unit: str) -> Any: ...
    def targets(self, targets: list[Any]) -> Any: ...


def _common(
    panel: _Common,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
) -> PanelBuilder:
    """Title, description, unit, data source and size: what the dashboard linter asks of every
    panel, set in one place. Where it goes is the flow layout's business (``dashboard``)."""
    width, height = size
    panel.title(title)
    panel.description(description)
    panel.datasource(DATASOURCE)
    panel.span(width)
    panel.height(height)
    panel.unit(unit)
    panel.targets(list(targets))
    return panel


def timeseries(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
    *,
    stack: bool = False,
    colours: Sequence[tuple[str, str]] = (),
) -> PanelBuilder:
    """Lines, stacked for parts of a whole, with a table legend of last values."""
    panel = (
        ts.Panel()
        .min(0)
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            cb.StackingConfig()
            .mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE)
            .group("A")
        )
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
    )
    for name, colour in colours:
        panel.override_by_name(name, [fixed_colour(colour)])
    return _common(panel, title, description, targets, unit, size)


def fixed_colour(colour: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})


def stat_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
    *,
    mappings: list[dm.ValueMapping] | None = None,
    steps: db.ThresholdsConfig | None = None,
) -> PanelBuilder:
    """One coloured tile per series: the last value, named."""
    panel = (
        stat.Panel()
        .mappings(mappings or [])
        .reduce_options(reduce_last())
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
    )
    if steps is not None:
        panel.thresholds(steps)
    return _common(panel, title, description, targets, unit, size)


def bargauge_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
    *,
    steps: db.ThresholdsConfig | None = None,
    colours: Sequence[tuple[str, str]] = (),
) -> PanelBuilder:
    """Horizontal bars: counts or times per series, compared at a glance."""
    panel = (
        bargauge.Panel()
        .min(0)
        .reduce_options(reduce_last())
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .show_unfilled(True)
    )
    if steps is not None:
        panel.thresholds(steps)
    for name, colour in colours:
        panel.override_by_name(name, [fixed_colour(colour)])
    return _common(panel, title, description, targets, unit, size)


def state_timeline(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
    *,
    mappings: list[dm.ValueMapping],
) -> PanelBuilder:
    """One band per series, coloured by its mapped value over time: when did it change."""
    panel = (
        statetimeline.Panel()
        .mappings(mappings)
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
    )
    return _common(panel, title, description, targets, unit, size)


Column = tuple[str, str, list[dm.DynamicConfigValue]]
"""A table column: source field (label name or ``Value #<refId>``), header, display settings."""


def table_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    size: Size,
    *,
    columns: Sequence[Column],
    sort_by: str,
    descending: bool = False,
) -> PanelBuilder:
    """Instant queries merged into one row per label set, showing only ``columns``, in order."""
    panel = table.Panel().show_header(True)
    panel.sort_by([sort_by_column(sort_by, descending)])
    for _, header, properties in columns:
        if properties:
            panel.override_by_name(header, properties)
    values = _value_fields(targets)
    wanted = [field for field, _, _ in columns]
    if len(targets) > 1:
        panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel.with_transformation(
        dm.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {f: True for f in ["Time", *values] if f not in wanted},
                "indexByName": {field: index for index, field in enumerate(wanted)},
                "renameByName": {field: header for field, header, _ in columns},
            },
        )
    )
    return _common(panel, title, description, targets, unit, size)


def sort_by_column(column: str, descending: bool) -> cb.TableSortByFieldState:
    return cb.TableSortByFieldState().display_name(column).desc(descending)


def _value_fields(targets: Sequence[prometheus.Dataquery]) -> list[str]:
    """The value columns of instant table queries as Grafana names them: ``Value`` alone,
    ``Value #<refId>`` once several queries are merged."""
    if len(targets) == 1:
        return ["Value"]
    return [f"Value #{query.build().ref_id}" for query in targets]


def coloured_cells(*mappings: dm.ValueMapping) -> list[dm.DynamicConfigValue]:
    return [
        dm.DynamicConfigValue(id_val="mappings", value=list(mappings)),
        dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
    ]


def unit_of(unit: str) -> list[dm.DynamicConfigValue]:
    return [dm.DynamicConfigValue(id_val="unit", value=unit)]


def link_to_detail(title: str) -> list[dm.DynamicConfigValue]:
    """A cell link to the drill-down of this row's credential and tenant, keeping the time range
    and the data source, job and instance selection."""
    url = (
        f"/d/{DETAIL_UID}?${{datasource:queryparam}}&${{job:queryparam}}"
        "&${instance:queryparam}&var-credential=${__data.fields.credential}"
        "&var-tenant=${__data.fields.tenant_id}&${__url_time_range}"
    )
    return [dm.DynamicConfigValue(id_val="links", value=[{"title": title, "url": url}])]


# --- templating and the dashboard frame -------------------------------------------------------


def query_variable(name: str, label: str, query: str, *, many: bool = True) -> db.QueryVariable:
    """A label_values() variable; ``many=False`` for a drill-down that shows one of them."""
    variable = (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(many)
        .include_all(many)
    )
    if many:
        variable.all_value(".*").current(
            dm.VariableOption(selected=True, text=["All"], value=["$__all"])
        )
    return variable


def variables(*, one_tenant: bool = False) -> list[db.QueryVariable | db.DatasourceVariable]:
    """datasource, job, instance, credential, tenant: the dashboard linter's set plus ours."""
    build = m.EXPORTER_BUILD_INFO
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_variable("job", "Job", f"label_values({build}, job)"),
        query_variable("instance", "Instance", f'label_values({build}{{job=~"$job"}}, instance)'),
        query_variable(
            "credential",
            "Credential",
            f'label_values({m.PROBE_SUCCESS}{{job=~"$job", instance=~"$instance"}}, credential)',
            many=not one_tenant,
        ),
        query_variable(
            "tenant",
            "Tenant ID",
            f"label_values({m.TENANT_INFO}"
            f'{{job=~"$job", instance=~"$instance", credential=~"$credential"}}, tenant_id)',
            many=not one_tenant,
        ),
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: Sequence[Section],
    *,
    one_tenant: bool = False,
) -> dm.Dashboard:
    """The frame every dashboard shares (tags, links between them, variables, refresh) and its
    rows of panels, placed by the SDK's flow layout: each row under the last, its panels left to
    right in their width, wrapping at the grid's 24 columns."""
    board = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("")
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .built_in(1)
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .link(
            db.DashboardLink("Sophos Central dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["sophos-central"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
            .target_blank(False)
            .icon("external link")
        )
    )
    for variable in variables(one_tenant=one_tenant):
        board.with_variable(variable)
    number = 0
    for row, panels in sections:
        number += 1
        board.with_row(db.Row(row).id(number))  # returns None in this SDK build: not chained
        for panel in panels:
            number += 1
            board.with_panel(panel.id(number))
    return board.build()


# --- the overview ------------------------------------------------------------------------------


def overview() -> dm.Dashboard:
    req = m.API_REQUESTS_TOTAL
    token = sel('probe="token"')
    whoami = sel('probe="whoami"')
    not_ok = sel('kind!="ok"')
    not_2xx = sel('status_code!~"2.."')
    status_429 = sel('status_code="429"')
    now = [
        stat_panel(
            "Token issuance",
            "Result of the last token probe per credential: a fresh OAuth token from the Sophos "
            "token endpoint, every token_probe_interval (5m by default).",
            [target(f"min by (credential) ({m.PROBE_SUCCESS}{token})", "{{credential}}")],
            "none",
            (6, 5),
            mappings=ok_mappings("OK", "Failing"),
        ),
        stat_panel(
            "whoami",
            "Result of the last whoami probe per credential (global API host, every "
            "tenant_refresh_interval).",
            [target(f"min by (credential) ({m.PROBE_SUCCESS}{whoami})", "{{credential}}")],
            "none",
            (6, 5),
            mappings=ok_mappings("OK", "Failing"),
        ),
        stat_panel(
            "Tenants OK",
            "Tenants whose last probe succeeded (kind ok).",
            [target(f"sum({TENANTS_OK}{sel()})", "OK")],
            "short",
            (3, 5),
            steps=thresholds((None, colour("ok"))),
        ),
        stat_panel(
            "Tenants failing",
            "Tenants whose cause is of kind failure: something is broken or refused and a "
            "person can act on it. A tenant that is not probed because its API host is refused "
            "counts here; business state (trial accounts, no Partner Assistance, not activated) "
            "does not. See the tenants dashboard.",
            [target(f"sum({TENANTS_FAILING}{sel()})", "failing")],
            "short",
            (3, 5),
            steps=thresholds((None, colour("ok")), (1, colour("failure"))),
        ),
        stat_panel(
            "Tenants in business state",
            "Tenants whose cause is of kind business: the customer's or Sophos's decision about "
            "the account (a trial, no Partner Assistance, an activation not finished), not an "
            "outage.",
            [target(f"sum({TENANTS_BUSINESS}{sel()})", "business")],
            "short",
            (3, 5),
            steps=thresholds((None, colour("business"))),
        ),
        stat_panel(
            "Exporter up",
            "Whether Prometheus can scrape each exporter instance (up).",
            [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
            "none",
            (3, 5),
            mappings=ok_mappings("Up", "Down"),
        ),
    ]
    causes = [
        timeseries(
            "Tenants by kind",
            "Per credential: tenants whose last probe's cause is of kind ok, failure and "
            "business. " + colour_legend(),
            [
                target(f"sum by (credential) ({TENANTS_OK}{sel()})", "{{credential}} ok"),
                target(
                    f"sum by (credential) ({TENANTS_FAILING}{sel()})",
                    "{{credential}} failure",
                    ref="B",
                ),
                target(
                    f"sum by (credential) ({TENANTS_BUSINESS}{sel()})",
                    "{{credential}} business",
                    ref="C",
                ),
            ],
            "short",
            (12, 8),
        ),
        bargauge_panel(
            "Current causes (probes not ok)",
            "How many probes have each cause as their current diagnosis (probe_cause_info), "
            "kind ok left out. " + colour_legend() + " The runbook explains each cause.",
            [
                target(
                    f"count by (cause) ({m.PROBE_CAUSE_INFO}{not_ok})",
                    "{{cause}}",
                    instant=True,
                )
            ],
            "short",
            (12, 8),
            steps=thresholds((None, "orange")),
            colours=cause_colour_overrides(),
        ),
    ]
    answers = [
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
            (12, 8),
            stack=True,
        ),
        table_panel(
            "Top error codes",
            "The ten most frequent non-2xx answers in the dashboard's time range, by status and "
            "Sophos error code (empty when the body had none, e.g. an HTML 502).",
            table_queries(
                f"topk(10, sum by (status_code, error_code) (increase("
                f"{req}{not_2xx}[$__range])) > 0)",
            ),
            "short",
            (12, 8),
            columns=[
                ("status_code", "Status", []),
                ("error_code", "Error code", []),
                ("Value", "Answers", []),
            ],
            sort_by="Answers",
            descending=True,
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
            (12, 8),
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
            (12, 8),
        ),
    ]
    budget = [
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
            (12, 8),
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
            (12, 8),
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
            (8, 8),
        ),
        bargauge_panel(
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
            (8, 8),
            steps=thresholds((None, colour("failure")), (300, colour("ok"))),
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
            (8, 8),
        ),
    ]
    freshness = [
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
            (12, 8),
        ),
        timeseries(
            "Tenants by state",
            "Every listed tenant once, by state: probed, or the cause it is not probed for ("
            + ", ".join(TENANT_STATES[1:])
            + "; docs/troubleshooting.md explains each). Only probed tenants are called.",
            [
                target(
                    f"sum by (credential, state) ({m.TENANTS}{sel()})",
                    "{{credential}} {{state}}",
                )
            ],
            "short",
            (12, 8),
            stack=True,
        ),
    ]
    return dashboard(
        OVERVIEW_UID,
        "Sophos Central API / Overview",
        "Health of the Sophos Central API as seen by sophos-central-exporter: token and whoami "
        "per credential, tenants by kind (ok, failure, business state), answers by status, "
        "rate-limit use, staleness.",
        [
            ("Now", now),
            ("Tenants and causes", causes),
            ("Answers", answers),
            ("Rate budget", budget),
            ("Freshness", freshness),
            ("Credentials and SIEM collection", credentials_and_collection()),
        ],
    )


SIEM_FAMILIES = "|".join(f.name for f in BUILTINS.values() if f.lookback)
"""The families whose API forgets (``lookback``): the SIEM ones."""


def credentials_and_collection() -> list[PanelBuilder]:
    """What runs out by date: the credentials' own expiry, and the time the SIEM families that
    are failing have left before their events pass the SIEM API's 24-hour limit."""
    siem = sel(f'probe=~"{SIEM_FAMILIES}"', tenant=True)
    by = "credential, tenant_id, probe"
    failing = (
        f"{latest(by, m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS, siem)}"
        f" and on ({by}) {latest(by, m.PROBE_CONSECUTIVE_FAILURES, siem)} > 0"
    )
    expiry = m.CREDENTIAL_EXPIRY_TIMESTAMP_SECONDS
    names = (
        "* on (credential, tenant_id) group_left (tenant_name) "
        f"{latest('credential, tenant_id, tenant_name', m.TENANT_INFO, sel(tenant=True))}"
    )
    return [
        bargauge_panel(
            "Credential expires in",
            "Time left until each credential itself expires: its expires_at, the date Sophos "
            "Central shows under Global Settings > API Credentials Management (no API reads "
            f"it). Orange within {WARNING_DAYS} days, red within {CRITICAL_DAYS} days, where "
            "SophosCentralCredentialExpiringSoon warns and pages; 0 once past. Credentials "
            "without an expires_at are not shown.",
            [
                target(
                    f"min by (credential) ({expiry}{sel()}) - time()",
                    "{{credential}}",
                    instant=True,
                )
            ],
            "s",
            (12, 8),
            steps=thresholds(
                (None, colour("failure")),
                (CRITICAL_DAYS * 86400, "orange"),
                (WARNING_DAYS * 86400, colour("ok")),
            ),
        ),
        bargauge_panel(
            "Failing SIEM families: time since last success",
            "Tenants whose SIEM family (siem_events, siem_alerts) is failing now, by the time "
            "since it last succeeded (up to ten, longest first). Sophos's SIEM API reads only "
            "24 hours back: past that, a connector loses events for good. Orange from "
            f"{WARNING_AFTER / 3600:g} h, red from {CRITICAL_AFTER / 3600:g} h, where "
            "SophosCentralSiemCollectionAtRisk warns and pages once the failure is confirmed.",
            [
                target(
                    f"topk(10, (time() - ({failing})) {names})",
                    "{{tenant_name}} {{probe}}",
                    instant=True,
                )
            ],
            "s",
            (12, 8),
            steps=thresholds(
                (None, colour("ok")),
                (WARNING_AFTER, "orange"),
                (CRITICAL_AFTER, colour("failure")),
            ),
        ),
    ]


# --- the tenants dashboard ---------------------------------------------------------------------


def tenants() -> dm.Dashboard:
    tenant_probe = 'probe="tenant"'
    of_tenant = sel(tenant_probe, tenant=True)
    by = "credential, tenant_id"
    name_join = (
        f"* on ({by}) group_left (tenant_name) "
        f"{latest(f'{by}, tenant_name', m.TENANT_INFO, sel(tenant=True))}"
    )
    table = table_panel(
        "Tenants",
        "Every listed tenant with its region and billing type, the result, cause and kind of "
        "its last probe, its consecutive failures ("
        + CONFIRMATION_WORDS
        + "), how long ago it was probed, and its most frequent answer in the time range. "
        + colour_legend()
        + " Click a tenant for its detail.",
        table_queries(
            latest(
                f"{by}, tenant_name, data_region, billing_type", m.TENANT_INFO, sel(tenant=True)
            ),
            result_expr(by, tenant_probe),
            latest(f"{by}, cause, kind", m.PROBE_CAUSE_INFO, of_tenant),
            f"max by ({by}) (time() - {m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{of_tenant})",
            f"topk by ({by}) (1, sum by ({by}, status_code, error_code) "
            f"(increase({m.API_REQUESTS_TOTAL}{of_tenant}[$__range])))",
            latest(by, m.PROBE_CONSECUTIVE_FAILURES, of_tenant),
        ),
        "none",
        (24, 12),
        columns=[
            ("tenant_name", "Tenant", link_to_detail("Probes of this tenant")),
            ("tenant_id", "Tenant ID", link_to_detail("Probes of this tenant")),
            ("credential", "Credential", []),
            ("data_region", "Region", []),
            ("billing_type", "Billing type", []),
            (value_of("B"), "Last probe", coloured_cells(*result_mappings())),
            ("cause", "Cause", coloured_cells(*cause_mappings())),
            ("kind", "Kind", coloured_cells(*kind_mappings())),
            (value_of("F"), "Consecutive failures", coloured_cells(*confirmation_mappings())),
            (value_of("D"), "Age of last probe", unit_of("s")),
            ("status_code", "Most frequent status", []),
            ("error_code", "Error code", []),
            (value_of("E"), "Answers in range", unit_of("short")),
        ],
        sort_by="Last probe",
    )
    timeline = state_timeline(
        "Probe result per tenant",
        "Result of each tenant's last probe over time: OK, failed, business state, or not "
        "probed (nothing sent). " + colour_legend(),
        [target(f"({result_expr(by, tenant_probe)}) {name_join}", "{{tenant_name}}")],
        "none",
        (24, 10),
        mappings=result_mappings(),
    )
    history = [
        timeseries(
            "Tenants by cause",
            "How many of the selected tenants have each cause as the diagnosis of their last "
            "probe. " + colour_legend(),
            [target(f"count by (cause) ({m.PROBE_CAUSE_INFO}{of_tenant})", "{{cause}}")],
            "short",
            (12, 8),
            stack=True,
            colours=cause_colour_overrides(),
        ),
        timeseries(
            "Requests by status per tenant",
            "Tenant probe calls per second by tenant and HTTP status ('0': no answer).",
            [
                target(
                    f"sum by (tenant_id, status_code) (rate("
                    f"{m.API_REQUESTS_TOTAL}{of_tenant}[$__rate_interval]))",
                    "{{tenant_id}} {{status_code}}",
                )
            ],
            "reqps",
            (12, 8),
        ),
        timeseries(
            "Probe duration per tenant",
            "How long each tenant's last probe took.",
            [
                target(
                    f"{latest(by, m.PROBE_DURATION_SECONDS, of_tenant)} {name_join}",
                    "{{tenant_name}}",
                )
            ],
            "s",
            (12, 8),
        ),
        timeseries(
            "Age of last probe per tenant",
            "Time since each tenant was last probed; compare with the effective probe interval "
            "(stale beyond 3x).",
            [
                target(
                    f"max by ({by}) (time() - {m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{of_tenant}) "
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
            (12, 8),
        ),
    ]
    return dashboard(
        TENANTS_UID,
        "Sophos Central API / Tenants",
        "Per-tenant view of sophos-central-exporter: name, region, billing type, last result, "
        "cause and kind, confirmation and age of the last probe, and each tenant's history. A "
        "tenant's name or id opens the tenant detail dashboard.",
        [("Tenants", [table, timeline]), ("History", history)],
    )


# --- the tenant detail (drill-down) ------------------------------------------------------------


def tenant_detail() -> dm.Dashboard:
    """One credential and one tenant: every probe family of it side by side.

    Per-tenant probe families (tenant, siem_events, siem_alerts, common_alerts, custom ones)
    share the tenant but not their fate: one can be 403 while another is fine. Only series with
    a tenant_id are shown, so the credential's own probes (token, whoami) stay out.
    """
    fam = "credential, tenant_id, probe"
    of_tenant = sel('tenant_id!=""', tenant=True)
    period = f"max by (credential) ({m.PROBE_INTERVAL_SECONDS}{sel()})"
    age = f"max by ({fam}) (time() - {m.PROBE_LAST_RUN_TIMESTAMP_SECONDS}{of_tenant})"
    tenant = table_panel(
        "Tenant",
        "The selected tenant as the tenant list describes it.",
        table_queries(
            latest(
                "credential, tenant_id, tenant_name, data_region, billing_type",
                m.TENANT_INFO,
                sel(tenant=True),
            )
        ),
        "none",
        (24, 4),
        columns=[
            ("tenant_name", "Tenant", []),
            ("tenant_id", "Tenant ID", []),
            ("credential", "Credential", []),
            ("data_region", "Region", []),
            ("billing_type", "Billing type", []),
        ],
        sort_by="Tenant",
    )
    families = table_panel(
        "Probe families",
        "One row per probe family of the tenant (the probe label: tenant, siem_events, "
        "siem_alerts, common_alerts or a configured name). Last probe: OK, failed, business "
        "state, or not probed (nothing sent). Consecutive failures: "
        + CONFIRMATION_WORDS
        + ". Age / period: how many planned periods ago the family last ran (stale beyond 3). "
        "Since last success: for the SIEM families, whose API reads only 24 hours back. "
        + colour_legend(),
        table_queries(
            result_expr(fam, 'tenant_id!=""'),
            latest(f"{fam}, cause, kind", m.PROBE_CAUSE_INFO, of_tenant),
            latest(fam, m.PROBE_CONSECUTIVE_FAILURES, of_tenant),
            age,
            f"{age} / on (credential) group_left () {period}",
            f"max by ({fam}) (time() - {m.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS}{of_tenant})",
        ),
        "none",
        (24, 8),
        columns=[
            ("probe", "Probe family", []),
            (value_of("A"), "Last probe", coloured_cells(*result_mappings())),
            ("cause", "Cause", coloured_cells(*cause_mappings())),
            ("kind", "Kind", coloured_cells(*kind_mappings())),
            (value_of("C"), "Consecutive failures", coloured_cells(*confirmation_mappings())),
            (value_of("D"), "Last run age", unit_of("s")),
            (
                value_of("E"),
                "Age / period",
                [
                    *unit_of("none"),
                    dm.DynamicConfigValue(id_val="decimals", value=1),
                    dm.DynamicConfigValue(
                        id_val="thresholds",
                        value=thresholds(
                            (None, colour("ok")), (1.5, "orange"), (3, colour("failure"))
                        ).build(),
                    ),
                    dm.DynamicConfigValue(
                        id_val="custom.cellOptions", value={"type": "color-background"}
                    ),
                ],
            ),
            (value_of("F"), "Since last success (SIEM)", unit_of("s")),
        ],
        sort_by="Probe family",
    )
    over_time = [
        state_timeline(
            "Result per probe family",
            "Each family's last result over time: OK, failed, business state, or not probed "
            "(nothing sent). " + colour_legend(),
            [target(result_expr(fam, 'tenant_id!=""'), "{{probe}}")],
            "none",
            (12, 8),
            mappings=result_mappings(),
        ),
        state_timeline(
            "Confirmation per probe family",
            "Consecutive failures of each family over time: " + CONFIRMATION_WORDS + ".",
            [target(latest(fam, m.PROBE_CONSECUTIVE_FAILURES, of_tenant), "{{probe}}")],
            "none",
            (12, 8),
            mappings=confirmation_mappings(),
        ),
        timeseries(
            "Last run age vs planned period",
            "Time since each family last ran, with the planned period between two probes of a "
            "tenant (probe_interval, stretched to fit the rate budget) and the stale bound (3x).",
            [
                target(age, "{{probe}}"),
                target(period, "planned period", ref="B"),
                target(f"3 * {period}", "stale bound", ref="C"),
            ],
            "s",
            (12, 8),
        ),
        timeseries(
            "Answers by status",
            "Answers to this tenant's calls within each trailing rate interval, by probe family, "
            "HTTP status ('0': no answer) and Sophos error code.",
            [
                target(
                    f"sum by (probe, status_code, error_code) (increase("
                    f"{m.API_REQUESTS_TOTAL}{of_tenant}[$__rate_interval]))",
                    "{{probe}} {{status_code}} {{error_code}}",
                )
            ],
            "short",
            (12, 8),
            stack=True,
        ),
        timeseries(
            "Probe duration per family",
            "How long each family's last probe of this tenant took.",
            [target(latest(fam, m.PROBE_DURATION_SECONDS, of_tenant), "{{probe}}")],
            "s",
            (24, 8),
        ),
    ]
    return dashboard(
        DETAIL_UID,
        "Sophos Central API / Tenant detail",
        "One tenant of one credential: every probe family with its last result, cause and kind, "
        "confirmation state, age against the planned period, and answers over time. Open it "
        "from a tenant on the tenants dashboard, or pick a credential and a tenant.",
        [("Tenant", [tenant, families]), ("Over time", over_time)],
        one_tenant=True,
    )


# --- output ------------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model (plain JSON values)."""
    models = {
        f"{OVERVIEW_UID}.json": overview(),
        f"{TENANTS_UID}.json": tenants(),
        f"{DETAIL_UID}.json": tenant_detail(),
    }
    return {name: json.loads(json.dumps(model, cls=JSONEncoder)) for name, model in models.items()}


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def expressions(model: dict[str, Any]) -> Iterable[str]:
    """Every PromQL expression of a dashboard's panel targets (rows have none)."""
    for panel in model["panels"]:
        for tgt in panel.get("targets") or []:
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
