"""Run a named scenario until cancelled: the body of ``sophos-central-exporter simulate``.

It prints exactly one line of JSON on start (where everything is, credential names, no secrets)
so that a parent process can read the URLs. Secrets reach the agent only through the optional
config file, written with owner-only permissions.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TextIO

import yaml

from agent.simulator.scenarios import build_scenario
from agent.simulator.simulator import Simulator


def write_agent_config(sim: Simulator, path: str) -> None:
    """Write the agent config (it holds secrets) readable by the owner only."""
    text = yaml.safe_dump(sim.agent_config(), sort_keys=False, allow_unicode=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


async def serve(
    scenario_name: str,
    host: str = "127.0.0.1",
    port: int = 9867,
    *,
    agent_config_path: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve ``scenario_name`` on ``host:port`` (and the ports after it) until cancelled."""
    sim = Simulator(build_scenario(scenario_name), host=host, port=port)
    await sim.start()
    try:
        announcement = sim.announcement()
        if agent_config_path is not None:
            write_agent_config(sim, agent_config_path)
            announcement["agent_config_path"] = agent_config_path
        stream = sys.stdout if out is None else out
        stream.write(json.dumps(announcement, ensure_ascii=False) + "\n")
        stream.flush()
        await asyncio.Event().wait()
    finally:
        await sim.stop()
