"""The agent behind a real outbound proxy: tinyproxy in front of the simulator serving HTTPS.

Each test starts its own tinyproxy (Debian's package; ``scripts/bootstrap --debian`` installs it)
on a free loopback port with a config written into the test's directory, in the foreground, and
stops it by its process id. The simulator serves every host over TLS with a certificate from a
``trustme`` CA that the agent trusts through ``ca_bundle``.

Between the agent and tinyproxy sits a byte recorder: everything the agent sent to the proxy is
kept, which is how the tests show that the proxy only ever saw ``CONNECT host:port`` and that the
bearer token travelled inside TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from agent.cli import main, run_check
from agent.simulator import TlsFiles, build_scenario
from tests.e2e.harness import Stack, start_ready_stack, start_stack, stop_stack, wait_for
from tests.ports import free_port

PROXY_USER = "exporter"
PROXY_PASSWORD = "Pr0xy-pass-31337"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+ \S+)")


@dataclass
class Tinyproxy:
    """One tinyproxy process in the foreground (``-d``) with a generated config."""

    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """``METHOD target`` of every request the proxy logged."""
        return _REQUEST.findall(self.log.read_text(encoding="utf-8", errors="replace"))


@contextlib.contextmanager
def tinyproxy(
    tmp: Path,
    connect_ports: list[int],
    basic_auth: bool = False,
    password: str = PROXY_PASSWORD,
    extra: tuple[str, ...] = (),
) -> Iterator[Tinyproxy]:
    """``extra``: more configuration lines (e.g. ``AddHeader``)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        pytest.fail("tinyproxy is not installed: run scripts/bootstrap --debian")
    port = free_port()
    log = tmp / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 50",
        "Allow 127.0.0.1",
        "DisableViaHeader Yes",
        "LogLevel Info",
        f'LogFile "{log}"',
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if basic_auth:
        lines.append(f"BasicAuth {PROXY_USER} {password}")
    lines += extra
    config = tmp / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = (tmp / "tinyproxy.out").open("wb")
    process = subprocess.Popen(
        [binary, "-d", "-c", str(config)], stdout=output, stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(port, process)
        yield Tinyproxy(port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


def _wait_listening(port: int, process: subprocess.Popen[bytes], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tinyproxy exited with {process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"tinyproxy did not listen on 127.0.0.1:{port} within {within} s")


@dataclass
class Recorder:
    """A TCP relay to ``target`` that keeps every byte the client sent."""

    target: int
    sent: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if keep:
                        self.sent.extend(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[TlsFiles, Path]:
    """Certificate files for the simulator and the CA bundle for the agent."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, bundle = (tmp_path / n for n in ("sim.pem", "sim.key", "ca.pem"))
    cert.private_key_pem.write_to_path(str(keyfile))
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(bundle))
    return TlsFiles(certfile, keyfile), bundle


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@contextlib.asynccontextmanager
async def recorder(target: int) -> AsyncIterator[Recorder]:
    relay = Recorder(target)
    await relay.start()
    try:
        yield relay
    finally:
        relay.close()


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def sim_ports(stack: Stack) -> set[int]:
    urls = [stack.sim.api_url, *stack.sim.region_urls]
    return {int(u.rsplit(":", 1)[1]) for u in urls}


async def cause_of_token_probe(stack: Stack) -> tuple[str, dict[str, str]]:
    """Wait for the token probe's cause to be known; its cause and request labels."""

    async def known() -> tuple[str, dict[str, str]] | None:
        metrics = await stack.metrics()
        causes = [
            labels["cause"]
            for _, labels, _ in metrics.get("sophos_central_probe_cause_info", [])
            if labels["probe"] == "token"
        ]
        requests = [
            labels
            for _, labels, _ in metrics.get("sophos_central_api_requests_total", [])
            if labels["probe"] == "token"
        ]
        return (causes[0], requests[0]) if causes and requests else None

    found: tuple[str, dict[str, str]] = await wait_for(known, 20, "the token probe's cause")
    return found


# -- through the proxy ---------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_proxy_env")
async def test_every_probe_goes_through_the_proxy_by_connect_and_the_token_stays_in_tls(
    tmp_path: Path, tls: tuple[TlsFiles, Path]
) -> None:
    files, bundle = tls
    scenario = build_scenario("healthy")
    # The simulator's ports are known only once it runs; the proxy allows CONNECT to any port.
    with tinyproxy(tmp_path, connect_ports=[]) as proxy:
        async with recorder(proxy.port) as relay:
            stack = await start_ready_stack(
                scenario,
                tmp_path,
                within=40,
                probe_interval="2s",
                tls=files,
                ca_bundle=str(bundle),
                proxy_url=f"http://127.0.0.1:{relay.port}",
            )
            try:
                assert stack.sim.api_url.startswith("https://")
                metrics = await stack.metrics()
                token_values = [
                    t for p in stack.service.agent.probers if (t := p.client.token) is not None
                ]
                assert stack.sim.stats.arrivals() > 0
            finally:
                await stop_stack(stack)
    success = metrics["sophos_central_probe_success"]
    assert success and all(value == 1 for _, _, value in success)
    requests = proxy.requests()
    assert requests, "the proxy saw no request at all"
    assert {r.split()[0] for r in requests} == {"CONNECT"}
    assert {int(r.split()[1].rsplit(":", 1)[1]) for r in requests} <= sim_ports(stack)
    sent = bytes(relay.sent)
    assert b"CONNECT 127.0.0.1:" in sent
    assert token_values and all(t.value.encode() not in sent for t in token_values)
    assert b"bearer" not in sent.lower() and b"authorization" not in sent.lower()
    assert b"client_secret" not in sent


@pytest.mark.usefixtures("clean_proxy_env")
async def test_a_proxy_wanting_credentials_is_a_proxy_error_naming_407(
    tmp_path: Path, tls: tuple[TlsFiles, Path]
) -> None:
    files, bundle = tls
    with tinyproxy(tmp_path, connect_ports=[], basic_auth=True) as proxy:
        stack = await start_stack(
            build_scenario("healthy"),
            tmp_path,
            files,
            ca_bundle=str(bundle),
            proxy_url=f"http://{proxy.address}",
        )
        try:
            cause, labels = await cause_of_token_probe(stack)
            status = (await stack.get("/status")).text
        finally:
            await stop_stack(stack)
    assert cause == "proxy_error"
    assert (labels["status_code"], labels["error_code"]) == ("0", "proxy_auth_required")
    assert "proxy_error" in status
    assert f"Proxy: {proxy.address}." in status
    assert f"proxy {proxy.address} answered 407" in stack.logs.getvalue()
    assert stack.sim.stats.arrivals() == 0, "nothing may reach Sophos past a refusing proxy"


@pytest.mark.usefixtures("clean_proxy_env")
async def test_credentials_in_proxy_url_pass_and_the_password_shows_nowhere(
    tmp_path: Path, tls: tuple[TlsFiles, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files, bundle = tls
    with tinyproxy(tmp_path, connect_ports=[], basic_auth=True) as proxy:
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@{proxy.address}"
        stack = await start_ready_stack(
            build_scenario("healthy"),
            tmp_path,
            within=40,
            probe_interval="2s",
            tls=files,
            ca_bundle=str(bundle),
            proxy_url=proxy_url,
            log_level="debug",
        )
        try:
            logging.getLogger("tests").warning("as a last line of defence: %s", proxy_url)
            pages = [(await stack.get(p)).text for p in ("/metrics", "/status", "/")]
            check_out = io.StringIO()
            await run_check(stack.settings, check_out)
        finally:
            await stop_stack(stack)
        assert main(["config", "check", "--config", str(stack.config_path)]) == 0
    config_out = capsys.readouterr().out
    assert proxy.requests() and {r.split()[0] for r in proxy.requests()} == {"CONNECT"}
    assert "proxy_url: http://<masked>@127.0.0.1:" in config_out
    # user:password is a secret form of its own (its base64 is the Proxy-Authorization value)
    assert "as a last line of defence: http://<redacted>@127.0.0.1:" in stack.logs.getvalue()
    for text in [*pages, check_out.getvalue(), config_out, stack.logs.getvalue()]:
        assert PROXY_PASSWORD not in text


@pytest.mark.usefixtures("clean_proxy_env")
async def test_plain_http_is_forwarded_with_the_proxy_credentials(tmp_path: Path) -> None:
    """Loopback only (the simulator without TLS): no CONNECT, the proxy reads each request."""
    with tinyproxy(tmp_path, connect_ports=[], basic_auth=True) as proxy:
        stack = await start_ready_stack(
            build_scenario("healthy"),
            tmp_path,
            within=40,
            probe_interval="2s",
            proxy_url=f"http://{PROXY_USER}:{PROXY_PASSWORD}@{proxy.address}",
        )
        await stop_stack(stack)
    methods = {r.split()[0] for r in proxy.requests()}
    assert methods == {"GET", "POST"}, "forwarded, not tunnelled"


@pytest.mark.usefixtures("clean_proxy_env")
async def test_a_proxy_that_refuses_connect_is_a_proxy_error(
    tmp_path: Path, tls: tuple[TlsFiles, Path]
) -> None:
    files, bundle = tls
    with tinyproxy(tmp_path, connect_ports=[443]) as proxy:  # not the simulator's ports
        stack = await start_stack(
            build_scenario("healthy"),
            tmp_path,
            files,
            ca_bundle=str(bundle),
            proxy_url=f"http://{proxy.address}",
        )
        try:
            cause, labels = await cause_of_token_probe(stack)
        finally:
            await stop_stack(stack)
    assert cause == "proxy_error"
    assert (labels["status_code"], labels["error_code"]) == ("0", "proxy_refused")
    assert f"proxy {proxy.address} answered 403" in stack.logs.getvalue()


@pytest.mark.usefixtures("clean_proxy_env")
async def test_an_unreachable_proxy_is_a_proxy_error(
    tmp_path: Path, tls: tuple[TlsFiles, Path]
) -> None:
    files, bundle = tls
    dead = free_port()
    stack = await start_stack(
        build_scenario("healthy"),
        tmp_path,
        files,
        ca_bundle=str(bundle),
        proxy_url=f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{dead}",
    )
    try:
        cause, labels = await cause_of_token_probe(stack)
        metrics_text = (await stack.get("/metrics")).text
    finally:
        await stop_stack(stack)
    assert cause == "proxy_error"
    assert (labels["status_code"], labels["error_code"]) == ("0", "proxy_unreachable")
    logs = stack.logs.getvalue()
    assert f"cannot connect to proxy 127.0.0.1:{dead}" in logs
    assert PROXY_PASSWORD not in logs and PROXY_PASSWORD not in metrics_text


# -- the environment ------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_proxy_env")
async def test_proxy_from_environment_honours_https_proxy_and_no_proxy(
    tmp_path: Path, tls: tuple[TlsFiles, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, bundle = tls
    with tinyproxy(tmp_path, connect_ports=[]) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.address}")
        stack = await start_ready_stack(
            build_scenario("healthy"),
            _dir(tmp_path / "via"),
            within=40,
            probe_interval="2s",
            tls=files,
            ca_bundle=str(bundle),
            proxy_from_environment=True,
        )
        await stop_stack(stack)
        through = proxy.requests()

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        stack = await start_ready_stack(
            build_scenario("healthy"),
            _dir(tmp_path / "bypass"),
            within=40,
            probe_interval="2s",
            tls=files,
            ca_bundle=str(bundle),
            proxy_from_environment=True,
        )
        await stop_stack(stack)
        after_bypass = proxy.requests()
    assert through and {r.split()[0] for r in through} == {"CONNECT"}
    assert after_bypass == through, "NO_PROXY hosts must not go through the proxy"


@pytest.mark.usefixtures("clean_proxy_env")
async def test_without_proxy_from_environment_https_proxy_is_ignored(
    tmp_path: Path, tls: tuple[TlsFiles, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, bundle = tls
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    stack = await start_ready_stack(
        build_scenario("healthy"),
        tmp_path,
        within=40,
        probe_interval="2s",
        tls=files,
        ca_bundle=str(bundle),
    )
    try:
        success = (await stack.metrics())["sophos_central_probe_success"]
    finally:
        await stop_stack(stack)
    assert success and all(value == 1 for _, _, value in success)
