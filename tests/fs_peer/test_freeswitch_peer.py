"""The FreeSWITCH peer's Event Socket side, checked at the byte level against docs/protocols/freeswitch.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.fs_peer.helpers import PASSWORD, RawEsl, WsRecorder, parse_plain
from voiceplatform_devstack import FreeSwitchPeer
from voiceplatform_devstack.freeswitch_wire import FsEvent, separate_string, serialize_plain, url_encode

GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
NOTICE = b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n" + GOODBYE


@pytest.fixture
async def peer() -> AsyncIterator[FreeSwitchPeer]:
    async with FreeSwitchPeer(esl_password=PASSWORD) as fs:
        yield fs


@pytest.fixture
async def ws() -> AsyncIterator[WsRecorder]:
    async with WsRecorder() as server:
        yield server


async def test_auth_accepted_byte_exact(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer, password=None)
    esl.send("auth ClueCon\n\n")
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    assert await esl.api("uuid_exists nope") == "false"
    assert peer.authenticated_connections() == 1
    await esl.close()


@pytest.mark.parametrize("reject", [False, True])
async def test_bad_password_gets_invalid_then_notice_then_close(peer: FreeSwitchPeer, reject: bool) -> None:
    peer.reject_password = reject
    esl = await RawEsl.open(peer, password=None)
    esl.send(f"auth {'wrong' if not reject else PASSWORD}\n\n")
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"
    assert await esl.read_raw() == NOTICE
    assert await asyncio.wait_for(esl.reader.read(), 2) == b""  # closed by the peer


async def test_commands_before_auth_are_not_found_and_the_socket_stays(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer, password=None)
    esl.send("api status\n\n")
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n"
    esl.send("event plain ALL\n\n")
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n"
    esl.send("auth ClueCon\r\n\r\n")  # CRLF works too: \r does not break the blank line
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    await esl.close()


async def test_api_response_framing_byte_exact(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    esl.send("api uuid_exists 0000\n\n")
    assert await esl.read_raw() == b"Content-Type: api/response\nContent-Length: 5\n\nfalse"
    esl.send("api uuid_kill 0000\n\n")
    assert (
        await esl.read_raw() == b"Content-Type: api/response\nContent-Length: 22\n\n-ERR No such channel!\n"
    )
    esl.send("api frobnicate a b\n\n")
    body = b"-ERR frobnicate Command not found!\n"
    assert await esl.read_raw() == b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body
    esl.send("api uuid_broadcast\n\n")
    assert (await esl.read())[1] == b"-USAGE: <uuid> <path> [aleg|bleg|holdb|both]\n"
    await esl.close()


async def test_bgapi_reply_then_background_job_event(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    assert await esl.command("event plain BACKGROUND_JOB") == "+OK event listener enabled plain"
    esl.send("bgapi uuid_exists 0000\nJob-UUID: 7a3f0e4e-1111-2222-3333-444455556666\n\n")
    assert await esl.read_raw() == (
        b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: 7a3f0e4e-1111-2222-3333-444455556666\n"
        b"Job-UUID: 7a3f0e4e-1111-2222-3333-444455556666\n\n"
    )
    event = await esl.event("BACKGROUND_JOB")
    assert event.headers["Job-UUID"] == "7a3f0e4e-1111-2222-3333-444455556666"
    assert event.headers["Job-Command"] == "uuid_exists"
    assert event.headers["Job-Command-Arg"] == "0000"
    assert event.body == b"false"
    esl.send("bgapi status\n\n")  # without a Job-UUID the peer makes one
    headers, _ = await esl.read()
    job = headers["Job-UUID"]
    assert headers["Reply-Text"] == f"+OK Job-UUID: {job}"
    event = await esl.event("BACKGROUND_JOB")
    assert event.headers["Job-UUID"] == job and event.body.startswith(b"UP 0 years")
    await esl.close()


async def test_events_reach_only_their_subscribers(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    answers = await RawEsl.open(peer)
    hangups = await RawEsl.open(peer)
    silent = await RawEsl.open(peer)
    assert (
        await answers.command("event plain CHANNEL_ANSWER CUSTOM mod_audio_stream::connect")
        == "+OK event listener enabled plain"
    )
    assert await hangups.command("event plain CHANNEL_HANGUP_COMPLETE") == "+OK event listener enabled plain"
    call = await peer.place_call(ws.url, destination="7000", metadata='{"dnis":"7000"}')
    await ws.accept()
    answer = await answers.event("CHANNEL_ANSWER", call.uuid)
    assert answer.headers["Caller-Destination-Number"] == "7000"
    assert answer.headers["Caller-Caller-ID-Number"] == "79990001122"
    assert answer.headers["Channel-Call-UUID"] == call.uuid
    assert answer.headers["Core-UUID"] == peer.core_uuid
    assert len(answer.headers["Event-Date-Timestamp"]) == 16  # microseconds since the epoch
    connected = await answers.event("mod_audio_stream::connect", call.uuid)
    assert connected.headers["Event-Name"] == "CUSTOM"
    assert json.loads(connected.body) == {"status": "connected"}
    await call.hangup()
    done = await hangups.event("CHANNEL_HANGUP_COMPLETE", call.uuid)
    assert done.headers["Hangup-Cause"] == "NORMAL_CLEARING"
    # a marker event shows everything before it has been delivered
    answers.send("api uuid_exists x\n\n")
    await answers.read()
    assert {e.name for e in answers.events} <= {"CHANNEL_ANSWER", "CUSTOM"}
    assert all(e.subclass in ("", "mod_audio_stream::connect") for e in answers.events)
    assert hangups.events == []
    silent.send("api uuid_exists x\n\n")
    await silent.read()
    assert silent.events == []
    for esl in (answers, hangups, silent):
        await esl.close()


async def test_custom_needs_its_subclass_and_filters_narrow_to_one_call(
    peer: FreeSwitchPeer, ws: WsRecorder
) -> None:
    esl = await RawEsl.open(peer)
    assert await esl.command("event plain CUSTOM") == "+OK event listener enabled plain"
    assert await esl.command("event plain CHANNEL_ANSWER") == "+OK event listener enabled plain"
    first = await peer.place_call(ws.url, destination="7000")
    assert (
        await esl.command(f"filter Unique-ID {first.uuid}") == f"+OK filter added. [Unique-ID]=[{first.uuid}]"
    )
    second = await peer.place_call(ws.url, destination="7001")
    await esl.api("uuid_exists x")  # everything fired so far has been written
    assert [e.headers["Unique-ID"] for e in esl.events] == [first.uuid]  # CUSTOM::connect: subclass not asked
    assert await esl.command("filter delete all") == "+OK filter deleted. [all][]"
    assert await esl.command("nixevent CHANNEL_ANSWER") == "+OK events nixed"
    assert await esl.command("noevents") == "+OK no longer listening for events"
    assert await esl.command("noevents") == "-ERR not listening for events"
    assert await esl.command("event plain") == "-ERR no keywords supplied"
    for call in (first, second):
        await call.hangup()
    await esl.close()


async def test_plain_event_framing_url_encoding_and_body(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CUSTOM mod_audio_stream::json CHANNEL_ANSWER")
    call = await peer.place_call(ws.url, destination="7000", caller="+7 (999) 000")
    conn = await ws.accept()
    text = 'not json: "a&b" = 100%\nпривет'
    await conn.ws.send(text)
    while True:  # read the frame raw to check the outer framing too
        raw = await esl.read_raw()
        head, _, payload = raw.partition(b"\n\n")
        assert head.startswith(b"Content-Length: %d\nContent-Type: text/event-plain" % len(payload))
        event = parse_plain(payload)
        if event.subclass == "mod_audio_stream::json":
            break
    assert b"\nEvent-Subclass: mod_audio_stream%3A%3Ajson\n" in event.raw
    assert b"\nCaller-Caller-ID-Number: %2B7%20(999)%20000\n" in event.raw
    assert event.raw.startswith(b"Event-Name: CUSTOM\nCore-UUID: ")
    body = text.encode()
    assert event.raw.endswith(b"\nContent-Length: %d\n\n" % len(body) + body)
    assert event.body == body
    assert event.headers["Unique-ID"] == call.uuid
    await call.hangup()
    await esl.close()


def test_url_encoding_and_serialization_rules() -> None:
    assert url_encode("mod_audio_stream::json") == "mod_audio_stream%3A%3Ajson"
    assert url_encode("Tue, 16 Jan 2024") == "Tue,%2016%20Jan%202024"
    assert url_encode("%41 %zz") == "%41%20%25zz"  # an existing %XX stays, a bare % is encoded
    assert url_encode("é\t~") == "%C3%A9%09~"
    event = FsEvent("CUSTOM", [("Event-Name", "CUSTOM"), ("Empty", "")], body=None)
    assert serialize_plain(event) == b"Event-Name: CUSTOM\nEmpty: _undef_\n\n"
    event.body = "{}"
    assert serialize_plain(event) == b"Event-Name: CUSTOM\nEmpty: _undef_\nContent-Length: 2\n\n{}"


def test_api_arguments_split_like_switch_separate_string() -> None:
    assert separate_string("u  send_text '{\"a\": 1}'", 6) == ["u", "send_text", '{"a": 1}']
    line = 'u start ws://h:1/c mono 16k {"dnis": "7000", "x": "a b"}'
    assert separate_string(line, 6)[5] == '{"dnis": "7000", "x": "a b"}'  # the last slot keeps the rest
    assert separate_string("a\\ b c", 4) == ["a b", "c"]
    assert separate_string("", 4) == []


async def test_exit_says_bye_then_notice_then_closes(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    esl.send("exit\n\n")
    assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: +OK bye\n\n"
    assert await esl.read_raw() == NOTICE
    assert await asyncio.wait_for(esl.reader.read(), 2) == b""


async def test_garbage_gets_one_command_not_found_each_and_the_peer_survives(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    junk = [
        b"\x00\xff\xfe garbage\n\n",
        b"\n\n\nhello world\r\n\r\n",  # blank lines before a block are skipped
        b"apix\n\n",
        b"x" * 200_000 + b"\n\n",
        b"foo\nContent-Length: 5\n\nabcde",  # the announced body is consumed with its command
    ]
    esl.send(b"".join(junk))
    for _ in junk:
        assert await esl.read_raw() == b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n"
    assert await esl.api("uuid_exists x") == "false"
    assert [c.line for c in peer.commands][-2:] == ["foo", "api uuid_exists x"]
    assert peer.commands[-2].body == "abcde"
    await esl.close()


async def test_api_reply_comes_before_the_events_it_causes(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE")
    call = await peer.place_call(ws.url, destination="7000")
    esl.send(f"api uuid_kill {call.uuid} USER_BUSY\n\n")
    assert await esl.read_raw() == b"Content-Type: api/response\nContent-Length: 4\n\n+OK\n"
    hangup = await esl.event("CHANNEL_HANGUP", call.uuid)
    complete = await esl.event("CHANNEL_HANGUP_COMPLETE", call.uuid)
    assert hangup.headers["Hangup-Cause"] == complete.headers["Hangup-Cause"] == "USER_BUSY"
    assert int(hangup.headers["Event-Sequence"]) < int(complete.headers["Event-Sequence"])
    await asyncio.wait_for(call.ended.wait(), 3)
    assert call.hangup_cause == "USER_BUSY"
    assert await esl.api(f"uuid_exists {call.uuid}") == "false"
    await esl.close()


async def test_sendmsg_hangup_and_invalid_session(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    call = await peer.place_call(ws.url, destination="7000")
    assert await esl.command("sendmsg 0000\ncall-command: hangup") == "-ERR invalid session id [0000]"
    reply = await esl.command(f"sendmsg {call.uuid}\ncall-command: hangup\nhangup-cause: CALL_REJECTED")
    assert reply == "+OK"
    await asyncio.wait_for(call.ended.wait(), 3)
    assert call.hangup_cause == "CALL_REJECTED"
    await esl.close()


async def test_fail_next_answers_once_with_the_given_reply(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    call = await peer.place_call(ws.url, destination="7000")
    peer.fail_next("uuid_broadcast", "-ERR no")
    peer.fail_next("sendmsg", "-ERR memory error")
    assert await esl.api(f"uuid_broadcast {call.uuid} silence_stream://100 aleg") == "-ERR no\n"
    assert await esl.api(f"uuid_broadcast {call.uuid} silence_stream://100 aleg") == "+OK Message sent\n"
    assert await esl.command(f"sendmsg {call.uuid}\ncall-command: execute") == "-ERR memory error"
    await call.hangup()
    await esl.close()


async def test_drop_esl_cuts_sockets_without_notice_and_calls_live_on(
    peer: FreeSwitchPeer, ws: WsRecorder
) -> None:
    esl = await RawEsl.open(peer)
    call = await peer.place_call(ws.url, destination="7000")
    await peer.drop_esl()
    assert await asyncio.wait_for(esl.reader.read(), 2) == b""  # no disconnect notice: cut
    again = await RawEsl.open(peer)
    assert await again.api(f"uuid_exists {call.uuid}") == "true"
    assert peer.connections == 2
    await call.hangup()
    await again.close()


async def test_myevents_follows_one_channel_and_closes_with_it(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    call = await peer.place_call(ws.url, destination="7000")
    other = await peer.place_call(ws.url, destination="7001")
    esl = await RawEsl.open(peer)
    assert await esl.command(f"myevents {call.uuid}") == "+OK Events Enabled"
    assert await esl.command("linger") == "+OK will linger"
    await other.send_dtmf("1")
    await call.send_dtmf("5")
    dtmf = await esl.event("DTMF")
    assert dtmf.headers["Unique-ID"] == call.uuid and dtmf.headers["DTMF-Digit"] == "5"
    assert await esl.command("nolinger") == "+OK will not linger"
    await call.hangup()
    await esl.event("CHANNEL_HANGUP_COMPLETE", call.uuid)
    tail = await asyncio.wait_for(esl.reader.read(), 2)
    assert tail.endswith(GOODBYE) and b"Controlled-Session-UUID: " + call.uuid.encode() in tail
    await other.hangup()


async def test_many_connections_and_calls_at_once(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    clients = await asyncio.gather(*(RawEsl.open(peer) for _ in range(10)))
    for esl in clients:
        await esl.command("event plain CHANNEL_ANSWER")
    calls = await asyncio.gather(
        *(peer.place_call(ws.url + f"/c{i}", destination=f"70{i:02d}", idle_silence=False) for i in range(20))
    )
    for esl in clients:
        seen = {(await esl.event("CHANNEL_ANSWER")).headers["Unique-ID"] for _ in calls}
        assert seen == {c.uuid for c in calls}
    results = await asyncio.gather(*(esl.api(f"uuid_exists {calls[0].uuid}") for esl in clients))
    assert results == ["true"] * 10
    await asyncio.gather(*(c.hangup() for c in calls))
    assert peer.calls == {}
    for esl in clients:
        await esl.close()


async def test_other_esl_commands_answer_like_freeswitch(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    assert await esl.command("log info") == "+OK log level info [6]"
    assert await esl.command("nolog") == "+OK no longer logging"
    assert await esl.command("nolog") == "-ERR not loging"
    assert await esl.command("linger 5") == "-ERR not controlling a session"
    assert await esl.command("divert_events on") == "-ERR not controlling a session."
    assert await esl.command("filter Unique-ID") == "-ERR invalid syntax"
    assert await esl.command("myevents 0000 plain") == "-ERR invalid uuid"
    assert await esl.api("STATUS") == "-ERR STATUS Command not found!\n"  # API names are case-sensitive
    assert (
        await esl.command("event json CHANNEL_ANSWER CUSTOM my::thing") == "+OK event listener enabled json"
    )
    reply = await esl.command("sendevent CUSTOM\nEvent-Subclass: my::thing\nX-Note: hi there")
    assert reply.startswith("+OK ") and len(reply) == 40
    raw = await esl.read_raw()
    head, _, payload = raw.partition(b"\n\n")
    assert head == b"Content-Length: %d\nContent-Type: text/event-json" % len(payload)
    event = json.loads(payload)
    assert event["Event-Subclass"] == "my::thing" and event["X-Note"] == "hi there"
    call = await peer.place_call(ws.url, destination="7000")
    raw = await esl.read_raw()
    assert json.loads(raw.partition(b"\n\n")[2])["Unique-ID"] == call.uuid
    await call.hangup()
    await esl.close()
