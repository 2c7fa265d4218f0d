"""``--web.config.file`` on the real agent: every endpoint the agent serves is behind TLS and basic
auth, the TLS floor holds at the handshake, and client certificates are enforced when asked for.

The agent probes a simulator while it serves, so the pages behind the lock are the real ones.
Certificates come from trustme, password hashes from bcrypt at cost 4 (fast, still bcrypt).
"""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
import pytest_asyncio
import trustme
import yaml

from agent.config import load_settings
from agent.server import AgentService
from agent.simulator import Simulator, build_scenario
from agent.web.loading import load_web_config
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENDPOINTS = ("/metrics", "/healthz", "/readyz", "/", "/status", "/support")
USER, PASSWORD = "prometheus", "correct horse battery staple"
TIMEOUT = 10.0


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    client_ca: trustme.CA
    client_cert: trustme.LeafCert
    stranger_cert: trustme.LeafCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp / "server.key"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp / "client-ca.pem"))
    return Pki(
        dir=tmp,
        ca=ca,
        client_ca=client_ca,
        client_cert=client_ca.issue_cert("prometheus@example.test"),
        stranger_cert=trustme.CA().issue_cert("intruder@example.test"),
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[Simulator]:
    scenario = build_scenario("healthy")
    scenario.rate_limits.update({"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000})
    simulator = Simulator(scenario, host="127.0.0.1", port=0)
    await simulator.start()
    yield simulator
    await simulator.stop()


def web_config_text(tls_extra: str = "") -> str:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    tls = textwrap.indent(textwrap.dedent(tls_extra), "  ")
    return (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
        f"{tls}"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        f"basic_auth_users:\n  {USER}: {hashed}\n"
    )


@asynccontextmanager
async def agent_behind(
    pki: Pki, sim: Simulator, name: str, tls_extra: str = ""
) -> AsyncIterator[str]:
    """Run the agent with a web config; yield its https base URL once it is ready."""
    web_path = pki.dir / f"{name}.web.yml"
    web_path.write_text(web_config_text(tls_extra))
    config_path = pki.dir / f"{name}.config.yml"
    config = {
        **sim.agent_config(),
        "state_file": str(pki.dir / f"{name}.db"),
        "budget_share": 1.0,
        "probe_interval": "2s",
    }
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    service = AgentService(
        load_settings(config_path),
        "127.0.0.1:0",
        load_web_config(web_path),
        process_metrics=False,
    )
    await service.start()
    try:
        yield f"https://127.0.0.1:{service.port}"
    finally:
        await service.stop(grace=0.5)


def client_context(
    pki: Pki, *, max_version: ssl.TLSVersion | None = None, cert: trustme.LeafCert | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki.ca.configure_trust(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


async def handshake(url: str, ctx: ssl.SSLContext) -> str:
    """The TLS version negotiated for one request over a fresh connection.

    A refusal raises ``ssl.SSLError``, or ``ConnectionError`` (asyncio's server side may close
    without flushing its alert). Under TLS 1.3 the server checks a client certificate after the
    handshake completes, so the request is sent and the answer read before calling it accepted.
    """
    port = int(url.rsplit(":", 1)[1])
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        try:
            version = writer.get_extra_info("ssl_object").version()
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
            with suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    if not answer.startswith(b"HTTP/1.1 "):
        raise ConnectionError("the server closed the connection without answering")
    assert isinstance(version, str)
    return version


REFUSED = (ssl.SSLError, ConnectionError)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secured(pki: Pki, sim: Simulator) -> AsyncIterator[str]:
    async with agent_behind(pki, sim, "default") as url:
        async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as client:

            async def ready() -> bool:
                response = await client.get(url + "/readyz", auth=(USER, PASSWORD))
                return response.status_code == 200

            await wait_for(ready, 30, "/readyz (with the right password) to turn 200")
        yield url


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_without_credentials_is_401(secured: str, pki: Pki, path: str) -> None:
    async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as client:
        response = await client.get(secured + path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].lower().startswith("basic")
    assert "sophos_central" not in response.text and "Credential" not in response.text


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_with_a_wrong_password_is_401(
    secured: str, pki: Pki, path: str
) -> None:
    # Each endpoint from a loopback address of its own: failed logins are limited per address
    # (an address past 10 failures gets 429), and this test is about each endpoint's answer.
    source = f"127.0.0.{10 + ENDPOINTS.index(path)}"
    transport = httpx.AsyncHTTPTransport(verify=client_context(pki), local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
        wrong = await client.get(secured + path, auth=(USER, PASSWORD + "!"))
        stranger = await client.get(secured + path, auth=("mallory", PASSWORD))
    assert wrong.status_code == stranger.status_code == 401


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_with_the_right_password_is_served(
    secured: str, pki: Pki, path: str
) -> None:
    async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as client:
        response = await client.get(secured + path, auth=(USER, PASSWORD))
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "deny"


async def test_the_pages_behind_the_lock_are_the_agents(secured: str, pki: Pki) -> None:
    async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as client:
        metrics = await client.get(secured + "/metrics", auth=(USER, PASSWORD))
        status = await client.get(secured + "/status", auth=(USER, PASSWORD))
    assert 'sophos_central_probe_success{credential="msp-healthy"' in metrics.text
    assert "Credential msp-healthy" in status.text


async def test_plain_http_to_the_tls_port_gets_no_metrics(secured: str) -> None:
    plain = secured.replace("https://", "http://")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        try:
            response = await client.get(plain + "/metrics")
        except httpx.TransportError:
            return
    assert response.status_code >= 400 and "sophos_central" not in response.text


async def test_default_min_version_accepts_tls12(secured: str, pki: Pki) -> None:
    tls12 = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
    assert await handshake(secured, tls12) == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_default_min_version_refuses_tls11_at_the_handshake(secured: str, pki: Pki) -> None:
    ctx = client_context(pki)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(REFUSED):
        await handshake(secured, ctx)


async def test_min_version_tls13_refuses_a_tls12_client(pki: Pki, sim: Simulator) -> None:
    async with agent_behind(pki, sim, "tls13", "min_version: TLS13\n") as url:
        with pytest.raises(REFUSED):
            await handshake(url, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
        assert await handshake(url, client_context(pki)) == "TLSv1.3"
        async with httpx.AsyncClient(verify=client_context(pki), timeout=TIMEOUT) as client:
            assert (await client.get(url + "/healthz", auth=(USER, PASSWORD))).status_code == 200


async def test_client_certificates_are_enforced_when_configured(pki: Pki, sim: Simulator) -> None:
    mtls = "client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: client-ca.pem\n"
    async with agent_behind(pki, sim, "mtls", mtls) as url:
        with pytest.raises(REFUSED):
            await handshake(url, client_context(pki))
        with pytest.raises(REFUSED):
            await handshake(url, client_context(pki, cert=pki.stranger_cert))
        trusted = client_context(pki, cert=pki.client_cert)
        async with httpx.AsyncClient(verify=trusted, timeout=TIMEOUT) as client:
            assert (await client.get(url + "/metrics")).status_code == 401
            assert (await client.get(url + "/metrics", auth=(USER, PASSWORD))).status_code == 200
