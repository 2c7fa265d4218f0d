"""Fixtures: a started simulator over real loopback HTTP and a client to talk to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from agent.clock import Clock
from agent.simulator import Scenario, Simulator, build_scenario

StartSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators on ephemeral ports; every one is stopped after the test."""
    started: list[Simulator] = []

    async def start(scenario: Scenario | str, clock: Clock | None = None) -> Simulator:
        built = build_scenario(scenario) if isinstance(scenario, str) else scenario
        sim = Simulator(built, host="127.0.0.1", port=0, clock=clock)
        started.append(sim)
        await asyncio.wait_for(sim.start(), timeout=15)
        return sim

    yield start
    for sim in started:
        await asyncio.wait_for(sim.stop(), timeout=15)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http
