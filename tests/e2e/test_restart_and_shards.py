"""The real agent process: killed and restarted on its state file, stopped by SIGTERM, sharded.

Each agent runs as ``python -m agent run`` next to an in-process simulator over loopback. The
simulator counts every call at arrival and rejects what exceeds its limits, so its judge
(``max_calls_in_any_window``, ``rate_limited``) says whether the agent kept the budget as the
server sees it. Limits are scaled down so that a window fills within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent import metricnames as m
from agent.cli import apply_shard_flags, main
from agent.config import ConfigError, load_settings
from agent.ratebudget import WINDOW_SECONDS
from agent.sharding import shard_of
from agent.simulator import Credential, Scenario, Simulator, Tenant
from tests.e2e.harness import parse_metrics, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.timeout(120)

Samples = list[tuple[str, dict[str, str], float]]
Page = dict[str, Samples]


def scenario(tenants: int, limits: Mapping[str, int], slow: int = 0) -> Scenario:
    """One partner with healthy tenants (ids are UUID-shaped), the last ``slow`` of them slow."""
    items = [
        Tenant(id=f"{i:08x}-1111-4222-8333-444455556666", name=f"Tenant {i:04d}", region=i % 2)
        for i in range(tenants)
    ]
    partner = Credential(
        name="msp",
        client_id="client-msp-0001",
        client_secret="secret-msp-0001",
        id_type="partner",
        id="9a9a9a9a-0000-4000-8000-000000000001",
        tenants=items,
    )
    faults = {t.id: "slow" for t in items[len(items) - slow :]} if slow else {}
    return Scenario(
        name="restart",
        credentials=[partner],
        faults=faults,
        regions=2,
        rate_limits=dict(limits),
        slow_seconds=60.0,
    )


@dataclass
class AgentProcess:
    process: asyncio.subprocess.Process
    port: int
    stderr: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def page(self) -> Page:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self.base_url + "/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    async def up(self) -> bool:
        if self.process.returncode is not None:
            raise AssertionError(f"agent exited {self.process.returncode}: {self.log()}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(self.base_url + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


async def spawn(
    config: Path, args: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> AgentProcess:
    port = free_port()
    stderr = config.with_name(f"agent-{port}.log")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr.open("wb"),
        env={**os.environ, **(env or {})},
    )
    agent = AgentProcess(process, port, stderr)
    await wait_for(agent.up, 30, "the agent's /healthz")
    return agent


async def kill(agent: AgentProcess) -> None:
    if agent.process.returncode is None:
        agent.process.kill()
    await asyncio.wait_for(agent.process.wait(), 10)


def write_config(path: Path, sim: Simulator, **overrides: Any) -> Path:
    config = {
        **sim.agent_config(),
        "state_file": str(path.parent / "state.db"),
        "probe_interval": "1s",
        "token_probe_interval": "5m",
        "tenant_refresh_interval": "15m",
        "request_timeout": "5s",
        "budget_share": 1.0,
        **overrides,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def one(samples: Samples, **labels: str) -> float:
    found = [v for _, lbl, v in samples if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"expected one sample with {labels}, found {len(found)}"
    return found[0]


@contextlib.asynccontextmanager
async def simulator(scn: Scenario) -> AsyncIterator[Simulator]:
    sim = Simulator(scn, host="127.0.0.1", port=0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


# -- SIGKILL and restart on the same state file --------------------------------------------------

RESTART_LIMITS = {
    # The window under test allows 12 calls. Start-up alone wants 13 (token, whoami and 11 pages
    # of 1,100 tenants), so a restart that forgot the calls before the kill would send 12 at once.
    "1m": {"1s": 4, "1m": 12, "1h": 10_000, "1d": 100_000},
    "1d": {"1s": 4, "1m": 1_000, "1h": 10_000, "1d": 12},
}


@pytest.mark.parametrize("window", list(RESTART_LIMITS))
async def test_a_killed_agent_restarts_knowing_the_calls_it_made(
    tmp_path: Path, window: str
) -> None:
    limits = RESTART_LIMITS[window]
    allowance = limits[window]
    async with simulator(scenario(1_100, limits)) as sim:
        client_id = sim.scenario.credential("msp").client_id
        config = write_config(tmp_path / "config.yml", sim)

        first = await spawn(config)
        try:
            await wait_for(
                lambda: sim.stats.arrivals(client_id) >= 8, 30, "8 calls before the kill"
            )
        finally:
            await kill(first)
        before = sim.stats.arrivals(client_id)
        assert before < allowance

        second = await spawn(config)
        try:

            async def window_full() -> bool:
                if sim.stats.rate_limited(client_id):
                    return True  # over the limit already: the judge below says so
                page = await second.page()
                return one(page[m.RATE_LIMIT_CALLS], window=window) >= allowance

            await wait_for(window_full, 30, f"the restarted agent's {window} count to fill")
            arrived = sim.stats.arrivals(client_id)
            page = await second.page()
        finally:
            await kill(second)

    # The judge: the window never held more than the allowance, nothing was refused.
    assert sim.stats.max_calls_in_any_window(client_id, WINDOW_SECONDS[window]) <= allowance
    assert sim.stats.rate_limited(client_id) == 0
    # The day's count after the restart includes the calls made before the kill.
    day = one(page[m.RATE_LIMIT_CALLS], window="1d")
    assert day >= arrived >= before
    own = sum(v for _, lbl, v in page[m.API_REQUESTS_TOTAL] if lbl["credential"] == "msp")
    assert own <= allowance - before, "the restarted agent spent only what was left"


# -- the state file lost or shared while running ------------------------------------------------

STATE_LIMITS = {"1s": 5, "1m": 10_000, "1h": 100_000, "1d": 1_000_000}


def delete_with_companions(state: Path) -> None:
    """What a clean-up job or an operator does to the state file under the running agent."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)


async def test_a_state_file_deleted_under_the_running_agent_loses_no_call(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    async with simulator(scenario(30, STATE_LIMITS)) as sim:
        client_id = sim.scenario.credential("msp").client_id
        config = write_config(tmp_path / "config.yml", sim)
        first = await spawn(config)
        try:
            await wait_for(lambda: sim.stats.arrivals(client_id) >= 20, 30, "20 calls")
            delete_with_companions(state)
            deleted_at = sim.stats.arrivals(client_id)
            await wait_for(
                lambda: sim.stats.arrivals(client_id) >= deleted_at + 40, 30, "40 calls more"
            )

            async def recreated() -> bool:
                return one((await first.page())[m.STATE_FILE_RECREATED_TOTAL]) == 1

            await wait_for(recreated, 10, "the recreation on /metrics")
        finally:
            await kill(first)
        made = sim.stats.arrivals(client_id)
        assert state.exists()
        second = await spawn(config)
        try:
            page = await second.page()
        finally:
            await kill(second)
    day = one(page[m.RATE_LIMIT_CALLS], window="1d")
    own = sum(v for _, lbl, v in page[m.API_REQUESTS_TOTAL]) + one(page[m.API_REQUESTS_IN_FLIGHT])
    print(f"{made} calls made by the first agent; the restart counts {day - own} of them")
    assert day - own >= made, "the restart counts every call made before it"
    logged = [line for line in first.log().splitlines() if "while the agent ran" in line]
    assert len(logged) == 1 and "deleted" in logged[0]


async def test_a_second_agent_on_the_same_state_file_refuses_to_start_naming_the_first(
    tmp_path: Path,
) -> None:
    async with simulator(scenario(5, STATE_LIMITS)) as sim:
        config = write_config(tmp_path / "config.yml", sim)
        first = await spawn(config)
        try:
            second = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent",
                "run",
                "--config",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{free_port()}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(second.communicate(), 30)
            assert await first.up(), "the first agent runs on"
        finally:
            await kill(first)
    assert second.returncode == 2, "a configuration or environment error"
    message = err.decode()
    assert message.startswith(
        f"error: state file {tmp_path / 'state.db'} is in use by process {first.process.pid}"
    ), message


# -- SIGTERM --------------------------------------------------------------------------------------


async def test_sigterm_exits_0_within_seconds_even_with_a_call_in_flight(tmp_path: Path) -> None:
    limits = {"1s": 100, "1m": 6000, "1h": 100_000, "1d": 1_000_000}
    async with simulator(scenario(10, limits, slow=1)) as sim:
        config = write_config(tmp_path / "config.yml", sim, request_timeout="50s")
        agent = await spawn(config)
        try:

            async def only_the_slow_call_is_left() -> bool:
                page = await agent.page()
                done = [lbl for _, lbl, _ in page[m.PROBE_SUCCESS] if lbl["probe"] == "tenant"]
                return len(done) >= 9 and one(page[m.API_REQUESTS_IN_FLIGHT]) >= 1

            await wait_for(only_the_slow_call_is_left, 30, "the healthy probes and one hanging")
            loop = asyncio.get_running_loop()
            sent = loop.time()
            agent.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(agent.process.wait(), 10)
            took = loop.time() - sent
        finally:
            await kill(agent)
    assert code == 0, agent.log()
    assert took < 5.0, f"took {took:.1f} s"
    assert "shutting down" in agent.log()


# -- shards ---------------------------------------------------------------------------------------

SHARD_LIMITS = {"1s": 60, "1m": 3000, "1h": 100_000, "1d": 1_000_000}


async def test_two_shards_from_config_keys_and_flags_split_the_tenants_and_the_budget(
    tmp_path: Path,
) -> None:
    async with simulator(scenario(150, SHARD_LIMITS)) as sim:
        client_id = sim.scenario.credential("msp").client_id
        tenant_ids = {t.id for t in sim.scenario.credential("msp").tenants}
        shard0_dir, shard1_dir = tmp_path / "s0", tmp_path / "s1"
        shard0_dir.mkdir()
        shard1_dir.mkdir()
        state = {"state_file": str(tmp_path / "shared-state.db")}  # one file, two owners
        config0 = write_config(
            shard0_dir / "config.yml", sim, shard=0, total_shards=2, probe_interval="5s", **state
        )
        config1 = write_config(shard1_dir / "config.yml", sim, probe_interval="5s", **state)
        agents = [
            await spawn(config0),
            # the flags win over a stray environment variable
            await spawn(
                config1, ("--shard", "1", "--total-shards", "2"), {"SOPHOS_EXPORTER_SHARD": "0"}
            ),
        ]
        try:

            async def probed_everything() -> bool:
                pages = [await a.page() for a in agents]
                probed = [
                    {lbl["tenant_id"] for _, lbl, _ in p[m.PROBE_SUCCESS] if lbl["tenant_id"]}
                    for p in pages
                ]
                return sum(len(p) for p in probed) >= len(tenant_ids)

            await wait_for(probed_everything, 60, "both shards to probe their tenants once")
            pages = [await a.page() for a in agents]
            arrived = sim.stats.arrivals(client_id)
        finally:
            for agent in agents:
                await kill(agent)

    made = []
    for ordinal, page in enumerate(pages):
        assert one(page[m.SHARD_ORDINAL]) == ordinal
        assert one(page[m.TOTAL_SHARDS]) == 2
        probed = {lbl["tenant_id"] for _, lbl, _ in page[m.PROBE_SUCCESS] if lbl["tenant_id"]}
        assert probed == {t for t in tenant_ids if shard_of(t, 2) == ordinal}
        listed = {lbl["tenant_id"] for _, lbl, _ in page[m.TENANT_INFO]}
        assert listed == probed, "a shard reports its own tenants only"
        requests = page[m.API_REQUESTS_TOTAL]
        pages_read = sum(v for _, lbl, v in requests if lbl["probe"] == "tenant_list")
        assert pages_read == 2, "each shard reads the whole list (150 tenants, 2 pages) itself"
        for window, limit in SHARD_LIMITS.items():
            allowed = one(page[m.RATE_LIMIT_ALLOWED_CALLS], window=window)
            assert allowed == math.floor(limit / 2), "each shard spends budget_share / 2"
        made.append(sum(v for _, lbl, v in requests))
        in_flight = one(page[m.API_REQUESTS_IN_FLIGHT])
        day = one(page[m.RATE_LIMIT_CALLS], window="1d")
        assert made[-1] <= day <= made[-1] + in_flight, "its own calls, not the other shard's"
    assert sum(made) <= arrived
    assert sim.stats.rate_limited(client_id) == 0
    assert set(probed_by(pages, 0)).isdisjoint(probed_by(pages, 1))


def probed_by(pages: list[Page], ordinal: int) -> set[str]:
    return {lbl["tenant_id"] for _, lbl, _ in pages[ordinal][m.PROBE_SUCCESS] if lbl["tenant_id"]}


def test_the_shard_can_come_from_the_environment_as_in_a_statefulset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        f"state_file: {tmp_path / 's.db'}\ntotal_shards: 3\n"
        "credentials: [{name: a, client_id: x, client_secret: y}]\n"
    )
    monkeypatch.setenv("SOPHOS_EXPORTER_SHARD", "2")
    settings = load_settings(path)
    assert (settings.shard, settings.total_shards) == (2, 3)
    assert settings.shard_budget_share == pytest.approx(0.1 / 3)
    flagged = apply_shard_flags(settings, 0, None)
    assert (flagged.shard, flagged.total_shards) == (0, 3)
    with pytest.raises(ConfigError, match=r"--shard: must be between 0 and total_shards - 1 \(1\)"):
        apply_shard_flags(settings, None, 2)


def test_a_shard_flag_out_of_range_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        f"state_file: {tmp_path / 's.db'}\n"
        "credentials: [{name: a, client_id: x, client_secret: y}]\n"
    )
    assert main(["run", "--config", str(path), "--shard", "3", "--total-shards", "3"]) == 2
    assert "--shard: must be between 0 and total_shards - 1 (2), got 3" in capsys.readouterr().err


def test_the_pre_1_28_fallback_takes_the_shard_from_the_pod_name() -> None:
    """The StatefulSet itself (deploy/kubernetes/shards) is rendered, validated and run in
    tests/test_kubernetes.py; docs/scaling.md keeps the fallback for older clusters."""
    text = (Path(__file__).parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
    [snippet] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    fallback = yaml.safe_load("x:\n" + snippet)["x"]
    assert "--shard" in fallback["args"][0]
    ordinal = subprocess.run(
        ["/bin/sh", "-c", 'echo "${HOSTNAME##*-}"'],
        env={"HOSTNAME": "sophos-central-exporter-12"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert ordinal == "12"
