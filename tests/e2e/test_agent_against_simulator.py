"""End to end over real loopback HTTP: the simulator, the agent, its HTTP server, a scrape."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent import metricnames as m
from agent.cli import main, run_check
from agent.simulator import build_scenario
from agent.simulator.wire import region_host
from tests.e2e.harness import Stack, start_ready_stack, stop_stack, tenant_tagged

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANARY_SECRET = "canary-secret-7f3a9c2e-never-print-me"
CANARY_CLIENT_ID = "canary-client-0b1d2e3f-never-print-me"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    scenario = build_scenario("demo")
    msp = scenario.credential("msp-main")
    msp.client_secret = CANARY_SECRET
    msp.client_id = CANARY_CLIENT_ID
    running = await start_ready_stack(
        scenario,
        tmp_path_factory.mktemp("e2e"),
        within=60,
        probe_interval="4s",
        request_timeout="3s",  # room for a loaded CI machine; "slow" tenants take 8 s or more
        token_probe_interval="1m",
        tenant_refresh_interval="1m",
    )
    yield running
    await stop_stack(running)


def one(samples: list[tuple[str, dict[str, str], float]], **labels: str) -> float:
    found = [v for _, lbl, v in samples if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"expected one sample with {labels}, found {len(found)}"
    return found[0]


async def test_every_contract_metric_is_exported(stack: Stack) -> None:
    families = await stack.metrics()
    missing = [name for name in m.STABLE_METRICS if not families.get(name)]
    assert missing == []
    assert one(families[m.EXPORTER_BUILD_INFO]) == 1
    assert one(families[m.SHARD_ORDINAL]) == 0
    assert one(families[m.TOTAL_SHARDS]) == 1


async def test_probe_labels_use_only_contract_values(stack: Stack) -> None:
    families = await stack.metrics()
    for _, labels, _ in families[m.PROBE_SUCCESS]:
        assert labels["probe"] in m.PROBES
        assert (labels["tenant_id"] == "") == (labels["probe"] != "tenant")
    causes = {labels["cause"] for _, labels, _ in families[m.PROBE_CAUSE_INFO]}
    assert causes <= set(m.CAUSES)
    windows = {labels["window"] for _, labels, _ in families[m.RATE_LIMIT_CALLS]}
    assert windows == set(m.WINDOWS)


async def test_each_fault_gets_its_status_error_code_and_cause(stack: Stack) -> None:
    families = await stack.metrics()
    expected = {
        "trial_403": "trial_account",
        "no_partner_assistance_403": "partner_assistance_disabled",
        "not_found_404": "not_found",
        "server_error_500": "sophos_server_error",
        "html_502": "sophos_unavailable",
        "empty_503": "sophos_unavailable",
        "slow": "network_error",
        "reset": "network_error",
        "not_activated": "not_activated",
        "trial_no_host": "trial_without_host",
        "rogue_host": "host_not_allowed",
    }
    for tag, cause in expected.items():
        tid = tenant_tagged(stack, tag)
        assert one(families[m.PROBE_SUCCESS], tenant_id=tid, probe="tenant") == 0, tag
        assert one(families[m.PROBE_CAUSE_INFO], tenant_id=tid, cause=cause) == 1, tag
    requests = families[m.API_REQUESTS_TOTAL]
    slow = tenant_tagged(stack, "slow")
    assert one(requests, tenant_id=slow, status_code="0", error_code="timeout") >= 1
    trial = tenant_tagged(stack, "trial_403")
    # The label is the error string as sent: the simulator spells this 403 "forbidden".
    assert one(requests, tenant_id=trial, status_code="403", error_code="forbidden") >= 1
    html = tenant_tagged(stack, "html_502")
    assert one(requests, tenant_id=html, status_code="502", error_code="") >= 1


async def test_healthy_tenants_succeed_with_empty_error_code(stack: Stack) -> None:
    families = await stack.metrics()
    ok = [lbl for _, lbl, v in families[m.PROBE_SUCCESS] if v == 1 and lbl["probe"] == "tenant"]
    assert len(ok) >= 240
    successes = [lbl for _, lbl, _ in families[m.API_REQUESTS_TOTAL] if lbl["status_code"] == "200"]
    assert successes and all(lbl["error_code"] == "" for lbl in successes)


async def test_tenant_list_is_read_over_three_pages(stack: Stack) -> None:
    families = await stack.metrics()
    pages = one(
        families[m.API_REQUESTS_TOTAL],
        credential="msp-main",
        probe="tenant_list",
        status_code="200",
    )
    assert pages == 3  # 250 tenants at 100 per page, one refresh so far
    listed = [lbl for _, lbl, _ in families[m.TENANT_INFO] if lbl["credential"] == "msp-main"]
    assert len(listed) == 250


async def test_tenants_on_two_regional_hosts_are_probed_on_their_own_host(stack: Stack) -> None:
    families = await stack.metrics()
    regions = {
        lbl["data_region"]
        for _, lbl, _ in families[m.TENANT_INFO]
        if lbl["credential"] == "msp-main"
    }
    assert len(regions) == 2
    busy = [i for i in range(2) if stack.sim.stats.host_arrivals(region_host(i)) > 0]
    assert busy == [0, 1]


async def test_host_outside_the_allowlist_never_sees_a_token(stack: Stack) -> None:
    assert stack.sim.rogue_requests == []
    families = await stack.metrics()
    rogue = tenant_tagged(stack, "rogue_host")
    assert [lbl for _, lbl, _ in families[m.API_REQUESTS_TOTAL] if lbl["tenant_id"] == rogue] == []
    assert one(families[m.TENANT_INFO], tenant_id=rogue) == 1


async def test_revoked_secret_fails_token_issuance(stack: Stack) -> None:
    families = await stack.metrics()
    assert one(families[m.PROBE_SUCCESS], credential="revoked-key", probe="token") == 0
    assert (
        one(
            families[m.API_REQUESTS_TOTAL],
            credential="revoked-key",
            probe="token",
            status_code="401",
            error_code="oauth.invalid_client_secret",
        )
        >= 1
    )
    assert one(families[m.PROBE_CAUSE_INFO], credential="revoked-key", probe="token") == 1


async def test_identity_token_expiry_and_rate_windows(stack: Stack) -> None:
    families = await stack.metrics()
    ids = {lbl["credential"]: lbl["id_type"] for _, lbl, _ in families[m.WHOAMI_INFO]}
    assert ids == {"msp-main": "partner", "org-main": "organization", "tenant-direct": "tenant"}
    expiry = one(families[m.TOKEN_EXPIRY_TIMESTAMP_SECONDS], credential="msp-main")
    assert expiry > stack.service.agent.clock.time() + 3000
    calls = one(families[m.RATE_LIMIT_CALLS], credential="msp-main", window="1d")
    made = sum(v for _, lbl, v in families[m.API_REQUESTS_TOTAL] if lbl["credential"] == "msp-main")
    in_flight = one(families[m.API_REQUESTS_IN_FLIGHT], credential="msp-main")
    assert calls == made + in_flight  # every call counts from admission, token calls included
    limit = one(families[m.RATE_LIMIT_MAX_CALLS], credential="msp-main", window="1m")
    ratio = one(families[m.RATE_LIMIT_UTILIZATION_RATIO], credential="msp-main", window="1m")
    used = one(families[m.RATE_LIMIT_CALLS], credential="msp-main", window="1m")
    assert limit == stack.settings.rate_limits["1m"]
    assert ratio == pytest.approx(used / limit)


async def test_probe_interval_and_last_run_are_exported(stack: Stack) -> None:
    families = await stack.metrics()
    plan = stack.service.agent.plans["msp-main"]
    exported = one(families[m.PROBE_INTERVAL_SECONDS], credential="msp-main")
    assert exported == pytest.approx(plan.period) == 4
    assert one(families[m.PROBE_INTERVAL_SECONDS], credential="tenant-direct") == 4
    now = stack.service.agent.clock.time()
    for _, _, value in families[m.PROBE_LAST_RUN_TIMESTAMP_SECONDS]:
        assert now - 120 < value <= now + 1


async def test_metrics_are_gzipped_when_asked(stack: Stack) -> None:
    response = await stack.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert m.PROBE_SUCCESS in response.text  # httpx decompressed it


async def test_landing_health_and_status_pages(stack: Stack) -> None:
    landing = await stack.get("/")
    assert "/metrics" in landing.text and "/status" in landing.text
    assert (await stack.get("/healthz")).status_code == 200
    status = await stack.get("/status")
    assert "trial_account" in status.text and "not an outage" in status.text
    support = await stack.get("/support")
    assert support.text.startswith("# Subject: New API 5xx error")


async def test_status_page_says_the_probe_period_first_for_each_credential(stack: Stack) -> None:
    status = (await stack.get("/status")).text
    for credential in stack.settings.credentials:
        section = status.split(f'<section class="credential" id="credential-{credential.name}"')
        first = section[1].split("</h2>", 1)[1].split("</p>", 1)[0].strip()
        assert first.startswith('<p class="period" data-period-seconds="4">'), first
        assert "Each tenant is probed every 4 s: as configured (probe_interval)" in first


async def test_start_up_logs_the_probe_period_once_per_planned_credential(stack: Stack) -> None:
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines() if line.strip()]
    said = [
        line["credential"]
        for line in lines
        if line["msg"] == "tenants probed every 4 s: as configured (probe_interval)"
        and line["level"] == "info"
    ]
    planned = sorted(stack.service.agent.plans)
    assert "msp-main" in planned
    assert sorted(said) == planned


async def test_tenant_that_leaves_the_list_loses_its_series(stack: Stack) -> None:
    agent = stack.service.agent
    prober = next(p for p in agent.probers if p.name == "org-main")
    gone = sorted(prober.state.tenants)[0]
    scenario_cred = stack.sim.scenario.credential("org-main")
    scenario_cred.tenants = [t for t in scenario_cred.tenants if t.id != gone]
    await prober.refresh_tenants()
    agent._after_refresh(prober)
    text = (await stack.get("/metrics")).text
    assert gone not in text


async def test_canary_secret_never_appears_anywhere(stack: Stack) -> None:
    tokens = [p.client.token.value for p in stack.service.agent.probers if p.client.token]
    assert tokens
    pages = [(await stack.get(path)).text for path in ("/metrics", "/status", "/support", "/")]
    out = io.StringIO()
    await run_check(stack.settings, out)
    for text in [*pages, out.getvalue(), stack.logs.getvalue()]:
        for secret in (CANARY_SECRET, CANARY_CLIENT_ID, *tokens):
            assert secret not in text


async def test_check_prints_every_probe_and_exits_1_on_failures(stack: Stack) -> None:
    out = io.StringIO()
    code = await run_check(stack.settings, out)
    text = out.getvalue()
    assert code == 1
    assert "trial_account" in text and "not an outage" in text
    assert "oauth.invalid_client_secret" in text
    assert tenant_tagged(stack, "slow") in text


async def test_check_exits_0_when_everything_is_healthy(tmp_path: Path) -> None:
    from agent.config import load_settings
    from agent.simulator import Simulator

    sim = Simulator(build_scenario("healthy"), host="127.0.0.1", port=0)
    await sim.start()
    try:
        import yaml

        path = tmp_path / "c.yml"
        path.write_text(
            yaml.safe_dump(
                {**sim.agent_config(), "state_file": str(tmp_path / "s.db"), "budget_share": 1.0}
            )
        )
        out = io.StringIO()
        assert await run_check(load_settings(path), out) == 0
        assert " 0 failing; 0 business state; " in out.getvalue().splitlines()[0]
    finally:
        await sim.stop()


async def test_check_exits_1_when_the_api_refuses_connections(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(
        "auth_url: http://127.0.0.1:9/api/v2/oauth2/token\napi_url: http://127.0.0.1:9\n"
        f"state_file: {tmp_path / 's.db'}\nrequest_timeout: 2s\n"
        "credentials: [{name: a, client_id: x, client_secret: y}]\n"
    )
    code = await asyncio.to_thread(main, ["check", "--config", str(path)])
    assert code == 1
