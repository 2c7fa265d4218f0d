"""Per-tenant calls: token, X-Tenant-ID and the tenant's own host are all checked."""

from __future__ import annotations

import httpx

from agent.simulator import tagged

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token, tenant_call


async def test_probe_of_a_healthy_tenant_lists_one_endpoint(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)

    response = await tenant_call(client, sim, token, cred.tenants[0])

    assert response.status_code == 200
    body = response.json()
    assert len(body["items"]) == 1
    assert {"id", "type", "hostname"} <= set(body["items"][0])
    assert body["items"][0]["type"] in ("computer", "server")
    assert body["pages"]["size"] == 1


async def test_missing_token_and_missing_tenant_header_are_unauthorized(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)
    url = f"{sim.api_host_of(tenant.id)}/endpoint/v1/endpoints"

    no_token = await tenant_call(client, sim, None, tenant)
    no_header = await client.get(url, headers=bearer(token))

    assert_central_error(no_token, 401, "Unauthorized")
    body = assert_central_error(no_header, 401, "Unauthorized")
    assert "X-Tenant-ID" in body["message"]


async def test_tenant_of_another_credential_is_forbidden(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))
    foreign = sim.scenario.credential("org-main").tenants[0]

    response = await tenant_call(client, sim, token, foreign)

    assert_central_error(response, 403, "forbidden")


async def test_call_to_the_wrong_regional_host_is_forbidden(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)
    tenant = cred.tenants[0]
    own = sim.api_host_of(tenant.id)
    elsewhere = next(url for url in [*sim.region_urls, sim.api_url] if url != own)

    wrong = await tenant_call(client, sim, token, tenant, base_url=elsewhere)
    global_host = await tenant_call(client, sim, token, tenant, base_url=sim.api_url)
    right = await tenant_call(client, sim, token, tenant)

    assert_central_error(wrong, 403, "forbidden")
    assert_central_error(global_host, 403, "forbidden")
    assert right.status_code == 200


async def test_tenant_credential_reaches_only_itself(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    direct = sim.scenario.credential("tenant-direct")
    token = await get_token(client, sim, direct)
    whoami = (await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))).json()
    other = sim.scenario.credential("msp-main").tenants[0]

    own = await tenant_call(
        client, sim, token, direct.tenants[0], base_url=whoami["apiHosts"]["dataRegion"]
    )
    foreign = await tenant_call(client, sim, token, other)

    assert own.status_code == 200
    assert_central_error(foreign, 403, "forbidden")


async def test_not_activated_tenant_is_refused_everywhere(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))
    tenant = tagged(sim.scenario, "not_activated")[0]

    assert sim.api_host_of(tenant.id) is None
    for url in sim.region_urls:
        assert_central_error(await tenant_call(client, sim, token, tenant, url), 403, "forbidden")


async def test_endpoint_paths_answer_sensibly(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)
    base = sim.api_host_of(tenant.id)
    headers = bearer(token, **{"X-Tenant-ID": tenant.id})
    first = (await tenant_call(client, sim, token, tenant)).json()["items"][0]

    one = await client.get(f"{base}/endpoint/v1/endpoints/{first['id']}", headers=headers)
    unknown = await client.get(f"{base}/endpoint/v1/endpoints/nope", headers=headers)
    other = await client.get(f"{base}/endpoint/v1/settings/web-control", headers=headers)
    bad_view = await client.get(
        f"{base}/endpoint/v1/endpoints", params={"view": "weird"}, headers=headers
    )

    assert one.status_code == 200
    assert {k: one.json()[k] for k in first} == first  # the single item carries the full view
    assert_central_error(unknown, 404, "resourceNotFound")
    assert_central_error(other, 404, "notFound")
    assert_central_error(bad_view, 400, "badRequest")
