"""Behaviour at scale: exact window counts in /metrics, the refresh that gives way at 10,000
tenants, and a /metrics page of 10,000 tenants that stays well-formed.

Timing is the benchmarks' business (bench/); these tests check behaviour, on a fake clock where
time matters.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import metricnames as m
from agent.classify import ErrorCodeGuard, Outcome
from agent.client import CallRecord
from agent.clock import FakeClock
from agent.config import Settings
from agent.metrics import AgentMetrics
from agent.planner import REFRESH_SHARE
from agent.probes import CredentialState, ProbeResult
from agent.runtime import Agent
from agent.scheduler import CredentialSchedule
from agent.simulator import build_scenario
from agent.sophos import Tenant
from tests.e2e.harness import parse_metrics, start_stack, stop_stack, wait_for
from tests.snapshots import snapshot_of

Samples = list[tuple[str, dict[str, str], float]]


def one(samples: Samples, **labels: str) -> float:
    found = [v for _, lbl, v in samples if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"expected one sample with {labels}, found {len(found)}"
    return found[0]


# -- exact counts on the page --------------------------------------------------------------------


async def test_metrics_show_the_exact_window_count_while_admission_still_holds_the_margin() -> None:
    clock = FakeClock(start=1_700_000_000.5)
    settings = Settings(
        state_file=Path(":memory:"),
        budget_share=1.0,
        # Realistic values: the redactor masks configured secrets process-wide, and a secret
        # like "secret" would mask innocent text ("oauth.invalid_client_secret") in later tests.
        credentials=[
            {
                "name": "msp",
                "client_id": "scale-client-id-0001",
                "client_secret": "scale-secret-9f8e7d6c",
            }
        ],
    )
    agent = Agent(settings, clock=clock, process_metrics=False)
    try:
        for _ in range(3):
            await agent.budget.acquire("msp")
        await clock.advance(60.0)
        page = parse_metrics(agent.render_metrics().decode())
        assert one(page[m.RATE_LIMIT_CALLS], credential="msp", window="1m") == 0
        assert one(page[m.RATE_LIMIT_CALLS], credential="msp", window="1h") == 3
        assert one(page[m.RATE_LIMIT_UTILIZATION_RATIO], credential="msp", window="1h") == 0.003
        assert agent.budget.calls("msp")["1m"] == 3, "admission keeps them for the margin"
    finally:
        await agent.stop(grace=0)


# -- 10,000 tenants on default settings ------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_ten_thousand_tenants_stretch_the_refresh_then_the_period_and_export_both(
    tmp_path: Path,
) -> None:
    scenario = build_scenario("scale-10k")
    # the seed's hour window (the one that binds), fast short windows so 100 pages list quickly
    scenario.rate_limits.update({"1s": 200, "1m": 2000, "1h": 1000, "1d": 50_000})
    stack = await start_stack(
        scenario,
        tmp_path,
        probe_interval="60s",
        token_probe_interval="5m",
        tenant_refresh_interval="15m",
        budget_share=1.0,
    )
    try:
        agent = stack.service.agent
        await wait_for(lambda: "msp-scale" in agent.plans, 60, "the plan after the first listing")
        plan = agent.plans["msp-scale"]
        assert agent.listing.last("msp-scale") == 100, "every page counted"
        assert plan.binding_window == "1h"
        assert plan.refresh_stretched and plan.stretched
        assert plan.overhead_fits, "the stretched refresh leaves room for the tenants"
        # The hour's 1000 calls stay on the books 3637 s: 940 an hour at a sustained rate, 13 of
        # them token probes and renewals; the refresh takes a quarter of the rest.
        left = 1000 * 0.95 * 3600 / 3637 - (12 + 3600 / 3300)
        assert 101 * 3600 / plan.refresh_interval == pytest.approx(REFRESH_SHARE * left)
        assert plan.period == pytest.approx(10_000 * 3600 / ((1 - REFRESH_SHARE) * left))

        assert agent.scheduler is not None
        (schedule,) = agent.scheduler.schedules
        assert agent.scheduler.refresh_interval(schedule) == plan.refresh_interval
        job = agent.scheduler.job("refresh:msp-scale")
        assert job is not None
        assert job.interval == pytest.approx(plan.refresh_interval)

        page = await stack.metrics()
        assert one(page[m.TENANT_REFRESH_INTERVAL_SECONDS]) == pytest.approx(plan.refresh_interval)
        assert one(page[m.PROBE_INTERVAL_SECONDS]) == pytest.approx(plan.period)
        assert len(page[m.TENANT_INFO]) == 10_000

        lines = [
            json.loads(line)
            for line in stack.logs.getvalue().splitlines()
            if "stretched" in line and "msp-scale" in line
        ]
        warnings = [line for line in lines if line["level"] == "warning"]
        assert len(warnings) == 1, "one warning line, not one per tenant or per tick"
        # and one info line that says the period and why, as /status and check do
        [said] = [line["msg"] for line in lines if line["level"] == "info"]
        assert said == f"tenants probed {plan.explain()}"
        message = warnings[0]["msg"]
        assert "probe_interval 60 s stretched to" in message
        assert "tenant_refresh_interval 15 min stretched to" in message
        assert "100 tenant-list pages per refresh" in message
    finally:
        await stop_stack(stack)


# -- the /metrics page of 10,000 tenants -----------------------------------------------------------


def scale_state(tenants: int) -> CredentialState:
    state = CredentialState(name="msp-scale")
    for i in range(tenants):
        tenant = Tenant(
            id=f"{i:08d}-0000-4000-8000-000000000000",
            name=f'Tenant "{i}" Müller\\GmbH',
            data_region="eu01" if i % 2 else "us03",
            billing_type="usage",
            api_host="https://api-eu01.central.sophos.com",
        )
        state.tenants[tenant.id] = state.probed[tenant.id] = tenant
        failed = i % 50 == 0
        state.results[(tenant.id, "tenant")] = ProbeResult(
            credential=state.name,
            tenant_id=tenant.id,
            probe="tenant",
            success=not failed,
            status_code=503 if failed else 200,
            error_code="",
            cause="sophos_unavailable" if failed else "ok",
            remedy="",
            message="",
            timestamp=1_700_000_000.0 + i / 7,
            duration=0.05 + i % 13 / 100,
        )
    return state


def test_a_page_of_ten_thousand_tenants_parses_with_every_series_once() -> None:
    state = scale_state(10_000)
    metrics = AgentMetrics(ErrorCodeGuard(), process_registry=None)
    for result in state.results.values():
        metrics.observe_call(
            CallRecord(
                credential=state.name,
                tenant_id=result.tenant_id,
                probe="tenant",
                method="GET",
                url="https://api-eu01.central.sophos.com/endpoint/v1/endpoints",
                request_headers={},
                outcome=Outcome(result.status_code, result.error_code),
                duration=result.duration,
                started_at=result.timestamp,
            )
        )
    first = metrics.render(snapshot_of(state))
    again = metrics.render(snapshot_of(state))
    assert first == again, "cached lines render the same page"
    families = {f.name: f for f in text_string_to_metric_families(first.decode())}
    keys = [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in families.values()
        for sample in family.samples
    ]
    assert len(keys) == len(set(keys)), "no series twice"
    for name in (
        "sophos_central_probe_success",
        "sophos_central_probe_last_run_timestamp_seconds",
        "sophos_central_probe_cause_info",
        "sophos_central_tenant_info",
        "sophos_central_api_requests",
    ):
        assert len(families[name].samples) == 10_000, name
    names = {s.labels["tenant_name"] for s in families["sophos_central_tenant_info"].samples}
    assert 'Tenant "7" Müller\\GmbH' in names, "escaped and read back intact"
    failed = [s for s in families["sophos_central_probe_success"].samples if s.value == 0]
    assert len(failed) == 200


# -- the tenants of one tick leave one slot apart -------------------------------------------------


class RecordingProber:
    """Notes the clock time each tenant probe starts at."""

    name = "cred"
    probe_names = ("tenant",)

    def __init__(self, tenants: list[str], clock: FakeClock) -> None:
        self.state = CredentialState(name="cred")
        self.state.probed = {t: Tenant(id=t, name=t) for t in tenants}
        self.clock = clock
        self.started: list[tuple[str, float]] = []

    async def probe_token(self) -> None:
        return None

    async def refresh_tenants(self) -> None:
        return None

    async def probe_tenant(self, tenant_id: str, probe: str = "tenant", priority: int = 10) -> None:
        self.started.append((tenant_id, self.clock.monotonic()))


async def test_tenants_due_in_one_tick_start_one_slot_apart_not_in_a_burst() -> None:
    clock = FakeClock()
    prober = RecordingProber([f"t{i}" for i in range(100)], clock)
    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: 10.0,  # one slot every 0.1 s
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(64),
    )
    await schedule.run_refresh()
    await schedule.run_tick()
    await clock.advance(1.0)
    tick = clock.monotonic()
    await schedule.run_tick()  # ten tenants are due
    for _ in range(20):
        await clock.advance(0.05)
    starts = [at - tick for _, at in prober.started]
    assert len(starts) == 10
    assert starts == pytest.approx([0.1 * k for k in range(10)], abs=0.051)
    await schedule.drain(grace=1.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (2.0, "2"),
        (0.25, "0.25"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (1e20, "1e+20"),
    ],
)
def test_sample_values_use_the_text_format_spelling(value: float, text: str) -> None:
    from agent.metrics import fmt

    assert fmt(value) == text
