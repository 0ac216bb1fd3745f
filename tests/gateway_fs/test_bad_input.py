"""Bad input on mod_audio_stream's socket: logged, counted, the record closed, other calls unharmed."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway_fs.conftest import STREAM_SECRET, Stack
from tests.waiting import wait_for
from voiceplatform.phone_stream import stream_url
from voiceplatform.wire import AudioChunk, CallEnded, CallStarted
from voiceplatform_devstack.devinfra import free_port


def bad(reason: str) -> float:
    return REGISTRY.get_sample_value("vp_gateway_fs_bad_input_total", {"reason": reason}) or 0.0


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("vp_gateway_fs_rejected_total", {"reason": reason}) or 0.0


async def test_frames_of_the_wrong_size_are_reframed_and_counted(stack: Stack) -> None:
    odd, size = bad("odd_bytes"), bad("frame_size")
    call = await stack.call("7000", idle_silence=False)
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.of(CallStarted, call_id))
    data = bytes(range(256)) * 4  # 1024 bytes, recognizable
    pieces = [data[:101], data[101:320], data[320:420], data[420:960]]  # 101, 219, 100, 540 bytes
    for piece in pieces:
        await call.send_ws_bytes(piece)
    await wait_for(lambda: len(stack.of(AudioChunk, call_id)) >= 3)
    chunks = stack.of(AudioChunk, call_id)
    assert [len(c.pcm) for c in chunks] == [320, 320, 320]
    assert b"".join(c.pcm for c in chunks) == data[:960]  # nothing lost, nothing reordered
    assert bad("odd_bytes") == odd + 2 and bad("frame_size") == size + 2
    await call.hangup()
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert stack.of(CallEnded, call_id)[0].reason == "caller_hangup"


async def test_text_where_audio_is_expected_is_counted_and_ignored(stack: Stack) -> None:
    before = bad("text_frame")
    call = await stack.call("7000", idle_silence=False)
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.of(CallStarted, call_id))
    await call.send_ws_text("this is not audio")
    await call.send_ws_bytes(bytes(320))
    await wait_for(lambda: stack.of(AudioChunk, call_id))
    assert bad("text_frame") == before + 1
    assert call.uuid in stack.service.calls and not stack.of(CallEnded, call_id)
    await call.hangup()


async def test_no_metadata_is_routed_by_the_channels_dialled_number(stack: Stack) -> None:
    before = bad("no_metadata")
    call = await stack.call("7001", metadata=None)  # audio frames only: FreeSWITCH's channel data decides
    await wait_for(lambda: stack.of(CallStarted))
    assert stack.of(CallStarted)[0].robot == "other" and bad("no_metadata") == before + 1
    await call.hangup()


async def test_no_metadata_and_no_route_is_refused_and_hung_up(stack: Stack) -> None:
    before = rejected("no_route")
    call = await stack.call("9999", metadata=None)
    await call.ended.wait()
    assert call.hangup_cause == "UNALLOCATED_NUMBER" and rejected("no_route") == before + 1
    assert not stack.of(CallStarted)  # a call that never started has no record


async def test_no_route_goes_to_the_default_robot_when_there_is_one(stack: Stack) -> None:
    stack.service.router.default_robot = "other"
    call = await stack.call("9999", metadata=None)
    await wait_for(lambda: stack.of(CallStarted))
    assert stack.of(CallStarted)[0].robot == "other"
    await call.hangup()


async def test_unroutable_number_gets_a_policy_close_and_the_others_go_on(stack: Stack) -> None:
    good = await stack.call("7000")
    await wait_for(lambda: stack.of(CallStarted))
    before, garbled = rejected("no_route"), bad("bad_metadata")
    call = await stack.call("9999")
    await call.ended.wait()
    assert call.hangup_cause == "UNALLOCATED_NUMBER" and rejected("no_route") == before + 1
    # unusable metadata is counted; the channel's dialled number still routes the call
    garbage = await stack.call("7001", metadata="{not json")
    await wait_for(lambda: len(stack.of(CallStarted)) == 2)
    assert stack.of(CallStarted)[1].robot == "other" and bad("bad_metadata") == garbled + 1
    assert good.uuid in stack.service.calls
    good_id = f"phone-{good.uuid}"
    count = len(stack.of(AudioChunk, good_id))
    await wait_for(lambda: len(stack.of(AudioChunk, good_id)) > count + 5)  # still streaming
    await good.hangup()
    await garbage.hangup()


async def test_stream_without_a_channel_uuid_is_refused(stack: Stack) -> None:
    no_uuid = f"{stack.ws_base}?key={STREAM_SECRET}"
    call = await stack.peer.place_call(no_uuid, destination="7000", metadata='{"dnis":"7000"}')
    await wait_for(lambda: stack.peer.events_named("mod_audio_stream::disconnect", call.uuid))
    assert not stack.of(CallStarted)
    # the uuid may come in the metadata instead of the URL (it is checked against the ESL all the same)
    meta = json.dumps({"dnis": "7000", "uuid": "0f0e0d0c-1111-2222-3333-444455556666"})
    second = await stack.peer.place_call(
        no_uuid, destination="7000", metadata=meta, uuid="0f0e0d0c-1111-2222-3333-444455556666"
    )
    await wait_for(lambda: stack.of(CallStarted))
    await second.hangup()
    await call.hangup()


async def test_stream_closing_mid_sentence_ends_the_call_and_hangs_up(stack: Stack) -> None:
    call = await stack.call("7002")  # a 3 s greeting
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.peer.events_named("PLAYBACK_START", call.uuid))
    await call.close_stream_abruptly()
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert [m.reason for m in stack.of(CallEnded, call_id)] == ["stream_closed"]
    await call.ended.wait()  # nobody would hear the caller: the channel is hung up too
    await wait_for(lambda: not stack.service.calls)


async def test_refusals_close_the_socket_with_1008(stack: Stack) -> None:
    async with connect(stack.url("0f0e0d0c-aaaa-bbbb-cccc-444455556666")) as ws:
        await ws.send(json.dumps({"dnis": "9999"}))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008 and "no such channel" in (ws.close_reason or "")


async def test_a_stream_that_cannot_reach_any_gateway_gets_its_channel_hung_up(stack: Stack) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/call"  # nothing listens: mod_audio_stream::error code 6
    url = stream_url(dead, "0f0e0d0c-dead-4444-8888-444455556666", STREAM_SECRET)
    call = await stack.peer.place_call(url, destination="7000")
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"


async def test_caller_hanging_up_mid_sentence_closes_the_record_at_once(stack: Stack) -> None:
    call = await stack.call("7002")  # 3 s greeting: the robot is mid-sentence
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.peer.events_named("PLAYBACK_START", call.uuid))
    loop = asyncio.get_running_loop()
    t_hangup = loop.time()
    await call.hangup()
    await wait_for(lambda: stack.of(CallEnded, call_id))
    await wait_for(lambda: not stack.service.calls)
    assert loop.time() - t_hangup < 1.0  # nothing waits for audio nobody will hear
    assert stack.of(CallEnded, call_id)[0].reason == "caller_hangup"


async def test_a_frame_is_handled_in_its_calls_log_context(stack: Stack) -> None:
    # frames reach the call from the socket's read callback, outside the call's task: whatever
    # the frame path logs must still carry the call id
    call = await stack.call("7000", idle_silence=False)
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.of(CallStarted, call_id))
    session = stack.service.calls[call.uuid].session
    seen: list[object] = []
    push = session.push_audio_nowait

    def watched(frame: bytes) -> None:
        seen.append(structlog.contextvars.get_contextvars().get("call_id"))
        push(frame)

    session.push_audio_nowait = watched  # type: ignore[method-assign]
    await call.send_ws_bytes(bytes(320))
    await wait_for(lambda: seen)
    assert seen[0] == call_id
    await call.hangup()
