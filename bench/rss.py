"""d. Peak RSS of the agent process at 10,000 tenants.

The real command line, ``python -m agent run --config ...``, against the ``scale-10k`` simulator
in another process, with limits raised so that it actually lists all 100 pages and probes every
tenant every 30 s (about 330 probes a second). The run lasts until the first full cycle is done
(``/readyz``) and then one more period, with a scrape of ``/metrics`` (plain and gzipped) every
few seconds, as Prometheus would. Peak RSS is the kernel's high-water mark of the agent process
(``VmHWM`` in /proc/<pid>/status), read at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import (
    children,
    free_port,
    memory_kib,
    parse_page,
    read_yaml,
    scrape,
    spawn,
    start_simulator,
    wait_until,
)

LIMITS = {"1s": 2_000, "1m": 100_000, "1h": 10_000_000, "1d": 100_000_000}
PERIOD_SECONDS = 30
SCRAPE_EVERY = 5.0


async def run(workdir: Path) -> dict[str, Any]:
    with children() as running:
        sim = start_simulator(workdir, "scale-10k", LIMITS)
        running.append(sim)
        config = read_yaml(sim.announcement["agent_config_path"])
        config.update(
            {
                "probe_interval": f"{PERIOD_SECONDS}s",
                "budget_share": 1.0,
                "state_file": str(workdir / "rss-state.db"),
                "log_level": "warning",
            }
        )
        config_path = workdir / "rss-agent.yml"
        config_path.write_text(yaml.safe_dump(config))
        config_path.chmod(0o600)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        agent = spawn(
            "agent-rss",
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
            workdir,
        )
        running.append(agent)
        started = time.monotonic()
        scrapes = 0

        async def ready() -> bool:
            agent.check()
            try:
                async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                    return (await client.get(base + "/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        async def scrape_now() -> int:
            nonlocal scrapes
            scrapes += 1
            return len((await scrape(base, gzip=scrapes % 2 == 0)).content)

        async def ready_while_scraped() -> bool:
            if await ready():
                return True
            if time.monotonic() - started > 10:
                await scrape_now()
            return False

        await wait_until(ready_while_scraped, 240, "the first full cycle", every=SCRAPE_EVERY)
        first_cycle = time.monotonic() - started
        deadline = time.monotonic() + PERIOD_SECONDS
        while time.monotonic() < deadline:
            agent.check()
            await scrape_now()
            await asyncio.sleep(SCRAPE_EVERY)
        text = (await scrape(base)).text
        memory = memory_kib(agent.pid)
    page = parse_page(text)
    probes = sum(
        v
        for labels, v in page.get("sophos_central_api_requests_total", [])
        if labels.get("probe") == "tenant"
    )
    return {
        "tenants_listed": len(page.get("sophos_central_tenant_info", [])),
        "tenant_probes": int(probes),
        "probe_interval": f"{PERIOD_SECONDS}s",
        "first_cycle_seconds": first_cycle,
        "run_seconds": time.monotonic() - started,
        "scrapes": scrapes + 1,
        "peak_rss_mib": memory["VmHWM"] / 1024,
        "rss_at_end_mib": memory["VmRSS"] / 1024,
        "metrics_page_bytes": len(text.encode()),
    }
