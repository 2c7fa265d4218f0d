"""A real agent in its own process, for the compression-bomb tests: ``python -m
tests.e2e.bomb_agent CONFIG``.

It runs three probe cycles (what ``check`` runs) against the test's loopback server: a warm-up,
the cycle whose tenant answer is the bomb, and one more to show the agent goes on. It prints one
JSON line: every probe result, the API request counters, and the process's peak resident memory
(``ru_maxrss``) before and after the bomb cycle, measured here because only the process itself
knows its own peak.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
from typing import Any

from agent.config import load_settings
from agent.runtime import Agent


def peak_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def run(config: str) -> dict[str, Any]:
    agent = Agent(load_settings(config), process_metrics=False)
    cycles: list[list[dict[str, Any]]] = []
    try:
        for cycle in range(3):
            if cycle == 1:
                gc.collect()
                before = peak_kib()
            results = await agent.run_cycle()
            if cycle == 1:
                after = peak_kib()
            cycles.append(
                [
                    {
                        "probe": r.probe,
                        "status_code": r.status_code,
                        "error_code": r.error_code,
                        "cause": r.cause,
                        "message": r.message,
                    }
                    for r in results
                ]
            )
        metrics = agent.render_metrics().decode()
    finally:
        await agent.stop(grace=0)
    requests = [
        line
        for line in metrics.splitlines()
        if line.startswith("sophos_central_api_requests_total")
    ]
    return {
        "cycles": cycles,
        "requests": requests,
        "peak_before_kib": before,
        "peak_after_kib": after,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(sys.argv[1]))))
