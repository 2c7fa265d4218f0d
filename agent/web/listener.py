"""The listening socket of the HTTP server, bounded so that no client can take the agent down.

uvicorn accepts every connection it is offered and keeps it as long as the client likes: a client
that never finishes its request head (slowloris) or never sends a byte holds a file descriptor
for good, and once the process runs out of descriptors the agent's own probes to Sophos fail
(``connect_error``) and asyncio logs a traceback for every failed ``accept``. So the agent accepts
connections itself and hands each to uvicorn's own HTTP/1.1 protocol:

- **A cap on connections** (``ConnectionBudget``), below the file-descriptor limit with a reserve
  for outgoing probes, the state file and the log. At the cap, the connection that has waited
  longest for its request head (an idle keep-alive connection, a slowloris, a TLS handshake that
  never ends) is closed to make room: a client that sends its request at once, as Prometheus and
  a liveness probe do, always gets in. Only when every connection is busy with a request does
  the agent stop accepting until one finishes (the kernel's backlog holds the rest).
- **A request-head timeout** (``HEAD_TIMEOUT``): the whole head must arrive within it, counted
  from the accept (TLS handshake included) or, on a kept-alive connection, from the first byte of
  the next request, as Go's ``ReadHeaderTimeout`` and hyper's ``header_read_timeout`` do. uvicorn
  has no such timeout: its keep-alive timer is cancelled by the first byte received.
  ``HeadTimeoutH11Protocol`` adds it to uvicorn's own h11 protocol class.
- **Keep-alive limits**: an idle kept-alive connection is closed after ``KEEP_ALIVE_TIMEOUT``
  (uvicorn's timer) and is the first to go when the cap is reached.
- **One log line per condition**: running out of descriptors, reaching the cap and closing slow
  heads are each logged once, then at most once a minute with the count since
  (``ThrottledLog``), never a traceback per connection.

``raise_nofile_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard one at start-up, as the Go
runtime does for every Go exporter, so the cap is rarely the soft limit's 1,024.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.web.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a complete request head (Prometheus sends it at once)."""
KEEP_ALIVE_TIMEOUT = 5
"""Seconds an idle kept-alive connection stays open (uvicorn's timer, whole seconds)."""
MAX_CONNECTIONS = 512
"""Connections served at once, at most: a metrics port has a few scrapers, not thousands."""
MIN_CONNECTIONS = 16
GRACE = 1.0
GRACE_TURNS = 8
MIN_GRACE = 0.1
"""At the cap, a waiting connection is closed for a newcomer only once it has waited ``GRACE``
seconds, or ``MIN_GRACE`` seconds and ``GRACE_TURNS`` turns of the accept loop (each a turn of
the event loop, so its bytes, if any came, have been read)."""
ACCEPTS_PER_TURN = 64
"""Connections accepted in one turn of the event loop, before the others get theirs."""
BUSY_DEADLINE = 60.0
"""A request still being answered after this long may be closed to make room at the cap."""
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_nofile_limit() -> tuple[int, int]:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; return (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def open_descriptors() -> int:
    """Descriptors this process has open now (Linux); 0 where it cannot be known."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(reserve: int, maximum: int = MAX_CONNECTIONS) -> int:
    """How many connections the listener may hold: what the descriptor limit leaves after the
    descriptors open now and ``reserve`` more (outgoing probes, files), at most ``maximum``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - open_descriptors() - reserve
    if room < MIN_CONNECTIONS:
        log.warning(
            "the file-descriptor limit leaves room for only %d HTTP connections after the "
            "reserve for probes; raise the limit (ulimit -n, LimitNOFILE=) above %d",
            max(room, 0),
            soft + MIN_CONNECTIONS - room,
        )
    return max(MIN_CONNECTIONS, min(maximum, room))


@dataclass(eq=False)
class Connection:
    """One accepted connection, from ``accept`` to its close."""

    accepted: float
    close: Callable[[], object]
    busy_since: float | None = None
    protocol_made: bool = False


@dataclass
class ConnectionBudget:
    """The connections the listener holds, and which to close first when it is full.

    ``waiting`` maps the connections without a request in progress (handshaking, sending their
    head, idle between requests) to when they began to wait (time, and the accept loop's turn),
    oldest first. A newcomer may take the place of the oldest one once it has had its chance
    (``GRACE`` seconds or ``GRACE_TURNS`` turns: a client that sends its request at once is never
    closed before it is read), or of a request still being answered after ``BUSY_DEADLINE`` (a
    client that does not read its answer).
    """

    cap: int
    live: set[Connection] = field(default_factory=set)
    waiting: OrderedDict[Connection, tuple[float, int]] = field(default_factory=OrderedDict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    turn: int = 0

    def add(self, conn: Connection) -> None:
        self.live.add(conn)
        self.waiting[conn] = (conn.accepted, self.turn)

    def release(self, conn: Connection) -> None:
        if conn in self.live:
            self.live.discard(conn)
            self.waiting.pop(conn, None)
            self.changed.set()

    def busy(self, conn: Connection, now: float) -> None:
        self.waiting.pop(conn, None)
        if conn.busy_since is None:
            conn.busy_since = now

    def idle(self, conn: Connection, now: float) -> None:
        """Waiting again (a response is complete): last in line to be closed. A connection that
        is already waiting keeps its place, however many bytes of a head it trickles."""
        if conn in self.live and conn not in self.waiting:
            conn.busy_since = None
            self.waiting[conn] = (now, self.turn)
            self.changed.set()

    @property
    def full(self) -> bool:
        return len(self.live) >= self.cap

    def victim(self, now: float) -> Connection | None:
        """The connection to close for a newcomer, or None if none may be closed yet."""
        for conn, (since, turn) in self.waiting.items():
            age = now - since
            had_its_chance = age >= GRACE or (age >= MIN_GRACE and self.turn - turn >= GRACE_TURNS)
            return conn if had_its_chance else None
        busy = [(c.busy_since, id(c), c) for c in self.live if c.busy_since is not None]
        if busy:
            since, _, oldest = min(busy)
            if now - since > BUSY_DEADLINE:
                return oldest
        return None


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head and a place in the budget.

    The deadline starts at the accept (so a TLS handshake counts) and, on a kept-alive
    connection, at the first byte of the next request; it ends when h11 has parsed a whole head
    (``their_state`` leaves ``IDLE``). A connection that misses it is closed without an answer.
    """

    def __init__(
        self,
        *args: Any,
        connection: Connection,
        budget: ConnectionBudget,
        head_timeout: float,
        on_slow_head: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._connection = connection
        self._budget = budget
        self._head_timeout = head_timeout
        self._on_slow_head = on_slow_head
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._connection.protocol_made = True
        self._connection.close = transport.close
        remaining = self._connection.accepted + self._head_timeout - time.monotonic()
        self._arm(max(0.0, remaining))

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm(self._head_timeout)  # the first byte of the next request
        super().data_received(data)
        self._check_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._check_head()  # a pipelined request may already be parsed

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._budget.release(self._connection)
        super().connection_lost(exc)

    def _check_head(self) -> None:
        if self.conn.their_state is not h11.IDLE:
            self._disarm()
            self._budget.busy(self._connection, time.monotonic())
        elif self.cycle is None or self.cycle.response_complete:
            self._budget.idle(self._connection, time.monotonic())

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(delay, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._on_slow_head()
            self.transport.close()


class BoundedServer:
    """uvicorn serving ``app`` on ``sock``, with connections accepted within a budget.

    uvicorn's ``Server`` runs the lifespan, the date header and the graceful shutdown; it is
    started with no sockets of its own (``serve(sockets=[])``) and the accept loop here hands its
    protocol every connection, TLS included (``connect_accepted_socket``). ``cap`` comes from
    ``connection_cap``; ``port`` is known once bound (``port=0`` binds an ephemeral one).
    """

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
        cap: int,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.server = make_uvicorn_server(app, ssl_context)
        self.sock = sock
        self.ssl_context = ssl_context
        self.budget = ConnectionBudget(cap)
        self.head_timeout = head_timeout
        self._serving: asyncio.Task[None] | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._out_of_descriptors = ThrottledLog(
            "cannot accept HTTP connections: the process is out of file descriptors "
            "(raise the limit: ulimit -n, LimitNOFILE=)"
        )
        self._full = ThrottledLog(
            f"HTTP connection limit reached ({cap} at once): closing the connections that "
            "waited longest for a request"
        )
        self._slow_head = ThrottledLog(
            f"closed HTTP connections that sent no complete request within {head_timeout:g} s"
        )

    @property
    def port(self) -> int:
        port = self.sock.getsockname()[1]
        assert isinstance(port, int)
        return port

    @property
    def serving(self) -> asyncio.Task[None]:
        """uvicorn's ``serve`` task: done when the server stopped (or failed to start)."""
        assert self._serving is not None, "not started"
        return self._serving

    async def start(self, deadline: float = 10.0) -> None:
        """Run uvicorn's start-up, then accept connections."""
        loop = asyncio.get_running_loop()
        self._serving = loop.create_task(self.server.serve(sockets=[]))
        async with asyncio.timeout(deadline):
            while not self.server.started:  # uvicorn offers a flag, not an event
                if self._serving.done():
                    self._serving.result()  # re-raise the failure
                    raise RuntimeError("the HTTP server stopped before it started")
                await asyncio.sleep(0.005)
        self._accepting = loop.create_task(self._accept_loop())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close the socket, let uvicorn finish the requests in progress."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self.sock.close()
        self.server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._serving, timeout=grace)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            turn = 0
            while True:
                await self._room()
                try:
                    client, _ = await loop.sock_accept(self.sock)
                except OSError as exc:
                    await self._accept_failed(exc)
                    continue
                if self.budget.full:  # taken while we waited in accept
                    self._evict(self.budget.victim(time.monotonic()))
                self._admit(client)
                turn += 1
                if turn >= ACCEPTS_PER_TURN:
                    turn = 0
                    await self._next_turn()
        finally:
            for task in list(self._handshakes):
                task.cancel()

    async def _next_turn(self) -> None:
        """Let the event loop run everything else once (reads of accepted connections too)."""
        await asyncio.sleep(0)
        self.budget.turn += 1

    async def _room(self) -> None:
        """Wait until a newcomer fits: below the cap, or with a connection that may be closed."""
        while self.budget.full and self.budget.victim(time.monotonic()) is None:
            self._full()
            if self.budget.waiting:
                await self._next_turn()  # the young ones get their reads while they come of age
                await asyncio.sleep(MIN_GRACE / 10)
                continue
            self.budget.changed.clear()  # everyone is busy: wait for one to finish
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.budget.changed.wait()

    def _evict(self, victim: Connection | None) -> None:
        if victim is not None:
            self._full()
            self.budget.release(victim)
            victim.close()

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in _OUT_OF_DESCRIPTORS:
            # The cap was too high for what the rest of the process uses: lower it and make room.
            self._out_of_descriptors(os.strerror(exc.errno or 0))
            self.budget.cap = max(MIN_CONNECTIONS, len(self.budget.live) - 1)
            if self.budget.full:
                self._evict(self.budget.victim(time.monotonic()))
            await asyncio.sleep(0.1)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
            raise exc  # the listening socket itself is broken

    def _admit(self, client: socket.socket) -> None:
        client.setblocking(False)
        connection = Connection(accepted=time.monotonic(), close=client.close)
        self.budget.add(connection)
        task = asyncio.get_running_loop().create_task(self._connect(client, connection))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        connection.close = task.cancel  # until the protocol has the transport

    async def _connect(self, client: socket.socket, connection: Connection) -> None:
        config = self.server.config

        def protocol() -> HeadTimeoutH11Protocol:
            return HeadTimeoutH11Protocol(
                config=config,
                server_state=self.server.server_state,
                app_state=self.server.lifespan.state,
                connection=connection,
                budget=self.budget,
                head_timeout=self.head_timeout,
                on_slow_head=self._slow_head,
            )

        tls = self.ssl_context
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol,
                client,
                ssl=tls,
                ssl_handshake_timeout=self.head_timeout if tls is not None else None,
            )
        except (Exception, asyncio.CancelledError):
            if not connection.protocol_made:
                self.budget.release(connection)
                client.close()
                if time.monotonic() - connection.accepted >= self.head_timeout:
                    self._slow_head()  # a TLS handshake that never finished


def make_uvicorn_server(
    app: ASGIApp, ssl_context: ssl.SSLContext | None, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn ``Server`` for ``app`` whose connections come from ``BoundedServer``.

    uvicorn builds its own ``SSLContext`` from ``ssl_certfile`` & co. inside ``Config.load()``,
    and that builder cannot express ``min_version``, ``client_auth_type`` modes or inline PEM, so
    the config is loaded here and ``config.ssl`` replaced with ours. ``log_config=None`` leaves
    logging to the agent's own setup.
    """
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,
        http=HeadTimeoutH11Protocol,
        ws="none",
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        timeout_graceful_shutdown=5,
    )
    config.load()
    config.ssl = ssl_context
    server = uvicorn.Server(config)
    server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
    return server


@contextlib.contextmanager
def _no_signal_capture() -> Iterator[None]:
    """uvicorn would re-raise SIGTERM after its shutdown (exit 143); the CLI handles signals and
    exits 0, as supervisors expect of a clean stop."""
    yield
