"""SIEM and alerts APIs answer in their documented shapes; a permission fault denies one family."""

from __future__ import annotations

import time

import httpx
import pytest

from agent.simulator import PERMISSION_FAULTS, tagged

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token

FAMILY_PATHS = {
    "endpoint": "/endpoint/v1/endpoints?pageSize=1&view=basic",
    "siem_events": "/siem/v1/events?limit=1",
    "siem_alerts": "/siem/v1/alerts?limit=1",
    "common_alerts": "/common/v1/alerts?pageSize=1",
}


async def _get(
    client: httpx.AsyncClient, url: str, token: str, tenant_id: str, path: str
) -> httpx.Response:
    return await client.get(url + path, headers=bearer(token, **{"X-Tenant-ID": tenant_id}))


@pytest.mark.parametrize("path", ["/siem/v1/events?limit=1", "/siem/v1/alerts?limit=1"])
async def test_siem_answers_has_more_items_and_a_cursor(
    start_sim: StartSim, client: httpx.AsyncClient, path: str
) -> None:
    sim = await start_sim("families")
    cred = sim.scenario.credential("msp-families")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)

    response = await _get(client, sim.api_host_of(tenant.id) or "", token, tenant.id, path)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"has_more", "items", "next_cursor"}
    assert body["has_more"] is True  # a day of items, one asked for
    assert len(body["items"]) == 1
    assert {"id", "type", "when", "customer_id", "severity"} <= set(body["items"][0])
    assert body["items"][0]["customer_id"] == tenant.id
    assert isinstance(body["next_cursor"], str) and body["next_cursor"]


async def test_common_alerts_page_like_the_endpoint_api(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("families")
    cred = sim.scenario.credential("msp-families")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)

    url = sim.api_host_of(tenant.id) or ""
    response = await _get(client, url, token, tenant.id, FAMILY_PATHS["common_alerts"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "pages"}
    assert len(body["items"]) == 1
    assert body["items"][0]["tenant"] == {"id": tenant.id}
    assert body["pages"]["size"] == 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=5000", "limit must be between 1 and 1000"),
        (f"from_date={int(time.time()) - 2 * 86400}", "from_date must be within the last 24"),
    ],
)
async def test_siem_refuses_what_sophos_refuses(
    start_sim: StartSim, client: httpx.AsyncClient, query: str, message: str
) -> None:
    sim = await start_sim("families")
    cred = sim.scenario.credential("msp-families")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)

    url = sim.api_host_of(tenant.id) or ""
    response = await _get(client, url, token, tenant.id, f"/siem/v1/events?{query}")

    body = assert_central_error(response, 400, "BadRequest")
    assert message in body["message"]


@pytest.mark.parametrize("fault", PERMISSION_FAULTS)
async def test_a_permission_fault_denies_only_its_own_family(
    start_sim: StartSim, client: httpx.AsyncClient, fault: str
) -> None:
    sim = await start_sim("families")
    cred = sim.scenario.credential("msp-families")
    (tenant,) = tagged(sim.scenario, fault)
    token = await get_token(client, sim, cred)
    url = sim.api_host_of(tenant.id) or ""

    statuses = {
        family: (await _get(client, url, token, tenant.id, path)).status_code
        for family, path in FAMILY_PATHS.items()
    }

    denied = fault.removeprefix("forbidden_")
    assert statuses == {f: 403 if f == denied else 200 for f in FAMILY_PATHS}
    response = await _get(client, url, token, tenant.id, FAMILY_PATHS[denied])
    body = assert_central_error(response, 403, "forbidden")
    assert body["message"] == "Access is denied"


async def test_a_permission_fault_is_set_and_cleared_through_the_admin_api(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")
    cred = sim.scenario.credential("msp-healthy")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)
    url = sim.api_host_of(tenant.id) or ""
    fault_url = f"{sim.api_url}/_simulator/tenants/{tenant.id}/fault"

    set_it = await client.post(fault_url, json={"fault": "forbidden_siem_events"})
    denied = await _get(client, url, token, tenant.id, FAMILY_PATHS["siem_events"])
    allowed = await _get(client, url, token, tenant.id, FAMILY_PATHS["endpoint"])
    await client.post(fault_url, json={"fault": None})
    cleared = await _get(client, url, token, tenant.id, FAMILY_PATHS["siem_events"])

    assert set_it.status_code == 200
    assert (denied.status_code, allowed.status_code, cleared.status_code) == (403, 200, 200)
