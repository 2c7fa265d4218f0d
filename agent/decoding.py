"""Response bodies read under ``max_response_bytes``, decoded as they arrive.

Under httpx-aiohttp, aiohttp does not decompress (the transport passes ``auto_decompress=False``):
httpx's ``Response`` does, in ``aiter_bytes``, with decoders that inflate each network chunk whole
and hand each layer's whole output to the next. One 16 KiB chunk of a gzip bomb becomes 16 MiB
before anyone can count a byte, and ``Content-Encoding: gzip, gzip`` turns a few KiB into
gigabytes inside a single call. A cap checked on what ``aiter_bytes`` yields comes too late.

So the agent reads the raw body (``Response.aiter_raw``) and decodes it here, with zlib's own
decoder told how much it may produce (``max_length``): decoding proceeds in pieces of at most
``PIECE`` bytes, pulled only as far as the cap needs, and every stage (the bytes on the wire and
each layer's output) stops at ``max_response_bytes``. Memory stays near the cap whatever the
compression ratio or the stacking. Data that does not decode is an ``httpx.DecodingError``, as
with httpx's own decoders (``agent.classify``: ``protocol_error``).

The agent asks for ``gzip, deflate`` (``ACCEPT_ENCODING``, from the table below) and decodes
exactly those, stacked at most ``MAX_CODINGS`` deep. Anything else (``br``, ``zstd``, unknown
names, deeper stacks) was never asked for and is refused unread, whichever optional decoders
happen to be installed. A body that cannot be read whole says why in ``Body.problem``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from agent.text import printable

PIECE = 64 * 1024
"""The most a decoder produces in one step: what one layer holds beyond the cap."""
MAX_CODINGS = 3
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_ALIASES = {"x-gzip": "gzip"}
ACCEPT_ENCODING = ", ".join(_WBITS)
"""What the agent asks for; exactly what it decodes."""
_SHOWN = 60


@dataclass(frozen=True)
class Body:
    """A response body as far as it was read, decoded; ``problem`` says why it is not the whole
    answer (larger than the cap, or in a coding the agent does not decode), else None."""

    data: bytes
    problem: str | None = None


class _Refused(Exception):
    """Content codings the agent does not decode (the caller adds the header to the message)."""


class _TooLarge(Exception):
    """A stage of decoding passed the cap."""


async def read_body(response: httpx.Response, cap: int) -> Body:
    """Read and decode ``response``'s body, stopping as soon as any stage passes ``cap``."""
    header = ", ".join(response.headers.get_list("content-encoding"))
    if response.is_stream_consumed:
        # Built in memory with its content (an httpx MockTransport): httpx read it already.
        data = response.content
        if len(data) > cap:
            return Body(data[:cap], f"response body exceeds max_response_bytes ({cap} bytes)")
        return Body(data)
    try:
        decoder = Decoder(response.headers.get_list("content-encoding", split_commas=True), cap)
    except _Refused as exc:
        return Body(b"", f"{exc} (Content-Encoding: {_shown(header)})")
    async for chunk in response.aiter_raw():
        if not decoder.feed(chunk):
            break
    return decoder.body(header)


class Decoder:
    """The decoding pipeline of one body: its content codings, the last applied decoded first."""

    def __init__(self, codings: list[str], cap: int) -> None:
        names = [_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in codings]
        names = [n for n in names if n not in ("", "identity")]
        if any(n not in _WBITS for n in names):
            raise _Refused(
                f"response has a content coding the agent did not ask for (it asks for "
                f"{ACCEPT_ENCODING})"
            )
        if len(names) > MAX_CODINGS:
            raise _Refused(
                f"response stacks {len(names)} content codings; the agent decodes at most "
                f"{MAX_CODINGS}"
            )
        self._layers = [_Inflater(name) for name in reversed(names)]
        self._cap = cap
        self._entered = [0] * len(self._layers)  # bytes that entered each layer so far
        self._out = bytearray()
        self._full = False

    def feed(self, raw: bytes) -> bool:
        """Decode one raw chunk; False once the cap is passed (nothing more is worth reading).

        Raises ``httpx.DecodingError`` for data that does not decode."""
        try:
            for piece in self._through(0, raw):
                room = self._cap - len(self._out)
                self._out += piece[:room]
                if len(piece) > room:
                    raise _TooLarge
        except _TooLarge:
            self._full = True
            return False
        return True

    def _through(self, level: int, data: bytes) -> Iterator[bytes]:
        """``data`` entering layer ``level``, decoded by it and every later layer, lazily: a
        piece is produced only when the one before it has been used up."""
        if level == len(self._layers):
            yield data
            return
        self._entered[level] += len(data)
        if self._entered[level] > self._cap:
            raise _TooLarge
        for piece in self._layers[level].feed(data):
            yield from self._through(level + 1, piece)

    def body(self, header: str = "") -> Body:
        data = bytes(self._out)
        if not self._full:
            return Body(data)
        if not self._layers:
            return Body(data, f"response body exceeds max_response_bytes ({self._cap} bytes)")
        return Body(
            data,
            f"decoded response body exceeds max_response_bytes ({self._cap} bytes; "
            f"Content-Encoding: {_shown(header)})",
        )


class _Inflater:
    """One content coding's zlib decoder, producing at most ``PIECE`` bytes per step.

    ``deflate`` is meant to be the zlib format, but some servers send raw deflate data under
    that name; the first two bytes tell which (a zlib header is a multiple of 31)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._zlib: zlib._Decompress | None = None
        self._head = b""
        if coding == "gzip":
            self._zlib = zlib.decompressobj(_WBITS["gzip"])

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            cmf, flg = data[0], data[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        inflater, pending = self._zlib, data
        while not inflater.eof:
            try:
                piece = inflater.decompress(pending, PIECE)
            except zlib.error as exc:
                why = f"response body is not valid {self._coding} data ({exc})"
                raise httpx.DecodingError(why) from None
            if piece:
                yield piece
            pending = inflater.unconsumed_tail
            if not pending and len(piece) < PIECE:
                break
        if inflater.eof and (pending or inflater.unused_data):
            why = f"response body has data after the end of its {self._coding} stream"
            raise httpx.DecodingError(why)


def _shown(value: str) -> str:
    """A header value from the server as it may appear in a message: printable and short."""
    cleaned = printable(value)
    return cleaned if len(cleaned) <= _SHOWN else cleaned[:_SHOWN] + "..."
