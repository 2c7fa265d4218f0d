"""Credentials that expire: the configured date, how close it is, and how every surface says it.

Sophos Central API credentials carry an expiry date (credentials expire 36 months after they
were created), shown in Sophos Central under ``WHERE_TO_READ``; no API reads it, so the user
copies it into the credential's ``expires_at``. On that date the token endpoint starts refusing
the credential, every integration that uses it stops, and it cannot be renewed: the only remedy
is a new credential, made before the date. So the date is exported
(``sophos_central_credential_expiry_timestamp_seconds``), alerted on
(``SophosCentralCredentialExpiringSoon``, from ``WARNING_DAYS`` and ``CRITICAL_DAYS`` before;
``tests/test_alerts.py`` holds the rule's thresholds equal to these), shown by ``/status``,
``check`` and ``config check``, and a refusal on or after it gets its own cause
(``credential_expired``). Everything here is plain functions of the date and the time, so the
views and the diagnosis say the same thing.

A date without a time (``2027-03-01``) means the start of that day in UTC: Sophos Central shows
a date only, in the reader's time zone, and starting the day early warns a few hours early
rather than late.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time
from typing import Any, Literal

WARNING_DAYS = 30
"""``SophosCentralCredentialExpiringSoon`` warns, and ``/status`` flags the credential, when
fewer whole days than this are left."""
CRITICAL_DAYS = 7
"""... and pages when fewer whole days than this are left."""

WHERE_TO_READ = "Global Settings > API Credentials Management"
"""Where Sophos Central shows a credential's expiry date (and where a new one is made)."""

EXPECTED = "must be a date (YYYY-MM-DD) or an RFC 3339 timestamp (YYYY-MM-DDTHH:MM:SSZ)"
"""The configuration error for a value that is neither."""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")

Level = Literal["ok", "warning", "critical", "expired"]


def parse_expires_at(value: Any) -> datetime:
    """An ``expires_at`` value as an aware UTC datetime; ValueError says what is expected.

    Accepts a date (``2027-03-01``, or the ``date`` object YAML makes of it), an RFC 3339
    timestamp with its offset (``2027-03-01T09:30:00+01:00``), or an aware ``datetime``.
    Anything else is refused rather than guessed: a number could be seconds or days, and a
    timestamp without an offset could be any of 24 hours.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{EXPECTED}; a timestamp needs its offset (Z or +01:00)")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(EXPECTED)
    text = value.strip()
    try:
        if _DATE.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        if _RFC3339.fullmatch(text):
            return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise ValueError(f"{EXPECTED}; {text} is not a day of the calendar") from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?", text):
        raise ValueError(f"{EXPECTED}; a timestamp needs its offset (Z or +01:00)")
    raise ValueError(EXPECTED)


def format_expires_at(value: datetime) -> str:
    """As a user writes it: the date alone for the start of a UTC day, else RFC 3339 in UTC."""
    moment = value.astimezone(UTC)
    if moment.time() == time(0):
        return moment.date().isoformat()
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def date_text(expires_at: float) -> str:
    """The expiry as people read it: ``2027-03-01``, or ``2027-03-01 14:30 UTC``."""
    moment = datetime.fromtimestamp(expires_at, UTC)
    if moment.time() == time(0):
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def days_left(expires_at: float, now: float) -> int:
    """Whole days left (negative once past): what the alert and every view count."""
    return math.floor((expires_at - now) / 86400)


def level(expires_at: float, now: float) -> Level:
    """How urgent: ``expired`` from the date on, ``critical`` with fewer than ``CRITICAL_DAYS``
    whole days left, ``warning`` with fewer than ``WARNING_DAYS``, else ``ok``."""
    if now >= expires_at:
        return "expired"
    days = days_left(expires_at, now)
    if days < CRITICAL_DAYS:
        return "critical"
    return "warning" if days < WARNING_DAYS else "ok"


def describe(expires_at: float, now: float) -> str:
    """``expires in 12 days (2027-03-01)``, ``expires today (2027-03-01)``, ``expired 3 days
    ago (2027-03-01)``: the same words on ``/status``, in ``check`` and ``config check``."""
    when = date_text(expires_at)
    if now >= expires_at:
        ago = math.floor((now - expires_at) / 86400)
        return f"expired {_days(ago)} ago ({when})" if ago else f"expired today ({when})"
    days = days_left(expires_at, now)
    return f"expires in {_days(days)} ({when})" if days else f"expires today ({when})"


def remedy(expires_at: float, now: float) -> str:
    """What to do about an expiry that needs attention (``level`` is not ``ok``)."""
    if now >= expires_at:
        return (
            f"Sophos refuses an expired credential and it cannot be renewed: create a new one in "
            f"Sophos Central ({WHERE_TO_READ}), put its client id and secret and its expires_at "
            "in the config."
        )
    return (
        f"Before {date_text(expires_at)}, create a new API credential in Sophos Central "
        f"({WHERE_TO_READ}), put its client id and secret and its expires_at in the config (and "
        "in every other integration that uses this credential), then delete the old one."
    )


def config_note(credential: str, expires_at: float | None, now: float) -> str:
    """What ``config check`` says about one credential's expiry, configured or not."""
    if expires_at is None:
        return (
            f"{credential}: no expires_at; Sophos Central shows the credential's expiry date "
            f"under {WHERE_TO_READ}: set it to be warned {WARNING_DAYS} days before the "
            "credential stops working"
        )
    note = f"{credential}: the credential {describe(expires_at, now)}"
    if level(expires_at, now) == "ok":
        return note
    return f"{note}: {remedy(expires_at, now)}"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"
