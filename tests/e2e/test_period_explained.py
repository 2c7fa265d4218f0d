"""A stretched probe period is said out loud, with the budget behind it: first on ``/status``
for the credential, and once in the log. (Its own module: starting a stack sets up the process's
logging, which would take the log away from another module's stack.)"""

from __future__ import annotations

from pathlib import Path

from agent.simulator import build_scenario
from tests.e2e.harness import start_stack, stop_stack, wait_for


async def test_a_stretched_period_is_explained_with_the_budget_behind_it(tmp_path: Path) -> None:
    """Sophos's default limits and budget_share 0.1: 100 calls an hour for msp-healthy's 20
    tenants cannot keep a 60 s period; /status and the log say by how much and why."""
    scenario = build_scenario("healthy")
    running = await start_stack(
        scenario, tmp_path, budget_share=0.1, probe_interval="60s", rate_limits={}
    )
    try:
        first = ""

        async def explained() -> bool:
            nonlocal first
            text = (await running.get("/status")).text
            section = text.split('<section class="credential" id="credential-msp-healthy"', 1)
            first = section[-1].split("</h2>", 1)[-1].split("</p>", 1)[0].strip()
            return "stretched to fit the rate budget" in first

        await wait_for(explained, 30, "/status to explain msp-healthy's stretched period")
        period = running.service.agent.plans["msp-healthy"].period
        assert first.startswith(f'<p class="period" data-period-seconds="{period:.0f}">')
        assert period > 600
        assert (
            ": stretched to fit the rate budget: 100 calls/h allowed for 20 tenants x 1 probe "
            "(probe_interval asks for 60 s; raise budget_share to probe more often)."
        ) in first
        assert any(
            "stretched to fit the rate budget" in line and '"msp-healthy"' in line
            for line in running.logs.getvalue().splitlines()
        )
    finally:
        await stop_stack(running)
