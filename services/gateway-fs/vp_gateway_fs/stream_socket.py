"""The mod_audio_stream WebSocket listener: picows, with the caller's frames handled as they are parsed.

Every caller frame of every call passes here (50 a second per call), so the stream has a listener
of its own, on ``VP_FS_STREAM_PORT``, instead of the service's HTTP server. picows parses WebSocket
frames in C and calls ``on_ws_frame`` straight from the socket's read; once a call runs, its frames
go on to the call from that callback, with no task woken per frame. uvicorn's sans-I/O protocol
through starlette cost about 2.5 times as much server CPU per frame (``bench/bench_ws_receive.py``).

A ``StreamSocket`` has two modes:
- before the call runs (key, metadata, routing), messages are queued and read with ``receive()``;
- ``deliver_to(handler)`` hands the queued ones and then every new message to ``handler`` as it
  arrives, until the handler says stop or the socket closes (``finished``).

Fragmented messages are put together; pings are answered by picows; a message over
``max_message_bytes`` is passed on as ``TOO_LARGE`` for the handler to count (the stream goes on), and
one over ``MAX_FRAME_BYTES`` closes the stream (picows: 1009).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import structlog
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

log = structlog.get_logger("vp_gateway_fs.stream_socket")
MAX_FRAME_BYTES: Final = 1 << 20  # larger WebSocket frames are a protocol error (picows closes: 1009)
CLOSE_WAIT_S: Final = 1.0  # after our close frame, the peer's reply is awaited this long
PAUSE_AT: Final = 500  # queued messages at which reading the socket pauses (nobody reads them)


class _TooLarge(bytes):
    """The type of ``TOO_LARGE``: told apart by identity, never equal to a message's own bytes."""


TOO_LARGE: Final = _TooLarge()  # passed on in place of a message over max_message_bytes


class StreamClosed(Exception):
    """The stream's socket is closed (by the peer, by us, or the connection dropped)."""


Message = bytes | str
Handler = Callable[[Message], bool]  # True: stop delivering (the call has ended)


class StreamSocket(WSListener):
    """One FreeSWITCH stream: ``path`` and ``query`` of its URL, its messages, and sending back."""

    def __init__(
        self,
        path: str,
        query: dict[str, str],
        max_message_bytes: int,
        on_open: Callable[[StreamSocket], object] = lambda sock: None,
    ) -> None:
        self.path, self.query, self.max_message_bytes = path, query, max_message_bytes
        self._on_open = on_open
        self.transport: WSTransport | None = None
        self.connected = False  # open: our close frame not sent, the connection not dropped
        self._queue: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._handler: Handler | None = None
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._parts_text = False
        self._parts_size = 0
        self._paused = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- picows callbacks ------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport, self.connected = transport, True
        self._on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY and frame.fin and self._parts is None:  # the audio: one frame each
            if frame.payload_size > self.max_message_bytes:
                self._message(TOO_LARGE)
            else:
                self._message(frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            if self.connected:
                transport.send_close(frame.get_close_code())
            self.connected = False
            transport.disconnect()
        elif kind in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
            self._fragment(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.connected = False
        self._wake()
        if not self.finished.done():
            self.finished.set_result(None)

    # ---- reading -----------------------------------------------------------------------------------
    async def receive(self) -> Message:
        """The next message (``TOO_LARGE`` for one over the limit); StreamClosed once none will come."""
        while not self._queue:
            if self.finished.done():
                raise StreamClosed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._queue.popleft()
        if len(self._queue) < PAUSE_AT // 2:
            self._resume_reading()
        return message

    def deliver_to(self, handler: Handler) -> None:
        """Every message from now on, queued ones first, goes to ``handler`` as it arrives."""
        self._resume_reading()
        while self._queue:
            if handler(self._queue.popleft()):
                return
        self._handler = handler

    # ---- writing -----------------------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        if not self.connected or self.transport is None:
            raise StreamClosed
        self.transport.send(WSMsgType.TEXT, text.encode())

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send our close frame; the connection is dropped on the peer's reply or after CLOSE_WAIT_S."""
        if not self.connected or self.transport is None:
            return
        self.connected = False
        self.transport.send_close(WSCloseCode(code), reason.encode()[:123])
        asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self.transport.disconnect)

    # ---- inside --------------------------------------------------------------------------------------
    def _message(self, message: Message) -> None:
        handler = self._handler
        if handler is not None:
            if handler(message):
                self._handler = None
            return
        self._queue.append(message)
        self._wake()
        if len(self._queue) >= PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.underlying_transport.pause_reading()

    def _fragment(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.CONTINUATION:  # a new message (one left unfinished is dropped)
            self._parts, self._parts_text, self._parts_size = [], frame.msg_type is WSMsgType.TEXT, 0
        elif self._parts is None:
            return  # a continuation of nothing: a confused peer; nothing to add it to
        self._parts_size += frame.payload_size
        if self._parts_size <= self.max_message_bytes:
            self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        parts, self._parts = self._parts, None
        if self._parts_size > self.max_message_bytes:
            self._message(TOO_LARGE)
        elif self._parts_text:
            try:
                self._message(b"".join(parts).decode())
            except UnicodeDecodeError:
                transport.send_close(WSCloseCode.INVALID_TEXT, b"text frame is not UTF-8")
                self.connected = False
                transport.disconnect()
        else:
            self._message(b"".join(parts))

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.underlying_transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def serve_streams(
    host: str,
    port: int,
    on_stream: Callable[[StreamSocket, str | None], Awaitable[None]],
    *,
    max_message_bytes: int,
    spawn: Callable[[Coroutine[Any, Any, None]], object],
) -> asyncio.Server:
    """Listen for mod_audio_stream on ``/call`` and ``/call/<uuid>``; other paths get 404."""

    def listener(request: WSUpgradeRequest) -> StreamSocket | None:
        url = urlsplit(request.path.decode("latin-1"))
        if url.path == "/call":
            uuid = None
        elif url.path.startswith("/call/") and "/" not in url.path[6:] and url.path[6:]:
            uuid = url.path[6:]
        else:
            return None
        # the handler starts once picows has answered the upgrade (on_ws_connected)
        return StreamSocket(
            url.path,
            dict(parse_qsl(url.query)),
            max_message_bytes,
            on_open=lambda sock: spawn(_closed_after(on_stream(sock, uuid), sock)),
        )

    return await ws_create_server(
        listener,
        host,
        port,
        max_frame_size=MAX_FRAME_BYTES,
        disconnect_on_exception=False,
        enable_auto_ping=True,  # a peer gone without closing is found within ~40 s, like uvicorn's pings
        logger_name="vp_gateway_fs.picows",
    )


async def _closed_after(handling: Awaitable[None], sock: StreamSocket) -> None:
    """The stream is closed when its handler is done: 1000, or 1011 if the handler failed."""
    try:
        await handling
    except BaseException:
        with contextlib.suppress(Exception):
            await sock.close(1011, "gateway error")
        raise
    await sock.close(1000, "")
