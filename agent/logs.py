"""Logging: logfmt (default) or JSON lines, with structured fields; and the ``Redactor``, which
every answer passes before it is stored, shown or logged.

Code passes context as ``extra={...}``; the formatters print those fields. Nothing should ever log a
secret in the first place, but the ``Redactor`` masks every known client id and secret, and anything
shaped like a bearer token or an Authorization header's credentials, in the final line anyway — a
log line is forever. Answers need it too: gateways and proxies echo the request they got, so an
error body can carry back any secret the agent sent, in the form it was sent (see
``agent.secrets``).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's duplicate of msg with terminal colours
}
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_AUTHORIZATION = re.compile(r"(?i)(authorization\W{0,6}(?:basic|bearer|digest)\s+)[^\s\"'\\<&,;]+")
"""An Authorization or Proxy-Authorization header echoed in any notation (``Name: Basic x``,
``"name": "Basic x"``): its credentials, known to the agent or not."""
_MASK = "<redacted>"


class Redactor:
    """Knows the secrets of this process and masks them in text.

    Secrets (client ids and secrets, old and new, proxy credentials) are kept for the life of the
    process; issued tokens are *transient*: only the most recent ``transient_limit`` are kept, so
    a long-running agent that renews tokens every hour does not grow without bound. Each value is
    also matched the way it looks once escaped into a JSON or logfmt line, URL-encoded into a form
    body, HTML-escaped into an error page, and (secrets) base64-encoded as in a Basic header.
    """

    def __init__(self, transient_limit: int = 1024) -> None:
        self._secrets: set[str] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._transient_limit = transient_limit
        self._ordered: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        """Remember secrets for the life of the process (idempotent and cheap when known)."""
        forms = set().union(*(_variants(v) | _encoded(v) for v in values))
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= forms
            self._reorder()

    def add_transient(self, value: str) -> None:
        """Remember a short-lived secret (an access token) among the most recent ones."""
        with self._lock:
            for variant in _variants(value):
                self._transient[variant] = None
                self._transient.move_to_end(variant)
            while len(self._transient) > self._transient_limit:
                self._transient.popitem(last=False)
            self._reorder()

    def _reorder(self) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._ordered = tuple(sorted({*self._secrets, *self._transient}, key=len, reverse=True))

    @property
    def longest(self) -> int:
        """Length of the longest form known: how far a secret can reach past a cut."""
        ordered = self._ordered
        return len(ordered[0]) if ordered else 0

    def __call__(self, text: str) -> str:
        text = _AUTHORIZATION.sub(r"\1" + _MASK, text)
        text = _BEARER.sub(r"\1" + _MASK, text)
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text

    def head(self, text: str, limit: int, complete: bool = True) -> str:
        """About the first ``limit`` characters of ``text``, redacted, for storing or showing.

        Cutting first and redacting after would keep the start of a secret that straddles the
        cut, which the redactor no longer recognises; so the cut moves past any known secret it
        would split. ``complete=False`` says ``text`` itself was cut (a body read up to a cap):
        its last characters may be the start of a secret, so they are dropped.
        """
        ordered = self._ordered
        if not complete:
            text = text[: max(0, len(text) - (len(ordered[0]) if ordered else 0))]
        cut = min(limit, len(text))
        moved = True
        while moved and cut < len(text):
            moved = False
            for secret in ordered:
                at = text.find(secret, max(0, cut - len(secret) + 1), cut + len(secret) - 1)
                if at != -1 and at < cut:
                    cut, moved = at + len(secret), True
        return self(text[:cut])[: limit + len(_MASK)]


def _variants(value: str) -> set[str]:
    """``value`` raw, JSON-escaped (as JSON and logfmt lines carry it, ``/`` escaped or not),
    URL-encoded (as a token request's form body carries it) and HTML-escaped (as an error page
    echoes it); too-short values are not masked at all."""
    if not value or len(value) < 4:
        return set()
    as_json = json.dumps(value)[1:-1]
    forms = {
        value,
        as_json,
        as_json.replace("/", "\\/"),
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote_plus(value),
        quote(value, safe=""),
        html.escape(value),
        html.escape(value, quote=False),
    }
    return {form for form in forms if len(form) >= 4}


def _encoded(value: str) -> set[str]:
    """``value`` base64-encoded (standard and URL-safe alphabets), as an HTTP Basic header or an
    echo that encodes what it got carries it. Padding is left off: the unpadded form is a prefix
    of the padded one, so it masks both."""
    if not value or len(value) < 4:
        return set()
    raw = value.encode("utf-8", "surrogatepass")
    forms = {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
    return {form.decode("ascii").rstrip("=") for form in forms}


REDACTOR = Redactor()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        pairs.extend(_fields(record).items())
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return REDACTOR(" ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return REDACTOR(json.dumps(data, default=str, ensure_ascii=False))


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def setup_logging(fmt: str = "logfmt", level: str = "info", stream: Any = None) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiohttp", "apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
