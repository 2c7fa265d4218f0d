"""What stands in front of every route when a web config is given: the request rate limit, basic
auth and the response headers (``WebSecurityMiddleware``).

bcrypt is slow on purpose (cost 10 is 50-100 ms of CPU), which makes basic auth the cheapest way
to keep the agent busy: 128 connections sending wrong passwords once queued every login behind
them, and a valid scrape that was not yet cached waited 12-14 s, past Prometheus's scrape
timeout. So:

- a successful check is remembered (``cachetools.TTLCache``, five minutes) under an HMAC of user,
  hash and password with a per-process key: scrapes after the first cost no bcrypt, and the
  password itself is never kept;
- unverified attempts are counted per client address (an IPv6 address by its /64) in a token
  bucket each (``LoginAttempts``), a success giving its token back: past ``FAILURE_BURST``
  failures, an address's unverified attempts get ``429`` with ``Retry-After`` and cost no bcrypt
  until its bucket refills; cached logins still pass;
- bcrypt runs in worker threads, a few at once (``BcryptQueue``), and attempts from addresses
  without recent failures go first: a wrong-password flood queues behind itself, not in front of
  a valid scrape; the queue of suspect attempts is bounded (beyond it: ``429`` at once).

Unknown users are checked against a dummy hash of the same cost, so response time does not tell
which user names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from collections.abc import Iterable
from typing import Literal

import bcrypt
from cachetools import TTLCache
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.clock import Clock, SystemClock
from agent.tokenbucket import TokenBucket
from agent.web.schema import WebConfig
from agent.web.throttled_log import ThrottledLog

logger = logging.getLogger(__name__)

DEFAULT_REALM = "sophos-central-exporter"
FAILURE_BURST = 10
"""Failed logins an address may have before it is slowed down."""
FAILURE_REFILL_SECONDS = 6.0
"""Then one more attempt per this many seconds (10 a minute)."""
BCRYPT_WORKERS = 2
"""bcrypt checks at once (each takes a core while it runs)."""
MAX_SUSPECT_WAITING = 32
"""Attempts from addresses with recent failures that may wait for bcrypt; more get 429."""

Verdict = Literal["ok", "refused", "throttled"]


class LoginAttempts:
    """Unverified basic-auth attempts per client address, as token buckets on the agent's clock.

    Every attempt that needs bcrypt spends a token of its address, taken before the check (so a
    burst of concurrent attempts cannot all get in before the first one fails); a successful
    login gives it back. An address whose bucket is full has no recent failure: it is ``clean``,
    and its attempts go first. The buckets live in a ``TTLCache``: one untouched long enough to
    be full again is forgotten, and an attacker cycling through addresses cannot grow it past
    ``max_clients``.
    """

    def __init__(
        self,
        clock: Clock,
        burst: int = FAILURE_BURST,
        refill_seconds: float = FAILURE_REFILL_SECONDS,
        max_clients: int = 10_000,
    ) -> None:
        self._clock = clock
        self._burst = burst
        self._rate = 1.0 / refill_seconds
        self._buckets: TTLCache[str, TokenBucket] = TTLCache(
            maxsize=max_clients, ttl=burst * refill_seconds, timer=clock.monotonic
        )

    def admit(self, client: str) -> tuple[bool, float]:
        """(clean, 0) when ``client`` may try now (a token is taken), else (False, seconds to
        wait before it may)."""
        now = self._clock.monotonic()
        bucket = self._buckets.get(client) or TokenBucket(rate=self._rate, burst=self._burst)
        clean = bucket.available(now) >= self._burst
        if not bucket.take(now):
            return False, bucket.seconds_until(now)
        self._buckets[client] = bucket  # (re)starts its time to live
        return clean, 0.0

    def succeeded(self, client: str) -> None:
        """A valid login: its token is given back."""
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)


class BcryptQueue:
    """bcrypt checks in worker threads, ``workers`` at once, urgent ones first.

    ``check`` returns None instead of waiting when ``max_suspect`` non-urgent checks already
    wait: a flood of wrong passwords is answered at once rather than queued without end.
    """

    def __init__(self, workers: int = BCRYPT_WORKERS, max_suspect: int = MAX_SUSPECT_WAITING):
        self._free = workers
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._suspect: collections.deque[asyncio.Future[None]] = collections.deque()
        self._max_suspect = max_suspect

    async def check(self, password: bytes, hashed: bytes, urgent: bool) -> bool | None:
        if not await self._slot(urgent):
            return None
        try:
            return await asyncio.to_thread(_bcrypt_matches, password, hashed)
        finally:
            self._release()

    async def _slot(self, urgent: bool) -> bool:
        if self._free > 0 and not self._urgent and not self._suspect:
            self._free -= 1
            return True
        line = self._urgent if urgent else self._suspect
        if not urgent and len(line) >= self._max_suspect:
            return False
        waiter = asyncio.get_running_loop().create_future()
        line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            else:
                line.remove(waiter)
            raise
        return True

    def _release(self) -> None:
        for line in (self._urgent, self._suspect):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot goes straight to the waiter
                    return
        self._free += 1


class WebSecurityMiddleware:
    """ASGI middleware: exporter-toolkit's rate limit, basic auth and response headers.

    It sits outside every route so no endpoint can forget it. Lifespan and websocket scopes pass
    through untouched. See the module docstring for how logins are checked and floods contained.
    """

    def __init__(
        self,
        app: ASGIApp,
        cfg: WebConfig,
        *,
        realm: str = DEFAULT_REALM,
        clock: Clock | None = None,
        cache_ttl: float = 300.0,
        cache_size: int = 100,
        bcrypt_workers: int = BCRYPT_WORKERS,
    ) -> None:
        self.app = app
        self._clock: Clock = clock or SystemClock()
        self._headers = [
            (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in cfg.http.headers
        ]
        self._header_names = frozenset(name for name, _ in self._headers)
        self._users = [
            (u.encode("utf-8"), h.encode("ascii")) for u, h in cfg.basic_auth_users.items()
        ]
        self._dummy_hash = _dummy_hash(h for _, h in self._users) if self._users else b""
        safe_realm = realm.replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = f'Basic realm="{safe_realm}", charset="UTF-8"'.encode("latin-1")
        self._cache_key = secrets.token_bytes(32)
        self._cache: TTLCache[bytes, bool] = TTLCache(
            maxsize=cache_size, ttl=cache_ttl, timer=self._clock.monotonic
        )
        self._attempts = LoginAttempts(self._clock)
        self._bcrypt = BcryptQueue(bcrypt_workers)
        self._throttled_log = ThrottledLog(
            "basic auth: too many failed logins from one address; its unverified attempts get "
            f"429 until it waits (one attempt per {FAILURE_REFILL_SECONDS:g} s after "
            f"{FAILURE_BURST} failures)",
            logger=__name__,
        )
        limit = cfg.request_limit
        self._bucket = TokenBucket(rate=1.0 / limit.interval, burst=limit.burst) if limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._bucket is not None and not self._bucket.take(self._clock.monotonic()):
            await self._plain_response(send, 429, b"Too Many Requests\n")
            return
        if self._users:
            verdict, retry_after = await self._authorize(scope)
            if verdict == "refused":
                challenge = [(b"www-authenticate", self._challenge)]
                await self._plain_response(send, 401, b"Unauthorized\n", challenge)
                return
            if verdict == "throttled":
                wait = [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())]
                await self._plain_response(send, 429, b"Too Many Requests\n", wait)
                return
        if not self._headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if bytes(name).lower() not in self._header_names
                ]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _authorize(self, scope: Scope) -> tuple[Verdict, float]:
        """The verdict on the request's credentials, and for "throttled" how long to wait."""
        credentials = _basic_credentials(scope)
        if credentials is None:
            return "refused", 0.0  # asking without credentials is how basic auth starts
        user, password = credentials
        hashed, known = self._lookup(user)
        key = self._cache_digest(user, hashed, password)
        if key in self._cache:
            return ("ok" if known else "refused"), 0.0
        client = client_address(scope)
        clean, wait = self._attempts.admit(client)
        if wait > 0:
            self._throttled_log()
            return "throttled", wait
        ok = await self._bcrypt.check(password, hashed, urgent=clean)
        if ok is None:
            return "throttled", FAILURE_REFILL_SECONDS
        if ok and known:
            self._attempts.succeeded(client)
            self._cache[key] = True
            return "ok", 0.0
        logger.debug("basic auth refused for a request to %s", scope.get("path", ""))
        return "refused", 0.0

    def _lookup(self, user: bytes) -> tuple[bytes, bool]:
        """Find the user's hash comparing every name in constant time; dummy hash if unknown."""
        found, known = self._dummy_hash, False
        for name, hashed in self._users:
            if hmac.compare_digest(name, user):
                found, known = hashed, True
        return found, known

    def _cache_digest(self, user: bytes, hashed: bytes, password: bytes) -> bytes:
        mac = hmac.new(self._cache_key, digestmod=hashlib.sha256)
        for part in (user, hashed, password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    async def _plain_response(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            *extra,
            *self._headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def client_address(scope: Scope) -> str:
    """Who is asking, for counting failures: the IP address, an IPv6 address by its /64 (one
    host usually holds the whole /64, and would otherwise get a fresh count per address)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _basic_credentials(scope: Scope) -> tuple[bytes, bytes] | None:
    for name, value in scope.get("headers", []):
        if bytes(name).lower() != b"authorization":
            continue
        scheme, _, token = bytes(value).strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return (user, password) if sep else None
    return None


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        # bcrypt >= 5 refuses passwords over 72 bytes (and NUL bytes); that is a failed login.
        return False


def _dummy_hash(hashes: Iterable[bytes]) -> bytes:
    """A hash of a random password at the highest configured cost, for unknown user names."""
    cost = max(int(h[4:6]) for h in hashes)
    return bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds=cost))
