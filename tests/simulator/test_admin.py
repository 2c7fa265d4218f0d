"""The out-of-process admin API: state, secret rotation, faults, outage."""

from __future__ import annotations

import math
import time
from datetime import datetime

import httpx

from agent.simulator import Simulator

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token, request_token, tenant_call


def _admin(sim: Simulator, path: str) -> str:
    return f"{sim.api_url}/_simulator/{path}"


async def test_state_reports_scenario_faults_and_stats_without_secrets(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    msp = sim.scenario.credential("msp-main")
    await get_token(client, sim, msp)
    (trial,) = sim.scenario.tenants_with_fault("trial_403")

    response = await client.get(_admin(sim, "state"))

    assert response.status_code == 200
    state = response.json()
    assert state["scenario"] == "demo"
    assert state["tenants"] == sum(1 for _ in sim.scenario.tenants())
    assert state["faults"][trial.id] == "trial_403"
    assert state["outage"] is False
    assert [c["name"] for c in state["credentials"]] == [
        "msp-main",
        "org-main",
        "tenant-direct",
        "revoked-key",
    ]
    assert state["stats"]["credentials"]["msp-main"]["arrivals"] == 1
    assert state["urls"]["api_url"] == sim.api_url
    for cred in sim.scenario.credentials:
        assert cred.client_secret not in response.text
        assert cred.configured_secret not in response.text
        assert cred.client_id not in response.text


async def test_rotated_secret_breaks_issuance_but_not_issued_tokens(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    old_token = await get_token(client, sim, cred)

    rotated = await client.post(_admin(sim, "credentials/msp-main/rotate"))
    with_old = await request_token(client, sim, cred.client_id, cred.client_secret)
    new_secret = rotated.json()["client_secret"]
    with_new = await request_token(client, sim, cred.client_id, new_secret)
    still = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(old_token))

    assert rotated.status_code == 200
    assert with_old.status_code == 401
    assert with_old.json()["errorCode"] == "oauth.invalid_client_secret"
    assert with_new.status_code == 200
    assert still.status_code == 200


async def test_rotate_secret_in_process(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim = await start_sim("healthy")
    cred = sim.scenario.credential("org-healthy")

    new_secret = sim.rotate_secret("org-healthy")

    assert new_secret != cred.client_secret
    old = await request_token(client, sim, cred.client_id, cred.client_secret)
    assert old.json()["errorCode"] == "oauth.invalid_client_secret"
    assert (await request_token(client, sim, cred.client_id, new_secret)).status_code == 200


async def test_an_expired_credential_is_refused_from_its_date_on_and_the_config_says_when(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    """Sophos refuses an expired credential at the token endpoint. The simulator does so from
    the credential's date on, with the answer a wrong secret gets (the real one is not
    documented), and the generated agent config carries the date as expires_at."""
    sim = await start_sim("healthy")
    cred = sim.scenario.credential("org-healthy")
    issued = await get_token(client, sim, cred)
    later = time.time() + 3600.25

    scheduled = await client.post(_admin(sim, "credentials/org-healthy/expire"), json={"at": later})
    before = await request_token(client, sim, cred.client_id, cred.client_secret)
    configured = next(c for c in sim.agent_config()["credentials"] if c["name"] == "org-healthy")
    now = await client.post(_admin(sim, "credentials/org-healthy/expire"))
    after = await request_token(client, sim, cred.client_id, cred.client_secret)
    still = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(issued))
    bad = await client.post(_admin(sim, "credentials/org-healthy/expire"), json={"at": "soon"})

    assert scheduled.status_code == 200
    assert before.status_code == 200
    assert datetime.fromisoformat(configured["expires_at"]).timestamp() == math.floor(later)
    assert now.status_code == 200
    assert after.status_code == 401
    assert after.json()["errorCode"] == "oauth.invalid_client_secret"
    assert still.status_code == 200  # tokens issued before stay valid until they expire
    assert bad.status_code == 400


async def test_fault_set_and_cleared_through_the_admin_api(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    tenant = cred.tenants[0]
    token = await get_token(client, sim, cred)
    fault_url = _admin(sim, f"tenants/{tenant.id}/fault")

    set_response = await client.post(fault_url, json={"fault": "server_error_500"})
    broken = await tenant_call(client, sim, token, tenant)
    cleared = await client.post(fault_url, json={"fault": None})
    healed = await tenant_call(client, sim, token, tenant)

    assert set_response.json() == {"tenant_id": tenant.id, "fault": "server_error_500"}
    assert_central_error(broken, 500, "internalServerError")
    assert cleared.status_code == 200
    assert healed.status_code == 200


async def test_admin_refuses_unknown_faults_tenants_and_credentials(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    tenant = sim.scenario.credential("msp-main").tenants[0]

    unknown_fault = await client.post(
        _admin(sim, f"tenants/{tenant.id}/fault"), json={"fault": "gremlins"}
    )
    unknown_tenant = await client.post(
        _admin(sim, "tenants/nope/fault"), json={"fault": "server_error_500"}
    )
    unknown_cred = await client.post(_admin(sim, "credentials/nobody/rotate"))
    bad_body = await client.post(_admin(sim, "outage"), content=b"[1]")

    assert unknown_fault.status_code == 400
    assert unknown_tenant.status_code == 404
    assert unknown_cred.status_code == 404
    assert bad_body.status_code == 400
    assert sim.fault_of(tenant.id) is None


async def test_outage_switch_turns_every_api_call_into_503(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")
    token = await get_token(client, sim, cred)
    tenant = cred.tenants[0]
    partner = bearer(token, **{"X-Partner-ID": cred.id})

    switched = await client.post(_admin(sim, "outage"), json={"on": True})
    during = [
        await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token)),
        await client.get(f"{sim.api_url}/partner/v1/tenants", headers=partner),
        await tenant_call(client, sim, token, tenant),
    ]
    token_during = await request_token(client, sim, cred.client_id, cred.client_secret)
    state = (await client.get(_admin(sim, "state"))).json()
    await client.post(_admin(sim, "outage"), json={"on": False})
    after = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))

    assert switched.json() == {"outage": True}
    assert [r.status_code for r in during] == [503, 503, 503]
    assert token_during.status_code == 200
    assert state["outage"] is True
    assert after.status_code == 200


async def test_outage_scenario_starts_down(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim = await start_sim("outage")
    token = await get_token(client, sim, sim.scenario.credential("msp-healthy"))

    response = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))

    assert_central_error(response, 503, "ServiceUnavailable")
    sim.set_outage(False)
    assert (await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))).status_code == 200


async def test_expire_tokens_makes_api_calls_unauthorized(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")
    token = await get_token(client, sim, sim.scenario.credential("msp-healthy"))

    expired = await client.post(_admin(sim, "credentials/msp-healthy/expire-tokens"))
    response = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))

    assert expired.json() == {"name": "msp-healthy", "expired": 1}
    assert_central_error(response, 401, "Unauthorized")
