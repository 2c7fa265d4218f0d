"""Floods on the metrics port, against the real agent process (``python -m agent run``) with
a low descriptor limit (256), its probes running against a simulator in a process of its own.

Each test reproduces one attack (``bench/flood.py`` holds the attacks and the measurements; the
benchmark runs them longer and prints the figures) and asserts what a user relies on: ``/healthz``
answers within a second all along, the agent's own probes do not fail for want of descriptors or
of the event loop (no call with status ``0``), the connections a slow client holds are closed,
and the log says each condition once instead of a traceback per connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.flood import (
    AgentProc,
    attack_burst,
    attack_idle,
    attack_password,
    attack_slowloris,
    blocking_get,
    raise_own_nofile,
    running_agent,
    web_config_with_password,
)

pytestmark = pytest.mark.timeout(180)

LIVENESS = 1.0
"""A Kubernetes liveness probe's default timeout: /healthz must answer within it."""


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProc]:
    raise_own_nofile()
    async with running_agent(tmp_path) as proc:
        yield proc


def assert_quiet_and_alive(proc: AgentProc, result: dict[str, object]) -> None:
    assert result["transport_failures"] == {}, "the agent's own probes failed during the flood"
    assert float(str(result["log_lines_per_s"])) < 1.0, "the log was flooded"
    log = "\n".join(proc.log_lines())
    assert "Traceback" not in log
    assert proc.process.poll() is None


async def test_slowloris_connections_are_closed_by_the_head_timeout(agent: AgentProc) -> None:
    result = await attack_slowloris(agent, count=300, hold=12.0)
    assert result["opened"] == 300
    assert result["open_after_12s"] == 0, "connections that never finish their head stay open"
    assert result["healthz_failed"] == 0
    assert float(str(result["healthz_max_s"])) < LIVENESS
    assert_quiet_and_alive(agent, result)
    assert sum("sent no complete request" in line for line in agent.log_lines()) == 1


async def test_idle_connections_beyond_the_descriptor_limit(agent: AgentProc) -> None:
    """400 connections that send nothing, against 256 descriptors: the cap keeps a reserve, the
    longest-waiting connections make room, and nothing runs out of descriptors."""
    result = await attack_idle(agent, count=400, hold=12.0)
    assert result["opened"] == 400
    assert result["healthz_failed"] == 0
    assert float(str(result["healthz_max_s"])) < LIVENESS
    assert_quiet_and_alive(agent, result)
    log = "\n".join(agent.log_lines())
    assert "out of file descriptors" not in log
    assert log.count("HTTP connection limit reached") == 1


async def test_a_burst_of_page_requests_does_not_starve_probing_or_liveness(
    tmp_path: Path,
) -> None:
    """300 clients ask for /metrics, /status and /support as fast as they are answered; pages
    are rendered one at a time and shared, so /healthz and the probes keep their pace."""
    raise_own_nofile()
    async with running_agent(tmp_path, nofile=1024, tenants=200, probe_interval="5s") as proc:
        result = await attack_burst(proc, seconds=6.0, clients=300)
        assert int(str(result["pages_answered"])) > 300
        assert result["healthz_failed"] == 0
        assert float(str(result["healthz_median_s"])) < LIVENESS
        assert_quiet_and_alive(proc, result)


async def test_wrong_passwords_do_not_delay_a_valid_login(tmp_path: Path) -> None:
    """128 connections of wrong passwords (bcrypt cost 10) from one address; a first, uncached
    valid login from another address is answered well within Prometheus's 10 s scrape timeout
    (it waited 11 s behind one bcrypt lock before; 0.15 s on a quiet machine now)."""
    raise_own_nofile()
    async with running_agent(tmp_path, web_config=web_config_with_password()) as proc:
        result = await attack_password(proc, connections=128, seconds=5.0)
        assert result["valid_login_status"] == 200
        assert float(str(result["valid_login_wait_s"])) < 5.0
        assert result["healthz_failed"] == 0
        assert_quiet_and_alive(proc, result)


async def test_prometheus_style_endpoints_answer_as_healthz_and_readyz(agent: AgentProc) -> None:
    for ours, prometheus in (("/healthz", "/-/healthy"), ("/readyz", "/-/ready")):
        assert blocking_get(agent.port, ours) == blocking_get(agent.port, prometheus) == 200
