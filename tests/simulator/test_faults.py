"""Every fault answers as specified, on the host the scenario puts it and at runtime."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from agent.simulator import FAULT_NAMES, Scenario, Simulator, Tenant, build_scenario

from .conftest import StartSim
from .helpers import assert_central_error, get_token, tenant_call


def _faults_scenario(slow_seconds: float = 1.0) -> Scenario:
    scenario = build_scenario("faults")
    scenario.slow_seconds = slow_seconds
    return scenario


async def _started(start_sim: StartSim, client: httpx.AsyncClient) -> tuple[Simulator, str]:
    sim = await start_sim(_faults_scenario())
    token = await get_token(client, sim, sim.scenario.credential("msp-faults"))
    return sim, token


def _tenant(sim: Simulator, fault: str) -> Tenant:
    (tenant,) = sim.scenario.tenants_with_fault(fault)
    return tenant


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("trial_403", 403, "forbidden"),
        ("no_partner_assistance_403", 403, "Forbidden"),
        ("not_found_404", 404, "resourceNotFound"),
        ("server_error_500", 500, "internalServerError"),
    ],
)
async def test_json_error_faults(
    start_sim: StartSim, client: httpx.AsyncClient, fault: str, status: int, error: str
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, fault))

    assert_central_error(response, status, error)


async def test_500_carries_sophos_code_and_doc_url(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "server_error_500"))

    body = assert_central_error(response, 500, "internalServerError")
    assert body["code"] and body["docUrl"].startswith("https://")


async def test_export_restricted_451_is_status_only(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "export_restricted_451"))

    assert response.status_code == 451
    assert response.content == b""


async def test_html_502_is_a_gateway_page(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "html_502"))

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text


async def test_empty_503_has_no_body(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "empty_503"))

    assert response.status_code == 503
    assert response.content == b""


async def test_slow_outlasts_a_short_timeout_but_does_answer(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)
    tenant = _tenant(sim, "slow")

    with pytest.raises(httpx.ReadTimeout):
        await tenant_call(client, sim, token, tenant, wait=0.3)
    started = time.monotonic()
    patient = await tenant_call(client, sim, token, tenant, wait=10)

    assert patient.status_code == 200
    assert time.monotonic() - started >= 0.9


async def test_wrong_content_type_claims_json_but_is_html(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "wrong_content_type"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_huge_body_is_several_megabytes(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "huge_body"))

    assert response.status_code == 200
    assert len(response.content) > 5 * 1024 * 1024


async def test_deep_json_defeats_a_recursive_parser(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)

    response = await tenant_call(client, sim, token, _tenant(sim, "deep_json"))

    assert response.status_code == 200
    with pytest.raises(RecursionError):
        json.loads(response.content)


async def test_bad_gzip_fails_to_decode(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim, token = await _started(start_sim, client)

    with pytest.raises(httpx.DecodingError):
        await tenant_call(client, sim, token, _tenant(sim, "bad_gzip"))


async def _assert_transport_fault(
    client: httpx.AsyncClient, sim: Simulator, token: str, fault: str, tenant: Tenant
) -> None:
    if fault == "reset":
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)) as caught:
            await tenant_call(client, sim, token, tenant)
        assert not isinstance(caught.value, httpx.TimeoutException)
    elif fault == "truncated":
        with pytest.raises(httpx.RemoteProtocolError, match=r"complete message"):
            await tenant_call(client, sim, token, tenant)
    else:
        url = f"{sim.api_host_of(tenant.id)}/endpoint/v1/endpoints"
        headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant.id}
        async with client.stream("GET", url, headers=headers, timeout=0.5) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()


@pytest.mark.parametrize("fault", ["reset", "truncated", "stall"])
async def test_transport_faults_on_the_faulty_host(
    start_sim: StartSim, client: httpx.AsyncClient, fault: str
) -> None:
    sim, token = await _started(start_sim, client)

    tenant = _tenant(sim, fault)

    assert sim.api_host_of(tenant.id) == sim.faulty_url
    await _assert_transport_fault(client, sim, token, fault, tenant)


@pytest.mark.parametrize("fault", ["reset", "truncated", "stall"])
async def test_transport_faults_set_at_runtime_on_a_regional_host(
    start_sim: StartSim, client: httpx.AsyncClient, fault: str
) -> None:
    sim = await start_sim("healthy")
    cred = sim.scenario.credential("msp-healthy")
    token = await get_token(client, sim, cred)
    tenant = cred.tenants[0]
    assert sim.api_host_of(tenant.id) in sim.region_urls
    sim.set_fault(tenant.id, fault)

    await _assert_transport_fault(client, sim, token, fault, tenant)
    sim.set_fault(tenant.id, None)
    recovered = await tenant_call(client, sim, token, tenant)

    assert recovered.status_code == 200


async def test_cleared_fault_on_the_faulty_host_answers_normally(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, token = await _started(start_sim, client)
    tenant = _tenant(sim, "reset")

    sim.set_fault(tenant.id, None)
    response = await tenant_call(client, sim, token, tenant)

    assert response.status_code == 200
    assert sim.fault_of(tenant.id) is None


async def test_fault_is_applied_after_authentication(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim, _ = await _started(start_sim, client)

    response = await tenant_call(client, sim, None, _tenant(sim, "trial_403"))

    assert_central_error(response, 401, "Unauthorized")


async def test_every_fault_kind_has_one_tenant_in_the_faults_scenario() -> None:
    scenario = build_scenario("faults")

    assert sorted(scenario.faults.values()) == sorted(FAULT_NAMES)


async def test_set_fault_refuses_unknown_names_and_tenants(start_sim: StartSim) -> None:
    sim = await start_sim("healthy")
    tenant = sim.scenario.credentials[0].tenants[0]

    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_fault(tenant.id, "meteor_strike")
    with pytest.raises(KeyError):
        sim.set_fault("no-such-tenant", "server_error_500")


async def _arrived(sim: Simulator, host: str, count: int) -> None:
    """Wait (bounded) until ``host`` has seen ``count`` requests."""
    for _ in range(500):
        if sim.stats.host_arrivals(host) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{host} saw {sim.stats.host_arrivals(host)} of {count} requests")


@pytest.mark.parametrize("fault", ["stall", "slow"])
@pytest.mark.parametrize("on_faulty_host", [True, False])
async def test_stop_does_not_wait_for_answers_still_in_flight(
    client: httpx.AsyncClient, fault: str, on_faulty_host: bool
) -> None:
    scenario = _faults_scenario(slow_seconds=60.0)
    sim = Simulator(scenario)
    await sim.start()
    try:
        token = await get_token(client, sim, scenario.credential("msp-faults"))
        # The first tenant is healthy on a regional host; the reset tenant lives on the raw host.
        tenant = _tenant(sim, "reset") if on_faulty_host else scenario.credentials[0].tenants[0]
        host = "faulty" if on_faulty_host else f"region-{tenant.region}"
        sim.set_fault(tenant.id, fault)
        in_flight = asyncio.create_task(tenant_call(client, sim, token, tenant, wait=60))
        await _arrived(sim, host, 1)
        assert not in_flight.done()
    finally:
        await asyncio.wait_for(sim.stop(), timeout=5)

    try:
        response = await asyncio.wait_for(in_flight, timeout=5)
    except httpx.TransportError:
        return  # the connection was dropped: the right end for a stall or a slow raw answer
    assert response.status_code == 503, "a stopping simulator must not answer normally"
