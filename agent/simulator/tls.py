"""HTTPS for the simulator: a certificate chain to serve, and a throwaway CA to make one.

Every host serves the same certificate, naming ``127.0.0.1``, ``::1`` and ``localhost`` (the rogue
listener's name). ``make_tls`` issues it from a certificate authority made on the spot with
``trustme`` and writes the CA certificate where a client can be told to trust it: the exporter
through ``ca_bundle``, Python's ``ssl`` through ``SSL_CERT_FILE``, ``requests`` through
``REQUESTS_CA_BUNDLE``. Nothing here is meant to protect anything: the key never leaves the
machine and dies with the directory it was written to.
"""

from __future__ import annotations

import os
import shlex
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
"""What the served certificate names: every address the simulator hands out URLs for."""


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate chain and its key: every host then serves HTTPS (``https://`` URLs).

    ``ca_file`` is the CA certificate a client must trust, when the simulator made it.
    """

    certfile: Path
    keyfile: Path
    ca_file: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.certfile), str(self.keyfile))
        return context


def make_tls(directory: Path, names: tuple[str, ...] = NAMES) -> TlsFiles:
    """A fresh CA and a server certificate for ``names``, written into ``directory``.

    The key file is written owner-only; the CA file is public by nature.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="sophos-central-exporter simulator")
    leaf = ca.issue_cert(*names)
    ca_file = directory / "simulator-ca.pem"
    certfile = directory / "simulator-cert.pem"
    keyfile = directory / "simulator-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(leaf.private_key_pem.bytes())
    return TlsFiles(certfile, keyfile, ca_file)


def trust_instructions(
    ca_file: Path, api_url: str, agent_config_path: str | None = None
) -> list[str]:
    """How to make a client trust the simulator's CA: shell lines that work when pasted (what
    is not a command is a ``#`` comment)."""
    path = shlex.quote(str(ca_file.resolve()))
    lines = [
        "# The simulator serves HTTPS with a certificate from its own CA, made at start-up.",
        "# Trust it in the shell that runs a client (only while this simulator runs):",
        f"export SSL_CERT_FILE={path}       # Python's ssl: urllib, httpx, aiohttp",
        f"export REQUESTS_CA_BUNDLE={path}  # requests",
        f"curl --cacert {path} {api_url}/whoami/v1",
        f"# the exporter's config: ca_bundle: {ca_file.resolve()}",
    ]
    if agent_config_path is not None:
        lines.append(f"# ({agent_config_path} sets ca_bundle already)")
    return lines
