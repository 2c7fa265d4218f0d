"""The agent process keeps its budget and keeps probing while its wall clock steps.

The agent runs as a process (``tests.e2e.stepped_agent``: the real ``AgentService`` on a wall
clock the test steps through a file) against the simulator in this process, which counts every
call at arrival on its own, unstepped clock and is the judge. The agent is kept saturated (every
tenant fails, and the re-probes that confirm failures ask for more than the minute allows), so
its admission control, not its schedule, decides when calls leave. Then the wall clock steps back
an hour (probing must go on) and forward a day (a full minute window must stay full).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from agent import metricnames as m
from agent.ratebudget import allowance_for
from agent.simulator import Credential, Scenario, Tenant
from tests.e2e.harness import wait_for
from tests.e2e.test_restart_and_shards import (
    AgentProcess,
    kill,
    one,
    simulator,
    write_config,
)
from tests.ports import free_port

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"1s": 10, "1m": 60, "1h": 10_000, "1d": 100_000}
SHARE = 0.5
ALLOWED = allowance_for(LIMITS, SHARE)  # 30 calls a minute


def failing_partner(tenants: int) -> Scenario:
    items = [
        Tenant(id=f"{i:08x}-2222-4333-8444-555566667777", name=f"Tenant {i:02d}", region=0)
        for i in range(tenants)
    ]
    partner = Credential(
        name="msp",
        client_id="client-msp-steps",
        client_secret="secret-msp-steps",
        id_type="partner",
        id="9a9a9a9a-0000-4000-8000-0000000000aa",
        tenants=items,
    )
    return Scenario(
        name="clock-steps",
        credentials=[partner],
        faults={t.id: "server_error_500" for t in items},
        regions=1,
        rate_limits=dict(LIMITS),
    )


async def spawn_stepped(config: Path, offset: Path) -> AgentProcess:
    port = free_port()
    stderr = config.with_name("stepped-agent.log")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.stepped_agent",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--offset-file",
        str(offset),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr.open("wb"),
        env=dict(os.environ),
    )
    agent = AgentProcess(process, port, stderr)
    await wait_for(agent.up, 30, "the agent's /healthz")
    return agent


def step_wall(offset: Path, seconds: float) -> None:
    offset.write_text(f"{seconds}\n")


async def test_wall_clock_steps_neither_overspend_the_minute_nor_stall_probing(
    tmp_path: Path,
) -> None:
    offset = tmp_path / "wall-offset"
    step_wall(offset, 0)
    async with simulator(failing_partner(60)) as sim:
        client_id = sim.scenario.credential("msp").client_id
        config = write_config(
            tmp_path / "config.yml", sim, budget_share=SHARE, confirm_interval="5s"
        )
        agent = await spawn_stepped(config, offset)
        try:

            async def minute_full() -> bool:
                page = await agent.page()
                return one(page[m.RATE_LIMIT_CALLS], window="1m") >= ALLOWED["1m"]

            await wait_for(minute_full, 60, "the agent's minute window to fill")
            step_wall(offset, -3600)  # back an hour: the calls of the last minute still leave
            stepped_back = sim.stats.arrivals(client_id)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await wait_for(
                lambda: sim.stats.arrivals(client_id) >= stepped_back + 5,
                70,  # at most a minute until the oldest calls leave, then 30 a minute
                "five calls after the clock stepped back an hour",
            )
            resumed = loop.time() - started
            step_wall(offset, 86400 - 3600)  # forward a day: the calls of the last minute count
            await asyncio.sleep(10)  # a measurement interval: a burst would come at once
            busiest = sim.stats.max_calls_in_any_window(client_id, 60)
            page = await agent.page()
        finally:
            await kill(agent)
    print(f"busiest minute {busiest} of {ALLOWED['1m']}; 5 calls {resumed:.0f} s after the step")
    assert busiest <= ALLOWED["1m"], "the server never saw more than the minute allowance"
    assert sim.stats.rate_limited(client_id) == 0
    assert one(page[m.RATE_LIMIT_PAUSES_TOTAL]) == 0
