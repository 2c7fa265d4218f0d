"""The agent as ``run`` runs it, on a wall clock that a test steps (NTP, a resumed VM).

    python -m tests.e2e.stepped_agent --config agent.yml --listen 127.0.0.1:PORT --offset-file F

``F`` holds the seconds the wall clock is off (``-3600``: stepped back an hour); the test rewrites
it and the agent's clock follows within milliseconds. The monotonic clock is the system's, as a
real step leaves it: everything but ``Clock.time`` is the real thing (``AgentService``: scheduler,
rate budget, state file, HTTP server and client).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path

from agent.clock import SystemClock
from agent.config import load_settings
from agent.logs import setup_logging
from agent.server import AgentService


class SteppedClock(SystemClock):
    """The system clock, with the wall clock off by what the offset file says."""

    def __init__(self, offset_file: Path) -> None:
        self._path = offset_file
        self._stamp = -1
        self._offset = 0.0
        self._checked = -1.0

    def time(self) -> float:
        now = time.monotonic()
        if now - self._checked >= 0.02:
            self._checked = now
            stamp = os.stat(self._path).st_mtime_ns
            if stamp != self._stamp:
                self._stamp = stamp
                self._offset = float(self._path.read_text().strip() or 0)
        return time.time() + self._offset


async def serve(config: str, listen: str, offset_file: Path) -> None:
    settings = load_settings(config)
    setup_logging(settings.log_format, settings.log_level)
    service = AgentService(settings, listen, clock=SteppedClock(offset_file))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="tests.e2e.stepped_agent")
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--offset-file", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.config, args.listen, args.offset_file))


if __name__ == "__main__":
    main()
