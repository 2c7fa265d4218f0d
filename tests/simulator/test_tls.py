"""HTTPS from a CA made at start-up: files, and the demo over TLS end to end."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
from pathlib import Path

import httpx
import pytest

from agent.cli import run_demo
from agent.simulator import make_tls

TENANT_OK = re.compile(r'sophos_central_probe_success\{[^}]*probe="tenant"[^}]*\} 1')


def test_make_tls_writes_a_ca_a_chain_and_an_owner_only_key(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "tls")

    assert files.ca_file is not None
    assert files.ca_file.read_text(encoding="ascii").startswith("-----BEGIN CERTIFICATE-----")
    assert files.certfile.read_text(encoding="ascii").count("BEGIN CERTIFICATE") >= 1
    assert stat.S_IMODE(os.stat(files.keyfile).st_mode) == 0o600
    files.server_context()  # the key matches the certificate


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(90)
async def test_demo_over_tls_probes_through_the_simulators_ca(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = _free_port()
    stop = asyncio.Event()
    demo = asyncio.create_task(run_demo(f"127.0.0.1:{port}", "integrations", stop, tls=True))
    try:
        metrics = ""
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(300):  # bounded: 30 s
                assert not demo.done(), demo.exception()
                try:
                    metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    metrics = ""
                if TENANT_OK.search(metrics):
                    break
                await asyncio.sleep(0.1)
        banner = capsys.readouterr().out
    finally:
        stop.set()
        code = await asyncio.wait_for(demo, 15)

    assert code == 0
    assert TENANT_OK.search(metrics), "no tenant probe succeeded over HTTPS"
    assert "simulator:    https://127.0.0.1:" in banner
    ca_line = next(line for line in banner.splitlines() if "simulator CA:" in line)
    ca_file = Path(ca_line.split("simulator CA: ")[1].split(" (")[0])
    assert not await asyncio.to_thread(ca_file.exists), "the demo left its CA behind"
