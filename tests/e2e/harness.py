"""A running simulator + agent pair on loopback, for end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Settings, load_settings
from agent.logs import setup_logging
from agent.server import AgentService
from agent.simulator import Drill, Scenario, Simulator, TlsFiles, tagged


@dataclass
class Stack:
    sim: Simulator
    service: AgentService
    settings: Settings
    config_path: Path
    logs: io.StringIO

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.base_url + path, **kwargs)

    async def metrics(self) -> dict[str, list[tuple[str, dict[str, str], float]]]:
        """Scraped samples by metric family name: (sample name, labels, value)."""
        text = (await self.get("/metrics")).text
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return families


async def start_stack(
    scenario: Scenario,
    tmp: Path,
    tls: TlsFiles | None = None,
    drill: Drill | None = None,
    **overrides: Any,
) -> Stack:
    """The simulator (serving HTTPS with ``tls``, running ``drill``) and an agent configured
    for it."""
    sim = Simulator(scenario, host="127.0.0.1", port=0, tls=tls, drill=drill)
    await sim.start()
    config = {
        **sim.agent_config(),
        "state_file": str(tmp / "state.db"),
        "web_listen_address": "127.0.0.1:0",
        **overrides,
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    logs = io.StringIO()
    setup_logging("json", "info", stream=logs)
    settings = load_settings(path)
    service = AgentService(settings, process_metrics=False)
    await service.start()
    return Stack(sim, service, settings, path, logs)


GENEROUS_LIMITS = {"1s": 1000, "1m": 60_000, "1h": 10_000_000, "1d": 100_000_000}
"""Limits under which short test periods are never stretched and `check` runs beside the agent."""


async def start_ready_stack(
    scenario: Scenario,
    tmp: Path,
    within: float,
    tls: TlsFiles | None = None,
    drill: Drill | None = None,
    **overrides: Any,
) -> Stack:
    """A stack under ``GENEROUS_LIMITS`` whose first probe cycle is complete (/readyz 200)."""
    scenario.rate_limits.update(GENEROUS_LIMITS)
    stack = await start_stack(scenario, tmp, tls, drill, budget_share=1.0, **overrides)

    async def ready() -> bool:
        return (await stack.get("/readyz")).status_code == 200

    try:
        await wait_for(ready, within, "/readyz to turn 200 after the first full cycle")
    except BaseException:
        await stop_stack(stack)
        raise
    return stack


def tenant_tagged(stack: Stack, tag: str) -> str:
    """The id of the one scenario tenant whose name ends with ``[tag]``."""
    (tenant,) = tagged(stack.sim.scenario, tag)
    return tenant.id


async def stop_stack(stack: Stack) -> None:
    await stack.service.stop(grace=0.5)
    await stack.sim.stop()
    logging.getLogger().handlers.clear()


async def wait_for(
    condition: Callable[[], Any], within: float, what: str, interval: float = 0.1
) -> Any:
    """Poll an (async or plain) condition until it is truthy; fail with ``what`` after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)
