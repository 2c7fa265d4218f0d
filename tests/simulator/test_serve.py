"""``serve``: one JSON line on start, predictable ports, runs until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
from typing import Any

import httpx
import pytest
import yaml

from agent.simulator import Simulator, build_scenario, serve


async def _first_line(out: io.StringIO, task: asyncio.Task[None]) -> dict[str, Any]:
    for _ in range(1000):  # bounded: 10 s at most
        if "\n" in out.getvalue():
            line = out.getvalue().splitlines()[0]
            parsed: dict[str, Any] = json.loads(line)
            return parsed
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    raise AssertionError("serve printed nothing")


async def test_serve_announces_itself_without_secrets_and_stops_on_cancel(
    tmp_path: Any,
) -> None:
    out = io.StringIO()
    config_path = tmp_path / "agent.yml"
    task = asyncio.create_task(
        serve("healthy", "127.0.0.1", 0, agent_config_path=str(config_path), out=out)
    )
    try:
        announced = await _first_line(out, task)
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{announced['api_url']}/whoami/v1")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)

    assert response.status_code == 401
    assert announced["auth_url"].endswith("/api/v2/oauth2/token")
    assert len(announced["region_urls"]) == 2
    assert announced["credentials"] == ["msp-healthy", "org-healthy", "tenant-healthy"]
    scenario = build_scenario("healthy")
    for cred in scenario.credentials:
        assert cred.client_secret not in out.getvalue()
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    assert config["credentials"][0]["client_secret"] == scenario.credentials[0].client_secret
    assert config["api_url"] == announced["api_url"]
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"{announced['api_url']}/whoami/v1")


def _free_run(length: int) -> int:
    """A base port with ``length`` consecutive free ports after it (bounded search)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base + length >= 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + length):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError("no run of free ports found")


async def test_fixed_port_puts_the_other_hosts_on_the_following_ports() -> None:
    base = _free_run(5)
    sim = Simulator(build_scenario("healthy"), host="127.0.0.1", port=base)
    await sim.start()
    try:
        assert sim.api_url == f"http://127.0.0.1:{base}"
        assert sim.region_urls == [f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 2}"]
        assert sim.faulty_url == f"http://127.0.0.1:{base + 3}"
        assert sim.rogue_url == f"http://localhost:{base + 4}"
    finally:
        await sim.stop()


def test_serve_in_a_subprocess_prints_one_line_of_json() -> None:
    code = (
        "import asyncio\n"
        "from agent.simulator import serve\n"
        "asyncio.run(serve('healthy', '127.0.0.1', 0))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        announced = json.loads(line)
        response = httpx.get(f"{announced['api_url']}/_simulator/state", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    assert response.status_code == 200
    assert response.json()["scenario"] == "healthy"


async def test_wildcard_bind_advertises_loopback() -> None:
    sim = Simulator(build_scenario("healthy"), host="0.0.0.0", port=0)
    await sim.start()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{sim.api_url}/whoami/v1")
    finally:
        await sim.stop()

    assert sim.api_url.startswith("http://127.0.0.1:")
    assert sim.agent_config()["allowed_api_hosts"] == ["127.0.0.1"]
    assert response.status_code == 401
