"""No secret, token or client id ever leaves the agent: not in a log line (JSON or logfmt, at
debug level, third-party loggers included), not in ``/metrics``, ``/status``, ``/support`` or
``/``, not in ``check``, ``config check`` or ``support-bundle`` output, not in failure text.

Canary client ids and secrets run through every named simulator scenario (the scale ones aside:
they only multiply the healthy case), with tokens expired mid-run so that renewals and 401s happen
too; a fake Sophos that echoes back what it was sent tries harder. And ``run`` warns when a config
file holding an inline secret is readable by other users.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trustme
import yaml

from agent import metricnames as m
from agent.cli import main, run_check
from agent.config import load_settings
from agent.evidence import load_evidence
from agent.logs import LogfmtFormatter, setup_logging
from agent.runtime import Agent
from agent.server import AgentService
from agent.simulator import SCENARIO_NAMES, Simulator, build_scenario
from agent.simulator.wire import ApiRequest, Reply
from agent.statefile import StateFile
from agent.views.support import render_json, render_markdown
from tests.e2e.harness import wait_for
from tests.e2e.test_proxy import PROXY_USER, clean_proxy_env, tinyproxy  # noqa: F401 - a fixture

SCENARIOS = [name for name in SCENARIO_NAMES if not name.startswith("scale")]
THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore",
    "aiohttp",
    "apscheduler",
    "uvicorn",
    "uvicorn.error",
    "asyncio",
)
BIG_LIMITS = {"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000}


def canary(kind: str) -> str:
    return f"CANARY-{kind}-{uuid.uuid4().hex}"


@dataclass
class Logs:
    json: io.StringIO
    logfmt: io.StringIO

    def texts(self) -> dict[str, str]:
        return {"json log": self.json.getvalue(), "logfmt log": self.logfmt.getvalue()}


@pytest.fixture
def debug_logs() -> Iterator[Logs]:
    """Root logging at debug into a JSON and a logfmt stream, third-party loggers included."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs = Logs(io.StringIO(), io.StringIO())
    setup_logging("json", "debug", stream=logs.json)
    logfmt = logging.StreamHandler(logs.logfmt)
    logfmt.setFormatter(LogfmtFormatter())
    root.addHandler(logfmt)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield logs
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


CANARY_CORE = re.compile(r"CANARY-[A-Z]+-[0-9a-f]{32}")


def assert_nothing_leaks(texts: dict[str, str], secrets: list[str]) -> None:
    """No secret appears, and no canary's unique core either: that catches a secret however it
    was escaped or encoded on the way (JSON, logfmt, a URL-encoded form)."""
    assert secrets and all(len(s) >= 8 for s in secrets)
    leaks = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    leaks += [(where, core) for where, text in texts.items() for core in CANARY_CORE.findall(text)]
    assert leaks == [], f"secrets leaked: {leaks}"


def issued_tokens(sim: Simulator) -> list[str]:
    """Every token the simulator handed out (its session table is the only complete record)."""
    return list(sim._central._tokens)


# -- every scenario ------------------------------------------------------------------------------


@dataclass
class Run:
    sim: Simulator
    service: AgentService
    config_path: Path
    secrets: list[str]


@pytest.fixture
async def canary_run(
    request: pytest.FixtureRequest, tmp_path: Path, debug_logs: Logs
) -> AsyncIterator[Run]:
    scenario = build_scenario(request.param)
    scenario.rate_limits.update(BIG_LIMITS)
    for throttle in scenario.throttles.values():
        # 429s for the first cycle only: enough for the 429 answers, the pause and its texts;
        # ``check`` (on a state file of its own) then runs without waiting a minute for it.
        throttle.duration = 2.0
    secrets: list[str] = []
    for cred in scenario.credentials:
        cred.client_id, cred.client_secret = canary("ID"), canary("SECRET")
        secrets += [cred.client_id, cred.client_secret]
        if cred.agent_secret is not None:  # a revoked key: the agent sends a wrong secret
            cred.agent_secret = canary("REVOKED")
            secrets.append(cred.agent_secret)
    sim = Simulator(scenario, host="127.0.0.1", port=0)
    await sim.start()
    config = {
        **sim.agent_config(),
        "state_file": str(tmp_path / "state.db"),
        "probe_interval": "2s",
        "request_timeout": "1s",
        "budget_share": 1.0,
        "log_level": "debug",
    }
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    config_path.chmod(0o600)
    service = AgentService(load_settings(config_path), "127.0.0.1:0", process_metrics=False)
    try:
        await service.start()
        yield Run(sim, service, config_path, secrets)
    finally:
        await service.stop(grace=0.5)
        await sim.stop()


@pytest.mark.parametrize("canary_run", SCENARIOS, indirect=True)
async def test_canary_secrets_and_tokens_never_leave_the_agent(
    canary_run: Run, debug_logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    run = canary_run
    base = f"http://127.0.0.1:{run.service.port}"
    async with httpx.AsyncClient(timeout=10) as client:

        async def settled() -> bool:
            """Ready after the first cycle, or paused: a credential throttled from the start
            waits a minute or more before it can finish its cycle, and its 429 answers and the
            pause are what that run is about (the other credentials go on probing)."""
            if (await client.get(base + "/readyz")).status_code == 200:
                return True
            return m.RATE_LIMIT_PAUSE_INFO + "{" in (await client.get(base + "/metrics")).text

        await wait_for(settled, 30, "/readyz after the first cycle, or a 429 pause")
        # Expire every token: the next calls get 401, the agent renews, more tokens exist.
        for cred in run.sim.scenario.credentials:
            run.sim.expire_tokens(cred.name)
        renewals = len(issued_tokens(run.sim))

        def renewed() -> bool:
            return run.sim.outage or len(issued_tokens(run.sim)) > renewals

        await wait_for(renewed, 15, "token renewal after expiry")
        pages = {
            path: (await client.get(base + path)).text
            for path in ("/metrics", "/status", "/support", "/")
        }
    check_out = io.StringIO()
    own_state = {"state_file": run.config_path.with_name("check.db")}
    await run_check(run.service.agent.settings.model_copy(update=own_state), check_out)
    capsys.readouterr()
    assert main(["config", "check", "--config", str(run.config_path)]) == 0
    main(["support-bundle", "--config", str(run.config_path), "--format", "json"])
    main(["support-bundle", "--config", str(run.config_path)])
    printed = capsys.readouterr()

    tokens = issued_tokens(run.sim)
    assert tokens or run.sim.outage
    if any(t.active(0.0) for t in run.sim.scenario.throttles.values()):  # 429s from the start
        assert re.search(rf"^{m.RATE_LIMIT_PAUSES_TOTAL}{{[^}}]*}} [1-9]", pages["/metrics"], re.M)
    texts = {
        **{f"page {path}": text for path, text in pages.items()},
        "check output": check_out.getvalue(),
        "cli stdout": printed.out,
        "cli stderr": printed.err,
        **debug_logs.texts(),
    }
    assert "probe" in debug_logs.json.getvalue()  # the capture did capture the agent
    assert_nothing_leaks(texts, run.secrets + tokens)


# -- a Sophos that echoes what it was sent ------------------------------------------------------

ECHO_ID = canary("ID") + "/+=?&"  # characters that JSON, logfmt and form encoding all change
ECHO_SECRET = canary("SECRET") + '"\\/+ =&%'
ECHO_TOKEN = canary("TOKEN")


def echoing_sophos(request: httpx.Request) -> httpx.Response:
    """An id host and API host that put back into their answers whatever secret they saw."""
    if request.url.path.endswith("/oauth2/token"):
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        raw = request.content.decode()
        if form["client_id"].startswith(("id-500-", "id-401-")) or form["client_id"] == ECHO_ID:
            status = 500 if form["client_id"].startswith("id-500-") else 401
            body = {
                "errorCode": "oauth.invalid_client_secret",
                "message": f"bad secret {form['client_secret']} for {form['client_id']} ({raw})",
                "trackingId": form["client_id"],  # an id-shaped echo: it passes the id filter
            }
            return httpx.Response(status, json=body, headers={"X-Echo": raw})
        return httpx.Response(200, json={"access_token": ECHO_TOKEN, "expires_in": 3600})
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    body = {
        "error": "InternalServerError",
        "message": f"token {token} was refused; {json.dumps(token)}",
        "requestId": token,
        "correlationId": token[:20],
    }
    return httpx.Response(500, json=body, headers={"X-Debug-Token": token})


def echo_settings(tmp_path: Path) -> tuple[Path, list[str]]:
    secrets = [ECHO_ID, ECHO_SECRET]
    creds: list[dict[str, Any]] = [{"name": "echo", "client_id": ECHO_ID, "client_secret": "x" * 9}]
    for kind in ("500", "401"):
        client_id, secret = f"id-{kind}-{canary('ID')}", canary("SECRET") + "+/="
        creds.append({"name": f"echo-{kind}", "client_id": client_id, "client_secret": secret})
        secrets += [client_id, secret]
    creds.append({"name": "echo-token", "client_id": canary("ID"), "client_secret": canary("S")})
    secrets += [creds[-1]["client_id"], creds[-1]["client_secret"]]
    path = tmp_path / "echo.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_file": str(tmp_path / "echo.db"),
                "budget_share": 1.0,
                "rate_limits": BIG_LIMITS,
                "credentials": creds,
            }
        )
    )
    path.chmod(0o600)
    return path, secrets


async def test_a_sophos_that_echoes_secrets_and_tokens_still_leaks_nothing(
    tmp_path: Path,
    debug_logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, secrets = echo_settings(tmp_path)
    settings = load_settings(path)
    monkeypatch.setattr(
        "agent.runtime.build_http_client",
        lambda _settings: httpx.AsyncClient(transport=httpx.MockTransport(echoing_sophos)),
    )
    agent = Agent(settings, process_metrics=False)
    try:
        results = await agent.run_cycle()
        results += await agent.run_cycle()
        results += await agent.run_cycle()  # three 5XX in a row: persistent evidence
        metrics = agent.render_metrics().decode()
    finally:
        await agent.stop(grace=0)
    check_out = io.StringIO()
    await run_check(settings, check_out)
    store = StateFile(settings.state_file)
    try:
        evidence = load_evidence(store)
    finally:
        store.close()
    assert {e.credential for e in evidence} >= {"echo-500", "echo-token"}
    capsys.readouterr()
    main(["support-bundle", "--config", str(path)])
    printed = capsys.readouterr()
    texts = {
        "results": "\n".join(repr(r) for r in results),
        "metrics": metrics,
        "check output": check_out.getvalue(),
        "evidence markdown": render_markdown(evidence),
        "evidence json": render_json(evidence),
        "support-bundle": printed.out + printed.err,
        **debug_logs.texts(),
    }
    assert "bad secret" in debug_logs.json.getvalue()  # the echo did reach the log, masked
    # ProbeResult keeps the raw message in memory (never printed, only logged through the
    # redactor); everything that leaves the process must be clean.
    texts.pop("results")
    assert_nothing_leaks(texts, [*secrets, ECHO_TOKEN])


# -- echoes of the proxy's credentials and of a rotated secret ----------------------------------


def echo_of(req: ApiRequest) -> str:
    """What a gateway's error page shows of the request it got: request line and every header."""
    lines = [f"{req.method} {req.path}", *(f"{k}: {v}" for k, v in req.headers.items())]
    return "\n".join([*lines, "", req.body.decode("utf-8", "replace")])


@dataclass
class EchoingSimulator:
    """The simulator, with some answers replaced by an echo of the request that got them."""

    sim: Simulator
    echoed: list[ApiRequest]


@contextlib.asynccontextmanager
async def echoing_simulator(
    scenario_name: str, echo: Callable[[ApiRequest], Reply | None]
) -> AsyncIterator[EchoingSimulator]:
    """``echo(request)`` answers instead of the simulator whenever it returns a reply."""
    scenario = build_scenario(scenario_name)
    scenario.rate_limits.update(BIG_LIMITS)
    for cred in scenario.credentials:
        cred.client_id, cred.client_secret = canary("ID"), canary("SECRET")
    sim = Simulator(scenario, host="127.0.0.1", port=0)
    echoed: list[ApiRequest] = []
    central = sim._central
    handle = central.handle

    def answer(req: ApiRequest) -> Reply:
        reply = echo(req)
        if reply is None:
            return handle(req)
        echoed.append(req)
        return reply

    central.handle = answer  # type: ignore[method-assign]
    await sim.start()
    try:
        yield EchoingSimulator(sim, echoed)
    finally:
        await sim.stop()


async def start_agent(tmp_path: Path, config: dict[str, Any]) -> tuple[AgentService, Path]:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    service = AgentService(load_settings(path), "127.0.0.1:0", process_metrics=False)
    await service.start()
    return service, path


async def what_users_see(
    service: AgentService, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    """Every page, then (agent stopped) ``check``, both support bundles and the state file."""
    base = f"http://127.0.0.1:{service.port}"
    async with httpx.AsyncClient(timeout=10) as client:
        pages = {
            f"page {path}": (await client.get(base + path)).text
            for path in ("/metrics", "/status", "/support", "/")
        }
    await service.stop(grace=0.5)
    settings = load_settings(config_path)
    check_out = io.StringIO()
    await run_check(settings, check_out)
    capsys.readouterr()
    main(["support-bundle", "--config", str(config_path), "--format", "json"])
    bundle_json = capsys.readouterr().out
    main(["support-bundle", "--config", str(config_path)])
    bundle_md = capsys.readouterr().out
    state = Path(settings.state_file)
    files = [state, *state.parent.glob(state.name + "-*")]  # the SQLite file and its WAL
    return {
        **pages,
        "check output": check_out.getvalue(),
        "support-bundle json": bundle_json,
        "support-bundle markdown": bundle_md,
        "state file": "".join(f.read_bytes().decode("latin-1") for f in files if f.is_file()),
    }


@pytest.mark.usefixtures("clean_proxy_env")
async def test_proxy_credentials_echoed_in_a_500_are_stored_and_shown_nowhere(
    tmp_path: Path, debug_logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real tinyproxy that wants credentials, set to pass them on to the next hop (as some
    proxies are: Squid's ``login=PASSTHRU``), in front of the simulator; one tenant answers 500
    with the request it got, ``Proxy-Authorization`` included, in its body and a header."""
    password = canary("PROXY")
    userinfo = f"{PROXY_USER}:{password}"
    basic = base64.b64encode(userinfo.encode()).decode()
    victim: list[str] = []

    def echo(req: ApiRequest) -> Reply | None:
        if req.headers.get("x-tenant-id") not in victim:
            return None
        body = {"error": "internalServerError", "message": f"gateway saw: {echo_of(req)}"}
        headers = (("content-type", "application/json"),)
        headers += (("x-echo-proxy-authorization", req.headers.get("proxy-authorization", "")),)
        return Reply(500, json.dumps(body).encode(), headers)

    pass_on = (f'AddHeader "Proxy-Authorization" "Basic {basic}"',)
    async with echoing_simulator("healthy", echo) as echoing:
        victim.append(echoing.sim.scenario.credentials[0].tenants[0].id)
        with tinyproxy(tmp_path, [], basic_auth=True, password=password, extra=pass_on) as proxy:
            config = {
                **echoing.sim.agent_config(),
                "state_file": str(tmp_path / "state.db"),
                "probe_interval": "1s",
                "confirm_interval": "1s",
                # A whoami or list the proxy drops is tried again in seconds, not in 15 minutes.
                "tenant_refresh_interval": "2s",
                "request_timeout": "2s",
                "budget_share": 1.0,
                "log_level": "debug",
                "proxy_url": f"http://{userinfo}@{proxy.address}",
            }
            service, path = await start_agent(tmp_path, config)
            try:

                def persistent() -> bool:
                    items = load_evidence(service.agent.state_file)
                    return any(e.tenant_id == victim[0] and e.persistent for e in items)

                await wait_for(persistent, 40, "persistent 5XX evidence of the echoing tenant")
                texts = await what_users_see(service, path, capsys)
            finally:
                await service.stop(grace=0.5)
        assert {r.split()[0] for r in proxy.requests()} >= {"GET", "POST"}, "forwarded"
    seen = echo_of(echoing.echoed[0])
    assert f"proxy-authorization: Basic {basic}" in seen, "the proxy passed the credentials on"
    assert "proxy-authorization: Basic <redacted>" in texts["support-bundle markdown"]
    assert "x-echo-proxy-authorization: Basic <redacted>" in texts["support-bundle markdown"]
    assert_nothing_leaks(
        {**texts, **debug_logs.texts()},
        [password, userinfo, basic, basic.rstrip("="), *issued_tokens(echoing.sim)],
    )


async def test_a_secret_rotated_in_its_file_and_echoed_in_a_401_is_masked_from_its_first_use(
    tmp_path: Path, debug_logs: Logs, capsys: pytest.CaptureFixture[str]
) -> None:
    """The secret file is rotated while the agent runs; the id host refuses the new secret
    (not active yet) with a 401 that echoes it, and the agent logs at debug level."""
    rotated = canary("ROTATED") + '+/="'  # JSON, URL and HTML escaping all change it

    def echo(req: ApiRequest) -> Reply | None:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("client_secret") != rotated:
            return None
        body = {
            "errorCode": "oauth.invalid_client_secret",
            "message": f"client secret {rotated} is not active yet",
            "trackingId": "echo-401",
            "echo": echo_of(req),
        }
        echo_header = (("x-echo", req.body.decode()),)
        return Reply(
            401, json.dumps(body).encode(), (("content-type", "application/json"), *echo_header)
        )

    async with echoing_simulator("healthy", echo) as echoing:
        config = {
            **echoing.sim.agent_config(),
            "state_file": str(tmp_path / "state.db"),
            "probe_interval": "2s",
            "token_probe_interval": "1s",
            "request_timeout": "2s",
            "budget_share": 1.0,
            "log_level": "debug",
        }
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(config["credentials"][0].pop("client_secret"))
        config["credentials"][0]["client_secret_file"] = str(secret_file)
        old = secret_file.read_text()
        service, path = await start_agent(tmp_path, config)
        try:
            base = f"http://127.0.0.1:{service.port}"
            async with httpx.AsyncClient(timeout=10) as client:

                async def ready() -> bool:
                    return (await client.get(base + "/readyz")).status_code == 200

                await wait_for(ready, 30, "/readyz after the first cycle")
            secret_file.write_text(rotated + "\n")  # the rotation, while the agent runs

            def refused() -> bool:
                return "is not active yet" in debug_logs.json.getvalue()

            await wait_for(refused, 20, "the echoing 401 for the rotated secret in the log")
            texts = await what_users_see(service, path, capsys)
        finally:
            await service.stop(grace=0.5)
    assert echoing.echoed, "the rotated secret reached the id host"
    ids = [c.client_id for c in echoing.sim.scenario.credentials]
    secrets = [c.client_secret for c in echoing.sim.scenario.credentials]
    assert_nothing_leaks(
        {**texts, **debug_logs.texts()},
        [old, rotated, *ids, *secrets, *issued_tokens(echoing.sim)],
    )


# -- failures whose text could carry a secret ---------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(tmp_path: Path, **keys: Any) -> tuple[Path, list[str]]:
    client_id, secret = canary("ID"), canary("SECRET")
    data = {
        "state_file": str(tmp_path / "state.db"),
        "request_timeout": "2s",
        "budget_share": 1.0,
        "rate_limits": BIG_LIMITS,
        "credentials": [{"name": "c", "client_id": client_id, "client_secret": secret}],
        **keys,
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path, [client_id, secret]


async def test_an_unreachable_sophos_leaks_nothing_in_failure_text(
    tmp_path: Path, debug_logs: Logs
) -> None:
    port = closed_port()
    path, secrets = write_config(
        tmp_path,
        auth_url=f"http://127.0.0.1:{port}/api/v2/oauth2/token",
        api_url=f"http://127.0.0.1:{port}",
    )
    agent = Agent(load_settings(path), process_metrics=False)
    try:
        results = await agent.run_cycle()
    finally:
        await agent.stop(grace=0)
    (token,) = [r for r in results if r.probe == "token"]
    assert (token.status_code, token.error_code, token.cause) == (
        0,
        "connect_error",
        "network_error",
    )
    out = io.StringIO()
    assert await run_check(load_settings(path), out) == 1
    texts = {"results": repr(results), "check": out.getvalue(), **debug_logs.texts()}
    assert_nothing_leaks(texts, secrets)


@pytest.fixture
def tls_sophos(tmp_path: Path) -> Iterator[tuple[str, trustme.CA]]:
    """An https id host on loopback with a certificate from its own CA; it answers nothing."""
    import ssl
    import threading

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(2)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", ca
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


async def test_a_certificate_from_an_untrusted_ca_is_a_tls_error_that_leaks_nothing(
    tmp_path: Path, debug_logs: Logs, tls_sophos: tuple[str, trustme.CA]
) -> None:
    url, _their_ca = tls_sophos
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    path, secrets = write_config(
        tmp_path, auth_url=url + "/api/v2/oauth2/token", api_url=url, ca_bundle=str(other)
    )
    agent = Agent(load_settings(path), process_metrics=False)
    try:
        results = await agent.run_cycle()
    finally:
        await agent.stop(grace=0)
    (token,) = [r for r in results if r.probe == "token"]
    assert (token.error_code, token.cause) == ("tls_error", "tls_error")
    texts = {"results": repr(results), **debug_logs.texts()}
    assert_nothing_leaks(texts, secrets)


@pytest.mark.parametrize("command", ["run", "check", "config check", "support-bundle"])
def test_a_bad_ca_bundle_is_a_config_error_naming_the_key(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    path, secrets = write_config(tmp_path, ca_bundle=str(bundle))
    assert main([*command.split(), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ca_bundle" in err and "CA certificates" in err
    assert_nothing_leaks({"stderr": err}, secrets)


def test_a_config_error_never_echoes_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = canary("SECRET")
    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "credentials": [
                    {"name": "bad name!", "client_id": secret, "client_secret": [secret]},
                ],
                "client_secret": secret,
            }
        )
    )
    assert main(["config", "check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "credentials.0.name" in captured.err
    assert_nothing_leaks({"stdout": captured.out, "stderr": captured.err}, [secret])


# -- the readable-config warning ----------------------------------------------------------------

WARNING = "readable by other users"


def run_agent_until_listening(config: Path, tmp_path: Path) -> str:
    """``python -m agent run`` until it logs that it listens; then SIGTERM. Its stderr."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path / "run.stderr"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 20
        while "msg=listening" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        assert "msg=listening" in log_path.read_text(), "the agent never started listening"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return log_path.read_text()


@pytest.mark.parametrize(
    ("mode", "inline", "warns"),
    [(0o644, True, True), (0o640, True, True), (0o600, True, False), (0o644, False, False)],
    ids=["inline-0644", "inline-0640", "inline-0600", "secret-file-0644"],
)
def test_run_warns_when_a_config_with_an_inline_secret_is_readable_by_others(
    tmp_path: Path, mode: int, inline: bool, warns: bool
) -> None:
    secret = canary("SECRET")
    credential: dict[str, Any] = {"name": "c", "client_id": canary("ID")}
    if inline:
        credential["client_secret"] = secret
    else:
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        credential["client_secret_file"] = str(secret_file)
    port = closed_port()
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth_url": f"http://127.0.0.1:{port}/token",
                "api_url": f"http://127.0.0.1:{port}",
                "state_file": str(tmp_path / "state.db"),
                "credentials": [credential],
            }
        )
    )
    os.chmod(config, mode)
    stderr = run_agent_until_listening(config, tmp_path)
    assert (WARNING in stderr) is warns, stderr
    assert_nothing_leaks({"stderr": stderr}, [secret, credential["client_id"]])


def test_the_redactor_masks_encoded_forms_and_keeps_only_recent_tokens() -> None:
    from agent.logs import Redactor

    redactor = Redactor(transient_limit=3)
    secret = 'se"cr/e+t=1'
    redactor.add([secret, "abc"])  # too short to mask safely: ignored
    line = json.dumps({"a": secret, "b": "se%22cr%2Fe%2Bt%3D1"})  # JSON- and form-encoded
    assert "cr" not in redactor(line).replace("<redacted>", "")
    assert redactor("abc") == "abc"
    tokens = [f"token-{i:04d}-value" for i in range(10)]
    for token in tokens:
        redactor.add_transient(token)
    assert redactor(" ".join(tokens)).count("<redacted>") == 3
    assert redactor(tokens[-1]) == "<redacted>" and redactor(tokens[0]) == tokens[0]


def test_the_redactor_knows_base64_html_and_authorization_echoes() -> None:
    from agent.logs import Redactor

    redactor = Redactor()
    secret = 'Pr0xy&pa"ss/31'
    redactor.add([secret, f"exporter:{secret}"])
    basic = base64.b64encode(f"exporter:{secret}".encode()).decode()
    echoes = [
        f"Proxy-Authorization: Basic {basic}",  # the header a proxy passed on
        json.dumps({"proxy-authorization": f"Basic {basic}"}),
        f"<pre>{html.escape(secret)}</pre>",  # an HTML error page
        json.dumps(secret).replace("/", "\\/"),  # JSON with escaped slashes
        base64.urlsafe_b64encode(secret.encode()).decode(),
        "Authorization: Basic dW5rbm93bjpub3Qta25vd24=",  # credentials nobody registered
    ]
    for echo in echoes:
        shown = redactor(echo)
        assert "<redacted>" in shown and "31" not in shown and "dW5r" not in shown, shown


def test_the_redactor_never_keeps_part_of_a_secret_at_a_cut() -> None:
    from agent.logs import Redactor

    redactor = Redactor()
    secret = canary("SECRET")
    redactor.add([secret])
    text = "x" * 95 + secret + "y" * 50
    for limit in range(90, 100 + len(secret)):
        head = redactor.head(text, limit)
        assert secret[:4] not in head and head.startswith("x" * min(limit, 95)), (limit, head)
    cut_by_a_cap = "x" * 95 + secret[:20]  # a body that ended inside the secret
    assert redactor.head(cut_by_a_cap, 1000, complete=False).strip("x") == ""
