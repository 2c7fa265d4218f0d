"""The id host: token issuance and what the API hosts make of tokens."""

from __future__ import annotations

import base64

import httpx

from agent.clock import FakeClock
from agent.simulator import build_scenario

from .conftest import StartSim
from .helpers import assert_central_error, bearer, get_token, request_token


async def test_good_secret_gets_a_bearer_token(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential("msp-main")

    response = await request_token(client, sim, cred.client_id, cred.client_secret)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["errorCode"] == "success"
    assert body["message"] == "OK"
    assert body["trackingId"]
    whoami = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(body["access_token"]))
    assert whoami.status_code == 200


async def test_revoked_key_is_refused_as_invalid_client_secret(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("demo")
    revoked = sim.scenario.credential("revoked-key")

    response = await request_token(client, sim, revoked.client_id, revoked.configured_secret)

    assert response.status_code == 401
    body = response.json()
    assert body["errorCode"] == "oauth.invalid_client_secret"
    assert body["message"] == "Unauthorized"
    assert body["trackingId"]


async def test_unknown_client_is_refused(start_sim: StartSim, client: httpx.AsyncClient) -> None:
    sim = await start_sim("healthy")

    response = await request_token(client, sim, "no-such-client", "whatever")

    assert response.status_code == 401
    assert response.json()["errorCode"] == "oauth.client_app_does_not_exist"


async def test_wrong_grant_type_is_a_bad_request(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")
    cred = sim.scenario.credentials[0]
    form = {"grant_type": "password", "client_id": cred.client_id, "client_secret": "x"}

    response = await client.post(sim.auth_url, data=form)

    assert response.status_code == 400
    assert response.json()["errorCode"] == "oauth.unsupported_grant_type"


async def test_basic_auth_is_accepted_for_client_credentials(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")
    cred = sim.scenario.credentials[0]
    basic = base64.b64encode(f"{cred.client_id}:{cred.client_secret}".encode()).decode()

    response = await client.post(
        sim.auth_url,
        data={"grant_type": "client_credentials", "scope": "token"},
        headers={"Authorization": f"Basic {basic}"},
    )

    assert response.status_code == 200, response.text


async def test_expired_token_is_rejected_by_api_hosts(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    scenario = build_scenario("healthy")
    scenario.token_lifetime = 600
    sim = await start_sim(scenario, clock=clock)
    token = await get_token(client, sim, scenario.credential("msp-healthy"))

    await clock.advance(599)
    still_valid = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))
    await clock.advance(1)
    expired = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))

    assert still_valid.status_code == 200
    body = assert_central_error(expired, 401, "Unauthorized")
    assert "expired" in body["message"].lower()


async def test_missing_or_unknown_token_is_unauthorized(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    sim = await start_sim("healthy")

    missing = await client.get(f"{sim.api_url}/whoami/v1")
    unknown = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer("not-a-token"))

    assert_central_error(missing, 401, "Unauthorized")
    assert_central_error(unknown, 401, "Unauthorized")
