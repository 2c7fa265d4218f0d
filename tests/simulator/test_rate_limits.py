"""429 with Retry-After when a credential exceeds a window, counted at arrival on every host."""

from __future__ import annotations

import httpx

from agent.clock import FakeClock
from agent.simulator import Scenario, build_scenario

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token, request_token


def _tight(limits: dict[str, int]) -> Scenario:
    scenario = build_scenario("healthy")
    scenario.rate_limits = limits
    return scenario


async def test_limit_breach_gets_429_with_an_exact_retry_after(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim = await start_sim(_tight({"1s": 3, "1m": 5}), clock=clock)
    cred = sim.scenario.credential("msp-healthy")
    whoami = f"{sim.api_url}/whoami/v1"
    token = await get_token(client, sim, cred)  # arrival 1 at t=0

    ok = [(await client.get(whoami, headers=bearer(token))).status_code for _ in range(2)]
    over_second = await client.get(whoami, headers=bearer(token))  # 4th in the same second
    await clock.advance(1.0)
    fifth = await client.get(whoami, headers=bearer(token))
    over_minute = await client.get(whoami, headers=bearer(token))  # 6th within a minute
    await clock.advance(59.0)
    after_wait = await client.get(whoami, headers=bearer(token))

    assert ok == [200, 200]
    assert_central_error(over_second, 429, "TooManyRequests")
    assert over_second.headers["retry-after"] == "1"
    assert fifth.status_code == 200
    assert_central_error(over_minute, 429, "TooManyRequests")
    assert over_minute.headers["retry-after"] == "59"
    assert after_wait.status_code == 200
    stats = sim.stats
    assert stats.arrivals(cred.client_id) == 7
    assert stats.rate_limited(cred.client_id) == 2
    assert stats.max_calls_in_any_window(cred.client_id, 1) == 4
    assert stats.max_calls_in_any_window(cred.client_id, 60) == 6


async def test_token_calls_count_and_are_limited_too(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim = await start_sim(_tight({"1s": 2}), clock=clock)
    cred = sim.scenario.credential("msp-healthy")

    statuses = [
        (await request_token(client, sim, cred.client_id, cred.client_secret)).status_code
        for _ in range(3)
    ]
    limited = await request_token(client, sim, cred.client_id, cred.client_secret)

    assert statuses == [200, 200, 429]
    assert_central_error(limited, 429, "TooManyRequests")
    assert limited.headers["retry-after"] == "1"
    assert sim.stats.host_arrivals("main") == 4


async def test_limits_are_per_credential_and_span_all_hosts(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim = await start_sim(_tight({"1m": 4}), clock=clock)
    msp = sim.scenario.credential("msp-healthy")
    org = sim.scenario.credential("org-healthy")
    token = await get_token(client, sim, msp)
    other = await get_token(client, sim, org)
    tenants = msp.tenants[:2]
    calls = []
    for tenant in tenants:  # one on each regional host
        url = f"{sim.api_host_of(tenant.id)}/endpoint/v1/endpoints"
        response = await client.get(url, headers=bearer(token, **{"X-Tenant-ID": tenant.id}))
        calls.append(response.status_code)
    whoami = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
    over = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
    org_call = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(other))

    assert {sim.api_host_of(t.id) for t in tenants} == set(sim.region_urls)
    assert calls == [200, 200] and whoami.status_code == 200
    assert over.status_code == 429
    assert org_call.status_code == 200
    assert sim.stats.client_host_arrivals(msp.client_id, "region-0") == 1
    assert sim.stats.client_host_arrivals(msp.client_id, "region-1") == 1


async def test_calls_without_a_valid_token_are_not_charged_to_anyone(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")

    response = await client.get(f"{sim.api_url}/whoami/v1")

    assert response.status_code == 401
    assert sim.stats.unattributed == 1
    assert all(sim.stats.arrivals(c.client_id) == 0 for c in sim.scenario.credentials)


async def test_throttled_credential_gets_the_spec_429_without_retry_after_for_a_while(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim = await start_sim("throttled", clock=clock)
    throttled = sim.scenario.credential("msp-throttled")
    steady = sim.scenario.credential("org-steady")
    token = await get_token(client, sim, throttled)  # the id host is not throttled
    whoami = f"{sim.api_url}/whoami/v1"

    during = await client.get(whoami, headers=bearer(token))
    beside = await client.get(whoami, headers=bearer(await get_token(client, sim, steady)))
    await clock.advance(sim.scenario.throttles["msp-throttled"].duration)
    after = await client.get(whoami, headers=bearer(token))

    body = assert_central_error(during, 429, "TooManyRequests")
    assert body["message"] == "Too many requests."
    assert {"correlationId", "requestId", "createdAt"} <= set(body)
    assert "retry-after" not in during.headers
    assert not [h for h in during.headers if h.lower().startswith("x-ratelimit")]
    assert beside.status_code == 200
    assert after.status_code == 200


async def test_the_demo_throttles_tenant_direct_once_in_a_while_after_a_clean_start(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    sim = await start_sim("demo", clock=clock)
    cred = sim.scenario.credential("tenant-direct")
    whoami = f"{sim.api_url}/whoami/v1"

    async def status_at(elapsed: float) -> int:
        await clock.advance(elapsed - clock.monotonic() + start)
        token = await get_token(client, sim, cred)
        response = await client.get(whoami, headers=bearer(token))
        if response.status_code == 429:
            assert "retry-after" not in response.headers
        return response.status_code

    start = clock.monotonic()
    statuses = [await status_at(t) for t in (0, 170, 185, 215, 230, 785, 830)]
    assert statuses == [200, 200, 429, 429, 200, 429, 200]
    other = sim.scenario.credential("org-main")
    token = await get_token(client, sim, other)
    assert (await client.get(whoami, headers=bearer(token))).status_code == 200
