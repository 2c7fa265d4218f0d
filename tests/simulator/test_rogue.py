"""The rogue listener records what reaches it, so a test can prove a token never did."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from agent.simulator import tagged

from .conftest import StartSim
from .helpers import assert_central_error, get_token, tenant_call


async def test_rogue_tenant_is_listed_on_localhost_not_on_the_allowed_address(
    start_sim: StartSim,
) -> None:
    sim = await start_sim("demo")
    (rogue,) = tagged(sim.scenario, "rogue_host")

    api_host = sim.api_host_of(rogue.id)

    assert api_host is not None
    assert urlsplit(api_host).hostname == "localhost"
    assert sim.agent_config()["allowed_api_hosts"] == ["127.0.0.1"]
    assert all(urlsplit(url).hostname == "127.0.0.1" for url in sim.region_urls)


async def test_rogue_listener_records_every_request_and_its_headers(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    (rogue,) = tagged(sim.scenario, "rogue_host")

    without = await tenant_call(client, sim, None, rogue)
    with_token = await tenant_call(client, sim, "leaked-token", rogue)
    admin_view = (await client.get(f"{sim.api_url}/_simulator/rogue")).json()

    assert without.status_code == 200 and with_token.status_code == 200
    assert len(sim.rogue_requests) == 2
    first, second = sim.rogue_requests
    assert first["x-tenant-id"] == rogue.id
    assert "authorization" not in first
    assert second["authorization"] == "Bearer leaked-token"
    assert [r["path"] for r in admin_view["requests"]] == ["/endpoint/v1/endpoints"] * 2
    assert admin_view["requests"][1]["headers"]["authorization"] == "Bearer leaked-token"


async def test_real_hosts_refuse_the_rogue_tenant(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))
    (rogue,) = tagged(sim.scenario, "rogue_host")

    response = await tenant_call(client, sim, token, rogue, base_url=sim.region_urls[0])

    assert_central_error(response, 403, "forbidden")
    assert sim.rogue_requests == []
