"""The scale scenarios stay cheap to serve."""

from __future__ import annotations

import time

import httpx

from agent.simulator import build_scenario

from .conftest import StartSim
from .helpers import bearer, get_token


async def test_scale_10k_lists_ten_thousand_tenants_over_100_pages_quickly(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    scenario = build_scenario("scale-10k")
    scenario.rate_limits = {"1s": 10_000}  # this test measures serving, not the limiter
    sim = await start_sim(scenario)
    cred = sim.scenario.credential("msp-scale")
    token = await get_token(client, sim, cred)
    headers = bearer(token, **{"X-Partner-ID": cred.id})
    url = f"{sim.api_url}/partner/v1/tenants"

    started = time.perf_counter()
    ids: list[str] = []
    totals: set[int] = set()
    for page in range(1, 101):
        params: dict[str, str | int] = {"page": page, "pageSize": 100, "pageTotal": "true"}
        body = (await client.get(url, params=params, headers=headers)).json()
        ids += [item["id"] for item in body["items"]]
        totals.add(body["pages"]["total"])
    elapsed = time.perf_counter() - started

    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    assert totals == {100}
    assert elapsed < 10, f"listing took {elapsed:.1f}s"
