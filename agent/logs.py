"""Logging: logfmt (default) or JSON lines, with structured fields and a last line of defence
against secrets.

Code passes context as ``extra={...}``; the formatters print those fields. Nothing should ever log a
secret in the first place, but the ``Redactor`` masks every known client id and secret, and anything
shaped like a bearer token, in the final line anyway — a log line is forever.
"""

from __future__ import annotations

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
_MASK = "<redacted>"


class Redactor:
    """Knows the secrets of this process and masks them in text.

    Secrets (client ids and secrets) are kept for the life of the process; issued tokens are
    *transient*: only the most recent ``transient_limit`` are kept, so a long-running agent that
    renews tokens every hour does not grow without bound. Each value is also matched the way it
    looks once escaped into a JSON or logfmt line or URL-encoded into a form body.
    """

    def __init__(self, transient_limit: int = 1024) -> None:
        self._secrets: set[str] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._transient_limit = transient_limit
        self._ordered: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            for value in values:
                self._secrets.update(_variants(value))
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

    def __call__(self, text: str) -> str:
        text = _BEARER.sub(r"\1" + _MASK, text)
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


def _variants(value: str) -> set[str]:
    """``value`` raw, JSON-escaped (as JSON and logfmt lines carry it) and URL-encoded (as a
    token request's form body carries it); too-short values are not masked at all."""
    if not value or len(value) < 4:
        return set()
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote_plus(value),
        quote(value, safe=""),
    }
    return {form for form in forms if len(form) >= 4}


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
