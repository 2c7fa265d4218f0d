"""Fixtures shared by the tests that replay answers through the agent's real client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.test_real_bodies import Failures, ReplayServer


@pytest.fixture
def failures() -> Iterator[Failures]:
    """The ``probe failed`` log records of the test, whatever the root logger's level is."""
    logger = logging.getLogger("agent.probes")
    handler, level = Failures(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ReplayServer]:
    """A loopback HTTP server that answers each route as the test tells it."""
    replay = ReplayServer()
    await replay.start()
    yield replay
    await replay.stop()
