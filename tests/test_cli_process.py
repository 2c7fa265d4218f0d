"""The command line as an operator meets it: real processes, real signals, real exit codes.

``run`` serves until SIGTERM or SIGINT and then exits 0; a configuration it cannot use is exit 2
with the key named; ``check`` is 0 / 1 / 2; ``simulate`` and ``demo`` serve and stop on SIGTERM.
Every wait is bounded; output goes to files so that no pipe can fill up and stall a child.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.simulator import Simulator, build_scenario
from tests.ports import free_port, free_port_block

PYTHON = (sys.executable, "-m", "agent")
STOP_WITHIN = 10.0
"""SIGTERM to exit: the agent allows in-flight probes 2 s, the listener a few more."""
BIG_LIMITS = {"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        [*PYTHON, *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )


class Child:
    """A long-running CLI process with stdout and stderr in files."""

    def __init__(self, process: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.process = process
        self.out_path, self.err_path = out, err

    @classmethod
    async def start(cls, tmp: Path, *args: str) -> Child:
        out, err = tmp / "stdout", tmp / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *PYTHON, *args, stdout=stdout, stderr=stderr, env=ENV
            )
        return cls(process, out, err)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_output(
        self, predicate: Callable[[], bool], within: float, what: str
    ) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if self.process.returncode is not None:
                raise AssertionError(
                    f"exited {self.process.returncode} before {what}\n{self.stderr[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Send ``sig``; the exit code and how long the process took to exit."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), STOP_WITHIN)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"still running {STOP_WITHIN} s after {sig.name}") from None
        return code, time.monotonic() - started

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def wait_http(url: str, within: float, accept: Callable[[httpx.Response], bool]) -> str:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                response = await client.get(url)
                if accept(response):
                    return response.text
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {url}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    scenario = build_scenario("healthy")
    scenario.rate_limits.update(BIG_LIMITS)
    simulator = Simulator(scenario, host="127.0.0.1", port=0)
    await simulator.start()
    yield simulator
    await simulator.stop()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    path.chmod(0o600)
    return path


def sim_config(sim: Simulator, tmp: Path, **extra: Any) -> Path:
    data = {
        **sim.agent_config(),
        "state_file": str(tmp / "state.db"),
        "probe_interval": "2s",
        "budget_share": 1.0,
        **extra,
    }
    return write_config(tmp / "config.yml", data)


# -- run -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "argv"),
    [
        (signal.SIGTERM, ("run",)),
        (signal.SIGINT, ()),  # run is the default command
    ],
    ids=["SIGTERM", "SIGINT-default-command"],
)
async def test_run_becomes_ready_and_exits_0_on_signal(
    sim: Simulator, tmp_path: Path, sig: signal.Signals, argv: tuple[str, ...]
) -> None:
    config = sim_config(sim, tmp_path)
    port = free_port()
    child = await Child.start(
        tmp_path, *argv, "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}"
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", 30, lambda r: r.status_code == 200)
        metrics = await wait_http(f"http://127.0.0.1:{port}/metrics", 5, lambda r: r.is_success)
        assert 'sophos_central_probe_success{credential="msp-healthy"' in metrics
        code, took = await child.stop(sig)
    finally:
        await child.kill()
    assert code == 0, child.stderr[-3000:]
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert "shutting down" in child.stderr
    assert "Traceback" not in child.stderr


async def test_run_warns_at_start_up_about_a_data_region_api_url(tmp_path: Path) -> None:
    # The id host is a closed loopback port: no token, so nothing is ever sent to api_url.
    config = write_config(
        tmp_path / "config.yml",
        {
            "auth_url": "http://127.0.0.1:9/api/v2/oauth2/token",
            "api_url": "https://api-us03.central.sophos.com",
            "state_file": str(tmp_path / "state.db"),
            "credentials": [{"name": "a", "client_id": "x", "client_secret": "rb-0f3e5d7c9b1a"}],
        },
    )
    child = await Child.start(
        tmp_path, "run", "--config", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}"
    )
    try:
        await child.wait_for_output(
            lambda: "is a data-region host" in child.stderr, 20, "the api_url warning"
        )
    finally:
        await child.kill()
    (line,) = [ln for ln in child.stderr.splitlines() if "is a data-region host" in ln]
    assert "level=warning" in line and "use https://api.central.sophos.com" in line


async def test_run_on_a_taken_port_fails_with_a_message(sim: Simulator, tmp_path: Path) -> None:
    config = sim_config(sim, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            cli, "run", "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


CREDENTIALS = "credentials: [{name: a, client_id: x, client_secret: y}]\n"
BAD_CONFIGS = {
    # the key the message must name: the file
    "budget_share": "budget_share: 2\n" + CREDENTIALS,
    "credentials.0": "credentials: [{name: a, client_id: x}]\n",  # no secret at all
    "probe_intervall": "probe_intervall: 30s\n" + CREDENTIALS,  # a typo
    "rate_limits": "rate_limits: {1w: 5}\n" + CREDENTIALS,
}


BAD_CONFIG_CASES = [
    *((command, "budget_share") for command in ("run", "check", "config check", "support-bundle")),
    *(("config check", key) for key in BAD_CONFIGS if key != "budget_share"),
]


@pytest.mark.parametrize(("command", "key"), BAD_CONFIG_CASES)
def test_a_bad_config_is_exit_2_naming_the_key(tmp_path: Path, command: str, key: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(BAD_CONFIGS[key])
    path.chmod(0o600)
    result = cli(*command.split(), "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_web_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.yml",
        {
            "state_file": str(tmp_path / "s.db"),
            "credentials": [{"name": "a", "client_id": "x", "client_secret": "y"}],
        },
    )
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n")
    result = cli("run", "--config", str(config), "--web.config.file", str(web))
    assert result.returncode == 2
    assert "tls_server_config.cert_file" in result.stderr
    assert "Traceback" not in result.stderr


# -- config check --------------------------------------------------------------------------------


def test_config_check_prints_the_effective_config_masked_and_exits_0(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yml",
        {
            "budget_share": 0.2,
            "probe_interval": 90,
            "request_timeout": "2.5s",
            "credentials": [{"name": "a", "client_id": "id-1234567", "client_secret": "s-7654321"}],
        },
    )
    result = cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"configuration OK ({path})")
    shown = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert shown["budget_share"] == 0.2
    # Durations read as people write them, and the printed config loads back unchanged.
    assert "probe_interval: 1m30s\n" in result.stdout
    assert "request_timeout: 2s500ms\n" in result.stdout
    assert "token_probe_interval: 5m\n" in result.stdout
    assert shown["credentials"][0]["client_secret"] == "<masked>"
    assert "id-1234567" not in result.stdout and "s-7654321" not in result.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.yml", "cannot read config file"),
        (lambda d: d, "cannot read config file"),  # a directory
        (lambda d: (d / "x.yml", (d / "x.yml").write_text("a: [1,\n"))[0], "not valid YAML"),
        (lambda d: (d / "x.yml", (d / "x.yml").write_text("- a\n- b\n"))[0], "must be a mapping"),
        (lambda d: (d / "x.yml", (d / "x.yml").write_text("{}\n"))[0], "credentials"),
    ],
    ids=["missing", "directory", "bad-yaml", "not-a-mapping", "no-credentials"],
)
def test_an_unusable_config_file_is_exit_2(
    tmp_path: Path, setup: Callable[[Path], Path], message: str
) -> None:
    result = cli("config", "check", "--config", str(setup(tmp_path)))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- check ---------------------------------------------------------------------------------------


async def test_check_is_0_when_every_probe_succeeds(sim: Simulator, tmp_path: Path) -> None:
    config = sim_config(sim, tmp_path)
    result = await asyncio.to_thread(cli, "check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\d+ probes: 0 failing; 0 business state; \d+ healthy", lines[0])
    # Then how often a running agent would probe each tenant, and why.
    credentials = sim.scenario.credentials
    periods = lines[1 : 1 + len(credentials)]
    assert sorted(periods) == sorted(
        f"{c.name}: tenants probed every 2 s: as configured (probe_interval)" for c in credentials
    )
    assert lines[2 + len(credentials)].split() == [
        "CREDENTIAL",
        "TENANT",
        "TENANT",
        "ID",
        "PROBE",
        "STATUS",
        "ERROR",
        "CODE",
        "CAUSE",
        "HINT",
    ]


@pytest.mark.parametrize("name", ["missing.yml", "."])
def test_check_is_2_when_the_config_cannot_be_read(tmp_path: Path, name: str) -> None:
    result = cli("check", "--config", str(tmp_path / name))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr
    assert "Traceback" not in result.stderr


async def test_check_is_1_when_a_probe_fails(sim: Simulator, tmp_path: Path) -> None:
    tenant = sim.scenario.credential("msp-healthy").tenants[3]
    sim.set_fault(tenant.id, "server_error_500")
    config = sim_config(sim, tmp_path)
    result = await asyncio.to_thread(cli, "check", "--config", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "1 failing (1 sophos_server_error)" in lines[0]
    (line,) = [row for row in lines if tenant.id in row]
    assert "500" in line and "sophos_server_error" in line and "support-bundle" in line
    assert "`" not in line  # the hint is plain text, not Markdown
    # The failure comes before every healthy row.
    healthy = [i for i, row in enumerate(lines) if re.search(r"\s200\s", row)]
    assert healthy and lines.index(line) < min(healthy)


async def test_check_failures_only_and_json_for_scripts(sim: Simulator, tmp_path: Path) -> None:
    tenant = sim.scenario.credential("msp-healthy").tenants[2]
    sim.set_fault(tenant.id, "not_found_404")
    config = sim_config(sim, tmp_path)
    short = await asyncio.to_thread(cli, "check", "--config", str(config), "--failures-only")
    assert short.returncode == 1
    rows = short.stdout.splitlines()[3 + len(sim.scenario.credentials) :]
    assert [r for r in rows if r.strip()] and all(tenant.id in r for r in rows if r.strip())

    result = await asyncio.to_thread(cli, "check", "--config", str(config), "--output", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert (summary["failing"], summary["business"]) == (1, 0)
    assert summary["probes"] == summary["healthy"] + 1
    cred = report["credentials"][0]  # the credential with the failure comes first
    assert cred["name"] == "msp-healthy" and cred["period_seconds"] > 0
    (group,) = cred["groups"]
    (row,) = group["rows"]
    assert (row["tenant_id"], row["status"], row["probe"]) == (tenant.id, "404", "tenant")
    assert row["cause"] == group["cause"] and group["remedy"]
    assert {w["window"] for w in cred["windows"]} == {"1s", "1m", "1h", "1d"}
    assert cred_secret(sim) not in result.stdout


PROBE_KEYS = {
    "credential",
    "tenant_id",
    "tenant_name",
    "probe",
    "status",
    "error_code",
    "cause",
    "kind",
    "remedy",
    "last_run",
}


async def test_check_json_lists_every_probe_flat_so_jq_selects_by_kind(
    sim: Simulator, tmp_path: Path
) -> None:
    """``check --output json | jq '.probes[] | select(.kind == "failure")'`` lists exactly what
    needs someone: the 500, not the tenant without Partner Assistance (business state)."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.fail("jq not found on PATH; install it with: apt-get install -y jq", pytrace=False)
    failing, business = sim.scenario.credential("msp-healthy").tenants[4:6]
    sim.set_fault(failing.id, "server_error_500")
    business.billing_type = "term"
    sim.set_fault(business.id, "no_partner_assistance_403")
    config = sim_config(sim, tmp_path)
    result = await asyncio.to_thread(cli, "check", "--config", str(config), "--output", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    probes = report["probes"]
    assert len(probes) == report["summary"]["probes"]
    assert all(set(p) == PROBE_KEYS for p in probes)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["last_run"]) for p in probes)
    by_tenant = {p["tenant_id"]: p for p in probes}
    assert by_tenant[business.id]["kind"] == "business"
    assert by_tenant[business.id]["cause"] == "partner_assistance_disabled"

    selected = await asyncio.to_thread(
        subprocess.run,
        [jq, "-c", '.probes[] | select(.kind == "failure")'],
        input=result.stdout,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    (line,) = selected.stdout.splitlines()
    found = json.loads(line)
    assert (found["tenant_id"], found["status"], found["cause"], found["kind"]) == (
        failing.id,
        "500",
        "sophos_server_error",
        "failure",
    )
    assert found["tenant_name"] == failing.name and "support-bundle" in found["remedy"]


def cred_secret(sim: Simulator) -> str:
    return sim.scenario.credential("msp-healthy").client_secret


# -- simulate and demo ---------------------------------------------------------------------------


async def test_simulate_serves_the_api_on_the_given_port_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port_block(5)  # main, two regions, the faulty host, the rogue listener
    child = await Child.start(
        tmp_path, "simulate", "--listen", f"127.0.0.1:{port}", "--scenario", "healthy"
    )
    try:
        await child.wait_for_output(lambda: "\n" in child.stdout, 20, "the announcement line")
        announcement = json.loads(child.stdout.splitlines()[0])
        assert announcement["api_url"] == f"http://127.0.0.1:{port}"
        assert announcement["scenario"] == "healthy"
        cred = build_scenario("healthy").credential("msp-healthy")  # same seed, same secrets
        async with httpx.AsyncClient(timeout=5) as client:
            token = await client.post(
                announcement["auth_url"],
                data={
                    "grant_type": "client_credentials",
                    "client_id": cred.client_id,
                    "client_secret": cred.client_secret,
                    "scope": "token",
                },
            )
            assert token.status_code == 200
            bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
            whoami = await client.get(f"http://127.0.0.1:{port}/whoami/v1", headers=bearer)
        assert whoami.json()["idType"] == "partner"
        assert cred.client_secret not in child.stdout + child.stderr
        code, _ = await child.stop()
    finally:
        await child.kill()
    assert code == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again


async def test_demo_prints_where_to_look_serves_metrics_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    child = await Child.start(tmp_path, "demo", "--web.listen-address", f"127.0.0.1:{port}")
    try:
        await child.wait_for_output(lambda: "Press Ctrl-C" in child.stdout, 30, "the demo banner")
        banner = child.stdout
        assert f"metrics:      http://127.0.0.1:{port}/metrics" in banner
        assert f"status page:  http://127.0.0.1:{port}/status" in banner
        metrics = await wait_http(
            f"http://127.0.0.1:{port}/metrics",
            30,
            lambda r: r.status_code == 200 and "sophos_central_probe_success{" in r.text,
        )
        assert 'probe="token"' in metrics
        status = await wait_http(f"http://127.0.0.1:{port}/status", 5, lambda r: r.is_success)
        assert "Credential msp-main" in status
        command = printed_command(banner, "Try, in another shell: ")
        pasted = await asyncio.to_thread(paste_in_fresh_shell, command)
        config_path = Path(banner.split("config used:  ")[1].split(" (removed")[0])
        assert await asyncio.to_thread(config_path.is_file)
        code, took = await child.stop()
    finally:
        await child.kill()
    assert code == 0, child.stderr[-3000:]
    assert took < 5.0
    assert "Traceback" not in child.stderr
    # check exits 1: the demo scenario fails on purpose (bad secret, 403s, 5XX...).
    assert pasted.returncode == 1, pasted.stderr[-2000:]
    assert "msp-main" in pasted.stdout
    assert "command not found" not in pasted.stderr
    left_behind = await asyncio.to_thread(config_path.parent.exists)
    assert not left_behind, "the demo left its secrets and state file behind"


def printed_command(output: str, prefix: str) -> str:
    """The command a program printed after ``prefix``, as a person would copy it."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{output}"
    return lines[0].removeprefix(prefix)


def paste_in_fresh_shell(command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as pasted into a new login-less shell: no virtualenv, a bare PATH."""
    fresh = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        ["/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=90,
        env=fresh,
        cwd="/",
        check=False,
    )


# -- config check --web.config.file --------------------------------------------------------------


def test_config_check_validates_a_web_config_file_like_promtool(tmp_path: Path) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"basic_auth_users:\n  prometheus: {hashed}\nrate_limit:\n  interval: 500ms\n  burst: 5\n"
    )
    result = cli("config", "check", "--web.config.file", str(web))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"web configuration OK ({web}): plain HTTP (no TLS); basic auth for prometheus; "
        "rate limit one request per 500ms (burst 5)\n"
    )
    assert hashed not in result.stdout


def test_config_check_reports_the_mistakes_of_both_files_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("budget_share: 2\nbudget_share: 3\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: hunter2\n")
    result = cli("config", "check", "--config", str(config), "--web.config.file", str(web))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: invalid config file {config}:\n"
        "  budget_share: duplicate key at line 2 (first at line 1)\n"
        f"error: invalid web config file {web}:\n"
        "  basic_auth_users.alice: not a bcrypt hash (expected $2y$, $2b$ or $2a$, a cost from "
        "04 to 31 and 53 characters of salt and hash; see docs/web-config.md to make one)\n"
    )
    assert "hunter2" not in result.stderr + result.stdout
