"""Chaos soak: the real agent process against the simulator's ``chaos`` scenario for a long stretch.

Resets, truncated bodies, stalled responses, bad gzip, HTML sent as JSON, multi-megabyte and
50,000-deep JSON bodies, 500/502/503, mixed in with healthy tenants. Throughout the run the agent
must answer ``/healthz``, keep probing the healthy tenants, classify every faulty one, and keep its
memory flat. The agent runs as ``python -m agent run`` so that its RSS is its own.

``SOPHOS_CHAOS_SOAK_SECONDS`` sets the duration (default 30) for a longer local run, e.g.
``SOPHOS_CHAOS_SOAK_SECONDS=1800 uv run pytest tests/e2e/test_chaos.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from agent import metricnames as m
from agent.simulator import Simulator, build_scenario
from tests.e2e.harness import parse_metrics, wait_for
from tests.ports import free_port

SOAK_SECONDS = float(os.environ.get("SOPHOS_CHAOS_SOAK_SECONDS", "30"))
PROBE_INTERVAL = 3.0
RSS_TOLERANCE_BYTES = 16 * 1024 * 1024
"""Allowed RSS growth from one third of the run to its end. The agent settles at about 60 MB and
then stays within a MB or two; keeping even one capped huge body (1 MB) per probe would add
hundreds of MB over a minute."""

EXPECTED_CAUSES = {
    "truncated": "network_error",  # protocol_error: the body ends early
    "stall": "network_error",  # timeout: headers, then nothing
    "bad_gzip": "network_error",  # protocol_error: the body does not decode
    "reset": "network_error",
    "wrong_content_type": "not_sophos_answer",  # an HTML page sent as application/json
    "huge_body": "invalid_response",  # cut at max_response_bytes
    "deep_json": "invalid_response",  # nested beyond the parser's limit
    "server_error_500": "sophos_server_error",
    "html_502": "sophos_unavailable",
    "empty_503": "sophos_unavailable",
}

pytestmark = pytest.mark.timeout(SOAK_SECONDS + 120)

Samples = list[tuple[str, dict[str, str], float]]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Soak:
    sim: Simulator
    process: subprocess.Popen[bytes]
    base_url: str
    stderr_path: Path
    health_failures: list[str] = field(default_factory=list)
    health_checks: int = 0

    def faulty(self) -> dict[str, str]:
        return dict(self.sim.scenario.faults)

    def healthy(self) -> set[str]:
        return {t.id for t in self.sim.scenario.tenants()} - set(self.sim.scenario.faults)


def spawn_agent(config_path: Path, port: int, stderr_path: Path) -> subprocess.Popen[bytes]:
    """``python -m agent run`` with its log in a file (a pipe nobody reads could block it)."""
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(config_path),
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


@pytest.fixture
async def soak(tmp_path: Path) -> AsyncIterator[Soak]:
    scenario = build_scenario("chaos")
    scenario.rate_limits.update({"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000})
    sim = Simulator(scenario, host="127.0.0.1", port=0)
    await sim.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        config = {
            **sim.agent_config(),
            "state_file": str(tmp_path / "state.db"),
            "probe_interval": f"{PROBE_INTERVAL}s",
            "request_timeout": "1s",
            "token_probe_interval": "30s",
            "tenant_refresh_interval": "20s",
            "budget_share": 1.0,
            "log_level": "info",
        }
        config_path = tmp_path / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        config_path.chmod(0o600)
        stderr_path = tmp_path / "agent.stderr"
        process = spawn_agent(config_path, port, stderr_path)
        yield Soak(sim, process, f"http://127.0.0.1:{port}", stderr_path)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        await sim.stop()


async def scrape(client: httpx.AsyncClient, soak: Soak) -> dict[str, Samples]:
    response = await client.get(soak.base_url + "/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


def by_tenant(samples: Samples, probe: str = "tenant") -> dict[str, float]:
    return {lbl["tenant_id"]: v for _, lbl, v in samples if lbl["probe"] == probe}


async def watch_health(client: httpx.AsyncClient, soak: Soak, until: float) -> None:
    """Poll /healthz twice a second; every failure (status, timeout, refused) is recorded."""
    while time.monotonic() < until:
        soak.health_checks += 1
        try:
            response = await client.get(soak.base_url + "/healthz", timeout=2.0)
            if response.status_code != 200:
                soak.health_failures.append(f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            soak.health_failures.append(f"{type(exc).__name__}: {exc}")
        if soak.process.poll() is not None:
            soak.health_failures.append(f"agent exited with {soak.process.returncode}")
            return
        await asyncio.sleep(0.5)


async def test_agent_survives_a_chaos_soak_and_keeps_probing_the_healthy_tenants(
    soak: Soak,
) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def ready() -> bool:
            assert soak.process.poll() is None, soak.stderr_path.read_text()[-4000:]
            try:
                return (await client.get(soak.base_url + "/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, 30, "/readyz after the first probe cycle under chaos")
        start = time.monotonic()
        end = start + SOAK_SECONDS
        health = asyncio.create_task(watch_health(client, soak, end))

        checkpoints: list[dict[str, float]] = []
        rss_at_third: int | None = None
        while time.monotonic() < end:
            await asyncio.sleep(min(SOAK_SECONDS / 6, end - time.monotonic()))
            families = await scrape(client, soak)
            checkpoints.append(by_tenant(families[m.PROBE_LAST_RUN_TIMESTAMP_SECONDS]))
            success = by_tenant(families[m.PROBE_SUCCESS])
            failing = sorted(t for t in soak.healthy() if success.get(t) != 1)
            assert failing == [], f"healthy tenants not succeeding: {failing}"
            if rss_at_third is None and time.monotonic() - start >= SOAK_SECONDS / 3:
                rss_at_third = rss_bytes(soak.process.pid)
        await health
        rss_at_end = rss_bytes(soak.process.pid)
        families = await scrape(client, soak)

    assert soak.health_failures == [], soak.health_failures
    assert soak.health_checks >= SOAK_SECONDS  # twice a second, give or take

    # Healthy tenants were probed again between every two checkpoints.
    healthy = soak.healthy()
    assert len(healthy) == 40
    for before, after in itertools.pairwise(checkpoints):
        stale = sorted(t for t in healthy if not after.get(t, 0) > before.get(t, 0))
        assert stale == [], f"healthy tenants not probed between checkpoints: {stale}"

    # Every faulty tenant got its diagnosis, and every cause is one of the contract's.
    causes = {
        lbl["tenant_id"]: lbl["cause"]
        for _, lbl, _ in families[m.PROBE_CAUSE_INFO]
        if lbl["probe"] == "tenant"
    }
    assert set(causes.values()) <= set(m.CAUSES)
    wrong = {
        fault: causes.get(tid)
        for tid, fault in soak.faulty().items()
        if causes.get(tid) != EXPECTED_CAUSES[fault]
    }
    assert wrong == {}, f"faulty tenants with an unexpected cause: {wrong}"
    assert set(soak.faulty().values()) == set(EXPECTED_CAUSES)

    # Faulty tenants are re-probed too: their failures keep being counted.
    requests = families[m.API_REQUESTS_TOTAL]
    per_tenant: dict[str, float] = {}
    for _, lbl, value in requests:
        per_tenant[lbl["tenant_id"]] = per_tenant.get(lbl["tenant_id"], 0) + value
    minimum = SOAK_SECONDS / PROBE_INTERVAL / 2
    starved = sorted(t for t in soak.faulty() if per_tenant.get(t, 0) < minimum)
    assert starved == [], f"faulty tenants probed fewer than {minimum:.0f} times: {starved}"

    assert rss_at_third is not None
    growth = rss_at_end - rss_at_third
    print(
        f"\nchaos soak {SOAK_SECONDS:.0f} s: {soak.health_checks} health checks, "
        f"RSS {rss_at_third / 2**20:.1f} MiB at 1/3 -> {rss_at_end / 2**20:.1f} MiB at end "
        f"({growth / 2**20:+.1f} MiB)"
    )
    assert growth < RSS_TOLERANCE_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB"

    # Nothing crashed on the way: no traceback in the agent's log, and it stops cleanly.
    soak.process.send_signal(signal.SIGTERM)
    assert soak.process.wait(timeout=15) == 0
    log = soak.stderr_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log, log[-4000:]
    assert "level=error" not in log, log[-4000:]
