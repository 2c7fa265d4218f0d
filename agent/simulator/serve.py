"""Run a named scenario until cancelled: the body of ``sophos-central-exporter simulate``.

It prints exactly one line of JSON on standard output on start (where everything is, credential
names, the CA file when serving HTTPS, no secrets) so that a parent process can read the URLs;
what a person needs (how to trust the CA, each drill fault as it starts and ends) goes to the log
on standard error. Secrets reach the agent only through the optional config file, written with
owner-only permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import yaml

from agent.simulator.drill import load_drill
from agent.simulator.scenarios import build_scenario
from agent.simulator.simulator import Simulator
from agent.simulator.tls import make_tls, trust_instructions

log = logging.getLogger("agent.simulator")


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
    tls_dir: str | None = None,
    tls: bool = False,
    drill_path: str | None = None,
    notes: TextIO | None = None,
) -> None:
    """Serve ``scenario_name`` on ``host:port`` (and the ports after it) until cancelled.

    With ``tls`` every host serves HTTPS from a CA made now, written to ``tls_dir`` (a temporary
    directory removed on the way out when not given). ``drill_path`` is checked before anything
    listens (``DrillError``).
    """
    scenario = build_scenario(scenario_name)
    drill = None if drill_path is None else load_drill(drill_path, scenario)
    workdir = None
    if tls and tls_dir is None:
        workdir = Path(tempfile.mkdtemp(prefix="sophos-central-simulator-"))
    try:
        directory = Path(tls_dir) if tls_dir else workdir
        files = make_tls(directory) if tls and directory is not None else None
        sim = Simulator(scenario, host=host, port=port, tls=files, drill=drill)
        await _run(sim, agent_config_path, out, notes)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(
    sim: Simulator, agent_config_path: str | None, out: TextIO | None, notes: TextIO | None
) -> None:
    await sim.start()
    announcer = None
    try:
        announcement = sim.announcement()
        if agent_config_path is not None:
            write_agent_config(sim, agent_config_path)
            announcement["agent_config_path"] = agent_config_path
        stream = sys.stdout if out is None else out
        stream.write(json.dumps(announcement, ensure_ascii=False) + "\n")
        stream.flush()
        if sim.tls is not None and sim.tls.ca_file is not None:
            text = (
                "\n".join(trust_instructions(sim.tls.ca_file, sim.api_url, agent_config_path))
                + "\n"
            )
            (sys.stderr if notes is None else notes).write(text)
        if sim.drill is not None:
            announcer = asyncio.create_task(announce_drill(sim))
        await asyncio.Event().wait()
    finally:
        if announcer is not None:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
        await sim.stop()


async def announce_drill(sim: Simulator) -> None:
    """Log each drill fault as it starts and as it ends, on the simulator's clock."""
    drill = sim.drill
    if drill is None:
        return
    for at, what, fault in drill.transitions():
        wait = at - sim.elapsed()
        if wait > 0:
            await sim.clock.sleep(wait)
        log.info(
            f"drill fault {what}",
            extra={
                "drill": fault.name,
                "fault": fault.fault,
                "target": fault.target.describe(),
                "at": f"{at:g}s",
            },
        )
