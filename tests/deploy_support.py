"""Helpers shared by the tests of what users deploy: the image, the wheel, the manifests.

Free loopback ports, a bounded wait for an HTTP answer, and the samples of one metric family.
Every wait has a deadline and says what it waited for when it gives up.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive free ports (the simulator's hosts follow its port)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20_000, 60_000)
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no block of {count} free ports found")


def wait_http(
    url: str,
    within: float,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    alive: Callable[[], str | None] = lambda: None,
) -> httpx.Response:
    """The first answer from ``url`` that ``accept`` takes, polling until ``within`` seconds.

    ``alive`` returns why the server can no longer answer (it exited), so a crash fails at once
    with its reason instead of at the deadline.
    """
    deadline = time.monotonic() + within
    last = "no answer"
    with httpx.Client(timeout=5, trust_env=False) as client:
        while True:
            try:
                response = client.get(url)
                if accept(response):
                    return response
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            gone = alive()
            if gone is not None:
                raise AssertionError(f"{url}: the server is gone ({gone}); last answer: {last}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {url}: {last}")
            time.sleep(0.2)


def samples(metrics_text: str, family: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of ``family`` on a /metrics page."""
    for parsed in text_string_to_metric_families(metrics_text):
        if parsed.name == family:
            return [(dict(s.labels), s.value) for s in parsed.samples]
    return []
