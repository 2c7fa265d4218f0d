"""The Sophos Central client: one per credential, on a shared ``httpx.AsyncClient``.

Every request goes through ``_call``, which is where the agent keeps its promises: the token only
goes to allowed hosts, no call leaves without the rate budget's admission, a whole call has one
deadline, bodies are read up to a cap, whatever happens is classified (never raised), and every call
is reported to the observers (metrics, evidence, logs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import httpx

from agent.classify import Outcome, classify_exception, classify_response
from agent.clock import Clock
from agent.config import Credential, Settings
from agent.decoding import Body, read_body
from agent.families import TENANT, Family, ForeignShape, ProbeSpec, resolve
from agent.hosts import HostNotAllowed, HostPolicy
from agent.htmlpage import described
from agent.logs import REDACTOR
from agent.ratebudget import (
    PRIORITY_CREDENTIAL,
    PRIORITY_TENANT,
    parse_retry_after,
    tenant_key,
)
from agent.sophos import (
    MAX_PAGES,
    TENANT_PAGE_SIZE,
    InvalidResponse,
    NotSophosAnswer,
    Tenant,
    Token,
    WhoAmI,
    parse_tenant_page,
    parse_token,
    parse_whoami,
)

log = logging.getLogger(__name__)

TOKEN_RENEW_MARGIN = 300.0
MIN_TOKEN_LIFETIME = 60.0
"""A token is kept at least this long, whatever its answer's ``expires_in`` said (0, negative,
one second): renewals never outrun the calls they serve. Should the API refuse it sooner, the 401
drops it and the next call gets a new one: at most one token per call."""
_REDACTED = "<redacted>"


class Admission(Protocol):
    """What the client needs from the rate budget (see ``agent.ratebudget``)."""

    async def acquire(self, credential: str, priority: int = ...) -> None: ...

    def pause(
        self, credential: str, retry_after: float | None = None, sent_at: float | None = None
    ) -> float: ...

    def note_success(self, credential: str, sent_at: float | None = None) -> None: ...

    def pause_remaining(self, credential: str) -> float: ...


@dataclass(frozen=True)
class CallRecord:
    """One HTTP call as observers see it. Secrets are already redacted from the request."""

    credential: str
    tenant_id: str
    probe: str
    method: str
    url: str
    request_headers: dict[str, str]
    outcome: Outcome
    duration: float
    started_at: float
    response_headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes = b""
    body_complete: bool = True
    """False when ``raw_body`` is only the start of the answer (cut at ``max_response_bytes``, or
    decoding stopped): whoever stores it must not keep a secret cut in half at its end."""


class CallObserver(Protocol):
    def observe_call(self, record: CallRecord) -> None: ...


@dataclass(frozen=True)
class TenantListing:
    """What the last tenant listing read: ``pages`` requested (the failed one included when it
    failed), the ``claimed`` ``pages.total`` of its first page, whether it read to the end, and
    whether it ended before ``pages.total`` at a page with no tenant not listed before."""

    pages: int
    claimed: int
    complete: bool
    ended_early: bool = False

    @property
    def unread_pages(self) -> int:
        """Pages the list claimed beyond the page cap: their tenants are not probed."""
        if not self.complete or self.ended_early or self.claimed <= MAX_PAGES:
            return 0
        return self.claimed - self.pages


class TokenUnavailable(Exception):
    """No token could be had; carries the outcome of the failed issuance."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error_code or outcome.status_label)
        self.outcome = outcome


class SophosClient:
    """Token, whoami, tenant list and per-tenant calls for one credential."""

    def __init__(
        self,
        settings: Settings,
        credential: Credential,
        http: httpx.AsyncClient,
        budget: Admission,
        observers: Sequence[CallObserver],
        clock: Clock,
        policy: HostPolicy,
        budget_key: str | None = None,
    ) -> None:
        self.settings = settings
        self.credential = credential
        self.name = credential.name
        self._http = http
        self._budget = budget
        self._budget_key = budget_key or credential.name
        self._observers = list(observers)
        self._clock = clock
        self._policy = policy
        self._token: Token | None = None
        self._token_lock = asyncio.Lock()
        self.in_flight = 0
        self.last_token_outcome: Outcome | None = None
        self.refused_tenant_items = 0
        """Items of the last complete tenant list whose id the agent refused (never probed)."""
        self.last_listing: TenantListing | None = None

    @property
    def token(self) -> Token | None:
        return self._token

    def check_host(self, url: str) -> None:
        """Raise ``HostNotAllowed`` (a ValueError) unless the token may be sent to ``url``."""
        self._policy.check(url)

    # -- token -------------------------------------------------------------------------------

    async def issue_token(self) -> tuple[Outcome, Token | None]:
        """Ask the id host for a fresh token (the token probe, and renewals)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.credential.client_id.get_secret_value(),
            "client_secret": self.credential.secret(),
            "scope": "token",
        }
        outcome, _ = await self._call("token", "", "POST", self.settings.auth_url, {}, form=form)
        self.last_token_outcome = outcome
        if not _usable(outcome):
            return outcome, None
        try:
            token = parse_token(outcome.body, self._clock.time())
        except InvalidResponse as exc:
            self.last_token_outcome = _unreadable(outcome, exc)
            return self.last_token_outcome, None
        REDACTOR.add_transient(token.value)  # should an answer ever echo it, logs mask it
        if token.expires_at <= token.issued_at:
            # Already expired when issued: a broken id host (or something posing as it). Say so
            # on the token probe, and use the token anyway: see MIN_TOKEN_LIFETIME.
            outcome = _invalid(
                outcome,
                "token answer has an expires_in of 0 or less (the token is already expired); "
                f"the agent keeps such a token for {MIN_TOKEN_LIFETIME:.0f} s at most, or until "
                "the API refuses it",
            )
            self.last_token_outcome = outcome
        floor = token.issued_at + MIN_TOKEN_LIFETIME
        self._token = token if token.expires_at >= floor else replace(token, expires_at=floor)
        return outcome, self._token

    async def bearer(self) -> str:
        """A valid token, renewed ahead of expiry; one renewal at a time per credential."""
        async with self._token_lock:
            if self._token is not None and self._fresh(self._token):
                return self._token.value
            outcome, token = await self.issue_token()
            if token is None:
                raise TokenUnavailable(outcome)
            return token.value

    def drop_token(self) -> None:
        """Forget the cached token (after a 401 on an API call) so the next call gets a new one."""
        self._token = None

    def _fresh(self, token: Token) -> bool:
        margin = min(TOKEN_RENEW_MARGIN, (token.expires_at - token.issued_at) / 10)
        return self._clock.time() < token.expires_at - margin

    # -- API calls ----------------------------------------------------------------------------

    async def whoami(self) -> tuple[Outcome, WhoAmI | None]:
        url = f"{self.settings.api_url}/whoami/v1"
        outcome, _ = await self._api_call("whoami", "", url, {})
        if not _usable(outcome):
            return outcome, None
        try:
            return outcome, parse_whoami(outcome.body)
        except InvalidResponse as exc:
            return _unreadable(outcome, exc), None

    async def list_tenants(self, whoami: WhoAmI) -> tuple[Outcome, list[Tenant] | None]:
        """Every page of the partner or organization tenant list; None unless all pages came.

        The first page goes ahead of tenant probes (everything depends on it); the pages after it
        wait their turn among the tenant probes, so a long list never takes the whole budget
        and the tenants already known keep being probed while it is read. The list ends at the
        first page that brings no tenant not listed before (an empty page, or a server that
        ignores ``page``), whatever ``pages.total`` claimed; it is cut at ``MAX_PAGES`` pages.
        ``last_listing`` says what was read.
        """
        header = whoami.header
        if header is None:
            raise ValueError("only partner and organization credentials list tenants")
        kind = "partner" if whoami.id_type == "partner" else "organization"
        base = f"{whoami.global_url}/{kind}/v1/tenants"
        tenants: dict[str, Tenant] = {}
        refused = 0
        page, total, claimed = 1, 1, 1
        outcome = Outcome(status_code=0, error_code="protocol_error")
        while page <= total:
            url = f"{base}?page={page}&pageSize={TENANT_PAGE_SIZE}&pageTotal=true"
            priority = PRIORITY_CREDENTIAL if page == 1 else PRIORITY_TENANT
            outcome, _ = await self._api_call(
                "tenant_list", "", url, dict([header]), priority=priority
            )
            if not _usable(outcome):
                self.last_listing = TenantListing(page, claimed, complete=False)
                return outcome, None
            try:
                parsed = parse_tenant_page(outcome.body)
            except InvalidResponse as exc:
                self.last_listing = TenantListing(page, claimed, complete=False)
                return _unreadable(outcome, exc), None
            if page == 1:
                total, claimed = parsed.total_pages, parsed.claimed_pages
            elif not parsed.skipped and all(t.id in tenants for t in parsed.tenants):
                self.refused_tenant_items = refused
                self.last_listing = TenantListing(page, claimed, complete=True, ended_early=True)
                return outcome, list(tenants.values())
            for tenant in parsed.tenants:
                tenants.setdefault(tenant.id, tenant)
            refused += parsed.skipped
            page += 1
        self.refused_tenant_items = refused
        self.last_listing = TenantListing(total, claimed, complete=True)
        return outcome, list(tenants.values())

    async def probe_tenant(
        self, tenant: Tenant, family: Family | None = None, priority: int = PRIORITY_TENANT
    ) -> Outcome:
        """One family's cheap read call on the tenant's own API host (default: ``tenant``)."""
        if tenant.api_host is None:
            raise ValueError("tenant has no apiHost")
        if family is None:
            family = resolve((ProbeSpec(TENANT),), self.settings.tenant_probe_path)[0]
        url = f"{tenant.api_host}{family.path}"
        outcome, _ = await self._api_call(
            family.name, tenant.id, url, {"X-Tenant-ID": tenant.id}, priority=priority
        )
        if not _usable(outcome):
            return outcome
        if isinstance(outcome.body, dict):
            why = family.check(outcome.body)
            if why is None:
                return outcome
            foreign = isinstance(why, ForeignShape)
            return _not_sophos(outcome, why) if foreign else _invalid(outcome, why)
        # Every Central read answers a JSON object; JSON nested past the parser's limit, or not
        # an object, cannot be read (an HTML page was marked as not Sophos's in ``_call``).
        return _invalid(outcome, "response body is not a JSON object")

    async def _api_call(
        self,
        probe: str,
        tenant_id: str,
        url: str,
        headers: dict[str, str],
        priority: int = PRIORITY_CREDENTIAL,
    ) -> tuple[Outcome, bytes]:
        try:
            self._policy.check(url)
        except HostNotAllowed as exc:
            return Outcome(status_code=0, error_code="host_not_allowed", message=str(exc)), b""
        try:
            await self.bearer()  # no token to be had: fail now, without spending the budget
        except TokenUnavailable as exc:
            return replace(exc.outcome, from_token=True), b""
        outcome, body = await self._call(
            probe, tenant_id, "GET", url, headers, priority=priority, authorize=True
        )
        if outcome.status_code == 401:
            self.drop_token()
        return outcome, body

    async def _call(
        self,
        probe: str,
        tenant_id: str,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        form: Mapping[str, str] | None = None,
        priority: int = PRIORITY_CREDENTIAL,
        authorize: bool = False,
    ) -> tuple[Outcome, bytes]:
        """Send one request under the budget and a single deadline; classify, never raise.

        With ``authorize`` the bearer token is taken once the call is admitted, not before: with
        a saturated budget (a long tenant list being paged) a call can wait for admission
        longer than a token lives, and would leave with an expired one (a false 401).

        A GET whose pooled connection the server closed just as we reused it (no response at
        all) is sent once more: that race is ours, not Sophos's, and must not read as an outage.
        Both attempts pass admission and both are counted.
        """
        outcome, body, stale = await self._attempt(
            probe, tenant_id, method, url, headers, form, priority, authorize
        )
        if stale and method == "GET":
            outcome, body, _ = await self._attempt(
                probe, tenant_id, method, url, headers, form, priority, authorize
            )
        if outcome.ok and outcome.page_title is not None and not outcome.error_code:
            # Every call answers JSON: an HTML page in its place came from someone else.
            outcome = _not_sophos(outcome, described(outcome.page_title))
        return outcome, body

    async def _attempt(
        self,
        probe: str,
        tenant_id: str,
        method: str,
        url: str,
        headers: dict[str, str],
        form: Mapping[str, str] | None,
        priority: int,
        authorize: bool = False,
    ) -> tuple[Outcome, bytes, bool]:
        """One admitted request; the flag says the connection dropped before any response."""
        key = self._budget_key_for(tenant_id)
        await self._budget.acquire(key, priority)
        if authorize:
            try:
                headers = {**headers, "Authorization": f"Bearer {await self.bearer()}"}
            except TokenUnavailable as exc:
                return replace(exc.outcome, from_token=True), b"", False
        stale = False
        started_wall = self._clock.time()
        started = self._clock.monotonic()
        response_headers: dict[str, str] = {}
        body = Body(b"")
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                status, response_headers, body = await self._send(method, url, headers, form)
            outcome = classify_response(status, body.data, response_headers)
            if body.problem is not None and outcome.ok:
                outcome = _invalid(outcome, body.problem)
        except Exception as exc:  # a broken peer must never take the agent down
            outcome = classify_exception(exc)
            stale = _dropped_before_response(exc)
        finally:
            self.in_flight -= 1
        duration = self._clock.monotonic() - started
        self._after_call(key, outcome, started)
        record = CallRecord(
            credential=self.name,
            tenant_id=tenant_id,
            probe=probe,
            method=method,
            url=url,
            request_headers=redact_headers(headers),
            outcome=outcome,
            duration=duration,
            started_at=started_wall,
            response_headers=response_headers,
            raw_body=body.data,
            body_complete=body.problem is None,
        )
        for observer in self._observers:
            observer.observe_call(record)
        return outcome, body.data, stale

    async def _send(
        self, method: str, url: str, headers: dict[str, str], form: Mapping[str, str] | None
    ) -> tuple[int, dict[str, str], Body]:
        """The answer, its body decoded by ``agent.decoding`` under ``max_response_bytes``: never
        by httpx's own decoders, which inflate a whole chunk (or a whole layer) at once."""
        async with self._http.stream(method, url, headers=headers, data=form) as response:
            body = await read_body(response, self.settings.max_response_bytes)
            return response.status_code, dict(response.headers), body

    def _budget_key_for(self, tenant_id: str) -> str:
        """Whose rate windows a call counts against (``rate_limit_scope``).

        Credential scope: every call, the credential's. Tenant scope: a call that carries
        X-Tenant-ID (``tenant_id`` set) its tenant's own windows; token, whoami and the tenant
        list stay on the credential's.
        """
        if tenant_id and self.settings.rate_limit_scope == "tenant":
            return tenant_key(self._budget_key, tenant_id)
        return self._budget_key

    async def wait_while_paused(self, tenant_id: str = "") -> None:
        """Return once no 429 pause holds the calls of ``tenant_id`` (or the credential's).

        Admission waits out a pause anyway; a caller that holds a resource shared with other
        credentials (the scheduler's concurrency limit) waits here first, so that a credential
        paused for an hour does not keep the other credentials' probes from running.
        """
        key = self._budget_key_for(tenant_id)
        while (left := self._budget.pause_remaining(key)) > 0:
            await self._clock.sleep(left)

    def _after_call(self, key: str, outcome: Outcome, sent_at: float) -> None:
        """A 429 pauses the key (the budget logs it, with the window it assumes); any other
        answer below 500 ends the escalation of 429s. ``sent_at`` is monotonic."""
        if outcome.status_code == 429:
            wait = parse_retry_after(outcome.retry_after, self._clock.time())
            self._budget.pause(key, wait, sent_at)
        elif outcome.answered and outcome.status_code < 500:
            self._budget.note_success(key, sent_at)


def _dropped_before_response(exc: BaseException) -> bool:
    """The keep-alive race: the server closed an idle pooled connection as we reused it.

    ``agent.transport`` raises exactly this for aiohttp's ``ServerDisconnectedError`` before
    any response arrived."""
    return isinstance(exc, httpx.RemoteProtocolError) and "without sending" in str(exc)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers as they may be shown in logs and support evidence: no bearer token."""
    return {k: (_REDACTED if k.lower() == "authorization" else v) for k, v in headers.items()}


def _usable(outcome: Outcome) -> bool:
    """A 2XX whose body was read whole and is JSON (not already marked unusable)."""
    return outcome.ok and not outcome.error_code


def _invalid(outcome: Outcome, why: str) -> Outcome:
    """A 2XX whose body is unusable: keep the status, mark the error code for the diagnosis."""
    return _marked(outcome, "invalid_response", why)


def _not_sophos(outcome: Outcome, why: str) -> Outcome:
    """A 2XX that is clearly not Sophos's answer (an HTML page, JSON with none of the call's
    fields): marked for the diagnosis (cause ``not_sophos_answer``)."""
    return _marked(outcome, "not_sophos_answer", why)


def _unreadable(outcome: Outcome, problem: InvalidResponse) -> Outcome:
    """A 2XX a parser refused: not Sophos's answer at all, or Sophos's and unreadable."""
    if isinstance(problem, NotSophosAnswer):
        return _not_sophos(outcome, str(problem))
    return _invalid(outcome, str(problem))


def _marked(outcome: Outcome, code: str, why: str) -> Outcome:
    return Outcome(
        status_code=outcome.status_code,
        error_code=code,
        message=why,
        ids=outcome.ids,
        page_title=outcome.page_title,
    )
