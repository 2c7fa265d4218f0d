"""Every tenant the agent lists and does not probe is counted, with its reason, on ``/metrics``,
on ``/status``, by ``check`` and once in the log: tenants whose id the agent refuses, tenants whose
``apiHost`` it refuses for its form (``ftp://``, a backslash trick, an oversized value) or for its
host, tenants without a host.

The tenant list comes from a fake Sophos Central on the client's transport, as hostile as the one
an adversary ran against the agent: an API answer the real service would never give.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import metricnames as m
from agent.causes import TABLE
from agent.config import Settings, load_settings
from agent.runtime import Agent
from agent.views.check import check_json, format_check
from agent.views.report import build_report
from agent.views.status import render_status_page
from tests.e2e.harness import parse_metrics

REGION = "https://api-eu01.central.sophos.com"
PARTNER = "4a1b2c3d-0000-4000-8000-00000000f00d"
REFUSED_IDS: list[Any] = [
    None,
    "",
    "x" * 65,
    "has space",
    "tenant\n",
    "-leading-dash",
    "ünïcode",
    "semi;colon",
    42,
    ["a", "list"],
    {"nested": "id"},
    "id/with/slash",
]
"""Twelve items whose id is not a tenant id the agent accepts."""
MALFORMED_HOSTS = {
    "t-ftp": "ftp://api-eu01.central.sophos.com",
    "t-backslash": "https://evil.example\\@api-eu01.central.sophos.com",
    "t-oversized": "https://api-eu01.central.sophos.com/" + "a" * 5000,
}


def tenant(ident: str, api_host: str | None = REGION, billing: str = "usage") -> dict[str, Any]:
    item: dict[str, Any] = {"id": ident, "name": f"Tenant {ident}", "billingType": billing}
    if api_host is not None:
        item["apiHost"] = api_host
    return item


def tenant_list() -> list[Any]:
    items: list[Any] = [{"id": ident, "name": "refused"} for ident in REFUSED_IDS]
    items.append("not even an object")  # counted like the others: an item with no usable id
    items += [tenant(ident, host) for ident, host in MALFORMED_HOSTS.items()]
    items += [
        tenant("t-ok"),
        tenant("t-foreign", "https://api.example.com"),
        {**tenant("t-new", None), "apiHost": None},
        tenant("t-trial", None, billing="trial"),
    ]
    return items


def handler(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith("/oauth2/token"):
        return httpx.Response(200, json={"access_token": "tok-not-probed", "expires_in": 3600})
    if path == "/whoami/v1":
        hosts = {"global": "https://api.central.sophos.com"}
        return httpx.Response(200, json={"id": PARTNER, "idType": "partner", "apiHosts": hosts})
    if path == "/partner/v1/tenants":
        pages = {"current": 1, "total": 1, "size": 100, "maxSize": 100}
        return httpx.Response(200, json={"items": tenant_list(), "pages": pages})
    return httpx.Response(200, json={"items": [], "pages": {"current": 1}})


def settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        state_file=str(tmp_path / "state.db"),
        budget_share=1.0,
        credentials=[
            {
                "name": "msp",
                "client_id": "not-probed-client-0001",
                "client_secret": "not-probed-secret-9f8e",
            }
        ],
    )


@pytest.fixture
def agent(tmp_path: Path) -> Any:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Agent(settings(tmp_path), http=http, process_metrics=False)


def tenant_states(agent: Agent) -> dict[str, float]:
    page = parse_metrics(agent.render_metrics().decode())
    return {lbl["state"]: value for _, lbl, value in page[m.TENANTS]}


async def test_every_listed_tenant_is_counted_once_with_its_reason(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    try:
        await agent.run_cycle()
        states = tenant_states(agent)
        page = parse_metrics(agent.render_metrics().decode())
        snapshot = agent.snapshot()
        status = render_status_page(snapshot)
        first_log = [r.getMessage() for r in caplog.records]
        skipped = [getattr(r, "tenant_id", "") for r in caplog.records if "not probed" in r.msg]
        caplog.clear()
        await agent.run_cycle()  # the same list again: nothing new to say
        again = [r.getMessage() for r in caplog.records]
    finally:
        await agent.stop(grace=0)

    assert states == {
        "probed": 1,
        "host_not_allowed": 4,
        "not_activated": 1,
        "trial_without_host": 1,
        "invalid_tenant_id": 13,
    }
    assert sum(states.values()) == len(tenant_list())
    causes = {lbl["tenant_id"]: lbl["cause"] for _, lbl, _ in page[m.PROBE_CAUSE_INFO]}
    for ident in MALFORMED_HOSTS:
        assert causes[ident] == "host_not_allowed", ident  # never "not_activated"
    assert causes["t-foreign"] == "host_not_allowed"
    (cred,) = snapshot.credentials
    malformed = TABLE["host_not_allowed"].variants["malformed"]
    assert {cred.results[(ident, "tenant")].remedy for ident in MALFORMED_HOSTS} == {malformed}
    assert cred.results[("t-foreign", "tenant")].remedy == TABLE["host_not_allowed"].remedy

    # /status: the count with its reason, said in the summary and for the credential.
    assert "13 not probed: invalid_tenant_id" in status
    listed = len(tenant_list())
    assert re.search(
        rf"{listed} tenants listed, 1 probed; not probed: [^.]*13 invalid_tenant_id", status
    ), "the credential's line names every reason"
    assert 'data-cause="invalid_tenant_id"' in status  # and needs attention: a failure

    # The log: one line for the refused ids, one per tenant not probed, said once.
    refused = [line for line in first_log if "id the agent refuses" in line]
    assert refused == ["13 " + TABLE["invalid_tenant_id"].log]
    assert sorted(skipped) == sorted([*MALFORMED_HOSTS, "t-foreign", "t-new", "t-trial"])
    assert [line for line in again if "not probed" in line or "refuses" in line] == []


async def test_check_json_names_the_reason_and_its_kind(agent: Agent) -> None:
    """``check --output json`` (what ``run_check`` prints after its cycle): a tenant refused for
    its apiHost is a failure that was not probed; one not activated yet is business state."""
    try:
        await agent.run_cycle()
        report = json.loads(check_json(build_report(agent.snapshot())))
    finally:
        await agent.stop(grace=0)
    probes = {p["tenant_id"]: p for p in report["probes"] if p["tenant_id"]}
    assert probes["t-ftp"]["status"] == "not probed"
    assert (probes["t-ftp"]["cause"], probes["t-ftp"]["kind"]) == ("host_not_allowed", "failure")
    assert (probes["t-new"]["cause"], probes["t-new"]["kind"]) == ("not_activated", "business")
    assert probes["t-ok"]["kind"] == "ok" and probes["t-ok"]["status"] == "200"
    assert report["summary"]["not_probed_by_cause"]["invalid_tenant_id"] == 13


async def test_check_says_how_many_tenants_are_not_probed_and_why(agent: Agent) -> None:
    try:
        await agent.run_cycle()
        first = format_check(build_report(agent.snapshot())).splitlines()[0]
    finally:
        await agent.stop(grace=0)
    assert first.endswith(
        "; 19 tenants not probed (13 invalid_tenant_id, 4 host_not_allowed, 1 not_activated, "
        "1 trial_without_host)"
    ), first


@pytest.mark.parametrize(("shard", "counted"), [(0, 13), (1, 0)])
async def test_refused_ids_belong_to_no_shard_so_shard_0_counts_them(
    tmp_path: Path, shard: int, counted: int
) -> None:
    config = settings(tmp_path).model_copy(update={"shard": shard, "total_shards": 2})
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    sharded = Agent(config, http=http, process_metrics=False)
    try:
        await sharded.run_cycle()
        assert tenant_states(sharded)["invalid_tenant_id"] == counted
    finally:
        await sharded.stop(grace=0)
