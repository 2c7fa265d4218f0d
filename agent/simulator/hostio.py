"""What both kinds of host share: the handler they carry requests to, and how they misbehave.

The well-formed host (``asgi_host``) and the raw host (``raw_host``) both wait on the simulator's
clock without outliving ``stop`` and both reset connections on purpose; this module holds those
pieces so that neither host imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

from agent.clock import Clock
from agent.simulator.wire import ApiRequest, Reply

Handler = Callable[[ApiRequest], Reply]
"""The simulated service behind a host: one request in, one reply out."""


def reset_transport(transport: asyncio.WriteTransport) -> None:
    """Close with a TCP RST: SO_LINGER with a zero timeout makes the close abort the connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def pause(clock: Clock, seconds: float, stopping: asyncio.Event) -> bool:
    """Wait ``seconds`` on the clock; False when the simulator began stopping first."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stopping.wait())
    done, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return sleeper in done
