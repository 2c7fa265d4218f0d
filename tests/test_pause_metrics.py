"""The 429 pause on /metrics (when it ends, which window, why) and what it holds up."""

from __future__ import annotations

from pathlib import Path

from agent import metricnames as m
from agent.clock import FakeClock
from agent.config import Settings
from agent.runtime import Agent
from tests.e2e.harness import parse_metrics


def make_agent(clock: FakeClock, **extra: object) -> Agent:
    settings = Settings(
        state_file=Path(":memory:"),
        credentials=[
            {
                "name": "msp",
                "client_id": "pause-client-id-01",
                "client_secret": "pause-secret-4b2a",
            },
            {
                "name": "org",
                "client_id": "pause-client-id-02",
                "client_secret": "pause-secret-7c1d",
            },
        ],
        **extra,
    )
    return Agent(settings, clock=clock, process_metrics=False)


def page(agent: Agent) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return parse_metrics(agent.render_metrics().decode())


async def test_pause_info_says_window_and_reason_while_it_runs_and_zero_after() -> None:
    clock = FakeClock()
    agent = make_agent(clock)
    try:
        before = page(agent)
        assert before[m.RATE_LIMIT_PAUSE_INFO] == [], "no series before the first pause"
        until = {lbl["credential"]: v for _, lbl, v in before[m.RATE_LIMIT_PAUSED_UNTIL]}
        assert until == {"msp": 0, "org": 0}

        length = agent.budget.pause("msp", None)
        running = page(agent)
        ((_, labels, value),) = running[m.RATE_LIMIT_PAUSE_INFO]
        assert labels == {"credential": "msp", "window": "1m", "reason": "escalation"}
        assert value == 1
        until = {lbl["credential"]: v for _, lbl, v in running[m.RATE_LIMIT_PAUSED_UNTIL]}
        assert until["msp"] == clock.time() + length

        await clock.advance(length + 1)
        ((_, labels, value),) = page(agent)[m.RATE_LIMIT_PAUSE_INFO]
        assert (labels["window"], value) == ("1m", 0), "the last pause stays visible, ended"

        agent.budget.pause("org", 30.0)
        info = {lbl["credential"]: lbl for _, lbl, _ in page(agent)[m.RATE_LIMIT_PAUSE_INFO]}
        assert (info["org"]["window"], info["org"]["reason"]) == ("none", "retry_after")
    finally:
        await agent.stop()


async def test_tenant_series_only_with_tenant_scope() -> None:
    clock = FakeClock()
    agent = make_agent(clock)
    scoped = make_agent(clock, rate_limit_scope="tenant")
    try:
        assert m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO not in page(agent)
        await scoped.budget.acquire("msp/t-1")
        scoped.budget.pause("msp/t-2", None)
        families = page(scoped)
        busiest = {
            (lbl["credential"], lbl["window"]): v
            for _, lbl, v in families[m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO]
        }
        assert busiest[("msp", "1m")] == 1 / 100
        assert busiest[("org", "1m")] == 0
        paused = {lbl["credential"]: v for _, lbl, v in families[m.RATE_LIMIT_PAUSED_TENANTS]}
        assert paused == {"msp": 1, "org": 0}
    finally:
        await agent.stop()
        await scoped.stop()


async def test_a_paused_credential_holds_no_shared_probe_slot() -> None:
    import asyncio

    from agent.runtime import PausedAwareSlots

    clock = FakeClock()
    agent = make_agent(clock)
    try:
        shared = asyncio.Semaphore(1)
        msp, org = (PausedAwareSlots(shared, p.client) for p in agent.probers)
        length = agent.budget.pause("msp", None)  # an escalation pause: over a minute
        waiting = asyncio.create_task(msp.acquire())
        await asyncio.sleep(0)
        await asyncio.wait_for(org.acquire(), 1)  # the only slot: not taken by paused msp
        org.release()
        assert not waiting.done()
        await clock.advance(length + 0.1)
        await asyncio.wait_for(waiting, 1)
        assert shared.locked()
        msp.release()
        assert not shared.locked()
    finally:
        await agent.stop()
