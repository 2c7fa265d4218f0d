"""A compressed answer that inflates to a gigabyte costs the agent about ``max_response_bytes``.

A loopback server plays Sophos Central for a tenant credential and answers the second tenant
probe with a bomb: 1 GiB of zeros gzip'ed, deflate'd, brotli'd, or gzip'ed twice
(``Content-Encoding: gzip, gzip``). A real agent in its own process (``tests/e2e/bomb_agent.py``)
runs three probe cycles; the test asserts what a user relies on: the bomb is a classified,
counted ``invalid_response``, the next cycle succeeds, and the process's peak memory (its own
``ru_maxrss``) grew by about the cap, not by the bomb.

Measured with the default cap (1 MiB) on the code before decoding was bounded: the stacked bomb
raised the peak by about 2 GiB, brotli by about 1 GiB, a single gzip or deflate layer by about
16 MiB (one 16 KiB chunk inflated whole); now each stays within a few MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import pytest
import yaml

from tests.test_transport import Server

GIB = 1 << 30
MIB = 1 << 20
CAP = MIB  # max_response_bytes' default
PEAK_GROWTH_LIMIT = 4 * CAP + 4 * MIB
"""What the bomb cycle may add to the peak: the capped body and its copies, plus the noise of
one probe cycle. Before decoding was bounded the smallest bomb added 16 MiB, the stacked one 2 GiB.
"""
REPO = Path(__file__).resolve().parents[2]


def _zeros_deflated(size: int) -> tuple[bytes, bytes]:
    """Raw deflate of ``size`` zeros, built fast: after a full flush the compressor forgets its
    window, so every further MiB of zeros compresses to the very same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // MIB), compressor.flush()


def gzip_bomb(size: int = GIB) -> bytes:
    blocks, end = _zeros_deflated(size)
    crc = 0
    for _ in range(size // MIB):
        crc = zlib.crc32(bytes(MIB), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + blocks + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zlib_bomb(size: int = GIB) -> bytes:
    """``Content-Encoding: deflate`` is the zlib format (RFC 9110), deflate data in a wrapper."""
    blocks, end = _zeros_deflated(size)
    adler = 1
    for _ in range(size // MIB):
        adler = zlib.adler32(bytes(MIB), adler)
    return b"\x78\xda" + blocks + end + struct.pack(">I", adler)


def brotli_bomb(size: int = GIB) -> bytes:
    compressor = brotli.Compressor(quality=1)
    parts = [compressor.process(bytes(MIB)) for _ in range(size // MIB)]
    return b"".join([*parts, compressor.finish()])


BOMBS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "gzip, gzip": ("gzip, gzip", lambda: gzip.compress(gzip_bomb(), 9)),
    "gzip": ("gzip", gzip_bomb),
    "deflate": ("deflate", zlib_bomb),
    "br": ("br", brotli_bomb),
}


def test_the_bombs_are_what_they_claim() -> None:
    """Each bomb really inflates to 1 GiB (checked in bounded steps, never held whole)."""
    for coding in ("gzip", "deflate"):
        bomb = BOMBS[coding][1]()
        inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if coding == "gzip" else 0))
        total, pending = 0, bomb
        while pending:
            total += len(inflater.decompress(pending, 64 * MIB))
            pending = inflater.unconsumed_tail
        assert (total, inflater.eof) == (GIB, True)
    outer = zlib.decompressobj(zlib.MAX_WBITS | 16)
    assert outer.decompress(BOMBS["gzip, gzip"][1]()) == gzip_bomb()
    unbrotli = brotli.Decompressor()
    total = len(unbrotli.process(BOMBS["br"][1](), output_buffer_limit=64 * MIB))
    while not unbrotli.is_finished():
        total += len(unbrotli.process(b"", output_buffer_limit=64 * MIB))
    assert total == GIB


@dataclass
class FakeSophos:
    """Token, whoami of a tenant credential and the tenant probe, on one loopback port; the
    second tenant probe gets ``bomb`` with ``Content-Encoding: coding``."""

    coding: str
    bomb: bytes
    tenant_probes: int = 0
    errors: list[str] = field(default_factory=list)
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def script(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _connection: int
    ) -> None:
        assert self.server is not None
        try:
            request = await self.server.read_request(reader)
            status, headers, body = self.answer(request.split(b" ", 2)[1].decode())
            lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
            writer.write("\r\n".join([*lines, "Connection: close", "", ""]).encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the agent stops reading a bomb at its cap and hangs up: expected
        except Exception as exc:  # a broken fake must fail the test, not hang it
            self.errors.append(repr(exc))

    def answer(self, target: str) -> tuple[str, list[str], bytes]:
        ok, json_type = "200 OK", "Content-Type: application/json"
        if target.endswith("/oauth2/token"):
            body = {"access_token": "bomb-test-token", "token_type": "bearer", "expires_in": 3600}
            return ok, [json_type], json.dumps(body).encode()
        if target == "/whoami/v1":
            hosts = {"global": self.url, "dataRegion": self.url}
            body = {"id": "t-bomb", "idType": "tenant", "apiHosts": hosts}
            return ok, [json_type], json.dumps(body).encode()
        self.tenant_probes += 1
        if self.tenant_probes == 2:
            return ok, [json_type, f"Content-Encoding: {self.coding}"], self.bomb
        return ok, [json_type], b'{"items": [], "pages": {"size": 1}}'


@contextlib.asynccontextmanager
async def fake_sophos(coding: str, bomb: bytes) -> AsyncIterator[FakeSophos]:
    fake = FakeSophos(coding, bomb)
    fake.server = Server(fake.script)
    fake.server.server = await asyncio.start_server(fake.server.handle, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.server.close()


async def run_agent(fake: FakeSophos, tmp_path: Path) -> dict[str, Any]:
    config = {
        "auth_url": f"{fake.url}/api/v2/oauth2/token",
        "api_url": fake.url,
        "allowed_api_hosts": ["127.0.0.1"],
        "state_file": str(tmp_path / "state.db"),
        "request_timeout": "20s",
        "budget_share": 1.0,
        "max_response_bytes": CAP,
        "credentials": [{"name": "bombed", "client_id": "id-bomb", "client_secret": "s3cret-b"}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.bomb_agent",
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), 90)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()[-3000:]
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


def tenant_result(cycle: list[dict[str, Any]]) -> dict[str, Any]:
    (result,) = [r for r in cycle if r["probe"] == "tenant"]
    return result


@pytest.mark.parametrize("name", list(BOMBS))
async def test_a_compression_bomb_costs_about_the_cap_and_the_agent_goes_on(
    name: str, tmp_path: Path
) -> None:
    coding, build = BOMBS[name]
    async with fake_sophos(coding, build()) as fake:
        report = await run_agent(fake, tmp_path)
    growth = (report["peak_after_kib"] - report["peak_before_kib"]) * 1024
    print(f"{name}: peak grew by {growth / MIB:.1f} MiB during the bomb cycle")
    assert fake.errors == []
    warm, bombed, after = (tenant_result(c) for c in report["cycles"])
    assert warm["cause"] == "ok"
    assert (bombed["status_code"], bombed["cause"]) == (200, "invalid_response"), bombed
    expected = "Content-Encoding" if coding == "br" else "max_response_bytes"
    assert expected in bombed["message"], bombed
    assert after["cause"] == "ok", "the agent went on probing after the bomb"
    counted = [
        line
        for line in report["requests"]
        if 'probe="tenant"' in line and 'status_code="200"' in line and "invalid_response" in line
    ]
    assert [line.rsplit(" ", 1)[1] for line in counted] == ["1"], report["requests"]
    assert growth <= PEAK_GROWTH_LIMIT, f"peak grew by {growth / MIB:.0f} MiB"
