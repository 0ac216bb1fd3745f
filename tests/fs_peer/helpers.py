"""Test-side ends of the FreeSWITCH peer: a raw ESL client and a recording WebSocket server.

Both are written from docs/protocols/freeswitch.md, independently of the peer's code, so the tests check
the wire rather than the peer against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from voiceplatform_devstack import FreeSwitchPeer

PASSWORD = "ClueCon"


def ramp_pcm(seconds: float, rate: int = 8000, seed: int = 0) -> bytes:
    """Recognizable audio: a pseudo-random but reproducible L16 signal."""
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, size=round(seconds * rate), dtype=np.int16).astype("<i2").tobytes()


def parse_head(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode().split("\n"):
        name, sep, value = line.partition(": ")
        if sep:
            headers[name] = value
    return headers


@dataclass
class PlainEvent:
    raw: bytes  # the text/event-plain payload, exactly as received
    headers: dict[str, str]  # URL-decoded
    body: bytes

    @property
    def name(self) -> str:
        return self.headers["Event-Name"]

    @property
    def subclass(self) -> str:
        return self.headers.get("Event-Subclass", "")


def parse_plain(payload: bytes) -> PlainEvent:
    head, sep, rest = payload.partition(b"\n\n")
    assert sep, payload
    headers: dict[str, str] = {}
    for line in head.decode().split("\n"):
        name, _, value = line.partition(": ")
        headers[name] = unquote(value)
    body = b""
    if "Content-Length" in headers:
        size = int(headers.pop("Content-Length"))
        body = rest[:size]
        assert len(rest) == size, "the event payload ends with its body"
    else:
        assert rest == b"", "an event without a body ends with one blank line"
    return PlainEvent(payload, headers, body)


class RawEsl:
    """An ESL client at the byte level."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[PlainEvent] = []
        self.other: list[tuple[dict[str, str], bytes]] = []

    @classmethod
    async def open(cls, peer: FreeSwitchPeer, password: str | None = PASSWORD) -> RawEsl:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.esl_port)
        client = cls(reader, writer)
        assert await reader.readexactly(28) == b"Content-Type: auth/request\n\n"
        if password is not None:
            client.send(f"auth {password}\n\n")
            assert await client.read_raw() == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
        return client

    def send(self, text: str | bytes) -> None:
        self.writer.write(text.encode() if isinstance(text, str) else text)

    async def read_raw(self) -> bytes:
        """One whole message, headers and body, exactly as it came."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
        length = int(parse_head(head).get("Content-Length", "0"))
        return head + (await asyncio.wait_for(self.reader.readexactly(length), 5) if length else b"")

    async def read(self) -> tuple[dict[str, str], bytes]:
        """The next non-event message (events met on the way are kept in ``events``)."""
        while True:
            raw = await self.read_raw()
            head, _, body = raw.partition(b"\n\n")
            headers = parse_head(head + b"\n")
            if headers.get("Content-Type") == "text/event-plain":
                self.events.append(parse_plain(body))
                continue
            return headers, body

    async def command(self, line: str) -> str:
        self.send(line + "\n\n")
        headers, body = await self.read()
        return headers.get("Reply-Text", body.decode())

    async def api(self, line: str) -> str:
        self.send(f"api {line}\n\n")
        headers, body = await self.read()
        assert headers["Content-Type"] == "api/response"
        return body.decode()

    async def event(self, name: str, uuid: str | None = None, timeout: float = 5.0) -> PlainEvent:
        """The first event (already received or coming) with this Event-Name or subclass."""

        def match(e: PlainEvent) -> bool:
            return (e.name == name or e.subclass == name) and (
                uuid is None or e.headers.get("Unique-ID") == uuid
            )

        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if match(e):
                    self.events.remove(e)
                    return e
            raw = await asyncio.wait_for(self.read_raw(), max(0.01, deadline - time.monotonic()))
            head, _, body = raw.partition(b"\n\n")
            headers = parse_head(head + b"\n")
            if headers.get("Content-Type") == "text/event-plain":
                self.events.append(parse_plain(body))
            else:
                self.other.append((headers, body))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@dataclass
class WsConn:
    path: str
    ws: ServerConnection
    messages: list[tuple[float, str | bytes]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frames(self) -> list[tuple[float, bytes]]:
        return [(t, m) for t, m in self.messages if isinstance(m, bytes)]

    @property
    def texts(self) -> list[str]:
        return [m for _, m in self.messages if isinstance(m, str)]

    async def wait_frames(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


class WsRecorder:
    """The gateway's side of mod_audio_stream: records every frame with its arrival time."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[WsConn] = asyncio.Queue()
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WsRecorder:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def accept(self, timeout: float = 5.0) -> WsConn:
        return await asyncio.wait_for(self.connections.get(), timeout)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = WsConn(ws.request.path if ws.request else "", ws)
        self.connections.put_nowait(conn)
        try:
            async for message in ws:
                conn.messages.append((time.monotonic(), message))
                conn.changed.set()
        except ConnectionClosed:
            pass  # an abrupt end is something the tests look at (close_code), not an error
        finally:
            conn.closed.set()
            conn.changed.set()
