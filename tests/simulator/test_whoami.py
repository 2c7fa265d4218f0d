"""whoami for the three kinds of credential."""

from __future__ import annotations

import httpx
import pytest

from .conftest import StartSim
from .helpers import bearer, get_token


@pytest.mark.parametrize(
    ("name", "id_type"),
    [("msp-main", "partner"), ("org-main", "organization"), ("tenant-direct", "tenant")],
)
async def test_whoami_names_the_credential_and_its_hosts(
    start_sim: StartSim, client: httpx.AsyncClient, name: str, id_type: str
) -> None:
    sim = await start_sim("demo")
    cred = sim.scenario.credential(name)
    token = await get_token(client, sim, cred)

    response = await client.get(f"{sim.api_url}/whoami/v1", headers=bearer(token))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == cred.id
    assert body["idType"] == id_type
    assert body["apiHosts"]["global"] == sim.api_url
    if id_type == "tenant":
        assert body["apiHosts"]["dataRegion"] == sim.api_host_of(cred.id)
        assert body["apiHosts"]["dataRegion"] in sim.region_urls
    else:
        assert "dataRegion" not in body["apiHosts"]


async def test_whoami_on_a_regional_host_is_a_gateway_timeout(
    start_sim: StartSim, client: httpx.AsyncClient
) -> None:
    """As Sophos's data-region hosts answer it: 504, not 404, and no body to explain."""
    sim = await start_sim("demo")
    token = await get_token(client, sim, sim.scenario.credential("msp-main"))

    response = await client.get(f"{sim.region_urls[0]}/whoami/v1", headers=bearer(token))

    assert response.status_code == 504
    assert response.content == b""
