"""Real clients against ``simulate --tls``: what users run must work with only host and CA changed.

One ``sophos-central-exporter simulate --tls`` subprocess for the module (the ``integrations``
scenario: every kind of paging has more than one page). Against it:

- the trust instructions it prints work when pasted into a shell;
- two independently written Sophos Central clients from PyPI, ``sophoscentral`` and Sophos's own
  ``sophos-central-api-connector``, installed from pinned hashes into a virtual environment of
  their own (built once per session; see clients/README.md), list every tenant, endpoint and
  alert through their own pagination;
- a replay of the request sequence of Sophos's SIEM integration script (``siem.py`` /
  ``api_client.py``: token, whoami on the global host, the configured tenant, SIEM events and
  alerts with ``from_date_offset_minutes`` following ``has_more``, cursors saved and resumed).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.simulator import build_scenario
from agent.simulator.reads import alert_count

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent / "clients"
SCENARIO = build_scenario("integrations")  # deterministic: the subprocess serves the same
PARTNER = SCENARIO.credential("msp-integrations")
PROBE_TENANTS = [PARTNER.tenants[0].id, PARTNER.tenants[1].id]  # one per regional host


@dataclass
class Running:
    announced: dict[str, Any]
    notes: Path
    workdir: Path

    @property
    def api_url(self) -> str:
        return str(self.announced["api_url"])

    @property
    def ca_file(self) -> Path:
        return Path(self.announced["ca_file"])

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("simulate-tls")
    out, notes = workdir / "announce.json", workdir / "notes.txt"
    argv = [
        sys.executable, "-m", "agent", "simulate", "--listen", "127.0.0.1:0",
        "--scenario", "integrations", "--tls", "--tls-dir", str(workdir / "tls"),
        "--agent-config", str(workdir / "agent.yml"),
    ]  # fmt: skip
    with out.open("wb") as stdout, notes.open("wb") as stderr:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while not out.read_text(encoding="utf-8").endswith("\n"):
            assert process.poll() is None, notes.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "simulate --tls printed nothing in 30 s"
            time.sleep(0.05)
        announced = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
        yield Running(announced, notes, workdir)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def clients_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the PyPI clients, from ``clients/requirements.txt`` (hashes
    required); uv's cache makes it take a second or two after the first time."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed to build the clients' virtual environment (scripts/bootstrap)"
    venv = tmp_path_factory.mktemp("clients") / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    requirements = CLIENTS / "requirements.txt"
    for argv in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--require-hashes", "-r", str(requirements)],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    return venv / "bin" / "python"


def run_client(
    python: Path, script: str, running: Running, settings: dict[str, Any]
) -> dict[str, Any]:
    """Run a client script with only the host settings and the CA changed; its JSON result."""
    settings_file = running.workdir / f"{script}.settings.json"
    fd = os.open(settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(settings, handle)
    result_file = running.workdir / f"{script}.result.json"
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(running.ca_file)}
    done = subprocess.run(
        [str(python), str(CLIENTS / script), str(settings_file), str(result_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    return result


def partner_settings(running: Running) -> dict[str, Any]:
    return {
        "api_url": running.api_url,
        "client_id": PARTNER.client_id,
        "client_secret": PARTNER.client_secret,
        "probe_tenants": PROBE_TENANTS,
    }


# --- TLS ------------------------------------------------------------------------------------------


def test_the_printed_trust_instructions_work_when_pasted(simulator: Running) -> None:
    notes = simulator.notes.read_text(encoding="utf-8")
    exports = [line for line in notes.splitlines() if line.startswith("export ")]
    curl = next(line for line in notes.splitlines() if line.startswith("curl "))
    script = "\n".join(
        [
            *exports,
            'python3 -c "import sys, urllib.request, urllib.error\n'
            "try: urllib.request.urlopen(sys.argv[1])\n"
            'except urllib.error.HTTPError as e: print(e.code)" '
            f"{simulator.api_url}/whoami/v1",
        ]
    )

    pasted = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)

    assert [line.split("=")[0] for line in exports] == [
        "export SSL_CERT_FILE",
        "export REQUESTS_CA_BUNDLE",
    ]
    assert f"{simulator.api_url}/whoami/v1" in curl
    assert pasted.stdout.strip() == "401", pasted.stderr  # TLS trusted; no token: 401
    config = yaml.safe_load((simulator.workdir / "agent.yml").read_text(encoding="utf-8"))
    assert config["ca_bundle"] == str(simulator.ca_file)
    assert all(url.startswith("https://") for url in simulator.announced["region_urls"])


def test_without_the_ca_a_client_refuses_the_simulator(simulator: Running) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{simulator.api_url}/whoami/v1", verify=ssl.create_default_context())


# --- PyPI clients ---------------------------------------------------------------------------------


def test_sophoscentral_lists_every_tenant_endpoint_and_alert(
    clients_python: Path, simulator: Running
) -> None:
    result = run_client(
        clients_python, "run_sophoscentral.py", simulator, partner_settings(simulator)
    )

    assert result["partner_id"] == PARTNER.id
    assert [t["id"] for t in result["tenants"]] == [t.id for t in PARTNER.tenants]  # 2 pages
    assert all(t["showAs"] and t["status"] == "active" for t in result["tenants"])
    for tenant_id in PROBE_TENANTS:
        tenant = SCENARIO.tenant(tenant_id)
        got = result["per_tenant"][tenant_id]
        assert len({e["id"] for e in got["endpoints"]}) == tenant.endpoints
        assert len({a["id"] for a in got["alerts"]}) == alert_count(tenant)  # pages of 50
        assert len(got["alerts"]) == alert_count(tenant)
        assert got["siem_events"] and all(e["customer_id"] == tenant_id for e in got["siem_events"])


def test_sophos_central_api_connector_gathers_inventory_and_alerts(
    clients_python: Path, simulator: Running
) -> None:
    result = run_client(clients_python, "run_connector.py", simulator, partner_settings(simulator))

    assert result["whoami_type"] == "partner"
    assert list(result["tenants"]) == [t.id for t in PARTNER.tenants]
    assert {t["apiHost"] for t in result["tenants"].values()} == set(
        simulator.announced["region_urls"]
    )
    for tenant_id in PROBE_TENANTS:
        tenant = SCENARIO.tenant(tenant_id)
        got = result["per_tenant"][tenant_id]
        assert len({e["id"] for e in got["endpoint"]}) == tenant.endpoints == len(got["endpoint"])
        expected = alerts_between(simulator, tenant_id, result["from"], result["to"])
        assert [a["id"] for a in got["common"]] == expected


def alerts_between(running: Running, tenant_id: str, since: str, until: str) -> list[str]:
    """The alert ids the simulator holds for a tenant between two times, read page by page."""
    with httpx.Client(verify=running.ssl_context(), timeout=10) as client:
        form = {"grant_type": "client_credentials", "client_id": PARTNER.client_id}
        form |= {"client_secret": PARTNER.client_secret, "scope": "token"}
        token = client.post(f"{running.api_url}/api/v2/oauth2/token", data=form).json()
        headers = {"Authorization": f"Bearer {token['access_token']}", "X-Tenant-ID": tenant_id}
        host = tenant_hosts(running)[tenant_id]
        ids: list[str] = []
        params: dict[str, Any] = {"from": since, "to": until, "pageSize": 1000}
        body = client.get(f"{host}/common/v1/alerts", params=params, headers=headers).json()
        ids += [a["id"] for a in body["items"]]
        assert "nextKey" not in body["pages"]
        return ids


def tenant_hosts(running: Running) -> dict[str, str]:
    regions = running.announced["region_urls"]
    return {t.id: regions[t.region % len(regions)] for t in SCENARIO.tenants()}


# --- Sophos's SIEM integration script ------------------------------------------------------------


class SiemReplay:
    """The requests Sophos's SIEM script makes, in its order, with its state between runs.

    Written from reading its ``api_client.py``: urllib with the system's trust store, a form
    POST for the token (cached until ``expires_in - 120``), ``https://{api_host}/whoami/v1``,
    for partner and organization credentials the configured tenant from
    ``{global}/{idType}/v1/tenants/{tenant_id}``, then per endpoint ``limit=1000`` and
    ``from_date`` (12 hours back) or the saved ``cursor``, joined into the query string without
    encoding, plus ``from_date_offset_minutes``, following ``has_more``.
    """

    def __init__(self, running: Running, cred_name: str, tenant_id: str = "") -> None:
        cred = SCENARIO.credential(cred_name)
        self.client_id, self.secret = cred.client_id, cred.client_secret
        self.auth_url = f"{running.api_url}/api/v2/oauth2/token"
        self.api_host = urllib.parse.urlsplit(running.api_url).netloc  # "host:port", as configured
        self.tenant_id = tenant_id
        self.context = running.ssl_context()
        self.state: dict[str, Any] = {}
        self.requests: list[str] = []

    def _open(self, url: str, body: dict[str, str] | None, headers: dict[str, str]) -> Any:
        data = urllib.parse.urlencode(body).encode() if body is not None else None
        self.requests.append(("POST " if data else "GET ") + url.split("?")[0])
        request = urllib.request.Request(url, data, headers)
        with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
            return json.loads(response.read())

    def run(self, endpoints: tuple[str, ...] = ("events", "alerts")) -> dict[str, list[Any]]:
        token = self._token()
        whoami = self._open(
            f"https://{self.api_host}/whoami/v1", None, {"Authorization": "Bearer " + token}
        )
        if whoami["idType"] == "tenant":
            tenant, host = whoami, whoami["apiHosts"]["dataRegion"]
        else:
            header = "X-Partner-ID" if whoami["idType"] == "partner" else "X-Organization-ID"
            url = f"{whoami['apiHosts']['global']}/{whoami['idType']}/v1/tenants/{self.tenant_id}"
            tenant = self._open(
                url, None, {"Authorization": "Bearer " + token, header: whoami["id"]}
            )
            host = tenant["apiHost"]
        headers = {"X-Tenant-ID": tenant["id"], "Authorization": "Bearer " + token}
        return {name: self._collect(host, name, headers) for name in endpoints}

    def _token(self) -> str:
        cached = self.state.get("jwt")
        if cached and time.time() < self.state["jwtExpiresAt"]:
            return str(cached)
        body = {"grant_type": "client_credentials", "scope": "token"}
        body |= {"client_id": self.client_id, "client_secret": self.secret}
        answer = self._open(self.auth_url, body, {})
        self.state["jwt"] = answer["access_token"]
        self.state["jwtExpiresAt"] = time.time() + answer["expires_in"] - 120
        return str(answer["access_token"])

    def _collect(self, host: str, name: str, headers: dict[str, str]) -> list[Any]:
        params: dict[str, Any] = {"limit": 1000}
        if f"{name}LastFetched" in self.state:
            params["cursor"] = self.state[f"{name}LastFetched"]
        else:
            params["from_date"] = int(time.time()) - 12 * 3600
        items: list[Any] = []
        for _ in range(10):  # bounded
            args = "&".join(f"{k}={v}" for k, v in params.items())
            args += "&from_date_offset_minutes=0"
            page = self._open(f"{host}/siem/v1/{name}?{args}", None, headers)
            items += page["items"]
            self.state[f"{name}LastFetched"] = page["next_cursor"]
            if not page["has_more"]:
                return items
            params["cursor"] = page["next_cursor"]
            params.pop("from_date", None)
        raise AssertionError("has_more never ended")


@pytest.mark.parametrize(
    ("cred_name", "tenant_id"),
    [("msp-integrations", PARTNER.tenants[5].id), ("tenant-integrations", "")],
)
def test_siem_script_sequence_collects_and_resumes_with_its_cursor(
    simulator: Running, cred_name: str, tenant_id: str
) -> None:
    replay = SiemReplay(simulator, cred_name, tenant_id)

    started = time.time()
    first = replay.run()
    second = replay.run()
    elapsed = time.time() - started

    assert 12 * 60 - 1 <= len(first["events"]) <= 12 * 60 + 1  # one event a minute, 12 hours
    assert 12 * 6 - 1 <= len(first["alerts"]) <= 12 * 6 + 1  # one alert every ten minutes
    for name in ("events", "alerts"):
        assert not {i["id"] for i in second[name]} & {i["id"] for i in first[name]}
    assert len(second["events"]) <= 1 + elapsed / 60  # only what happened since
    token_calls = [r for r in replay.requests if r.startswith("POST")]
    assert len(token_calls) == 1  # the second run reuses the cached token
    assert replay.requests[1] == f"GET https://{replay.api_host}/whoami/v1"
