"""Partner and organization tenant lists: headers, pagination, tenant fields."""

from __future__ import annotations

from typing import Any

import httpx

from agent.simulator import Simulator, tagged

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token


async def _partner_page(
    client: httpx.AsyncClient, sim: Simulator, token: str, **params: Any
) -> httpx.Response:
    cred = sim.scenario.credential("msp-main")
    return await client.get(
        f"{sim.api_url}/partner/v1/tenants",
        params=params,
        headers=bearer(token, **{"X-Partner-ID": cred.id}),
    )


async def test_partner_tenants_span_three_pages_with_totals(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)

    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    for page in (1, 2, 3):
        response = await _partner_page(
            client, sim, token, page=page, pageSize=100, pageTotal="true"
        )
        assert response.status_code == 200
        body = response.json()
        pages.append(body["pages"])
        seen += [item["id"] for item in body["items"]]

    assert seen == [t.id for t in cred.tenants]
    assert [p["current"] for p in pages] == [1, 2, 3]
    assert all(p["total"] == 3 and p["items"] == 250 for p in pages)
    assert all(p["size"] == 100 and p["maxSize"] == 100 for p in pages)


async def test_totals_only_when_asked_and_pages_past_the_end_are_empty(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))

    plain = (await _partner_page(client, sim, token, page=1)).json()
    past = (await _partner_page(client, sim, token, page=4, pageSize=100)).json()

    assert "total" not in plain["pages"] and "items" not in plain["pages"]
    assert past["items"] == []


async def test_page_size_is_capped_at_the_maximum(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))

    body = (await _partner_page(client, sim, token, pageSize=1000)).json()

    assert body["pages"]["size"] == 100
    assert len(body["items"]) == 100


async def test_bad_page_number_is_a_bad_request(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))

    assert_central_error(await _partner_page(client, sim, token, page=0), 400, "BadRequest")
    assert_central_error(await _partner_page(client, sim, token, page="x"), 400, "BadRequest")


async def test_wrong_partner_id_is_forbidden_and_missing_is_unauthorized(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)
    other = sim.scenario.credential("org-main").id

    wrong = await client.get(
        f"{sim.api_url}/partner/v1/tenants", headers=bearer(token, **{"X-Partner-ID": other})
    )
    missing = await client.get(f"{sim.api_url}/partner/v1/tenants", headers=bearer(token))

    assert_central_error(wrong, 403, "forbiddenAccess")
    assert_central_error(missing, 401, "notAuthorized")


async def test_organization_list_needs_the_organization_header(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    org = sim.scenario.credential("org-main")
    token = await get_token(client, sim, org)
    url = f"{sim.api_url}/organization/v1/tenants"

    good = await client.get(url, headers=bearer(token, **{"X-Organization-ID": org.id}))
    wrong = await client.get(url, headers=bearer(token, **{"X-Organization-ID": "nope"}))

    assert good.status_code == 200
    assert [i["id"] for i in good.json()["items"]] == [t.id for t in org.tenants]
    assert all(i["organization"] == {"id": org.id} for i in good.json()["items"])
    assert_central_error(wrong, 403, "forbiddenAccess")


async def test_partner_credential_cannot_use_the_organization_list(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)

    response = await client.get(
        f"{sim.api_url}/organization/v1/tenants",
        headers=bearer(token, **{"X-Organization-ID": cred.id}),
    )

    assert_central_error(response, 403, "Forbidden")


async def test_tenant_items_carry_billing_type_region_and_api_host(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)
    items: dict[str, dict[str, Any]] = {}
    for page in (1, 2, 3):
        body = (await _partner_page(client, sim, token, page=page, pageSize=100)).json()
        items.update({item["id"]: item for item in body["items"]})
    by_tag = {
        tag: items[tagged(sim.scenario, tag)[0].id]
        for tag in (
            "trial_403",
            "no_partner_assistance_403",
            "not_activated",
            "trial_no_host",
            "rogue_host",
            "reset",
        )
    }
    healthy = items[cred.tenants[0].id]

    assert by_tag["trial_403"]["billingType"] == "trial"
    assert by_tag["no_partner_assistance_403"]["billingType"] == "term"
    assert by_tag["not_activated"]["apiHost"] is None
    assert "apiHost" not in by_tag["trial_no_host"]  # as Sophos lists trial accounts
    assert by_tag["trial_no_host"]["billingType"] == "trial"
    assert by_tag["rogue_host"]["apiHost"] == sim.rogue_url
    assert by_tag["rogue_host"]["apiHost"].startswith("http://localhost:")
    assert by_tag["reset"]["apiHost"] == sim.faulty_url
    assert healthy["apiHost"] in sim.region_urls
    assert healthy["partner"] == {"id": cred.id}
    assert {"id", "name", "showAs", "dataGeography", "dataRegion", "billingType"} <= set(healthy)
    assert {item.get("apiHost") for item in items.values()} >= set(sim.region_urls)
    assert any(not item["name"].isascii() for item in items.values())


async def test_single_tenant_by_id(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)
    headers = bearer(token, **{"X-Partner-ID": cred.id})
    foreign = sim.scenario.credential("org-main").tenants[0].id

    own = await client.get(
        f"{sim.api_url}/partner/v1/tenants/{cred.tenants[3].id}", headers=headers
    )
    other = await client.get(f"{sim.api_url}/partner/v1/tenants/{foreign}", headers=headers)

    assert own.status_code == 200 and own.json()["id"] == cred.tenants[3].id
    assert_central_error(other, 404, "resourceNotFound")
