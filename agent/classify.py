"""Turn whatever came back from Sophos Central into a bounded, label-safe ``Outcome``.

Sophos answers errors in several shapes (``{errorCode, message, trackingId}`` from the id host,
``{error, message, correlationId, requestId}`` from the Central APIs, HTML from a gateway, empty
bodies), and sometimes nothing at all. Whatever arrives, classification must not raise, and the
label values it yields must stay few and valid: a hostile body must not blow up Prometheus.

The ``error`` string is not stable (``Forbidden``, ``forbidden``, ``forbiddenAccess``; one 401
puts it in ``errorCode``), so nothing here or in the diagnosis interprets it: it is passed on as
the raw ``error_code`` and the cause comes from the status code and the context.

Everything kept from a body or an exception passes the redactor here, at the source: a gateway that
echoes the request puts the agent's secrets into the message, the error code or an id, and from
the ``Outcome`` on they would reach the status page, ``check``, the logs and the metrics.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.htmlpage import MAX_TITLE, described, page_title
from agent.logs import REDACTOR
from agent.text import printable
from agent.tlsclient import HANDSHAKE, TlsFailure, tls_failure

ERROR_CODE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
MAX_DISTINCT_ERROR_CODES = 100
OTHER = "other"
PROXY_CODES = ("proxy_auth_required", "proxy_refused", "proxy_unreachable")
"""No answer from Sophos because the proxy in between asked for credentials (407), refused the
CONNECT (any other status) or could not be reached."""
TRANSPORT_CODES = ("timeout", "connect_error", "tls_error", "protocol_error", *PROXY_CODES)
_ID_KEYS = ("trackingId", "correlationId", "requestId", "code")
"""Body fields copied to ``Outcome.ids``: the ids support asks for, and Sophos's own error code
(``USR00004c5``), which names the failure more precisely than the ``error`` string."""
_ID_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DOC_URL = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,500}$")
_MAX_MESSAGE = 300
_MAX_ERROR_CODE = 128


@dataclass(frozen=True)
class Outcome:
    """What one HTTP call produced, reduced to what metrics, diagnosis and logs need.

    ``status_code`` is 0 when no response came; ``error_code`` is then one of the transport codes.
    ``ids`` holds tracking/correlation/request ids and, when the body has them, Sophos's error
    ``code`` and ``docUrl``: for logs and support evidence, never labels. ``from_token`` marks
    the answer of the token endpoint standing in for an API call that could not get a token.
    ``tls`` says why a handshake failed (``error_code`` stays ``tls_error``); ``page_title`` is
    the title of an HTML page that came in place of JSON. Both feed the diagnosis and the
    remedy, never a label.
    """

    status_code: int
    error_code: str = ""
    message: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    body: Any = None
    from_token: bool = False
    tls: TlsFailure | None = None
    page_title: str | None = None
    """The answer was an HTML page: its title ('' when it has none), redacted and at most
    ``agent.htmlpage.MAX_TITLE`` printable characters. None when the body was no HTML page."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def answered(self) -> bool:
        return self.status_code != 0

    @property
    def status_label(self) -> str:
        return str(self.status_code)


class ErrorCodeGuard:
    """Keeps the ``error_code`` label bounded: bad shapes and the 101st distinct value become
    ``other``. Shared by every credential of one agent, since the bound is on the series count."""

    def __init__(self, limit: int = MAX_DISTINCT_ERROR_CODES) -> None:
        self._limit = limit
        self._seen: set[str] = set(TRANSPORT_CODES)
        self._lock = threading.Lock()

    def label(self, code: str) -> str:
        if code == "":
            return ""
        # fullmatch: with match(), "$" also matches before a trailing newline.
        if not ERROR_CODE_PATTERN.fullmatch(code):
            return OTHER
        with self._lock:
            if code in self._seen:
                return code
            if len(self._seen) - len(TRANSPORT_CODES) >= self._limit:
                return OTHER
            self._seen.add(code)
            return code


def classify_response(
    status_code: int, body: bytes, headers: httpx.Headers | dict[str, str] | None = None
) -> Outcome:
    """Classify a response that arrived: parse the body if it is JSON, take the error code and ids.

    A success body may carry ``errorCode: "success"`` (the id host does): that is not an error, so
    2XX responses always get an empty error code. A body that is an HTML page, not JSON, keeps
    its title (``Outcome.page_title``), whatever the status.
    """
    parsed = parse_json(body)
    title = _title(body, headers) if parsed is None else None
    retry_after = _header(headers, "retry-after")
    if 200 <= status_code < 300:
        return Outcome(
            status_code=status_code, body=parsed, ids=_ids(parsed, error=False), page_title=title
        )
    return Outcome(
        status_code=status_code,
        error_code=error_code_of(parsed),
        message=_message_of(parsed, body, title),
        ids=_ids(parsed),
        retry_after=retry_after,
        body=parsed,
        page_title=title,
    )


def classify_exception(exc: BaseException) -> Outcome:
    """Classify a call that got no response: status 0 and one of the transport codes; a TLS
    failure says why in ``Outcome.tls`` and in its message."""
    code = transport_code(exc)
    if code != "tls_error":
        return Outcome(status_code=0, error_code=code, message=_exc_message(exc))
    failure = tls_failure(exc) or TlsFailure(HANDSHAKE, _exc_message(exc))
    message = _printable(f"TLS handshake failed ({failure.reason}): {failure.why}", _MAX_MESSAGE)
    return Outcome(status_code=0, error_code=code, message=message, tls=failure)


def transport_code(exc: BaseException) -> str:
    """Map an httpx/ssl exception to ``timeout``, ``tls_error``, ``connect_error`` or
    ``protocol_error``, or a proxy code. TLS failures surface as a ConnectError wrapping an
    SSLError; a proxy's refusal as ``agent.transport.ProxyFailure``, whose ``code`` says which."""
    if isinstance(exc, httpx.ProxyError):
        code = getattr(exc, "code", "proxy_refused")
        return code if code in PROXY_CODES else "proxy_refused"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if _caused_by(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return "connect_error"
    return "protocol_error"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return isinstance(exc, httpx.ConnectError) and "ssl" in str(exc).lower()


def parse_json(body: bytes) -> Any:
    """The JSON value of a body, or None for anything that is not JSON (HTML, empty, garbage)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def error_code_of(parsed: Any) -> str:
    """``errorCode``, else ``error``, else empty — only when it is a string.

    The raw code reaches the ``check`` table, the status page and the logs (the label goes through
    ``ErrorCodeGuard``), so control characters become spaces and the length is bounded; a code
    that was label-safe stays unchanged.
    """
    if not isinstance(parsed, dict):
        return ""
    for key in ("errorCode", "error"):
        value = parsed.get(key)
        if isinstance(value, str) and value:
            return _printable(value, _MAX_ERROR_CODE)
    return ""


def _message_of(parsed: Any, body: bytes, title: str | None = None) -> str:
    if isinstance(parsed, dict):
        value = parsed.get("message")
        if isinstance(value, str):
            return _printable(value, _MAX_MESSAGE)
    if not body:
        return "empty body"
    if title is not None:
        return described(title)
    if parsed is None:
        return "body is not JSON"
    return ""


def _title(body: bytes, headers: httpx.Headers | dict[str, str] | None) -> str | None:
    """The shown title of an HTML page (redacted, then cut), or None for any other body."""
    title = page_title(body, _header(headers, "content-type") or "")
    return None if title is None else _printable(title, MAX_TITLE).strip()


def _ids(parsed: Any, error: bool = True) -> dict[str, str]:
    """The ids of a body; ``code`` and ``docUrl`` only from error bodies."""
    if not isinstance(parsed, dict):
        return {}
    ids = {}
    for key in _ID_KEYS if error else _ID_KEYS[:3]:
        value = parsed.get(key)
        if isinstance(value, str) and _ID_VALUE.fullmatch(value):
            ids[key] = REDACTOR(value)
    doc_url = parsed.get("docUrl")
    if error and isinstance(doc_url, str) and _DOC_URL.fullmatch(doc_url):
        ids["docUrl"] = REDACTOR(doc_url)
    return ids


def _header(headers: httpx.Headers | dict[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    if isinstance(headers, httpx.Headers):
        value: str | None = headers.get(name)
        return value
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _printable(text: str, limit: int) -> str:
    """At most ``limit`` printable characters of ``text``, redacted (before the cut: a secret cut
    in half would no longer be recognised)."""
    cleaned = printable(text[: limit + REDACTOR.longest])
    return REDACTOR.head(cleaned, limit)[:limit]


def _exc_message(exc: BaseException) -> str:
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not turn a failed call into a crash
        text = ""
    return _printable(f"{name}: {text}" if text else name, _MAX_MESSAGE)
