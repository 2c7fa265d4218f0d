"""End to end: confirmation re-probes and several per-tenant probe families against the simulator.

A tenant that starts failing is confirmed within seconds (three failures in a row) instead of
three probe periods, and a tenant whose credential may call one API but not another shows exactly
which one, with the remedy that names both.
"""

from __future__ import annotations

import asyncio
import html
import io
from pathlib import Path

import httpx

from agent import metricnames as m
from agent.cli import run_check
from agent.simulator import build_scenario, parse_drill
from tests.e2e.harness import Stack, start_ready_stack, stop_stack, tenant_tagged, wait_for

PERIOD = 6.0


def sample(
    stack_families: dict[str, list[tuple[str, dict[str, str], float]]], name: str, **labels: str
) -> float | None:
    found = [
        v
        for _, lbl, v in stack_families.get(name, [])
        if all(lbl.get(k) == w for k, w in labels.items())
    ]
    assert len(found) <= 1, f"more than one {name} sample with {labels}"
    return found[0] if found else None


async def gauge(stack: Stack, tenant_id: str, probe: str = "tenant") -> float | None:
    families = await stack.metrics()
    return sample(families, m.PROBE_CONSECUTIVE_FAILURES, tenant_id=tenant_id, probe=probe)


async def set_fault(stack: Stack, tenant_id: str, fault: str | None) -> None:
    url = f"{stack.sim.api_url}/_simulator/tenants/{tenant_id}/fault"
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(url, json={"fault": fault})
    assert response.status_code == 200, response.text


async def test_a_failing_tenant_is_confirmed_within_one_period_and_clears(tmp_path: Path) -> None:
    scenario = build_scenario("healthy")
    stack = await start_ready_stack(
        scenario,
        tmp_path,
        within=30,
        probe_interval=f"{PERIOD:.0f}s",
        confirm_interval="300ms",
        request_timeout="3s",
    )
    try:
        tenant_id = scenario.credential("msp-healthy").tenants[3].id
        assert await gauge(stack, tenant_id) == 0
        await set_fault(stack, tenant_id, "server_error_500")

        loop = asyncio.get_running_loop()

        async def failed_once() -> bool:
            return (await gauge(stack, tenant_id) or 0) >= 1

        await wait_for(failed_once, PERIOD + 5, "the first failed probe", interval=0.05)
        first_failure = loop.time()

        async def confirmed() -> bool:
            return await gauge(stack, tenant_id) == 3

        await wait_for(confirmed, PERIOD, "three failures in a row", interval=0.05)
        # routine probes alone would need two more periods; the re-probes took a few ticks
        assert loop.time() - first_failure < PERIOD
        families = await stack.metrics()
        assert sample(families, m.PROBE_SUCCESS, tenant_id=tenant_id, probe="tenant") == 0
        cause = [
            lbl["cause"]
            for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
            if lbl["tenant_id"] == tenant_id
        ]
        assert cause == ["sophos_server_error"]
        for probe in ("token", "whoami", "tenant_list"):
            assert (
                sample(
                    families,
                    m.PROBE_CONSECUTIVE_FAILURES,
                    credential="msp-healthy",
                    tenant_id="",
                    probe=probe,
                )
                == 0
            )
        for _, lbl, value in families[m.PROBE_CONSECUTIVE_FAILURES]:
            if lbl["tenant_id"] != tenant_id:  # credential-level probes and healthy tenants
                assert value == 0, lbl

        await set_fault(stack, tenant_id, None)

        async def cleared() -> bool:
            return await gauge(stack, tenant_id) == 0

        await wait_for(cleared, PERIOD + 5, "the next routine probe to succeed", interval=0.1)
        families = await stack.metrics()
        assert sample(families, m.PROBE_SUCCESS, tenant_id=tenant_id, probe="tenant") == 1
    finally:
        await stop_stack(stack)


async def test_families_disagreeing_on_a_tenant_show_which_api_the_role_lacks(
    tmp_path: Path,
) -> None:
    scenario = build_scenario("families")
    stack = await start_ready_stack(
        scenario,
        tmp_path,
        within=30,
        probe_interval="3s",
        request_timeout="3s",
        tenant_probes=["tenant", "siem_events", "common_alerts"],
    )
    try:
        denied_alerts = tenant_tagged(stack, "forbidden_common_alerts")
        denied_endpoints = tenant_tagged(stack, "forbidden_endpoint")
        healthy = scenario.credential("msp-families").tenants[0].id
        remedy = (
            "the credential may call /endpoint/v1/endpoints but not /common/v1/alerts for this "
            "tenant: its API role lacks that product"
        )

        async def status_names_both() -> bool:
            page = html.unescape((await stack.get("/status")).text)
            # the tenant probe of the other tenant ran before its families: named on its next run
            return remedy in page and "but not /endpoint/v1/endpoints for this tenant" in page

        await wait_for(status_names_both, 15, "the 'may call X but not Y' remedy on /status")

        families = await stack.metrics()

        def success(tenant_id: str, probe: str) -> float | None:
            return sample(families, m.PROBE_SUCCESS, tenant_id=tenant_id, probe=probe)

        assert success(denied_alerts, "tenant") == 1
        assert success(denied_alerts, "siem_events") == 1
        assert success(denied_alerts, "common_alerts") == 0
        assert success(denied_endpoints, "tenant") == 0
        assert success(denied_endpoints, "common_alerts") == 1
        for probe in ("tenant", "siem_events", "common_alerts"):
            assert success(healthy, probe) == 1
        assert success(healthy, "siem_alerts") is None  # not configured, not probed
        causes = {
            (lbl["tenant_id"], lbl["probe"]): lbl["cause"]
            for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
        }
        assert causes[(denied_alerts, "common_alerts")] == "forbidden"
        assert causes[(denied_alerts, "tenant")] == "ok"

        page = html.unescape((await stack.get("/status")).text)
        failing = page.split('<details class="healthy">', 1)[0]
        assert f'data-tenant="{denied_alerts}" data-probe="common_alerts"' in failing
        assert "but not /endpoint/v1/endpoints for this tenant" in failing

        out = io.StringIO()
        assert await run_check(stack.settings, out) == 1
        rows = {
            line.split(denied_alerts, 1)[1].split()[0]: line
            for line in out.getvalue().splitlines()
            if denied_alerts in line
        }
        assert sorted(rows) == ["common_alerts", "siem_events", "tenant"]
        assert remedy in rows["common_alerts"]
    finally:
        await stop_stack(stack)


async def test_account_health_is_probed_per_tenant_and_a_wrong_answer_fails_it(
    tmp_path: Path,
) -> None:
    scenario = build_scenario("healthy")
    tenants = scenario.credential("msp-healthy").tenants
    broken = tenants[2].id
    drill = parse_drill(
        {
            "faults": [
                {
                    "start": 0,
                    "target": {"tenant": broken, "family": "account_health"},
                    "fault": "wrong_shape_200",
                }
            ]
        },
        scenario,
    )
    stack = await start_ready_stack(
        scenario,
        tmp_path,
        within=30,
        drill=drill,
        probe_interval="3s",
        request_timeout="3s",
        tenant_probes=["tenant", "account_health"],
    )
    try:
        families = await stack.metrics()

        def success(tenant_id: str, probe: str) -> float | None:
            return sample(families, m.PROBE_SUCCESS, tenant_id=tenant_id, probe=probe)

        for tenant in tenants:
            assert success(tenant.id, "tenant") == 1
            if tenant.id != broken:
                assert success(tenant.id, "account_health") == 1, tenant.id
        # a 200 whose body is not the health check's (a status page, a proxy's JSON) is no success
        assert success(broken, "account_health") == 0
        kinds = {
            (lbl["tenant_id"], lbl["probe"]): lbl.get("kind")
            for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
        }
        assert kinds[(broken, "account_health")] == "failure"
        assert kinds[(broken, "tenant")] == "ok"
    finally:
        await stop_stack(stack)
