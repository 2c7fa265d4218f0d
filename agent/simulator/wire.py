"""Framework-neutral requests and replies.

The simulated service is plain synchronous code that turns an ``ApiRequest`` into a ``Reply``; the
hosts (starlette on uvicorn for well-formed HTTP, a raw asyncio server for broken HTTP) only carry
them. That keeps the behaviour of Sophos Central testable without sockets and identical on every
host, and lets one ``Reply`` describe transport-level misbehaviour that no framework would produce.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

HOST_MAIN = "main"
"""The id host and the global API host share one listener."""
HOST_FAULTY = "faulty"
"""The raw host that serves tenants whose scenario fault breaks HTTP itself."""
HOST_ROGUE = "rogue"
"""The listener behind ``http://localhost:<port>``: not Sophos, it only records."""


def region_host(index: int) -> str:
    """The host key of the regional host ``index``."""
    return f"region-{index}"


Transport = Literal["normal", "reset", "truncate", "stall"]


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One HTTP request as the simulated service sees it.

    ``headers`` has lower-case names; ``host`` is the key of the listener it arrived at, which is
    how the service knows whether a tenant call reached that tenant's own host.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    host: str


@dataclass(frozen=True, slots=True)
class Reply:
    """What a host should send back.

    ``delay`` postpones the whole answer (the ``slow`` fault). ``transport`` asks for misbehaviour
    below HTTP: ``reset`` sends a TCP RST and nothing else, ``truncate`` declares the full
    Content-Length but sends half the body and closes, ``stall`` sends the headers and then
    nothing until the client gives up or the simulator stops.
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    transport: Transport = "normal"


def json_reply(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON reply; compact separators keep large tenant pages small on the wire."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Reply(status, body, (("content-type", "application/json"), *headers))
