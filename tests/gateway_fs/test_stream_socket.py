"""gateway-fs's stream listener (picows) against a real WebSocket client: messages in order in both
modes, fragments put together, oversized messages flagged, paths, and how streams are closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.waiting import wait_for
from vp_gateway_fs.stream_socket import TOO_LARGE, Message, StreamClosed, StreamSocket, serve_streams

LIMIT = 1000  # max_message_bytes of these tests

OnStream = Callable[[StreamSocket, str | None], Awaitable[None]]


class Listener:
    def __init__(self) -> None:
        self.opened: list[tuple[StreamSocket, str | None]] = []
        self.handle: OnStream = self._keep
        self.tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def _keep(self, sock: StreamSocket, uuid: str | None) -> None:
        self.opened.append((sock, uuid))
        await sock.finished

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    built = Listener()

    def spawn(handling: Awaitable[None]) -> None:
        built.tasks.append(asyncio.ensure_future(handling))

    server = await serve_streams(
        "127.0.0.1", 0, lambda s, u: built.handle(s, u), max_message_bytes=LIMIT, spawn=spawn
    )
    built.port = server.sockets[0].getsockname()[1]
    try:
        yield built
    finally:
        server.close()
        for task in built.tasks:
            task.cancel()
        await asyncio.gather(*built.tasks, return_exceptions=True)


async def test_messages_come_in_order_queued_then_delivered(listener: Listener) -> None:
    async with websockets.connect(listener.url("/call/u-1?key=k1&x=2"), compression=None) as ws:
        await wait_for(lambda: listener.opened, 5)
        sock, uuid = listener.opened[0]
        assert (uuid, sock.path, sock.query) == ("u-1", "/call/u-1", {"key": "k1", "x": "2"})
        await ws.send('{"rate": 8000}')
        await ws.send(b"\x01" * 320)
        await ws.send([b"\x02" * 100, b"\x03" * 60])  # one message in two fragments
        await ws.send(b"\x04" * (LIMIT + 1))
        await ws.send([b"\x05" * 600, b"\x06" * 600])  # fragments that together exceed the limit
        await ws.send(["caf", "é"])  # a fragmented text message
        got = [await asyncio.wait_for(sock.receive(), 5) for _ in range(6)]
        assert got[:3] == ['{"rate": 8000}', b"\x01" * 320, b"\x02" * 100 + b"\x03" * 60]
        assert got[3] is TOO_LARGE and got[4] is TOO_LARGE and got[5] == "café"
        # now handed over as they arrive, the queued ones first
        await ws.send(b"")  # an empty message is not mistaken for an oversized one
        assert await sock.receive() is not TOO_LARGE
        await ws.send(b"\x07" * 320)
        await ws.send(b"\x08" * 320)
        await wait_for(lambda: sock._queue, 5)
        delivered: list[Message] = []
        sock.deliver_to(lambda m: delivered.append(m) or len(delivered) == 3)
        await ws.send(b"\x09" * 320)
        await ws.send(b"\x0a" * 320)  # after the handler said stop: queued again
        await wait_for(lambda: len(delivered) == 3 and sock._queue, 5)
        assert delivered == [b"\x07" * 320, b"\x08" * 320, b"\x09" * 320]
        assert await sock.receive() == b"\x0a" * 320
    await asyncio.wait_for(sock.finished, 5)  # the client closed
    assert not sock.connected
    with pytest.raises(StreamClosed):
        await sock.receive()
    with pytest.raises(StreamClosed):
        await sock.send_text("too late")


async def test_server_close_carries_code_and_reason_and_text_goes_out(listener: Listener) -> None:
    async with websockets.connect(listener.url("/call?key=k"), compression=None) as ws:
        await wait_for(lambda: listener.opened, 5)
        sock, uuid = listener.opened[0]
        assert uuid is None
        await sock.send_text('{"type":"streamAudio"}')
        assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"streamAudio"}'
        await sock.close(1008, "stream key missing or wrong")
        assert not sock.connected
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (1008, "stream key missing or wrong")
    await asyncio.wait_for(sock.finished, 5)


@pytest.mark.parametrize("path", ["/", "/health", "/call/a/b", "/calls/u-1"])
async def test_other_paths_are_not_found(listener: Listener, path: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(listener.url(path), compression=None):
            pass
    assert caught.value.response.status_code == 404
    assert listener.opened == []


async def test_a_failing_handler_closes_its_stream_1011_and_one_done_closes_1000(listener: Listener) -> None:
    async def fail(sock: StreamSocket, uuid: str | None) -> None:
        raise RuntimeError("boom")

    async def finish(sock: StreamSocket, uuid: str | None) -> None:
        return None

    for handle, code in ((fail, 1011), (finish, 1000)):
        listener.handle = handle
        async with websockets.connect(listener.url("/call/u-2"), compression=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == code


async def test_pings_are_answered(listener: Listener) -> None:
    async with websockets.connect(listener.url("/call/u-3"), compression=None, ping_interval=None) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
