"""The ESL client against a minimal scripted server: framing, login, pipelining, outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
import structlog

from tests.waiting import wait_for
from vp_gateway_fs.esl import EslClient, EslEvent, EslTimeout, EslUnavailable
from vp_gateway_fs.esl_frames import parse_event_plain, read_message

PASSWORD = "s3cret-pass"
REPLY_EVENT_OK = b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n"


def event_plain(headers: dict[str, str], body: str = "") -> bytes:
    """Serialize an event the way FreeSWITCH does (docs/protocols/freeswitch.md)."""
    from urllib.parse import quote

    text = "".join(f"{k}: {quote(v, safe='')}\n" for k, v in headers.items())
    if body:
        raw = body.encode()
        text += f"Content-Length: {len(raw)}\n\n"
        payload = text.encode() + raw
    else:
        payload = (text + "\n").encode()
    return f"Content-Length: {len(payload)}\nContent-Type: text/event-plain\n\n".encode() + payload


def api_response(output: str) -> bytes:
    raw = output.encode()
    return f"Content-Type: api/response\nContent-Length: {len(raw)}\n\n".encode() + raw


class ScriptedEsl:
    """Speaks the inbound side of 9c: auth, event, api (answers from ``answer``), events on demand."""

    def __init__(self, answer: Callable[[str], str | None] | None = None) -> None:
        self.answer = answer or (lambda cmd: "+OK\n")
        self.commands: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.drop()
        if self.server is not None:
            self.server.close()

    async def drop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    def push(self, data: bytes) -> None:
        for w in self.writers:
            w.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Content-Type: auth/request\n\n")
        authed = False
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                raw = await reader.readuntil(b"\n\n")
                cmd = raw.decode().strip()
                self.commands.append(cmd)
                if cmd.startswith("auth "):
                    if cmd == f"auth {PASSWORD}":
                        authed = True
                        writer.write(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                    else:
                        notice = b"Disconnected, goodbye.\n"
                        writer.write(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
                        writer.write(
                            b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n%s"
                            % (len(notice), notice)
                        )
                        await writer.drain()
                        writer.close()
                        return
                elif not authed:
                    writer.write(b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n")
                elif cmd.startswith("event plain"):
                    writer.write(
                        b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n"
                    )
                elif cmd.startswith("api "):
                    out = self.answer(cmd[4:])
                    if out is not None:  # None: never answer (a stuck FreeSWITCH)
                        writer.write(api_response(out))
                await writer.drain()


@pytest.fixture
async def esl_server():
    server = ScriptedEsl()
    await server.start()
    yield server
    await server.stop()


async def connected_client(server: ScriptedEsl, events: list[EslEvent] | None = None, **kw) -> tuple:
    states: list[bool] = []
    client = EslClient(
        "127.0.0.1",
        server.port,
        PASSWORD,
        subscription="CHANNEL_ANSWER CUSTOM mod_audio_stream::play",
        on_event=(events.append if events is not None else lambda e: None),
        on_state=states.append,
        **kw,
    )
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(client.connected_event.wait(), 3)
    return client, task, states


def test_event_plain_parsing_decodes_values_and_body() -> None:
    raw = event_plain(
        {"Event-Name": "CUSTOM", "Event-Subclass": "mod_audio_stream::play", "Unique-ID": "abc-1"},
        body='{"file":"/tmp/abc-1_0.tmp.r8"}',
    )
    body = raw.split(b"\n\n", 1)[1]
    event = parse_event_plain(body)
    assert event.name == "CUSTOM" and event.subclass == "mod_audio_stream::play"
    assert event.uuid == "abc-1" and event.body == '{"file":"/tmp/abc-1_0.tmp.r8"}'
    assert "Content-Length" not in event.headers
    no_body = parse_event_plain(event_plain({"Event-Name": "DTMF", "DTMF-Digit": "#"}).split(b"\n\n", 1)[1])
    assert no_body.headers["DTMF-Digit"] == "#" and no_body.body == ""


@pytest.mark.parametrize(
    "values",
    [
        ["caller%20one", "Ivan%20%D0%98%D0%B2%D0%B0%D0%BD", "a%3Ab", "plain"],
        ["line%0Abreak", "%E2%82", "%AC"],  # a decoded line break; a UTF-8 sequence cut across values
        ["%E2%82", "%ACtail", "%zz%", "", "100%25"],
    ],
)
def test_event_plain_values_decode_each_as_it_would_alone(values: list[str]) -> None:
    from urllib.parse import unquote

    block = "".join(f"H{i}: {v}\n" for i, v in enumerate(values)) + "\n"
    event = parse_event_plain(block.encode())
    assert event.headers == {f"H{i}": unquote(v) for i, v in enumerate(values)}


async def test_read_message_frames_bodies_exactly() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(api_response("+OK Message sent\n") + b"Content-Type: command/reply\nReply-Text: +OK\n\n")
    headers, body = await read_message(reader)
    assert headers["Content-Type"] == "api/response" and body == b"+OK Message sent\n"
    headers, body = await read_message(reader)
    assert headers["Reply-Text"] == "+OK" and body == b""


async def test_login_subscribes_and_routes_events(esl_server) -> None:
    events: list[EslEvent] = []
    _client, task, states = await connected_client(esl_server, events)
    assert esl_server.commands[:2] == [
        f"auth {PASSWORD}",
        "event plain CHANNEL_ANSWER CUSTOM mod_audio_stream::play",
    ]
    assert states == [True]
    esl_server.push(event_plain({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u-1"}))
    await wait_for(lambda: events)
    assert events[0].name == "CHANNEL_ANSWER" and events[0].uuid == "u-1"
    task.cancel()


async def test_pipelined_commands_get_their_own_answers_even_after_a_timeout(esl_server) -> None:
    order: list[str] = []

    def answer(cmd: str) -> str | None:
        order.append(cmd)
        return f"+OK {cmd.split()[-1]}\n"

    esl_server.answer = answer
    client, task, _ = await connected_client(esl_server)
    replies = await asyncio.gather(*(client.api(f"uuid_exists n{i}") for i in range(20)))
    assert [r.text for r in replies] == [f"+OK n{i}" for i in range(20)]
    assert order == [f"uuid_exists n{i}" for i in range(20)]  # written in call order

    # one slow answer: the caller times out, but the late reply does not shift the next pairing
    slow: list[str] = []

    def slow_first(cmd: str) -> str | None:
        if not slow:
            slow.append(cmd)
            return None
        return f"+OK {cmd.split()[-1]}\n"

    esl_server.answer = slow_first
    with pytest.raises(EslTimeout):
        await client.api("uuid_exists late", timeout=0.05)
    esl_server.push(api_response("+OK late\n"))  # FreeSWITCH finally answers the first one
    assert (await client.api("uuid_exists next")).text == "+OK next"
    task.cancel()


async def test_err_answers_are_returned_not_raised(esl_server) -> None:
    esl_server.answer = lambda cmd: "-ERR No such channel!\n"
    client, task, _ = await connected_client(esl_server)
    reply = await client.api("uuid_break nope all")
    assert not reply.ok and reply.text == "-ERR No such channel!"
    task.cancel()


async def test_drop_fails_commands_fast_and_reconnects_with_backoff(esl_server) -> None:
    esl_server.answer = lambda cmd: None  # never answers: the command is in flight when FS drops
    client, task, states = await connected_client(esl_server, reconnect_max_s=0.2)
    pending = asyncio.create_task(client.api("uuid_broadcast x /tmp/a.r8 aleg", timeout=5))
    await wait_for(lambda: any(c.startswith("api uuid_broadcast") for c in esl_server.commands))
    loop = asyncio.get_running_loop()
    t_drop = loop.time()
    await esl_server.drop()
    with pytest.raises(EslUnavailable):
        await pending
    assert loop.time() - t_drop < 0.5
    with pytest.raises(EslUnavailable):
        await client.api("uuid_break x all")  # during the outage: at once, no waiting
    await wait_for(lambda: client.connections == 2, timeout=3)
    assert states == [True, False, True]
    assert loop.time() - t_drop < 1.0
    task.cancel()


async def test_refused_password_is_logged_without_the_password() -> None:
    server = ScriptedEsl()
    await server.start()
    client = EslClient(
        "127.0.0.1",
        server.port,
        "wrong-password-x",
        subscription="DTMF",
        on_event=lambda e: None,
        reconnect_max_s=0.1,
    )
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(client.run())
        await wait_for(lambda: any(e["event"] == "esl.auth_failed" for e in logs))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not client.connected
    assert "wrong-password-x" not in repr(logs)
    await server.stop()


async def test_commands_are_single_lines(esl_server) -> None:
    client, task, _ = await connected_client(esl_server)
    with pytest.raises(ValueError):
        client.submit("api uuid_kill x\n\napi status")
    with pytest.raises(ValueError):  # a header value cannot smuggle in a second command
        client.submit_sendmsg("x", [("execute-app-arg", "/tmp/a.r8\n\napi status")])
    task.cancel()
