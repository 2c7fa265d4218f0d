"""A 429 without Retry-After, end to end: the agent pauses, says why on /metrics and /status."""

from __future__ import annotations

import re
import time
from pathlib import Path

from agent import metricnames as m
from agent.simulator import build_scenario
from tests.e2e.harness import Stack, start_ready_stack, start_stack, stop_stack, wait_for


async def pause_series(stack: Stack) -> dict[str, tuple[dict[str, str], float]]:
    families = await stack.metrics()
    return {
        labels["credential"]: (labels, value)
        for _, labels, value in families.get(m.RATE_LIMIT_PAUSE_INFO, [])
    }


async def test_throttled_credential_pauses_and_shows_the_assumed_window(tmp_path: Path) -> None:
    stack = await start_stack(build_scenario("throttled"), tmp_path, probe_interval="5s")
    try:

        async def paused() -> bool:
            return "msp-throttled" in await pause_series(stack)

        await wait_for(paused, 30, "a pause of msp-throttled on /metrics")
        series = await pause_series(stack)
        labels, value = series["msp-throttled"]
        assert (labels["window"], labels["reason"], value) == ("1m", "escalation", 1.0)
        assert "org-steady" not in series, "the other credential is not throttled"

        families = await stack.metrics()
        until = {lbl["credential"]: v for _, lbl, v in families[m.RATE_LIMIT_PAUSED_UNTIL]}
        assert until["org-steady"] == 0
        assert 45 < until["msp-throttled"] - time.time() <= 61 * 1.1
        pauses = {lbl["credential"]: v for _, lbl, v in families[m.RATE_LIMIT_PAUSES_TOTAL]}
        assert pauses["msp-throttled"] == 1

        page = (await stack.get("/status")).text
        match = re.search(
            r'data-window="1m" data-reason="escalation"><strong>Rate limited: paused until '
            r"(\d\d:\d\d:\d\d) UTC:</strong> ([^<]*)",
            page,
        )
        assert match is not None, "the credential's section says it is paused"
        assert match.group(1) == time.strftime("%H:%M:%S", time.gmtime(until["msp-throttled"]))
        assert match.group(2) == (
            "1st 429 in a row without Retry-After, assuming the 1m window is exhausted."
        )
        # ... and the summary at the top of the page lists it among what needs attention.
        assert re.search(r'<li data-credential="msp-throttled" data-cause="rate_limited"[ >]', page)
        logged = [line for line in stack.logs.getvalue().splitlines() if "rate limited" in line]
        assert len(logged) == 1, "one warning per pause"
        assert '"window": "1m"' in logged[0] and '"retry_after_sent": false' in logged[0]
    finally:
        await stop_stack(stack)


async def test_tenant_scope_counts_tenants_apart_and_exports_only_the_busiest(
    tmp_path: Path,
) -> None:
    scenario = build_scenario("healthy")
    stack = await start_ready_stack(scenario, tmp_path, within=60, rate_limit_scope="tenant")
    try:
        families = await stack.metrics()
        calls = {
            (lbl["credential"], lbl["window"]): v for _, lbl, v in families[m.RATE_LIMIT_CALLS]
        }
        requests = families[m.API_REQUESTS_TOTAL]
        credential_level = sum(
            v
            for name, lbl, v in requests
            if lbl["credential"] == "msp-healthy" and not lbl["tenant_id"]
        )
        tenant_level = sum(
            v
            for name, lbl, v in requests
            if lbl["credential"] == "msp-healthy" and lbl["tenant_id"]
        )
        assert tenant_level >= 20, "every tenant was probed"
        assert calls[("msp-healthy", "1h")] == credential_level, "tenant calls count apart"
        busiest = {
            (lbl["credential"], lbl["window"]): v
            for _, lbl, v in families[m.RATE_LIMIT_TENANT_MAX_UTILIZATION_RATIO]
        }
        limit_1d = stack.settings.rate_limits["1d"]
        assert 0 < busiest[("msp-healthy", "1d")] * limit_1d < tenant_level
        assert len(busiest) == 3 * 4, "one series per credential and window, not per tenant"
        paused = {lbl["credential"]: v for _, lbl, v in families[m.RATE_LIMIT_PAUSED_TENANTS]}
        assert paused["msp-healthy"] == 0
        page = (await stack.get("/status")).text
        assert "Rate windows counted per tenant (rate_limit_scope: tenant): 20 tenant" in page
    finally:
        await stop_stack(stack)
