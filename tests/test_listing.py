"""Listing the tenants must not starve probing them, and a list the agent cuts is said out loud.

A whole agent (scheduler, rate budget, client, metrics) runs on a fake clock against an in-process
Sophos Central whose tenant list can lie about its length, be longer than the page cap, or grow
while the agent runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import metricnames as m
from agent.clock import FakeClock
from agent.config import Settings
from agent.runtime import Agent
from agent.sophos import MAX_PAGES
from agent.views.check import format_check
from agent.views.report import PAGE_CAP_TOPIC, build_report
from agent.views.status import render_status_page
from tests.e2e.harness import parse_metrics

REGION = "https://api-eu01.central.sophos.com"
PARTNER = "9a9a9a9a-0000-4000-8000-000000000001"

Pages = Callable[[int], tuple[list[str], int]]
"""Page number -> (tenant ids on it, the pages.total it claims)."""


def tenant_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:07d}-1111-4222-8333-444455556666" for i in range(count)]


def tenant_item(tenant_id: str) -> dict[str, Any]:
    """A tenant as the partner tenant list gives it, on the EU region host."""
    return {
        "id": tenant_id,
        "name": f"Tenant {tenant_id[:8]}",
        "showAs": f"Tenant {tenant_id[:8]}",
        "dataRegion": "eu01",
        "dataGeography": "EU",
        "billingType": "usage",
        "partner": {"id": PARTNER},
        "apiHost": REGION,
        "status": "active",
    }


class Central:
    """Token, whoami, a tenant list served by ``pages``, and tenants that answer at once."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.calls: Counter[str] = Counter()
        self.probed: Counter[str] = Counter()
        self.log: list[tuple[str, float]] = []
        self.clock: FakeClock | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/oauth2/token"):
            self.calls["token"] += 1
            body: dict[str, Any] = {"access_token": "tok", "token_type": "bearer"}
            return httpx.Response(200, json={**body, "expires_in": 3600})
        if path == "/whoami/v1":
            self.calls["whoami"] += 1
            hosts = {"global": "https://api.central.sophos.com"}
            return httpx.Response(200, json={"id": PARTNER, "idType": "partner", "apiHosts": hosts})
        if path == "/partner/v1/tenants":
            page = int(request.url.params["page"])
            self.calls["tenant_list"] += 1
            self._note("tenant_list")
            ids, total = self.pages(page)
            items = [tenant_item(t) for t in ids]
            pages = {"current": page, "total": total}
            return httpx.Response(200, json={"items": items, "pages": pages})
        tenant = request.headers.get("X-Tenant-ID", "")
        self.probed[tenant] += 1
        self._note(tenant)
        return httpx.Response(200, json={"items": [], "pages": {}})

    def _note(self, what: str) -> None:
        if self.clock is not None:
            self.log.append((what, self.clock.monotonic()))


def make_agent(central: Central, clock: FakeClock, **options: Any) -> Agent:
    central.clock = clock
    settings = Settings(
        state_file=Path(":memory:"),
        credentials=[{"name": "msp", "client_id": "client-msp-0001", "client_secret": "s3cret-1"}],
        **options,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(central))
    return Agent(settings, clock=clock, http=http, process_metrics=False)


async def run_for(clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        await clock.advance(step)
        for _ in range(10):
            await asyncio.sleep(0)


GENEROUS = {"1s": 100_000, "1m": 1_000_000, "1h": 10_000_000, "1d": 100_000_000}


async def test_a_list_whose_first_page_claims_1000_pages_ends_at_its_first_empty_page() -> None:
    known = tenant_ids("a", 5)
    central = Central(lambda page: (known if page == 1 else [], 1000))
    clock = FakeClock()
    agent = make_agent(central, clock)  # the default budget: 10 calls a minute, 100 an hour
    agent.start()
    try:
        await run_for(clock, 300)  # the budget stretches the period to 261 s
        assert central.calls["tenant_list"] == 2, "page 1 and the empty page 2, not 1000"
        assert set(central.probed) == set(known)
        assert agent.ready, "/readyz turns 200 after one period"
        listing = agent.probers[0].client.last_listing
        assert listing is not None and listing.ended_early and listing.unread_pages == 0
    finally:
        await agent.stop(grace=0.1)


async def test_a_list_that_repeats_its_first_page_is_read_once() -> None:
    known = tenant_ids("b", 3)
    central = Central(lambda page: (known, 1000))  # a server that ignores ?page=
    clock = FakeClock()
    agent = make_agent(central, clock, rate_limits=GENEROUS, budget_share=1.0)
    agent.start()
    try:
        await run_for(clock, 5)
        assert central.calls["tenant_list"] == 2
        assert sorted(agent.probers[0].state.probed) == sorted(known)
    finally:
        await agent.stop(grace=0.1)


async def test_a_list_longer_than_the_page_cap_is_said_once_in_the_log_on_metrics_and_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    every = tenant_ids("c", 1005)
    central = Central(lambda page: ([every[page - 1]] if page <= 1005 else [], 1005))
    clock = FakeClock()
    agent = make_agent(
        central, clock, rate_limits=GENEROUS, budget_share=1.0, tenant_refresh_interval="60s"
    )
    caplog.set_level(logging.WARNING, logger="agent.runtime")
    agent.start()
    try:
        await run_for(clock, 150)  # the first listing and two more
        assert central.calls["tenant_list"] == 3 * MAX_PAGES
        assert len(agent.probers[0].state.tenants) == MAX_PAGES
        page = parse_metrics(agent.render_metrics().decode())
        (sample,) = page[m.TENANT_LIST_UNREAD_PAGES]
        assert sample[1:] == ({"credential": "msp"}, 5.0)
        report = build_report(agent.snapshot())
        status = render_status_page(agent.snapshot())
        check = format_check(report)
    finally:
        await agent.stop(grace=0.1)
    said = [r.getMessage() for r in caplog.records if "page cap" in r.getMessage()]
    assert said == [
        "tenant list cut at the page cap: read 1000 of the 1005 pages it claims; the tenants on "
        "the other 5 pages are not probed (split the tenants over several credentials)"
    ]
    cut = "tenant list cut at the page cap: 5 pages not read, their tenants not probed"
    (attention,) = [a for a in report.attention if a.topic == PAGE_CAP_TOPIC]
    assert attention.what == f"{cut}: split the tenants over several credentials"
    assert attention.level == "failure"
    assert f"1000 tenants listed, 1000 probed; {cut}." in status
    assert "Needs attention" in status and PAGE_CAP_TOPIC in status
    assert f"failure: msp: {cut}: split the tenants over several credentials" in check


async def test_tenants_already_known_keep_their_probes_while_a_long_list_is_read() -> None:
    known = tenant_ids("d", 5)
    grown = {"now": False}

    def pages(page: int) -> tuple[list[str], int]:
        if not grown["now"]:
            return known, 1
        return (known if page == 1 else tenant_ids(f"{page:x}", 100)), 60

    central = Central(pages)
    clock = FakeClock()
    agent = make_agent(
        central,
        clock,
        rate_limits={"1s": 10, "1m": 100, "1h": 100_000, "1d": 1_000_000},
        budget_share=0.1,  # ten calls a minute
        probe_interval="60s",
        tenant_refresh_interval="120s",
    )
    agent.start()
    try:
        await run_for(clock, 100)
        assert agent.ready and agent.period("msp") == 60.0
        grown["now"] = True  # the next refresh has 60 pages to read at ten calls a minute
        await run_for(clock, 30)
        listing_started = clock.monotonic()
        await run_for(clock, 300)
    finally:
        await agent.stop(grace=0.1)
    during = [what for what, at in central.log if at >= listing_started]
    pages_read = during.count("tenant_list")
    assert pages_read >= 15, "the listing goes on"
    assert pages_read < 60, "it is still running: what follows happened during it"
    for tenant in known:
        assert during.count(tenant) >= 4, "one probe a minute each, as planned"
