"""Every secret the agent holds, in every form it sends it, known to the redactor before use.

Gateways and proxies echo the request they got in their error pages, so an answer can carry back
whatever the agent sent, in the form it was sent: the client id and secret in a token request's
form body, the bearer token in a header, the proxy's credentials in its URL or as the
``Proxy-Authorization`` value (``Basic`` and the base64 of ``user:password``). This module says
which values exist; ``agent.logs.Redactor`` masks each one raw, escaped (JSON, URL, HTML) and
base64-encoded. Two more registrations happen where the values appear: a client secret each time
its ``client_secret_file`` is read (``Credential.secret``: a rotated secret is known before it is
first sent), and each token as it is issued (``agent.client``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from agent.config import Settings
from agent.logs import REDACTOR

_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def register(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Make every secret of ``settings`` (and of the proxy environment it reads) known to the
    redactor; call before anything is sent or logged."""
    REDACTOR.add(settings_secrets(settings, environ))


def settings_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Client ids and secrets of every credential, and every proxy credential."""
    values: list[str] = []
    for credential in settings.credentials:
        values.append(credential.client_id.get_secret_value())
        with contextlib.suppress(OSError):  # an unreadable file: the token probe will say so
            values.append(credential.secret())
    return values + proxy_secrets(settings, environ)


def proxy_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The credentials of ``proxy_url`` and, when the agent reads them, of the proxy variables
    of the environment: the password, and ``user:password`` as the URL writes it and decoded
    (whose base64 is the ``Proxy-Authorization`` value the transport sends)."""
    urls = [settings.proxy_url.get_secret_value()] if settings.proxy_url is not None else []
    if settings.proxy_from_environment:
        env = os.environ if environ is None else environ
        for name in _PROXY_VARIABLES:
            urls += [v for v in (env.get(name), env.get(name.lower())) if v]
    secrets: list[str] = []
    for url in urls:
        with contextlib.suppress(ValueError):
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.password:
                user, password = parts.username or "", parts.password
                userinfo = parts.netloc.rpartition("@")[0]
                secrets += [unquote(password), f"{unquote(user)}:{unquote(password)}", userinfo]
    return list(dict.fromkeys(secrets))
