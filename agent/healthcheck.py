"""The container image's ``HEALTHCHECK``: does the agent's web server answer ``/healthz``?

``python3 -m agent.healthcheck`` exits 0 when it does and 1 otherwise, printing why. It asks the
address the agent listens on when that comes from ``SOPHOS_EXPORTER_WEB_LISTEN_ADDRESS`` (the
variable the agent itself reads), else the default ``:9866``; a wildcard host means loopback.

The container engine runs it every 30 s beside the agent, so it keeps to the standard library:
importing the agent's web stack would cost about a second of CPU and 60 MB each time. That is
why the listen address is parsed here again; a test holds it equal to the agent's own parser.
"""

from __future__ import annotations

import os
import sys
import urllib.request

LISTEN_ENV = "SOPHOS_EXPORTER_WEB_LISTEN_ADDRESS"
DEFAULT_LISTEN = ":9866"
PATH = "/healthz"
TIMEOUT_SECONDS = 4.0
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - wildcards


def health_url(listen: str) -> str:
    """The URL of ``/healthz`` for a listen address ``HOST:PORT``, ``:PORT`` or ``[::1]:PORT``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    host = host.strip("[]")
    host = _LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}{PATH}"


def main() -> int:
    try:
        url = health_url(os.environ.get(LISTEN_ENV) or DEFAULT_LISTEN)
    except ValueError as exc:
        print(f"unhealthy: {LISTEN_ENV}: {exc}", file=sys.stderr)
        return 1
    # Straight to the agent: an HTTP_PROXY in the container's environment must not be used.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = int(response.status)
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError)
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {url}: HTTP {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
