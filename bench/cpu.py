"""c. CPU per probe: the agent against prometheus-blackbox-exporter, same endpoint, same headers.

Both probe the simulator's cheap per-tenant call, ``GET {apiHost}/endpoint/v1/endpoints?pageSize=1
&view=basic`` with ``Authorization: Bearer <token>`` and ``X-Tenant-ID``, on a regional host, over
loopback. The simulator answers 401/403 unless both headers are right; every probe must succeed.

- The agent (``bench.agentproc``, the same ``AgentService`` as ``run``) probes 1,000 tenants every
  4 s on its own schedule. Its CPU is its own ``getrusage`` (user + system, all threads), read at
  the start and end of a window on SIGUSR1, with the number of tenant probes it made meanwhile.
- blackbox_exporter gets a generated module with the same two headers and is driven through
  ``/probe?target=...&module=...`` by this process (whose CPU is not counted), two at a time, for
  exactly as many probes as the agent made in the window before. Its CPU is the utime + stime
  delta of its process in /proc.

The two take turns, three rounds each, so both meet the same machine; the agent is stopped
(SIGSTOP) while blackbox is measured and given a few seconds to settle after it continues. The
simulator runs in a third process; its CPU is nobody's.

Then the cost of an outbound proxy: a second simulator serves the same scenario over HTTPS (a
``trustme`` CA the agents trust through ``ca_bundle``), and two agents probe it the same way, one
directly and one through tinyproxy (``proxy_url``: ``CONNECT`` tunnels, TLS inside). They take
turns too, three rounds each; the figure is the proxied agent's CPU per probe over the direct
one's. tinyproxy's CPU, like the simulator's, is nobody's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from agent.simulator import build_scenario
from bench.common import (
    Child,
    agent_snapshot,
    children,
    cpu_split,
    free_port,
    read_yaml,
    simulator_state,
    spawn,
    start_simulator,
    wait_until,
)

TENANTS = 1000
PERIOD = "4s"
LIMITS = {"1s": 100_000, "1m": 1_000_000, "1h": 10_000_000, "1d": 100_000_000}
BLACKBOX = "prometheus-blackbox-exporter"
TINYPROXY = "tinyproxy"
CONCURRENCY = 2
PROBE_PATH = "/endpoint/v1/endpoints?pageSize=1&view=basic"
ROUNDS = 3
SETTLE_SECONDS = 3.0


async def run(workdir: Path, window: float = 4.0) -> dict[str, Any]:
    binary = shutil.which(BLACKBOX)
    if binary is None:
        return {"skipped": f"{BLACKBOX} is not installed"}
    with children() as running:
        sim = start_simulator(workdir, "scale-10k", LIMITS, tenants=TENANTS)
        running.append(sim)
        agent = _start_agent(workdir, sim)
        running.append(agent)
        blackbox, url = await _start_blackbox(workdir, sim, binary)
        running.append(blackbox)
        rounds = await _rounds(agent, blackbox, url, window)
        statuses = await _regional_statuses(sim)
    proxy = await _proxy_cost(workdir / "proxy", window)
    agent_cpu = sum(r["agent_cpu_seconds"] for r in rounds)
    blackbox_cpu = sum(r["blackbox_cpu_seconds"] for r in rounds)
    probes = sum(r["probes"] for r in rounds)
    return {
        "endpoint": PROBE_PATH,
        "tenants": TENANTS,
        "agent_probe_period": PERIOD,
        "blackbox_concurrency": CONCURRENCY,
        "blackbox_version": _version(binary),
        "probes_each": probes,
        "agent_cpu_seconds": agent_cpu,
        "blackbox_cpu_seconds": blackbox_cpu,
        "agent_cpu_ms_per_probe": agent_cpu / probes * 1000,
        "blackbox_cpu_ms_per_probe": blackbox_cpu / probes * 1000,
        "ratio_agent_to_blackbox": agent_cpu / blackbox_cpu,
        "blackbox_failed_probes": sum(r["blackbox_failed"] for r in rounds),
        "rounds": rounds,
        "simulator_regional_statuses": statuses,
        "proxy": proxy,
    }


def _start_agent(
    workdir: Path, sim: Child, name: str = "agent-cpu", extra: tuple[str, ...] = ()
) -> Child:
    sets = [arg for setting in extra for arg in ("--set", setting)]
    return spawn(
        name,
        [
            sys.executable,
            "-m",
            "bench.agentproc",
            "--config",
            sim.announcement["agent_config_path"],
            "--set",
            f"probe_interval={PERIOD}",
            "--set",
            "budget_share=1.0",
            "--set",
            f"state_file={workdir / f'{name}.db'}",
            *sets,
        ],
        workdir,
        announce=True,
    )


async def _proxy_cost(workdir: Path, window: float) -> dict[str, Any]:
    """CPU per probe through tinyproxy over a direct probe, both over HTTPS, in turns."""
    binary = shutil.which(TINYPROXY)
    if binary is None:
        return {"skipped": f"{TINYPROXY} is not installed"}
    cert, key, bundle = _certificates(workdir)
    with children() as running:
        sim = start_simulator(
            workdir, "scale-10k", LIMITS, tenants=TENANTS, tls=(cert, key), name="tls-simulator"
        )
        running.append(sim)
        assert sim.announcement["api_url"].startswith("https://")
        with _tinyproxy(workdir, binary) as proxy_port:
            trust = (f"ca_bundle={bundle}",)
            direct = _start_agent(workdir, sim, "agent-direct", trust)
            running.append(direct)
            proxied_settings = (*trust, f"proxy_url=http://127.0.0.1:{proxy_port}")
            proxied = _start_agent(workdir, sim, "agent-proxied", proxied_settings)
            running.append(proxied)
            rounds = await _turns({"direct": direct, "proxied": proxied}, window)
            connects = _count_connects(workdir / "tinyproxy-requests.log")
    per_probe = {
        name: sum(r[name]["cpu_seconds"] for r in rounds) / sum(r[name]["probes"] for r in rounds)
        for name in ("direct", "proxied")
    }
    return {
        "scheme": "https",
        "proxy": _version_line([binary, "-v"]),
        "probes_direct": sum(r["direct"]["probes"] for r in rounds),
        "probes_proxied": sum(r["proxied"]["probes"] for r in rounds),
        "direct_cpu_ms_per_probe": per_probe["direct"] * 1000,
        "proxied_cpu_ms_per_probe": per_probe["proxied"] * 1000,
        "ratio_proxied_to_direct": per_probe["proxied"] / per_probe["direct"],
        "proxy_connects": connects,
        "rounds": rounds,
    }


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    import trustme

    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, bundle = workdir / "sim.pem", workdir / "sim.key", workdir / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    return cert, key, bundle


@contextlib.contextmanager
def _tinyproxy(workdir: Path, binary: str) -> Iterator[int]:
    """tinyproxy in the foreground on a free port, CONNECT allowed to any port; yields the port."""
    port = free_port()
    config = workdir / "tinyproxy.conf"
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 400\nAllow 127.0.0.1\n"
        f'DisableViaHeader Yes\nLogLevel Connect\nLogFile "{workdir / "tinyproxy-requests.log"}"\n'
    )
    child = spawn("tinyproxy", [binary, "-d", "-c", str(config)], workdir)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            child.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"tinyproxy did not listen on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield port
    finally:
        child.stop()


def _count_connects(log: Path) -> int:
    """CONNECT requests tinyproxy logged: one per tunnel, not per probe (keep-alive inside)."""
    return log.read_text(errors="replace").count(": CONNECT ")


def _listening(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


async def _turns(agents: dict[str, Child], window: float) -> list[dict[str, Any]]:
    """Each agent alone for ``window`` seconds per round (the others stopped), ROUNDS times."""
    for agent in agents.values():

        async def ready(agent: Child = agent) -> bool:
            return bool((await agent_snapshot(agent))["ready"])

        await wait_until(ready, 120, f"{agent.name}'s first probe cycle", every=0.5)
        agent.process.send_signal(signal.SIGSTOP)
    rounds = []
    for _ in range(ROUNDS):
        measured: dict[str, Any] = {}
        for name, agent in agents.items():
            agent.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(SETTLE_SECONDS)
            first = await agent_snapshot(agent)
            await asyncio.sleep(window)
            last = await agent_snapshot(agent)
            agent.process.send_signal(signal.SIGSTOP)
            measured[name] = {
                "probes": last["tenant_probes"] - first["tenant_probes"],
                "cpu_seconds": last["cpu_seconds"] - first["cpu_seconds"],
            }
        rounds.append(measured)
    for agent in agents.values():
        agent.process.send_signal(signal.SIGCONT)
    return rounds


async def _rounds(agent: Child, blackbox: Child, url: str, window: float) -> list[dict[str, Any]]:
    async def ready() -> bool:
        return bool((await agent_snapshot(agent))["ready"])

    await wait_until(ready, 120, "the agent's first probe cycle", every=0.5)
    rounds = []
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        await _drive(client, url, 200)  # blackbox warm-up: connections, GC, caches
        for _ in range(ROUNDS):
            agent.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(SETTLE_SECONDS)  # catch up on the slots missed while stopped
            first = await agent_snapshot(agent)
            await asyncio.sleep(window)
            last = await agent_snapshot(agent)
            agent.process.send_signal(signal.SIGSTOP)
            probes = last["tenant_probes"] - first["tenant_probes"]
            cpu0, sys0, wall0 = *cpu_split(blackbox.pid), time.monotonic()
            failed = await _drive(client, url, probes)
            cpu1, sys1, wall1 = *cpu_split(blackbox.pid), time.monotonic()
            rounds.append(
                {
                    "probes": probes,
                    "agent_cpu_seconds": last["cpu_seconds"] - first["cpu_seconds"],
                    "agent_system_seconds": last["system_seconds"] - first["system_seconds"],
                    "agent_wall_seconds": window,
                    "blackbox_cpu_seconds": cpu1 - cpu0,
                    "blackbox_system_seconds": sys1 - sys0,
                    "blackbox_wall_seconds": wall1 - wall0,
                    "blackbox_failed": failed,
                }
            )
    agent.process.send_signal(signal.SIGCONT)
    return rounds


async def _start_blackbox(workdir: Path, sim: Child, binary: str) -> tuple[Child, str]:
    agent_config = read_yaml(sim.announcement["agent_config_path"])
    credential = agent_config["credentials"][0]
    tenant = build_scenario("scale-10k").credential(credential["name"]).tenants[0]
    target = sim.announcement["region_urls"][tenant.region] + PROBE_PATH
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        response = await client.post(
            agent_config["auth_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": credential["client_id"],
                "client_secret": credential["client_secret"],
                "scope": "token",
            },
        )
        response.raise_for_status()
        token = response.json()["access_token"]
    config_path = workdir / "blackbox.yml"
    module = {
        "prober": "http",
        "timeout": "5s",
        "http": {
            "method": "GET",
            "valid_status_codes": [200],
            "preferred_ip_protocol": "ip4",
            "headers": {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant.id},
        },
    }
    config_path.write_text(yaml.safe_dump({"modules": {"sophos_tenant": module}}))
    config_path.chmod(0o600)
    port = free_port()
    child = spawn(
        "blackbox",
        [
            binary,
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir,
    )
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:

        async def up() -> bool:
            child.check()
            try:
                return (await client.get(base + "/-/healthy")).is_success
            except httpx.TransportError:
                return False

        await wait_until(up, 30, "blackbox_exporter to listen")
    return child, f"{base}/probe?module=sophos_tenant&target={quote(target, safe='')}"


async def _drive(client: httpx.AsyncClient, url: str, probes: int) -> int:
    """``probes`` blackbox probes, CONCURRENCY at a time; returns how many did not succeed."""
    queue = iter(range(probes))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in queue:
            body = (await client.get(url)).text
            if "\nprobe_success 1" not in body or "probe_http_status_code 200" not in body:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return failed


async def _regional_statuses(sim: Any) -> dict[str, int]:
    state = await simulator_state(sim)
    totals: dict[str, int] = {}
    for host, stats in state["stats"]["hosts"].items():
        if host.startswith("region-"):
            for status, count in stats["statuses"].items():
                totals[status] = totals.get(status, 0) + count
    return totals


def _version(binary: str) -> str:
    return _version_line([binary, "--version"])


def _version_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).splitlines()
    return text[0] if text else "unknown"
