"""One snapshot behind every view: ``/metrics``, ``/status``, ``check`` and ``/support`` show the
same numbers, and a snapshot stays what it was while the agent goes on probing."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from agent import metricnames as m
from agent.clock import FakeClock
from agent.config import Settings
from agent.probes import ProbeResult
from agent.runtime import Agent
from agent.views.check import check_json
from agent.views.report import build_report
from agent.views.status import render_status_page
from tests.e2e.harness import parse_metrics


@pytest_asyncio.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    settings = Settings(
        state_file=Path(":memory:"),
        budget_share=1.0,
        credentials=[
            {
                "name": "msp",
                "client_id": "snapshot-client-id-0001",
                "client_secret": "snapshot-secret-4c3b2a19",
            }
        ],
    )
    running = Agent(settings, clock=FakeClock(start=1_700_000_000.5), process_metrics=False)
    yield running
    await running.stop(grace=0)


def status_calls(page: str) -> dict[str, int]:
    """The calls column of each rate window on /status."""
    rows = re.findall(r'<tr data-window="(\w+)"><td>\w+</td><td>(\d+)</td>', page)
    return {window: int(calls) for window, calls in rows}


async def test_status_check_and_metrics_show_the_exact_window_counts(agent: Agent) -> None:
    """Three calls a minute and a half second ago: out of the minute window, although admission
    still holds them for its margin. Every view says 0 for the minute and 3 for the hour."""
    clock = agent.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        await agent.budget.acquire("msp")
    await clock.advance(60.0)
    assert agent.budget.calls("msp")["1m"] == 3, "admission keeps them for its margin"

    snapshot = agent.snapshot()
    page = parse_metrics(agent.metrics.render(snapshot).decode())
    metrics = {lbl["window"]: v for _, lbl, v in page[m.RATE_LIMIT_CALLS]}
    status = status_calls(render_status_page(snapshot))
    (cred,) = json.loads(check_json(build_report(snapshot)))["credentials"]
    checked = {w["window"]: w["calls"] for w in cred["windows"]}
    assert metrics == status == checked == {"1s": 0, "1m": 0, "1h": 3, "1d": 3}


async def test_a_snapshot_keeps_its_state_while_probing_goes_on(agent: Agent) -> None:
    state = agent.probers[0].state
    state.results[("", "token")] = ProbeResult(
        credential="msp",
        tenant_id="",
        probe="token",
        success=False,
        status_code=401,
        error_code="oauth.invalid_client_secret",
        cause="invalid_credentials",
        remedy="check the secret",
        message="",
        timestamp=1_700_000_000.0,
        duration=0.1,
    )
    snapshot = agent.snapshot()
    state.results.clear()  # the next probes replace what the agent holds
    page = render_status_page(snapshot)
    assert "token issuance fails (401" in page
    assert build_report(agent.snapshot()).rows() == []
