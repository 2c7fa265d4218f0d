"""Listing must not starve probing, end to end: the agent against the simulator on loopback.

A tenant list whose first page claims 1,000 pages (the later ones empty) and a tenant refresh every
2 s must both leave the tenants probed and ``/readyz`` ready within the first period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent import metricnames as m
from agent.simulator import Credential, Scenario, Tenant, build_scenario, routes
from agent.simulator.reads import Call
from tests.e2e.harness import Stack, start_stack, stop_stack, wait_for

pytestmark = pytest.mark.timeout(120)


def tenant_calls(page: dict[str, list[tuple[str, dict[str, str], float]]], probe: str) -> float:
    return sum(v for _, lbl, v in page[m.API_REQUESTS_TOTAL] if lbl["probe"] == probe)


async def ready(stack: Stack) -> bool:
    return (await stack.get("/readyz")).status_code == 200


async def test_a_first_page_claiming_1000_pages_costs_one_page_more_not_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = routes.tenant_page

    def lying(call: Call, max_size: int) -> dict[str, Any]:
        body = honest(call, max_size)
        body["pages"]["total"] = 1000
        return body

    monkeypatch.setattr(routes, "tenant_page", lying)
    scenario = build_scenario("healthy")  # 20 and 5 tenants: one page each, then empty ones
    scenario.rate_limits.update({"1s": 100, "1m": 6000, "1h": 1_000_000, "1d": 10_000_000})
    # budget_share 0.1: ten calls a second, enough for 26 tenants every 10 s, and 1,000 pages
    # would take minutes
    stack = await start_stack(scenario, tmp_path, probe_interval="10s")
    try:
        await wait_for(lambda: ready(stack), 45, "/readyz 200 after one probe period")
        page = await stack.metrics()
    finally:
        await stop_stack(stack)
    listed = {
        lbl["credential"]: v
        for _, lbl, v in page[m.API_REQUESTS_TOTAL]
        if lbl["probe"] == "tenant_list"
    }
    assert listed == {"msp-healthy": 2, "org-healthy": 2}, "page 1 and the first empty page"
    assert tenant_calls(page, "tenant") >= 25


async def test_a_tenant_refresh_every_2_s_never_pushes_the_probe_tick_out(tmp_path: Path) -> None:
    tenants = [
        Tenant(id=f"{i:08x}-3333-4444-8555-666677778888", name=f"Tenant {i}", region=0)
        for i in range(3)
    ]
    partner = Credential(
        name="msp",
        client_id="client-msp-refresh",
        client_secret="secret-msp-refresh",
        id_type="partner",
        id="9a9a9a9a-0000-4000-8000-0000000000bb",
        tenants=tenants,
    )
    scenario = Scenario(
        name="fast-refresh",
        credentials=[partner],
        regions=1,
        rate_limits={"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000},
    )
    stack = await start_stack(
        scenario,
        tmp_path,
        budget_share=1.0,
        probe_interval="15s",  # three tenants: the tick runs every 5 s, longer than the refresh
        tenant_refresh_interval="2s",
    )
    try:

        async def probed_every_tenant() -> bool:
            return tenant_calls(await stack.metrics(), "tenant") >= 3

        await wait_for(probed_every_tenant, 45, "three tenant probes")
        page = await stack.metrics()
    finally:
        await stop_stack(stack)
    assert tenant_calls(page, "whoami") >= 5, "the refreshes ran every 2 s meanwhile"
