"""Faults on a schedule: a drill file is checked whole, then its faults start and end on time,
hit only their target, are listed by the admin API and logged as they start and end."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.clock import FakeClock
from agent.config import format_duration
from agent.simulator import (
    ALL_FAULTS,
    NOT_API_FAULTS,
    DrillError,
    Scenario,
    Simulator,
    build_scenario,
    load_drill,
    parse_drill,
)
from agent.simulator.serve import announce_drill

from .helpers import assert_central_error, bearer, get_token, request_token, tenant_call


def _scenario() -> Scenario:
    scenario = build_scenario("healthy")
    scenario.rate_limits = {"1s": 10_000}  # the fake clock stands still between calls
    return scenario


def _drill(*faults: dict[str, Any]) -> dict[str, Any]:
    return {"faults": list(faults)}


# --- checking the file ----------------------------------------------------------------------------

GOOD = {"start": "1m", "duration": "2m", "target": {"host": "eu01"}, "fault": "empty_503"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**GOOD, "fault": "gremlins"}, "faults[1].fault: unknown fault 'gremlins'"),
        ({**GOOD, "target": {"host": "eu05"}}, "faults[1].target.host: unknown host 'eu05'"),
        ({**GOOD, "target": {"tenant": "Nobody Ltd"}}, "faults[1].target.tenant: no tenant"),
        ({**GOOD, "target": {"credential": "x"}}, "faults[1].target.credential: no credential"),
        ({**GOOD, "target": {"family": "mail"}}, "faults[1].target.family: unknown family"),
        ({**GOOD, "target": {"region": "eu01"}}, "faults[1].target.region: unknown key"),
        ({**GOOD, "target": "all"}, "faults[1].target: must be everything, or a mapping"),
        ({**GOOD, "start": "soon"}, "faults[1].start: 'soon' is not a duration"),
        ({**GOOD, "duration": "-5m"}, "faults[1].duration:"),
        ({**GOOD, "every": "1h"}, "faults[1].every: unknown key"),
        ({k: v for k, v in GOOD.items() if k != "fault"}, "faults[1].fault: missing"),
        ({**GOOD, "fault": "revoked"}, "faults[1].fault: revoked needs a credential"),
        (
            {**GOOD, "fault": "forbidden_siem_events", "target": {"family": "siem_events"}},
            "faults[1].fault: forbidden_siem_events names its own family",
        ),
        ("EU01 down", "faults[1]: must be a mapping"),
    ],
)
def test_a_bad_entry_is_named_with_its_key(entry: Any, message: str) -> None:
    with pytest.raises(DrillError) as caught:
        parse_drill(_drill(GOOD, entry), _scenario())

    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("faults: [", "is not valid YAML at line 1"),
        ("faults: []\nfaults: []\n", "faults: duplicate key at line 2 (first at line 1)"),
        ("- start: 1m", "a mapping with one key, faults"),
        ("faults: []", "faults: must be a non-empty list"),
    ],
)
def test_a_bad_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "drill.yml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(DrillError) as caught:
        load_drill(path, _scenario())

    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_tenants_are_named_by_id_or_name_and_everything_is_a_target() -> None:
    scenario = _scenario()
    tenant = scenario.credential("msp-healthy").tenants[3]

    drill = parse_drill(
        _drill(
            {**GOOD, "target": {"tenant": tenant.name}},
            {**GOOD, "target": {"tenant": tenant.id, "family": "siem_events"}},
            {"start": 0, "target": "everything", "fault": "unavailable_503"},
        ),
        scenario,
    )

    assert [f.target.tenant for f in drill.faults] == [tenant.id, tenant.id, None]
    assert drill.faults[2].target.describe() == "everything"
    assert drill.faults[2].end == float("inf")


def test_every_fault_of_the_catalog_can_be_scheduled_somewhere() -> None:
    scenario = _scenario()
    entries = [
        {"start": "1s", "target": {"credential": "msp-healthy"}, "fault": fault}
        for fault in ALL_FAULTS
    ]

    drill = parse_drill(_drill(*entries), scenario)

    assert [f.fault for f in drill.faults] == list(ALL_FAULTS)


# --- running it -----------------------------------------------------------------------------------


async def _started(drill: dict[str, Any]) -> tuple[Simulator, FakeClock]:
    clock = FakeClock()
    scenario = _scenario()
    sim = Simulator(scenario, clock=clock, drill=parse_drill(drill, scenario))
    await sim.start()
    return sim, clock


async def test_a_scheduled_fault_starts_and_ends_on_time_and_hits_only_its_host(
    client: httpx.AsyncClient,
) -> None:
    sim, clock = await _started(
        _drill({"start": "5m", "duration": "20m", "target": {"host": "eu01"}, "fault": "empty_503"})
    )
    try:
        cred = sim.scenario.credential("msp-healthy")
        token = await get_token(client, sim, cred)
        eu01 = next(t for t in cred.tenants if t.region == 0)
        us03 = next(t for t in cred.tenants if t.region == 1)

        async def statuses() -> tuple[int, int, int]:
            whoami = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
            return (
                (await tenant_call(client, sim, token, eu01)).status_code,
                (await tenant_call(client, sim, token, us03)).status_code,
                whoami.status_code,
            )

        before = await statuses()
        await clock.advance(300)
        during = await statuses()
        listed = (await client.get(f"{sim.api_url}/_simulator/faults")).json()
        await clock.advance(1200)
        after = await statuses()
    finally:
        await sim.stop()

    assert before == (200, 200, 200)
    assert during == (503, 200, 200)
    assert after == (200, 200, 200)
    assert [f["target"] for f in listed["drill"]] == ["host=eu01"]
    assert listed["schedule"][0] | {"state": "active"} == listed["drill"][0]


async def test_a_revoked_credential_cannot_get_tokens_while_the_fault_lasts(
    client: httpx.AsyncClient,
) -> None:
    sim, clock = await _started(
        _drill(
            {
                "start": 0,
                "duration": "1h",
                "target": {"credential": "org-healthy"},
                "fault": "revoked",
            }
        )
    )
    try:
        org, msp = sim.scenario.credential("org-healthy"), sim.scenario.credential("msp-healthy")
        refused = await request_token(client, sim, org.client_id, org.client_secret)
        other = await request_token(client, sim, msp.client_id, msp.client_secret)
        await clock.advance(3600)
        restored = await request_token(client, sim, org.client_id, org.client_secret)
    finally:
        await sim.stop()

    assert refused.status_code == 401
    assert refused.json()["errorCode"] == "oauth.invalid_client_secret"
    assert other.status_code == 200
    assert restored.status_code == 200


async def test_family_credential_tenant_and_everything_targets(client: httpx.AsyncClient) -> None:
    scenario = _scenario()
    msp = scenario.credential("msp-healthy")
    tenant, neighbour = msp.tenants[0], msp.tenants[2]
    sim, clock = await _started(
        _drill(
            {"start": 0, "target": {"family": "siem_events"}, "fault": "too_many_requests_429"},
            {"start": 0, "target": {"tenant": tenant.id}, "fault": "forbidden_common_alerts"},
            {"start": "10m", "target": {"credential": "org-healthy"}, "fault": "server_error_500"},
            {"start": "20m", "target": "everything", "fault": "gateway_timeout_504"},
        )
    )
    try:
        token = await get_token(client, sim, msp)
        org_token = await get_token(client, sim, sim.scenario.credential("org-healthy"))

        async def get(t: Any, path: str, with_token: str = token) -> int:
            url = f"{sim.api_host_of(t.id)}{path}"
            headers = bearer(with_token, **{"X-Tenant-ID": t.id})
            return (await client.get(url, headers=headers)).status_code

        org_tenant = sim.scenario.credential("org-healthy").tenants[0]
        at_start = [
            await get(tenant, "/siem/v1/events"),
            await get(tenant, "/common/v1/alerts"),
            await get(neighbour, "/common/v1/alerts"),
            await get(org_tenant, "/endpoint/v1/endpoints", org_token),
        ]
        await clock.advance(600)
        org_broken = await get(org_tenant, "/endpoint/v1/endpoints", org_token)
        msp_fine = await get(neighbour, "/endpoint/v1/endpoints")
        await clock.advance(600)
        everything = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
        token_still = await request_token(client, sim, msp.client_id, msp.client_secret)
    finally:
        await sim.stop()

    assert at_start == [429, 403, 200, 200]
    assert (org_broken, msp_fine) == (500, 200)
    assert everything.status_code == 504
    assert token_still.status_code == 200  # the id host is not "everything"


async def test_the_account_health_check_answers_its_documented_429(
    client: httpx.AsyncClient,
) -> None:
    sim, _ = await _started(
        _drill(
            {"start": 0, "target": {"family": "account_health"}, "fault": "too_many_requests_429"}
        )
    )
    try:
        cred = sim.scenario.credential("msp-healthy")
        token = await get_token(client, sim, cred)
        tenant = cred.tenants[0]
        headers = bearer(token, **{"X-Tenant-ID": tenant.id})
        url = f"{sim.api_host_of(tenant.id)}/account-health-check/v1/health-check"
        health = await client.get(url, headers=headers)
        endpoints = await tenant_call(client, sim, token, tenant)
    finally:
        await sim.stop()

    body = assert_central_error(health, 429, "TooManyRequests")
    assert body["message"] == "Too many requests."
    assert "retry-after" not in health.headers
    assert endpoints.status_code == 200


async def test_a_tenant_fault_of_its_own_comes_before_the_drill(
    client: httpx.AsyncClient,
) -> None:
    sim, _ = await _started(
        _drill({"start": 0, "target": "everything", "fault": "unavailable_503"})
    )
    try:
        cred = sim.scenario.credential("msp-healthy")
        token = await get_token(client, sim, cred)
        sim.set_fault(cred.tenants[0].id, "not_found_404")
        own = await tenant_call(client, sim, token, cred.tenants[0])
        drill = await tenant_call(client, sim, token, cred.tenants[1])
    finally:
        await sim.stop()

    assert_central_error(own, 404, "resourceNotFound")
    assert_central_error(drill, 503, "ServiceUnavailable")


async def test_each_fault_is_logged_as_it_starts_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    sim, clock = await _started(
        _drill(
            {"name": "EU01 down", "start": "1m", "duration": "2m", "target": {"host": "eu01"},
             "fault": "empty_503"},
            {"start": "2m", "target": {"credential": "msp-healthy"}, "fault": "revoked"},
        )
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="agent.simulator")
    task = asyncio.create_task(announce_drill(sim))
    try:
        logged: list[tuple[float, str, str]] = []
        for _ in range(4):
            await clock.advance(60)
            for _ in range(20):  # let the announcer run (bounded)
                await asyncio.sleep(0)
            logged += [
                (sim.elapsed(), r.getMessage(), str(getattr(r, "drill", "")))
                for r in caplog.records
                if r.name == "agent.simulator"
            ]
            caplog.clear()
    finally:
        task.cancel()
        await sim.stop()

    assert logged == [
        (60.0, "drill fault started", "EU01 down"),
        (120.0, "drill fault started", "revoked on credential=msp-healthy"),
        (180.0, "drill fault ended", "EU01 down"),
    ]


# --- answers that are not the API's ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "title"),
    [
        ("html_200", 200, "text/html", "Guest Wi-Fi - Please sign in"),
        ("waf_html_403", 403, "text/html", "Request Rejected"),
        ("html_503", 503, "text/html", "Scheduled Maintenance"),
        ("wrong_shape_200", 200, "application/json", None),
    ],
)
async def test_answers_that_are_not_the_apis(
    client: httpx.AsyncClient, fault: str, status: int, content_type: str, title: str | None
) -> None:
    assert fault in NOT_API_FAULTS
    scenario = _scenario()
    cred = scenario.credential("msp-healthy")
    tenant = cred.tenants[0]
    scenario.faults = {tenant.id: fault}
    sim = Simulator(scenario)
    await sim.start()
    try:
        token = await get_token(client, sim, cred)
        response = await tenant_call(client, sim, token, tenant)
        neighbour = await tenant_call(client, sim, token, cred.tenants[1])
    finally:
        await sim.stop()

    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    if title is None:
        body = response.json()
        assert isinstance(body, dict) and "items" not in body and "pages" not in body
    else:
        assert f"<title>{title}</title>" in response.text
    assert neighbour.status_code == 200


async def test_a_not_api_page_on_the_whole_global_host(client: httpx.AsyncClient) -> None:
    sim, _ = await _started(
        _drill({"start": 0, "target": {"host": "global"}, "fault": "waf_html_403"})
    )
    try:
        cred = sim.scenario.credential("msp-healthy")
        token = await get_token(client, sim, cred)
        whoami = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
        tenant = await tenant_call(client, sim, token, cred.tenants[0])
    finally:
        await sim.stop()

    assert whoami.status_code == 403 and "<title>Request Rejected</title>" in whoami.text
    assert tenant.status_code == 200


DRILLS = Path(__file__).resolve().parents[2] / "agent" / "simulator" / "drills"
ALERTS = Path(__file__).resolve().parents[2] / "alerts"


@pytest.mark.parametrize("path", sorted(DRILLS.glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_drill_is_valid_for_the_scenario_it_names(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# scenario: ")

    drill = load_drill(path, build_scenario(first_line.removeprefix("# scenario: ")))

    assert drill.faults


def _rehearsal_section() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return readme.split("## Rehearse an outage", 1)[1].split("\n## ", 1)[0]


def test_the_readme_rehearsal_names_real_alerts_and_the_drills_times() -> None:
    """The README's "what fires when" table: every alert it names exists in the rule files,
    and every fault of the shipped drill has its row ("2m, for 30m")."""
    section = _rehearsal_section()
    rules = "".join(p.read_text(encoding="utf-8") for p in ALERTS.glob("*.rules.yml"))
    named = set(re.findall(r"`(SophosCentral\w+)`", section))
    drill = load_drill(DRILLS / "outage-rehearsal.yml", build_scenario("demo"))

    assert named and all(f"alert: {name}" in rules for name in named), named
    for fault in drill.faults:
        start, end = fault.as_json(0)["start"], fault.as_json(0)["end"]
        duration = format_duration(fault.end - fault.start)
        assert f"| {start}, for {duration} |" in section, (fault.name, start, end)


def test_simulate_refuses_a_bad_drill_before_listening(tmp_path: Path) -> None:
    drill = tmp_path / "drill.yml"
    drill.write_text("faults:\n  - {start: 1m, target: {host: eu05}, fault: empty_503}\n")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--drill",
            str(drill),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stdout == ""  # nothing announced: nothing listens
    assert f"error: {drill}: faults[0].target.host: unknown host 'eu05'" in done.stderr
