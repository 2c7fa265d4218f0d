"""End to end with the real stack (issue 5): the simulator and the agent as processes, a real
Prometheus with the repository's rules, a real Alertmanager with the example configuration, and a
webhook served by this test that records what would have paged someone.

One stack for the module; the tests run in this order and each is a phase of one story:

1. healthy traffic: no critical alert reaches the webhook;
2. a credential's secret is rotated: ``SophosCentralTokenIssuanceFailing`` pages (its tokens stay
   valid, so API calls keep working: the case the token probe exists for);
3. one tenant answers 500: ``SophosCentralPersistent5xx`` reaches the team chat;
4. a tenant that was fine answers 403: ``SophosCentralForbiddenSpike`` (tenant scope) reaches the
   team chat, while the tenants that have answered 403 since they were first seen never alert;
5. the API goes down: ``SophosCentralApiOutage`` pages, while the per-tenant alerts that fire in
   Prometheus during it are inhibited and never reach the webhook;
6. the agent is restarted believing in higher rate limits than the simulator enforces: 429s and
   ``SophosCentralRateLimited``.

Every dashboard query is run through Prometheus's HTTP API: each must parse, and each must return
data in the phase built to exercise it (``DATA_PHASE``).

The rule files go through the documented test-time transform (``tools/shorten_for.py --scale
60``: 10m becomes 10s, the order of the ``for:`` durations is kept) and the Alertmanager example
through ``alertmanager_config_for_test`` (webhook URLs, short group timers); see "End-to-end test"
in alerts/README.md.

The per-tenant alerts are judged on probe state (``sophos_central_probe_consecutive_failures``):
the agent runs with ``confirm_interval: 1s``, so a failed tenant probe is confirmed within
seconds instead of the default 1 and 3 minutes.

Not exercised here, and why: the credential scope of ``SophosCentralForbiddenSpike`` needs a
403 on whoami or the tenant list, or three tenants newly refused at once, which the demo does not
do; ``SophosCentralProbesStale`` needs probes older than 5 minutes;
``SophosCentralRateBudgetHigh`` and ``SophosCentralExporterDown`` are left out to keep the run
short. The promtool unit tests cover all four.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from agent.simulator import build_scenario
from tests.e2e.stack_support import (
    JOB,
    DashboardQuery,
    RealStack,
    dashboard_queries,
    dashboard_variable_queries,
    http_json,
    label_values_request,
    substitute,
    wait_until,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

SCENARIO = "demo"
"""The demo scenario: msp-main (250 tenants with 403, 404, 5xx, slow, reset, not activated and
rogue-host tenants), org-main (4 tenants), tenant-direct (a tenant credential), and simulator
rate limits high enough (50/s, 3000/min, 100000/h, 1000000/day) for a fast probe interval."""

LEFT_OUT_CREDENTIALS = {"revoked-key"}
"""The demo's credential with a wrong secret would page from the first minute on; phase 1 checks
that healthy traffic pages nobody, and phase 2 makes a credential go bad on purpose instead."""

AGENT_OVERRIDES: dict[str, Any] = {
    "probe_interval": "2s",  # org-main's 4 tenants: every 2 s; msp-main's 250 are stretched
    "token_probe_interval": "5s",
    "tenant_refresh_interval": "10s",
    "request_timeout": "3s",
    "confirm_interval": "1s",  # a failed tenant probe is confirmed after 1 s and 2 s more
    "budget_share": 0.25,  # keeps msp-main at a few calls a second on a 2-core CI machine
    "external_url": "https://sce.example.test/exporter",  # what the alerts' links start with
    # A SIEM family too, for the dashboards' SIEM panels (msp-main's budget is what it is: the
    # second family stretches its period, not its calls).
    "tenant_probes": ["tenant", "siem_events"],
}

RATE_LIMITED_OVERRIDES: dict[str, Any] = {
    # Phase 6: what the agent believes, far above the simulator's 50 calls/s: msp-main's 250
    # tenants every 2 s are 125 calls/s, so the simulator answers 429.
    "rate_limits": {"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000},
    "budget_share": 1.0,
}

PAGER, CHAT = "sophos-central-pager", "sophos-central-chat"
ROTATED = "tenant-direct"
PER_TENANT_ALERTS = ("SophosCentralPersistent5xx", "SophosCentralForbiddenSpike")

SCENARIO_MODEL = build_scenario(SCENARIO)  # deterministic: the same ids as the subprocess
ORG_TENANTS = [t.id for t in SCENARIO_MODEL.credential("org-main").tenants]
FAILING_TENANT = ORG_TENANTS[0]
REFUSING_TENANT = ORG_TENANTS[1]
ALWAYS_403 = [
    t.id
    for fault in ("trial_403", "no_partner_assistance_403")
    for t in SCENARIO_MODEL.tenants_with_fault(fault)
]

# The phase whose data each dashboard query must show; any query not listed: "baseline".
DATA_PHASE: dict[tuple[str, str, str], str] = {
    # increase() of non-2xx answers needs a second error of one series: a tenant probed every
    # 2 s answering 500 (phase 3). The demo's faulty msp-main tenants are probed ~every 2 min.
    ("sophos-central-overview", "Top error codes", "A"): "tenant_5xx",
    # 429s exist only once the agent overspends the simulator's limits (phase 6).
    ("sophos-central-overview", "429 answers and pauses", "A"): "rate_limited",
    # A failing SIEM family: the tenant answering 500 fails its siem_events too (phase 3).
    (
        "sophos-central-overview",
        "Failing SIEM families: time since last success",
        "A",
    ): "tenant_5xx",
}
PHASES = ("baseline", "tenant_5xx", "rate_limited")

# --- the stack --------------------------------------------------------------------------------


def agent_config(simulator_config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    config = {**simulator_config, **AGENT_OVERRIDES, **overrides}
    config["credentials"] = [
        c for c in simulator_config["credentials"] if c["name"] not in LEFT_OUT_CREDENTIALS
    ]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    running = RealStack(tmp_path_factory.mktemp("real-stack"))
    try:
        with running.explain_failure():
            running.webhook.start()
            simulator = running.start_simulator(SCENARIO)
            config = agent_config(
                simulator["agent_config"], state_file=str(running.workdir / "state.db")
            )
            running.start_agent(running.write_agent_config("agent.yml", config))
            running.start_alertmanager()
            running.start_prometheus()
            running.started_at = time.time()
            wait_until(
                lambda: (
                    running.query('sophos_central:tenants_ok:count{credential="org-main"} == 4')
                    and len(running.query('sophos_central_probe_success{probe="token"} == 1')) == 3
                ),
                60,
                "Prometheus to see every token probe succeed and org-main's 4 tenants OK",
            )
        yield running
    finally:
        running.close()


def firing_at(stack: RealStack, receiver: str, since: int = 0, **labels: str) -> bool:
    return any(
        name == receiver and all(got.get(k) == v for k, v in labels.items())
        for name, got in stack.webhook.firing(since)
    )


def told_resolved(stack: RealStack, since: int, **labels: str) -> bool:
    """The last notification since ``since`` that mentions an alert with ``labels`` says it
    resolved."""
    last = None
    for notification in stack.webhook.received[since:]:
        for alert in notification.alerts:
            if all(alert["labels"].get(k) == v for k, v in labels.items()):
                last = alert.get("status")
    return last == "resolved"


# --- dashboards -------------------------------------------------------------------------------


def grafana_values(stack: RealStack) -> dict[str, str]:
    """What Grafana would put in for the variables: this stack's job and instance, every
    credential and tenant, a 1m rate interval and the time since the stack started as range."""
    since = max(60, int(time.time() - stack.started_at) + 10)
    return {
        "job": JOB,
        "instance": f"127.0.0.1:{stack.agent_port}",
        "credential": ".*",
        "tenant": ".*",
        "__rate_interval": "1m",
        "__interval": "2s",
        "__range": f"{since}s",
    }


def has_data(stack: RealStack, query: DashboardQuery, since: float) -> bool:
    """Instant targets: a result now. Range targets (time series panels): a point since
    ``since``, as the panel would draw it."""
    expr = substitute(query.expr, grafana_values(stack))
    if query.instant:
        return bool(stack.query(expr))
    return bool(stack.query_range(expr, since, time.time()))


def check_dashboard_data(stack: RealStack, phase: str, since: float) -> None:
    """Every query this phase exercises returns data (polled briefly: the next scrape and rule
    evaluation may be needed after the phase's condition was first seen)."""
    expected = [q for q in dashboard_queries() if DATA_PHASE.get(q.key, "baseline") == phase]
    assert expected, f"no dashboard query is exercised by phase {phase}"
    missing: list[DashboardQuery] = []

    def all_have_data() -> bool:
        missing[:] = [q for q in expected if not has_data(stack, q, since)]
        return not missing

    try:
        wait_until(all_have_data, 20, f"every dashboard query of phase {phase} to have data")
    except AssertionError:
        raise AssertionError(
            f"dashboard queries without data in phase {phase}:\n"
            + "\n".join(f"  {q}: {q.expr}" for q in missing)
        ) from None


def test_every_data_phase_names_an_existing_dashboard_query() -> None:
    keys = {q.key for q in dashboard_queries()}
    assert set(DATA_PHASE) <= keys, set(DATA_PHASE) - keys
    assert set(DATA_PHASE.values()) <= set(PHASES)


# --- phase 1 ----------------------------------------------------------------------------------


def test_healthy_traffic_pages_nobody(stack: RealStack) -> None:
    """No critical alert fires in Prometheus or reaches the webhook, for longer than the
    longest critical ``for:`` (TokenIssuanceFailing: 10m / 60 = 10 s) plus the group wait.

    Pending is tolerated: the agent does not retry a request whose pooled keep-alive connection
    the server closed meanwhile, so a whoami now and then fails with a protocol error and
    ``ApiOutage{scope="credential"}`` fires only on two failures in a row.
    """
    assert all(labels.get("severity") != "critical" for _, labels in stack.webhook.firing()), (
        "this phase must run first, on the fresh stack"
    )
    started = time.time()
    with stack.explain_failure():
        quiet_until = time.monotonic() + 13

        def stayed_quiet() -> bool:
            critical = [
                a
                for a in stack.prometheus_alerts()
                if a["labels"].get("severity") == "critical" and a["state"] == "firing"
            ]
            assert critical == [], f"critical alerts firing on healthy traffic: {critical}"
            return time.monotonic() > quiet_until

        wait_until(stayed_quiet, 30, "13 quiet seconds", interval=0.5)
        assert [n.seq for n in stack.webhook.received if n.receiver == PAGER] == []
        assert all(labels.get("severity") != "critical" for _, labels in stack.webhook.firing())
        check_dashboard_data(stack, "baseline", started - 30)


def test_every_dashboard_query_parses_and_every_variable_has_values(stack: RealStack) -> None:
    with stack.explain_failure():
        for query in dashboard_queries():
            stack.query(substitute(query.expr, grafana_values(stack)))  # asserts success
        for dashboard, name, text in dashboard_variable_queries():
            label, selector = label_values_request(substitute(text, grafana_values(stack)))
            params = {"match[]": selector} if selector else {}
            url = f"{stack.prometheus_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
                params
            )
            answer = http_json(url)
            assert answer["status"] == "success" and answer["data"], (dashboard, name, answer)


# --- phase 2 ----------------------------------------------------------------------------------


def test_rotated_secret_pages_the_on_call_engineer(stack: RealStack) -> None:
    with stack.explain_failure():
        since = len(stack.webhook.received)
        stack.admin(f"credentials/{ROTATED}/rotate", {})
        wait_until(
            lambda: firing_at(
                stack,
                PAGER,
                since,
                alertname="SophosCentralTokenIssuanceFailing",
                severity="critical",
                credential=ROTATED,
            ),
            60,
            f"SophosCentralTokenIssuanceFailing for {ROTATED} at the pager",
        )
        # Only the rotated credential pages for it, and its description says why.
        paged = [
            labels["credential"]
            for name, labels in stack.webhook.firing(since)
            if labels["alertname"] == "SophosCentralTokenIssuanceFailing"
        ]
        assert set(paged) == {ROTATED}
        (alert,) = stack.firing_in_prometheus(
            alertname="SophosCentralTokenIssuanceFailing", credential=ROTATED
        )
        assert "invalid_credentials" in alert["annotations"]["description"]
        assert "HTTP 401 oauth.invalid_client_secret" in alert["annotations"]["description"]
        # The tokens issued before the rotation stay valid: the tenant is still probed fine.
        assert stack.query(
            f'sophos_central_probe_success{{credential="{ROTATED}", probe="tenant"}} == 1'
        ), "the API calls of the rotated credential should still work with its cached token"


# --- phase 3 ----------------------------------------------------------------------------------


def test_tenant_answering_500_raises_persistent_5xx_in_the_team_chat(stack: RealStack) -> None:
    """org-main's tenants are probed every 2 s and a failure is confirmed after 1 s and 2 s
    more: the three failures in a row the rule asks for come within seconds, then the scaled
    5 s ``for:``."""
    with stack.explain_failure():
        started = time.time()
        since = len(stack.webhook.received)
        stack.admin(f"tenants/{FAILING_TENANT}/fault", {"fault": "server_error_500"})
        wait_until(
            lambda: firing_at(
                stack,
                CHAT,
                since,
                alertname="SophosCentralPersistent5xx",
                severity="warning",
                credential="org-main",
                tenant_id=FAILING_TENANT,
                probe="tenant",
            ),
            90,
            f"SophosCentralPersistent5xx for org-main tenant {FAILING_TENANT} in the chat",
        )
        firing = stack.firing_in_prometheus(
            alertname="SophosCentralPersistent5xx", credential="org-main"
        )
        assert {a["labels"].get("tenant_id") for a in firing} == {FAILING_TENANT}
        description = firing[0]["annotations"]["description"]
        assert "HTTP 500" in description and "sophos_server_error" in description
        # The alert links to the exporter's /status page for that tenant, under external_url,
        # and the chat text the example's templates render carries the link.
        link = (
            f"{AGENT_OVERRIDES['external_url']}/status?credential=org-main&tenant={FAILING_TENANT}"
        )
        assert firing[0]["annotations"]["status_url"] == link
        wait_until(
            lambda: any(f"Status: {link}" in text for text in stack.webhook.texts(since)),
            30,
            "the chat text with the link to the tenant's /status",
        )
        assert not firing_at(stack, PAGER, since, alertname="SophosCentralPersistent5xx")
        check_dashboard_data(stack, "tenant_5xx", started)


# --- phase 4 ----------------------------------------------------------------------------------


def test_tenant_newly_answering_403_tells_the_team_once(stack: RealStack) -> None:
    """An org-main tenant that has answered 200 since the start turns Partner Assistance off:
    three 403s in a row after a success within the last day, then the scaled 5 s ``for:``. The
    demo's msp-main tenants that have answered 403 since they were first seen (trial, no
    Partner Assistance) are business state and never alert."""
    with stack.explain_failure():
        since = len(stack.webhook.received)
        stack.admin(f"tenants/{REFUSING_TENANT}/fault", {"fault": "no_partner_assistance_403"})
        try:
            wait_until(
                lambda: firing_at(
                    stack,
                    CHAT,
                    since,
                    alertname="SophosCentralForbiddenSpike",
                    scope="tenant",
                    credential="org-main",
                    tenant_id=REFUSING_TENANT,
                ),
                60,
                f"SophosCentralForbiddenSpike for org-main tenant {REFUSING_TENANT} in the chat",
            )
            # Its siem_events probe is refused too and alerts on its own: told here, before the
            # next phase counts what reaches the receivers.
            wait_until(
                lambda: firing_at(
                    stack,
                    CHAT,
                    since,
                    alertname="SophosCentralForbiddenSpike",
                    credential="org-main",
                    tenant_id=REFUSING_TENANT,
                    probe="siem_events",
                ),
                60,
                f"SophosCentralForbiddenSpike for {REFUSING_TENANT}'s siem_events in the chat",
            )
            (alert,) = stack.firing_in_prometheus(
                alertname="SophosCentralForbiddenSpike",
                scope="tenant",
                credential="org-main",
                probe="tenant",
            )
            description = alert["annotations"]["description"]
            assert "answered 403 Forbidden" in description, description
            assert "after succeeding within the last day" in description, description
            # The always-403 tenants of msp-main reach three failures in a row too, but they
            # never had a success: neither pending nor firing.
            wait_until(
                lambda: (
                    len(
                        stack.query(
                            "sophos_central_probe_consecutive_failures"
                            '{credential="msp-main", probe="tenant"} >= 3 '
                            "and on (tenant_id, probe) "
                            'sophos_central_probe_cause_info{kind="business"}'
                        )
                    )
                    == len(ALWAYS_403)
                ),
                90,
                "msp-main's always-403 tenants to fail three times in a row",
            )
            refused = [
                a["labels"].get("tenant_id")
                for a in stack.prometheus_alerts()
                if a["labels"]["alertname"] == "SophosCentralForbiddenSpike"
                and a["labels"].get("credential") == "msp-main"
            ]
            assert not set(refused) & set(ALWAYS_403), refused
        finally:
            stack.admin(f"tenants/{REFUSING_TENANT}/fault", {"fault": None})
            # Both probes' alerts resolve, each in its own time; until the receivers are told,
            # Alertmanager re-sends the one still firing with its group, into the next phase.
            wait_until(
                lambda: all(
                    told_resolved(
                        stack,
                        since,
                        alertname="SophosCentralForbiddenSpike",
                        tenant_id=REFUSING_TENANT,
                        probe=probe,
                    )
                    for probe in ("tenant", "siem_events")
                ),
                60,
                f"the receivers told that {REFUSING_TENANT}'s 403 alerts resolved",
            )


# --- phase 5 ----------------------------------------------------------------------------------


def test_api_outage_pages_and_inhibits_the_per_tenant_alerts(stack: RealStack) -> None:
    """The outage alert of org-main (more than half of its recent tenant probes answer 503:
    scaled ``for:`` 2 s) comes before the per-tenant ``Persistent5xx`` of its other tenants
    (three failures in a row, then 5 s), which fire in Prometheus but are inhibited in
    Alertmanager and never reach the webhook."""
    with stack.explain_failure():
        since = len(stack.webhook.received)
        notified_before = {tuple(sorted(labels.items())) for _, labels in stack.webhook.firing()}
        stack.admin("outage", {"on": True})
        try:
            wait_until(
                lambda: firing_at(
                    stack,
                    PAGER,
                    since,
                    alertname="SophosCentralApiOutage",
                    severity="critical",
                    credential="org-main",
                ),
                60,
                "SophosCentralApiOutage for org-main at the pager",
            )

            def new_per_tenant_alerts_firing() -> list[dict[str, str]]:
                found = [
                    a["labels"]
                    for a in stack.firing_in_prometheus(credential="org-main")
                    if a["labels"]["alertname"] in PER_TENANT_ALERTS
                    and a["labels"].get("tenant_id")
                    and tuple(sorted(a["labels"].items())) not in notified_before
                ]
                return found if len(found) >= 2 else []

            targets = wait_until(
                new_per_tenant_alerts_firing,
                60,
                "Persistent5xx of at least two more org-main tenants firing in Prometheus",
            )

            def in_alertmanager() -> dict[tuple[tuple[str, str], ...], dict[str, Any]] | None:
                alerts = {
                    tuple(sorted(a["labels"].items())): a for a in stack.alertmanager_alerts()
                }
                wanted = [tuple(sorted(labels.items())) for labels in targets]
                return alerts if all(key in alerts for key in wanted) else None

            wait_until(in_alertmanager, 30, "the per-tenant alerts to reach Alertmanager")
            seen_at = time.monotonic()
            # A positive control that takes longer than Alertmanager's group timers (1 s wait,
            # 2 s interval): msp-main's outage, raised once most of its 250 tenants (about 20 s
            # to probe them all) or its whoami on two refreshes in a row (10 s apart) fail.
            wait_until(
                lambda: firing_at(
                    stack, PAGER, since, alertname="SophosCentralApiOutage", credential="msp-main"
                ),
                90,
                "SophosCentralApiOutage for msp-main at the pager",
            )
            wait_until(
                lambda: time.monotonic() > seen_at + 5,
                10,
                "two group intervals with the per-tenant alerts in Alertmanager",
            )

            notified = [labels for _, labels in stack.webhook.firing(since)]
            # org-main's outage alert came first; any per-tenant alert of org-main posted since
            # the outage began, the one of phase 3 included, went through the inhibition.
            leaked = [
                labels
                for labels in notified
                if labels["alertname"] in PER_TENANT_ALERTS and labels["credential"] == "org-main"
            ]
            assert leaked == [], f"per-tenant alerts notified during the outage: {leaked}"
            assert not firing_at(stack, CHAT, since, alertname="SophosCentralApiOutage")

            # Muted, not lost: still firing in Prometheus, inhibited by org-main's outage.
            alerts = in_alertmanager()
            assert alerts is not None
            by_fingerprint = {a["fingerprint"]: a["labels"] for a in alerts.values()}
            for labels in targets:
                assert stack.firing_in_prometheus(**labels), labels
                status = alerts[tuple(sorted(labels.items()))]["status"]
                assert status["state"] == "suppressed", (labels, status)
                sources = [by_fingerprint.get(f, {}) for f in status["inhibitedBy"]]
                assert sources and all(
                    s.get("alertname") == "SophosCentralApiOutage"
                    and s.get("credential") == "org-main"
                    for s in sources
                ), (labels, sources)
        finally:
            stack.admin("outage", {"on": False})


# --- phase 6 ----------------------------------------------------------------------------------


def test_rate_limited_credential_tells_the_team(stack: RealStack) -> None:
    with stack.explain_failure():
        started = time.time()
        since = len(stack.webhook.received)
        config = agent_config(
            stack.simulator["agent_config"],
            state_file=str(stack.workdir / "state-rate-limited.db"),
            **RATE_LIMITED_OVERRIDES,
        )
        stack.start_agent(stack.write_agent_config("agent-rate-limited.yml", config))
        wait_until(
            lambda: stack.query(
                'sophos_central_api_requests_total{credential="msp-main", status_code="429"}'
            ),
            60,
            "Prometheus to count 429s for msp-main",
        )
        wait_until(
            lambda: firing_at(
                stack,
                CHAT,
                since,
                alertname="SophosCentralRateLimited",
                severity="warning",
                credential="msp-main",
            ),
            60,
            "SophosCentralRateLimited for msp-main in the chat",
        )
        check_dashboard_data(stack, "rate_limited", started)
