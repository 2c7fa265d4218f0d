"""Every route answers in the shape Sophos documents, and pages the way Sophos pages it.

One simulator for the module (on a fake clock, so SIEM streams and drills move only when a test
says): a client following ``nextKey`` gets every alert and endpoint once, SIEM cursors resume
after the last item served, and a permission fault denies exactly one family.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from agent.clock import FakeClock
from agent.simulator import PERMISSION_FAULTS, ROUTES, Scenario, Simulator, build_scenario

from .helpers import assert_central_error, bearer, get_token

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
pytestmark = IN_MODULE_LOOP

SAMPLE_PATHS = {
    "/endpoint/v1/endpoints/{id}": None,  # needs a real id: covered by test_single_items
    "/common/v1/alerts/{id}": None,
    "/partner/v1/tenants/{id}": None,
    "/organization/v1/tenants/{id}": None,
}


class Env:
    """The module's simulator, its clock, a client and a partner token."""

    def __init__(self, sim: Simulator, clock: FakeClock, client: httpx.AsyncClient) -> None:
        self.sim = sim
        self.clock = clock
        self.client = client
        self.cred = sim.scenario.credential("msp-healthy")
        self.tenant = self.cred.tenants[0]
        self.token = ""

    @property
    def tenant_url(self) -> str:
        url = self.sim.api_host_of(self.tenant.id)
        assert url is not None
        return url

    async def tenant_get(self, path: str, **params: Any) -> httpx.Response:
        headers = bearer(self.token, **{"X-Tenant-ID": self.tenant.id})
        return await self.client.get(self.tenant_url + path, params=params, headers=headers)

    async def global_get(self, path: str, **params: Any) -> httpx.Response:
        headers = bearer(self.token, **{"X-Partner-ID": self.cred.id})
        return await self.client.get(self.sim.api_url + path, params=params, headers=headers)


def _scenario() -> Scenario:
    scenario = build_scenario("healthy")
    tenant = scenario.credential("msp-healthy").tenants[0]
    tenant.endpoints, tenant.alerts = 23, 130  # several pages of each
    scenario.rate_limits = {"1s": 10_000}  # the fake clock stands still between calls
    return scenario


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env() -> AsyncIterator[Env]:
    clock = FakeClock(start=1_780_000_000.0)
    sim = Simulator(_scenario(), clock=clock)
    await sim.start()
    async with httpx.AsyncClient(timeout=5.0) as client:
        running = Env(sim, clock, client)
        running.token = await get_token(client, sim, running.cred)
        yield running
    await sim.stop()


async def follow_keys(env: Env, path: str, **params: Any) -> list[dict[str, Any]]:
    """What a client following ``nextKey`` collects, checking every page as it goes."""
    collected: list[dict[str, Any]] = []
    key: str | None = None
    for _ in range(50):  # bounded
        query = {**params, **({"pageFromKey": key} if key else {})}
        response = await env.tenant_get(path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "pages"}
        assert body["pages"]["fromKey"]
        collected += body["items"]
        key = body["pages"].get("nextKey")
        if key is None:
            return collected
    raise AssertionError("nextKey never ended")


# --- every route -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.path not in SAMPLE_PATHS], ids=lambda r: r.path
)
async def test_every_route_answers_a_json_object(env: Env, route: Any) -> None:
    if route.scope == "tenant":
        response = await env.tenant_get(route.path)
    elif route.path.startswith("/organization"):
        org = env.sim.scenario.credential("org-healthy")
        token = await get_token(env.client, env.sim, org)
        headers = bearer(token, **{"X-Organization-ID": org.id})
        response = await env.client.get(env.sim.api_url + route.path, headers=headers)
    else:
        response = await env.global_get(route.path)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json(), dict)


async def test_a_tenant_route_on_the_global_host_is_refused(env: Env) -> None:
    headers = bearer(env.token, **{"X-Tenant-ID": env.tenant.id})
    response = await env.client.get(env.sim.api_url + "/common/v1/roles", headers=headers)
    licences = await env.client.get(
        env.tenant_url + "/licenses/v1/licenses/firewalls",
        headers=bearer(env.token, **{"X-Partner-ID": env.cred.id}),
    )

    assert_central_error(response, 403, "forbidden")
    assert_central_error(licences, 404, "notFound")


# --- key paging: alerts and endpoints ------------------------------------------------------------


async def test_alerts_page_by_key_and_a_client_gets_every_alert_once(env: Env) -> None:
    alerts = await follow_keys(env, "/common/v1/alerts", pageSize=50)
    first = (await env.tenant_get("/common/v1/alerts", pageSize=50, pageTotal="true")).json()

    ids = [a["id"] for a in alerts]
    assert len(ids) == 130 and len(set(ids)) == 130
    assert first["pages"] == {
        "fromKey": first["pages"]["fromKey"],
        "nextKey": first["pages"]["nextKey"],
        "size": 50,
        "total": 3,
        "items": 130,
        "maxSize": 1000,
    }
    alert = alerts[0]
    assert alert["tenant"] == {"id": env.tenant.id, "name": env.tenant.name}
    assert {"id", "type", "name"} <= set(alert["managedAgent"])
    assert {"id", "name"} <= set(alert["person"])
    assert {"severity", "category", "raisedAt", "allowedActions", "product", "type"} <= set(alert)


async def test_alert_page_size_is_limited_to_1000(env: Env) -> None:
    response = await env.tenant_get("/common/v1/alerts", pageSize=1001)

    body = assert_central_error(response, 400, "BadRequest")
    assert "pageSize" in body["message"]


async def test_alerts_filter_by_product_and_severity(env: Env) -> None:
    high = await follow_keys(env, "/common/v1/alerts", severity="high", pageSize=1000)

    assert high and all(a["severity"] == "high" for a in high)
    assert len(high) < 130


async def test_endpoint_pages_carry_total_items_from_key_and_the_tenant(env: Env) -> None:
    endpoints = await follow_keys(env, "/endpoint/v1/endpoints", pageSize=10, view="basic")
    first = (
        await env.tenant_get("/endpoint/v1/endpoints", pageSize=10, pageTotal="true", view="basic")
    ).json()

    assert len({e["id"] for e in endpoints}) == 23
    assert all(e["tenant"] == {"id": env.tenant.id} for e in endpoints)
    assert {k: first["pages"][k] for k in ("size", "total", "items", "maxSize")} == {
        "size": 10,
        "total": 3,
        "items": 23,
        "maxSize": 500,
    }
    assert first["pages"]["fromKey"] and first["pages"]["nextKey"]


async def test_single_items(env: Env) -> None:
    alert = (await env.tenant_get("/common/v1/alerts", pageSize=1)).json()["items"][0]
    endpoint = (await env.tenant_get("/endpoint/v1/endpoints", pageSize=1)).json()["items"][0]

    one_alert = await env.tenant_get(f"/common/v1/alerts/{alert['id']}")
    one_endpoint = await env.tenant_get(f"/endpoint/v1/endpoints/{endpoint['id']}")
    missing = await env.tenant_get("/common/v1/alerts/00000000-0000-4000-8000-000000000000")

    assert one_alert.status_code == 200 and one_alert.json() == alert  # the object, not a page
    assert one_endpoint.json()["id"] == endpoint["id"]
    assert_central_error(missing, 404, "resourceNotFound")


async def test_a_key_that_was_never_handed_out_is_refused(env: Env) -> None:
    response = await env.tenant_get("/common/v1/alerts", pageFromKey="not-a-key")

    assert_central_error(response, 400, "BadRequest")


# --- tenants -----------------------------------------------------------------------------------


async def test_tenant_records_carry_sophos_fields(env: Env) -> None:
    body = (await env.global_get("/partner/v1/tenants", pageTotal="true")).json()
    tenant = body["items"][0]

    assert body["pages"] == {"current": 1, "size": 50, "total": 1, "items": 20, "maxSize": 100}
    assert {
        "id",
        "name",
        "showAs",
        "status",
        "dataGeography",
        "dataRegion",
        "billingType",
        "partner",
        "organization",
        "apiHost",
        "contact",
        "products",
        "externalIds",
    } <= set(tenant)
    assert tenant["status"] == "active"
    assert {"firstName", "lastName", "email", "address"} <= set(tenant["contact"])
    assert all(set(p) == {"code"} for p in tenant["products"])
    assert all(isinstance(x, str) for x in tenant["externalIds"])


# --- SIEM --------------------------------------------------------------------------------------


async def siem_run(
    env: Env, path: str, cursor: str | None, **params: Any
) -> tuple[list[dict[str, Any]], str, int]:
    """A connector's run: from the cursor (or from_date), following has_more. Returns the
    items, the cursor to save and how many calls it took."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": 1000, "from_date_offset_minutes": 0, **params}
    if cursor is not None:
        query["cursor"] = cursor
    for calls in range(1, 20):  # bounded
        body = (await env.tenant_get(path, **query)).json()
        assert set(body) == {"has_more", "items", "next_cursor"}
        items += body["items"]
        query.pop("from_date", None)
        query["cursor"] = body["next_cursor"]
        if not body["has_more"]:
            return items, body["next_cursor"], calls
    raise AssertionError("has_more never ended")


async def test_siem_cursor_resumes_and_a_second_run_gets_only_new_events(env: Env) -> None:
    since = int(env.clock.time()) - 23 * 3600
    first, cursor, calls = await siem_run(env, "/siem/v1/events", None, from_date=since)
    await env.clock.advance(600)  # ten minutes later: ten new events, one a minute
    second, cursor2, _ = await siem_run(env, "/siem/v1/events", cursor)
    third, _, _ = await siem_run(env, "/siem/v1/events", cursor2)

    assert calls == 2  # 23 hours of events at 1000 a call
    assert 23 * 60 - 1 <= len(first) <= 23 * 60 + 1
    assert len({e["id"] for e in first}) == len(first)
    assert len(second) == 10
    assert not {e["id"] for e in second} & {e["id"] for e in first}
    assert [e["when"] for e in first] == sorted(e["when"] for e in first)
    assert second[0]["when"] > first[-1]["when"]
    assert third == []


async def test_siem_limit_and_has_more(env: Env) -> None:
    body = (await env.tenant_get("/siem/v1/alerts", limit=5)).json()
    rest = (await env.tenant_get("/siem/v1/alerts", cursor=body["next_cursor"], limit=5)).json()

    assert len(body["items"]) == 5 and body["has_more"] is True
    assert {a["id"] for a in body["items"]}.isdisjoint({a["id"] for a in rest["items"]})
    assert {"id", "type", "severity", "customer_id", "when", "created_at"} <= set(body["items"][0])


async def test_siem_exclude_types_filters_events(env: Env) -> None:
    since = int(env.clock.time()) - 3600
    every, _, _ = await siem_run(env, "/siem/v1/events", None, from_date=since)
    kept, _, _ = await siem_run(
        env,
        "/siem/v1/events",
        None,
        from_date=since,
        exclude_types="Event::Endpoint::UpdateSuccess,Event::Endpoint::Registered",
    )

    types = {e["type"] for e in every}
    assert {"Event::Endpoint::UpdateSuccess", "Event::Endpoint::Registered"} <= types
    assert kept and len(kept) < len(every)
    assert not {e["type"] for e in kept} & {
        "Event::Endpoint::UpdateSuccess",
        "Event::Endpoint::Registered",
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 5000}, "limit must be between 1 and 1000"),
        ({"from_date": "OLD"}, "from_date must be within the last 24 hours"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"from_date_offset_minutes": "soon"}, "from_date_offset_minutes"),
    ],
)
async def test_siem_refuses_what_sophos_refuses(
    env: Env, params: dict[str, Any], message: str
) -> None:
    if params.get("from_date") == "OLD":
        params = {"from_date": int(env.clock.time()) - 24 * 3600 - 60}

    response = await env.tenant_get("/siem/v1/events", **params)

    body = assert_central_error(response, 400, "BadRequest")
    assert message in body["message"]


# --- the other read calls ------------------------------------------------------------------------


async def test_account_health_check_has_scores_under_endpoint(env: Env) -> None:
    body = (await env.tenant_get("/account-health-check/v1/health-check")).json()

    assert body["tenant"] == {"id": env.tenant.id}
    endpoint = body["endpoint"]
    assert set(endpoint) == {"protection", "policy", "exclusions", "tamperProtection"}
    for check in (
        endpoint["protection"]["computer"],
        endpoint["policy"]["computer"]["threat-protection"],
        endpoint["policy"]["server"]["server-threat-protection"],
        endpoint["exclusions"]["policy"]["server"],
        endpoint["tamperProtection"]["computer"],
    ):
        assert 0 <= check["score"] <= check["total"] == 100
    assert isinstance(endpoint["tamperProtection"]["global"], bool)


async def test_directory_roles_admins_firewalls_and_licences(env: Env) -> None:
    users = await follow_keys(env, "/common/v1/directory/users")
    roles = (await env.tenant_get("/common/v1/roles")).json()
    admins = (await env.tenant_get("/common/v1/admins")).json()
    licences = (await env.global_get("/licenses/v1/licenses/firewalls")).json()
    firewalls: list[dict[str, Any]] = []
    for tenant in env.cred.tenants:
        headers = bearer(env.token, **{"X-Tenant-ID": tenant.id})
        url = f"{env.sim.api_host_of(tenant.id)}/firewall/v1/firewalls"
        firewalls += (await env.client.get(url, headers=headers)).json()["items"]

    assert users and all({"id", "name", "email"} <= set(u) for u in users)
    assert {r["name"] for r in roles["items"]} >= {"Super Admin", "Read-only"}
    role_ids = {r["id"] for r in roles["items"]}
    assert all(a["roleAssignments"][0]["roleId"] in role_ids for a in admins["items"])
    assert firewalls, "some tenant of the scenario has a firewall"
    assert {f["serialNumber"] for f in firewalls} == {
        lic["serialNumber"] for lic in licences["items"]
    }
    assert all(lic["owner"] == {"id": env.cred.id, "type": "partner"} for lic in licences["items"])


# --- permission faults ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", PERMISSION_FAULTS)
async def test_a_permission_fault_denies_only_its_own_family(env: Env, fault: str) -> None:
    paths = {
        r.family: r.path for r in reversed(ROUTES) if r.scope == "tenant" and "{" not in r.path
    }
    env.sim.set_fault(env.tenant.id, fault)
    try:
        statuses = {
            family: (await env.tenant_get(path)).status_code for family, path in paths.items()
        }
        denied = await env.tenant_get(paths[fault.removeprefix("forbidden_")])
    finally:
        env.sim.set_fault(env.tenant.id, None)

    family = fault.removeprefix("forbidden_")
    assert statuses == {f: 403 if f == family else 200 for f in paths}
    body = assert_central_error(denied, 403, "forbidden")
    assert body["message"] == "Access is denied"
