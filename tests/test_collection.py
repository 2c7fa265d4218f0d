"""SIEM collection at risk: whether the probe period lets the alert warn in time, what would
let it, and the last successes a restart must not forget.

The plans are the planner's own, made as the running agent makes them (the rate budget's spans,
the default limits and intervals, ``budget_share`` 0.1), at 250, 1,000, 3,000 and 10,000
tenants.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent import collection
from agent.clock import FakeClock
from agent.collection import LastSuccessStore, check_collection, worst_case_seconds
from agent.config import DEFAULT_RATE_LIMITS, Settings
from agent.families import Family, ProbeSpec, resolve
from agent.planner import Plan, pages_for, plan_probe_period
from agent.probes import ProbeResult
from agent.ratebudget import RateBudget, allowance_for
from agent.runtime import Agent
from agent.sophos import WhoAmI, parse_tenant
from agent.statefile import StateFile
from agent.views.report import build_report

SPAN = {
    w: RateBudget(DEFAULT_RATE_LIMITS, 0.1, FakeClock()).hold_seconds(w)[1]
    for w in DEFAULT_RATE_LIMITS
}


def plan(tenants: int, share: float, families: int) -> Plan:
    allowance = allowance_for(DEFAULT_RATE_LIMITS, share)
    return plan_probe_period(
        tenants=tenants,
        probe_interval=60,
        token_probe_interval=300,
        tenant_refresh_interval=900,
        tenant_list_pages=pages_for(tenants),
        allowance=allowance,
        span=SPAN,
        families=families,
        tenant_allowance=allowance,
    )


def families(*names: str) -> tuple[Family, ...]:
    return resolve(tuple(ProbeSpec(n) for n in names), "/endpoint/v1/endpoints?pageSize=1")


def check(tenants: int, *names: str, share: float = 0.1) -> collection.CollectionCheck | None:
    chosen = families(*names)
    return check_collection(
        plan(tenants, share, len(chosen)),
        chosen,
        60.0,
        share,
        lambda s, n: plan(tenants, s, n),
    )


def fits(tenants: int, share: float, count: int) -> bool:
    return worst_case_seconds(plan(tenants, share, count).period, 60.0) <= collection.WARNING_AFTER


def test_without_a_siem_family_there_is_nothing_to_check() -> None:
    assert check(250, "tenant", "common_alerts") is None


def test_250_tenants_at_the_default_budget_hold_with_three_probes_each() -> None:
    """One probe of each (tenant, family) pair every 11.5 h: a failure right after a success is
    confirmed and alerted before the 12 h warning."""
    result = check(250, "tenant", "siem_events", "siem_alerts")
    assert result is not None and result.fits and result.note() == ""
    assert 11 * 3600 < result.period < result.worst_case <= collection.WARNING_AFTER


def test_250_tenants_with_four_probes_each_need_budget_share_013() -> None:
    result = check(250, "tenant", "siem_events", "siem_alerts", "common_alerts")
    assert result is not None and not result.fits
    assert result.note() == (
        "SophosCentralSiemCollectionAtRisk cannot warn in time: each tenant's siem_events and "
        "siem_alerts are probed every 15.4 h, so a failure that starts just after a success is "
        "confirmed and alerted only 15.5 h later, after the 12 h warning (events more than 24 h "
        "old are lost for good). Raise budget_share to 0.13 (now 0.1) to let it."
    )
    assert fits(250, 0.13, 4) and not fits(250, 0.12, 4)  # the planner's own figure, exact


def test_1000_tenants_with_the_two_siem_probes_need_budget_share_024() -> None:
    result = check(1000, "siem_events", "siem_alerts")
    assert result is not None and not result.fits
    assert result.remedy == "Raise budget_share to 0.24 (now 0.1) to let it."
    assert fits(1000, 0.24, 2) and not fits(1000, 0.23, 2)


def test_3000_tenants_must_drop_the_other_probes_and_raise_the_share() -> None:
    """No share up to 1 lets four probes per tenant fit; the two SIEM probes alone do."""
    result = check(3000, "tenant", "siem_events", "siem_alerts", "common_alerts")
    assert result is not None and not result.fits
    assert not fits(3000, 1.0, 4)
    (share,) = [float(x) for x in result.remedy.split("raise budget_share to ")[1].split()[:1]]
    assert result.remedy == (
        "Probe only siem_events, siem_alerts (tenant_probes: [siem_events, siem_alerts]) and "
        f"raise budget_share to {share:g} to let it."
    )
    assert fits(3000, share, 2) and not fits(3000, round(share - 0.01, 2), 2)


def test_10000_tenants_cannot_be_watched_in_time_on_one_credential() -> None:
    result = check(10_000, "siem_events", "siem_alerts")
    assert result is not None and not result.fits
    assert result.period > 10 * 86400
    assert not fits(10_000, 1.0, 1)
    assert result.remedy.startswith(
        "No budget_share up to 1 lets it, even probing only siem_events, siem_alerts: 10000 "
        "tenants need more calls than one credential's rate limits allow in that time"
    )
    assert "rate_limit_scope: tenant" in result.remedy


# -- in the running agent: the start-up log, /status and check -------------------------------


def agent_with(tenants: int, probes: list[str], tmp_path: Path) -> Agent:
    settings = Settings(
        state_file=tmp_path / "state.db",
        tenant_probes=probes,
        credentials=[
            {"name": "msp", "client_id": "collection-client-1", "client_secret": "coll-secret-7a"}
        ],
    )
    agent = Agent(settings, clock=FakeClock(start=1_700_000_000.0), process_metrics=False)
    (prober,) = agent.probers
    prober.state.whoami = WhoAmI("partner-1", "partner", "https://api.central.sophos.com")
    for i in range(tenants):
        tenant = parse_tenant(
            {
                "id": f"00000000-0000-4000-8000-{i:012d}",
                "name": f"Tenant {i}",
                "billingType": "term",
                "apiHost": "https://api-eu01.central.sophos.com",
            }
        )
        assert tenant is not None
        prober.state.tenants[tenant.id] = prober.state.probed[tenant.id] = tenant
    return agent


@pytest.mark.parametrize(
    ("tenants", "probes", "said"),
    [
        (250, ["tenant", "siem_events", "siem_alerts"], ""),
        (
            250,
            ["tenant", "siem_events", "siem_alerts", "common_alerts"],
            "Raise budget_share to 0.13",
        ),
        (10_000, ["siem_events", "siem_alerts"], "No budget_share up to 1 lets it"),
    ],
)
async def test_the_agent_says_it_at_start_up_on_status_and_in_check(
    tenants: int,
    probes: list[str],
    said: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = agent_with(tenants, probes, tmp_path)
    try:
        caplog.set_level(logging.WARNING, logger="agent.runtime")
        agent._replan(agent.probers[0])  # what the first tenant list does at start-up
        note = agent.snapshot().credentials[0].collection_note
        warned = [
            r.getMessage() for r in caplog.records if "SiemCollectionAtRisk" in r.getMessage()
        ]
        report = build_report(agent.snapshot())
        attention = [a.what for a in report.attention if a.topic == "SIEM collection alert"]
        if not said:
            assert (note, warned, attention) == ("", [], [])
            return
        assert said in note
        assert warned == [note]
        assert attention == [note]
        agent._replan(agent.probers[0])  # said once per change, not at every refresh
        assert len([r for r in caplog.records if "SiemCollectionAtRisk" in r.getMessage()]) == 1
    finally:
        await agent.stop(grace=0)


# -- remembered across restarts ----------------------------------------------------------------


def success(tenant: str, probe: str, at: float) -> ProbeResult:
    return ProbeResult("msp", tenant, probe, True, 200, "", "ok", "", "", at, 0.1, last_success=at)


def test_last_successes_survive_a_restart_and_are_forgotten_after_a_week(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    with StateFile(tmp_path / "state.db") as first:
        store = LastSuccessStore(first)
        store.remember(success("t1", "siem_events", now - 3600))
        store.remember(success("t1", "siem_events", now - 7200))  # an older one never wins
        store.remember(success("t2", "siem_alerts", now - 8 * 86400))
    with StateFile(tmp_path / "state.db") as second:
        loaded = LastSuccessStore(second).load("msp", now)
    assert loaded == {("t1", "siem_events"): now - 3600}
