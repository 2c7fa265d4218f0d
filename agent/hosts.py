"""Where the bearer token may go.

A tenant's ``apiHost`` comes from an API response, so it is input we do not control. The token is
only ever sent to the configured ``auth_url`` / ``api_url`` hosts and to hosts matching
``allowed_api_hosts`` — matched by name, literally or as a shell-style glob, case-insensitively,
whatever the port, and without DNS (``localhost`` does not match ``127.0.0.1``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from urllib.parse import urlsplit

from agent.config import is_loopback_host


class HostNotAllowed(ValueError):
    """The URL is not one the agent may send credentials or tokens to."""


class HostPolicy:
    """Decides whether a URL may receive the bearer token."""

    def __init__(self, patterns: Iterable[str], fixed_urls: Iterable[str] = ()) -> None:
        self._patterns = [p.lower() for p in patterns]
        self._fixed = {h for h in (_host(u) for u in fixed_urls) if h}

    def allows_host(self, host: str) -> bool:
        name = host.lower().strip("[]")
        if name in self._fixed:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

    def check(self, url: str) -> str:
        """Return the URL if the token may go there, else raise ``HostNotAllowed`` saying why."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise HostNotAllowed(f"{_safe(url)} is not an http(s) URL")
        if parts.scheme == "http" and not is_loopback_host(host):
            raise HostNotAllowed(f"host {host} is not https (plain http only for loopback)")
        if not self.allows_host(host):
            raise HostNotAllowed(f"host {host} is not in allowed_api_hosts")
        return url


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _safe(url: str) -> str:
    """A URL reduced to scheme and host, so nothing odd from a response is echoed in full."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"[:100]
