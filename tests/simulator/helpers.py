"""Small request helpers shared by the simulator tests."""

from __future__ import annotations

from typing import Any

import httpx

from agent.simulator import Credential, Simulator, Tenant

CENTRAL_ERROR_KEYS = {"error", "message", "correlationId", "requestId", "createdAt"}


async def get_token(client: httpx.AsyncClient, sim: Simulator, cred: Credential) -> str:
    response = await request_token(client, sim, cred.client_id, cred.client_secret)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def request_token(
    client: httpx.AsyncClient, sim: Simulator, client_id: str, secret: str
) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "scope": "token",
    }
    return await client.post(sim.auth_url, data=form)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def tenant_call(
    client: httpx.AsyncClient,
    sim: Simulator,
    token: str | None,
    tenant: Tenant,
    base_url: str | None = None,
    wait: float = 5.0,
) -> httpx.Response:
    """The agent's default probe against a tenant's own host (or ``base_url``)."""
    url = base_url if base_url is not None else sim.api_host_of(tenant.id)
    assert url is not None
    headers = {"X-Tenant-ID": tenant.id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.get(
        f"{url}/endpoint/v1/endpoints",
        params={"pageSize": "1", "view": "basic"},
        headers=headers,
        timeout=wait,
    )


def assert_central_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    if "errorCode" in body:  # the 401 variant: error in errorCode, a code, no correlationId
        assert set(body) >= {"errorCode", "code", "message", "requestId"}
        assert body["errorCode"] == error
    else:
        assert set(body) >= CENTRAL_ERROR_KEYS
        assert body["error"] == error
    return body
