"""Who may stream to gateway-fs: the deployment's secret, a channel FreeSWITCH announced, its facts.

A WebSocket from anything that is not our FreeSWITCH must not create a call (the spoofed-caller
case: no call.started, so nothing reaches the recorder or its ``users`` table), must not touch
the channel it names, and must be counted. The caller and dialled number come from the Event
Socket; audio that beats the metadata is kept, in order.
"""

from __future__ import annotations

import contextlib
import json
import uuid as uuidlib

import numpy as np
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway_fs.conftest import Stack
from tests.waiting import wait_for
from voiceplatform.wire import AudioChunk, CallStarted

SPOOFED = "70000000000"


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("vp_gateway_fs_rejected_total", {"reason": reason}) or 0.0


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def refused(url: str, first: str | bytes) -> tuple[int | None, str]:
    """Open a stream as an impostor would, say something, and return how the gateway closed it."""
    ws = await connect(url)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(first)
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize("secret", ["", "wrong-secret-of-the-right-len"], ids=["no_secret", "bad_secret"])
async def test_a_stream_without_the_secret_is_refused_and_the_channel_left_alone(
    stack: Stack, secret: str
) -> None:
    live = await stack.peer.place_call(None, destination="7000")  # a real caller, announced on the ESL
    reason = "bad_secret" if secret else "no_secret"
    before = rejected(reason)
    url = stack.url(live.uuid, secret) if secret else f"{stack.ws_base}/{live.uuid}"
    meta = json.dumps({"dnis": "7000", "caller": SPOOFED})
    code, text = await refused(url, meta)
    assert code == 1008 and text == "stream key missing or wrong"
    assert rejected(reason) == before + 1
    assert not stack.of(CallStarted) and not stack.service.calls
    assert live.state == "answered"  # naming a real channel did not let a stranger hang it up
    assert not [c for c in stack.peer.commands if "uuid_kill" in c.line]
    await live.hangup()


async def test_a_spoofed_stream_for_a_channel_never_announced_is_refused(stack: Stack) -> None:
    """Even with the secret (a leaked URL), a channel FreeSWITCH does not have gets no call."""
    before, unknown = rejected("unknown_channel"), metric("vp_gateway_fs_channel_lookup_total", how="unknown")
    stack.service.settings.fs_channel_wait_s = 0.2
    uuid = str(uuidlib.uuid4())
    meta = json.dumps({"dnis": "7000", "caller": SPOOFED, "uuid": uuid})
    code, text = await refused(stack.url(uuid), meta)
    assert code == 1008 and text == "FreeSWITCH announced no such channel"
    assert rejected("unknown_channel") == before + 1
    assert metric("vp_gateway_fs_channel_lookup_total", how="unknown") == unknown + 1
    assert any(c.line == f"api uuid_dump {uuid}" for c in stack.peer.commands)  # FreeSWITCH was asked
    assert not stack.of(CallStarted) and not stack.service.calls  # no call, so no caller recorded


async def test_a_stream_for_a_channel_that_hung_up_is_refused(stack: Stack) -> None:
    gone = await stack.peer.place_call(None, destination="7000")
    await gone.hangup()
    await wait_for(lambda: stack.service.channels.ended(gone.uuid))
    before = rejected("channel_ended")
    code, text = await refused(stack.url(gone.uuid), json.dumps({"dnis": "7000"}))
    assert code == 1008 and text == "the channel has ended" and rejected("channel_ended") == before + 1
    assert not stack.of(CallStarted)


async def test_the_caller_and_number_come_from_freeswitch_even_when_the_metadata_lies(stack: Stack) -> None:
    caller_lies = metric("vp_gateway_fs_metadata_mismatch_total", field="caller")
    number_lies = metric("vp_gateway_fs_metadata_mismatch_total", field="dnis")
    lying = json.dumps({"dnis": "7001", "caller": SPOOFED})
    call = await stack.call("7000", metadata=lying, caller="79990001122")
    await wait_for(lambda: stack.of(CallStarted))
    started = stack.of(CallStarted)[0]
    assert started.caller == "79990001122" and started.robot == "bot"  # 7000 is bot's; 7001 would be other
    phone = stack.service.calls[call.uuid]
    assert (phone.facts.caller, phone.facts.destination) == ("79990001122", "7000")
    assert metric("vp_gateway_fs_metadata_mismatch_total", field="caller") == caller_lies + 1
    assert metric("vp_gateway_fs_metadata_mismatch_total", field="dnis") == number_lies + 1
    await call.hangup()


@pytest.mark.parametrize("early", [1, 5])
async def test_audio_before_the_metadata_keeps_the_number_the_metadata_and_every_frame(
    stack: Stack, early: int
) -> None:
    held, missing = (
        metric("vp_gateway_fs_early_audio_frames_total"),
        metric("vp_gateway_fs_bad_input_total", reason="no_metadata"),
    )
    # the metadata's robot key picks "other"; had it been lost, 7000 would route to "bot"
    meta = json.dumps({"robot": "other", "dnis": "7000", "caller": "79990001122", "rate": 8000})
    call = await stack.call("7000", metadata=meta, early_frames=early, idle_silence=False)
    call_id = f"phone-{call.uuid}"
    rng = np.random.default_rng(early)
    speech = rng.integers(-8000, 8000, size=160 * 12, dtype=np.int16).astype("<i2").tobytes()  # 12 frames
    await call.stream_pcm(speech, realtime=False)
    await wait_for(lambda: stack.of(CallStarted, call_id))
    assert stack.of(CallStarted, call_id)[0].robot == "other"
    assert stack.service.calls[call.uuid].facts.destination == "7000"
    await wait_for(lambda: len(stack.of(AudioChunk, call_id)) >= 12)
    assert b"".join(c.pcm for c in stack.of(AudioChunk, call_id)) == speech  # all of it, in order
    assert metric("vp_gateway_fs_early_audio_frames_total") == held + early
    assert metric("vp_gateway_fs_bad_input_total", reason="no_metadata") == missing
    await call.hangup()


async def test_a_stream_that_beats_its_channels_events_waits_for_them(stack: Stack) -> None:
    waited = metric("vp_gateway_fs_channel_lookup_total", how="waited")
    stack.service.settings.fs_channel_wait_s = 30.0  # the test releases the events itself
    stack.peer.event_delay_s = 60.0
    call = await stack.call("7000")
    await wait_for(lambda: call.uuid in stack.service.channels._waiters)  # the stream is waiting
    assert not stack.of(CallStarted)
    stack.peer.flush_events()
    await wait_for(lambda: stack.of(CallStarted))
    assert stack.of(CallStarted)[0].caller == "79990001122"
    assert metric("vp_gateway_fs_channel_lookup_total", how="waited") == waited + 1
    await call.hangup()


async def test_a_channel_whose_events_never_came_is_confirmed_by_asking_freeswitch(stack: Stack) -> None:
    asked = metric("vp_gateway_fs_channel_lookup_total", how="asked")
    stack.service.settings.fs_channel_wait_s = 0.2
    stack.peer.event_delay_s = 600.0  # as if they were lost while the ESL was down
    call = await stack.call("7001", caller="+7 (999) 123")
    await wait_for(lambda: stack.of(CallStarted))
    started = stack.of(CallStarted)[0]
    assert started.robot == "other" and started.caller == "+7 (999) 123"  # from uuid_dump's channel data
    assert metric("vp_gateway_fs_channel_lookup_total", how="asked") == asked + 1
    stack.peer.flush_events()
    await call.hangup()
