"""The running simulator: every host of a scenario on loopback, and the controls to steer it.

Listeners: the main host (id host + global API host + ``/_simulator/`` admin API), one regional
host per scenario region, the raw faulty host and the rogue listener. With ``port=0`` all ports
are ephemeral; with a fixed port the others follow it in that order (port+1 ... port+regions for
the regions, then the faulty host, then the rogue listener), so a user can predict them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from agent.clock import Clock, SystemClock
from agent.simulator.admin import ADMIN_PREFIX, AdminApi
from agent.simulator.asgi_host import AsgiHost
from agent.simulator.central import TOKEN_PATH, Central, HostUrls
from agent.simulator.drill import Drill
from agent.simulator.model import Scenario
from agent.simulator.raw_host import RawHost
from agent.simulator.rogue import RogueLog, RogueRecord
from agent.simulator.tls import TlsFiles
from agent.simulator.traffic import TrafficStats
from agent.simulator.wire import (
    HOST_FAULTY,
    HOST_MAIN,
    HOST_ROGUE,
    ApiRequest,
    Reply,
    region_host,
)

DEFAULT_AGENT_SETTINGS: dict[str, Any] = {
    "probe_interval": "30s",
    "token_probe_interval": "2m",
    "tenant_refresh_interval": "5m",
    "request_timeout": "5s",
}
"""Short intervals so a demo shows results quickly; scenarios may override them."""

_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - recognised, never bound by default


class _Host(Protocol):
    async def start(self, sockets: list[socket.socket]) -> None: ...

    async def stop(self) -> None: ...


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket.

    The protocol is given explicitly: asyncio enables TCP_NODELAY only on sockets whose ``proto``
    is IPPROTO_TCP, and without it uvicorn's separate header and body writes meet Nagle's
    algorithm and delayed ACKs, adding 40 ms to every keep-alive request.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"simulator cannot listen on {host}:{port}: {exc.strerror}"
        ) from exc
    sock.setblocking(False)
    return sock


def _rfc3339(at: float) -> str:
    """A wall time as the agent config's ``expires_at`` takes it, to the second before: the
    agent's date must come no later than the refusal."""
    return datetime.fromtimestamp(math.floor(at), UTC).isoformat().replace("+00:00", "Z")


def _port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


class Simulator:
    """A simulated Sophos Central serving ``scenario`` until ``stop``."""

    def __init__(
        self,
        scenario: Scenario,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        tls: TlsFiles | None = None,
        drill: Drill | None = None,
    ) -> None:
        self.scenario = scenario
        self.tls = tls
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._bind_host = host
        self._public_host = "::1" if host == "::" else ("127.0.0.1" if host in _WILDCARDS else host)
        self._port = port
        self._central = Central(scenario, self.clock, drill)
        self._rogue = RogueLog()
        self._admin = AdminApi(self._central, self._rogue, self.state)
        self._stopping = asyncio.Event()
        self._hosts: list[_Host] = []
        self._urls: HostUrls | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._urls is not None:
            raise RuntimeError("the simulator is already running")
        main, regions, faulty, rogue = self._bind_all()
        scheme = "http" if self.tls is None else "https"
        self._urls = HostUrls(
            main=_url(self._public_host, _port_of(main), scheme),
            regions=tuple(_url(self._public_host, _port_of(s), scheme) for s in regions),
            faulty=_url(self._public_host, _port_of(faulty), scheme),
            rogue=_url("localhost", _port_of(rogue[0]), scheme),
        )
        self._central.bind_urls(self._urls)
        tls, stopping = self.tls, self._stopping
        plan: list[tuple[_Host, list[socket.socket]]] = [
            (AsgiHost(HOST_MAIN, self._main_handler, self.clock, stopping, tls), [main]),
            *(
                (AsgiHost(region_host(i), self._central.handle, self.clock, stopping, tls), [s])
                for i, s in enumerate(regions)
            ),
            (RawHost(HOST_FAULTY, self._central.handle, self.clock, stopping, tls), [faulty]),
            (RawHost(HOST_ROGUE, self._rogue.handle, self.clock, stopping, tls), rogue),
        ]
        try:
            for host, sockets in plan:
                self._hosts.append(host)
                await host.start(sockets)
        except BaseException:
            await self.stop()
            for _, sockets in plan:
                for sock in sockets:
                    sock.close()
            raise

    def _bind_all(
        self,
    ) -> tuple[socket.socket, list[socket.socket], socket.socket, list[socket.socket]]:
        def port(offset: int) -> int:
            return 0 if self._port == 0 else self._port + offset

        bound: list[socket.socket] = []
        try:
            main = _bind(self._bind_host, self._port)
            bound.append(main)
            regions = []
            for i in range(self.scenario.regions):
                regions.append(_bind(self._bind_host, port(1 + i)))
                bound.append(regions[-1])
            faulty = _bind(self._bind_host, port(1 + self.scenario.regions))
            bound.append(faulty)
            rogue = [_bind("127.0.0.1", port(2 + self.scenario.regions))]
        except OSError:
            for sock in bound:
                sock.close()
            raise
        # "localhost" may resolve to ::1 first; answer there too when the system allows it.
        with contextlib.suppress(OSError):
            rogue.append(_bind("::1", _port_of(rogue[0])))
        return main, regions, faulty, rogue

    async def stop(self) -> None:
        """Stop every host; stalled and slow answers are released first."""
        self._stopping.set()
        hosts, self._hosts = self._hosts, []
        await asyncio.gather(*(host.stop() for host in hosts), return_exceptions=True)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _main_handler(self, req: ApiRequest) -> Reply:
        if req.path.startswith(ADMIN_PREFIX):
            return self._admin.handle(req)
        return self._central.handle(req)

    # --- where things are -----------------------------------------------------------------

    @property
    def urls(self) -> HostUrls:
        if self._urls is None:
            raise RuntimeError("the simulator has not been started")
        return self._urls

    @property
    def auth_url(self) -> str:
        return self.urls.main + TOKEN_PATH

    @property
    def api_url(self) -> str:
        return self.urls.main

    @property
    def region_urls(self) -> list[str]:
        return list(self.urls.regions)

    @property
    def faulty_url(self) -> str:
        return self.urls.faulty

    @property
    def rogue_url(self) -> str:
        return self.urls.rogue

    def api_host_of(self, tenant_id: str) -> str | None:
        """The ``apiHost`` a tenant is listed with (None: not activated)."""
        return self._central.api_host_of(tenant_id)

    def announcement(self) -> dict[str, Any]:
        """Where everything is, without secrets: what ``serve`` prints."""
        return {
            "scenario": self.scenario.name,
            "auth_url": self.auth_url,
            "api_url": self.api_url,
            "region_urls": self.region_urls,
            "faulty_url": self.faulty_url,
            "rogue_url": self.rogue_url,
            "admin_url": self.api_url + ADMIN_PREFIX.rstrip("/"),
            "started_at": round(self._central.started_at, 3),
            "credentials": [c.name for c in self.scenario.credentials],
            "ca_file": None
            if self.tls is None or self.tls.ca_file is None
            else str(self.tls.ca_file),
        }

    def agent_config(self) -> dict[str, Any]:
        """A config for the exporter pointed at this simulator (it contains secrets)."""
        config: dict[str, Any] = {
            "auth_url": self.auth_url,
            "api_url": self.api_url,
            "allowed_api_hosts": [self._public_host],
            "rate_limits": dict(self.scenario.rate_limits),
            **(
                {}
                if self.tls is None or self.tls.ca_file is None
                else {"ca_bundle": str(self.tls.ca_file)}
            ),
            **DEFAULT_AGENT_SETTINGS,
            **self.scenario.agent_overrides,
        }
        config["credentials"] = [
            {
                "name": c.name,
                "client_id": c.client_id,
                "client_secret": c.configured_secret,
                **({} if c.expires_at is None else {"expires_at": _rfc3339(c.expires_at)}),
            }
            for c in self.scenario.credentials
        ]
        return config

    # --- observation ----------------------------------------------------------------------

    @property
    def stats(self) -> TrafficStats:
        return self._central.stats

    @property
    def rogue_requests(self) -> list[dict[str, str]]:
        """Headers (lower-case names) of every request that reached the rogue listener."""
        return self._rogue.header_dicts

    @property
    def rogue_records(self) -> list[RogueRecord]:
        return list(self._rogue.records)

    def state(self) -> dict[str, Any]:
        state = self._central.state()
        state["rogue_requests"] = self._rogue.total
        if self._urls is not None:
            state["urls"] = self.announcement()
        return state

    # --- control --------------------------------------------------------------------------

    def set_fault(self, tenant_id: str, fault: str | None) -> None:
        self._central.set_fault(tenant_id, fault)

    def fault_of(self, tenant_id: str) -> str | None:
        return self._central.fault_of(tenant_id)

    def rotate_secret(self, credential_name: str) -> str:
        return self._central.rotate_secret(credential_name)

    def expire_tokens(self, credential_name: str) -> int:
        return self._central.expire_tokens(credential_name)

    def expire_credential(self, credential_name: str, at: float | None = None) -> None:
        """From wall time ``at`` (default: now) the id host refuses the credential."""
        self._central.expire_credential(credential_name, at)

    def active_faults(self) -> dict[str, Any]:
        """What is broken now (tenant faults, outage, throttles, drill entries) and the drill."""
        return self._central.active_faults()

    @property
    def drill(self) -> Drill | None:
        return self._central.drill

    def elapsed(self) -> float:
        """Seconds since the hosts started, on the simulator's clock (the drill's time)."""
        return self._central.elapsed()

    def set_outage(self, on: bool) -> None:
        self._central.outage = on

    @property
    def outage(self) -> bool:
        return self._central.outage
