"""The HTTP side in process: endpoint names, pages rendered once per burst, connection budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from agent.config import Settings
from agent.runtime import Agent
from agent.server import build_app, landing_page
from agent.web.listener import GRACE, GRACE_TURNS, MIN_GRACE, Connection, ConnectionBudget
from agent.web.rendering import RenderTurns, SharedRender


@pytest.fixture
async def agent(tmp_path: Path) -> Agent:
    settings = Settings(
        credentials=[{"name": "a", "client_id": "x", "client_secret": "y"}],
        state_file=tmp_path / "state.db",
    )
    return Agent(settings, process_metrics=False)


async def test_prometheus_style_names_answer_exactly_as_ours(agent: Agent) -> None:
    """Not ready yet (the agent has not started): both readiness names say so the same way."""
    transport = httpx.ASGITransport(app=build_app(agent))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for ours, prometheus in (("/healthz", "/-/healthy"), ("/readyz", "/-/ready")):
            a, b = await client.get(ours), await client.get(prometheus)
            assert (a.status_code, a.text) == (b.status_code, b.text), ours
        assert (await client.get("/-/ready")).status_code == 503
        assert (await client.get("/-/healthy")).text == "ok\n"
    await agent.stop(grace=0)
    assert "/-/healthy" in landing_page() and "/-/ready" in landing_page()


async def test_concurrent_requests_share_one_render() -> None:
    calls = 0

    def render() -> int:
        nonlocal calls
        calls += 1
        return calls

    shared = SharedRender(render, RenderTurns())
    results = await asyncio.gather(*(shared.get() for _ in range(100)))
    assert results == [1] * 100
    assert await shared.get() == 2  # a request after the render gets a fresh one


async def test_renders_leave_the_loop_to_the_probes_half_the_time() -> None:
    def slow() -> None:
        time.sleep(0.05)  # a render that holds the event loop

    turns = RenderTurns(duty=0.5)
    started = time.monotonic()
    for _ in range(4):
        await turns.run(slow)
    took = time.monotonic() - started
    assert took >= 4 * 0.05 + 3 * 0.05 * 0.9  # a rest as long as each render between them


async def test_render_errors_reach_every_waiter_and_the_next_render_runs() -> None:
    outcomes = iter([RuntimeError("broken"), 7])

    def render() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    shared = SharedRender(render, RenderTurns())
    results = await asyncio.gather(shared.get(), shared.get(), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await shared.get() == 7


def conn(at: float) -> Connection:
    return Connection(accepted=at, close=lambda: None)


def test_a_full_budget_closes_the_longest_waiting_connection_once_it_had_its_chance() -> None:
    budget = ConnectionBudget(cap=2)
    old, young = conn(0.0), conn(0.0)
    budget.add(old)
    budget.add(young)
    assert budget.full
    assert budget.victim(now=MIN_GRACE / 2) is None  # nobody had the time to send a request
    budget.turn += GRACE_TURNS
    assert budget.victim(now=MIN_GRACE) is old  # several turns and a minimum time: read by now
    budget.busy(old, now=0.2)  # its request head arrived: it is answered, not closed
    assert budget.victim(now=GRACE) is young


def test_trickling_bytes_does_not_move_a_connection_back_in_line() -> None:
    budget = ConnectionBudget(cap=2)
    slowloris, newer = conn(0.0), conn(0.5)
    budget.add(slowloris)
    budget.add(newer)
    budget.idle(slowloris, now=0.9)  # more bytes of a head that never ends
    assert budget.victim(now=GRACE + 1) is slowloris


def test_busy_connections_are_closed_only_past_the_deadline() -> None:
    from agent.web.listener import BUSY_DEADLINE

    budget = ConnectionBudget(cap=1)
    reader = conn(0.0)
    budget.add(reader)
    budget.busy(reader, now=0.0)
    assert budget.victim(now=BUSY_DEADLINE / 2) is None
    assert budget.victim(now=BUSY_DEADLINE + 1) is reader
    budget.release(reader)
    assert not budget.full


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    """In a child process started with soft 256 and hard 1024, as a service manager might."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))

    code = "from agent.web.listener import raise_nofile_limit; print(*raise_nofile_limit())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        preexec_fn=limit,
    )
    assert result.stdout.split() == ["1024", "1024"]
