"""The gateway's side of a streaming owner's failover: what the audio log keeps and replays, and the
call session fencing a replaced owner (in-memory broker; the real thing is in tests/failover)."""

from __future__ import annotations

from typing import Any

from tests.gateway.test_call_session import RATE, RecordingSink, robot  # noqa: F401  (fixture)
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.gateway import CallSession, GatewayDirectory
from voiceplatform.gateway.failover import CallerAudioLog, send_replay
from voiceplatform.wire import (
    AsrFinal,
    AssignReply,
    AudioReplay,
    OwnerChanged,
    OwnerReleased,
    VadSpeechEnded,
    VadSpeechStarted,
)

CALL = "c1"


def frame(seq: int) -> bytes:
    return seq.to_bytes(4, "little") * 160


def fill(log: CallerAudioLog, first: int, last: int) -> None:
    for seq in range(first, last):
        log.keep(seq, frame(seq))


def test_what_each_role_needs_after_a_failover() -> None:
    log = CallerAudioLog()
    fill(log, 0, 100)
    fill(log, 100, 150)
    assert log.replay_from("vad", 150) == 50 and log.replay_from("asr", 150) == 50  # nothing open: 2 s
    log.on_vad(VadSpeechStarted(call_id=CALL, turn_id="t1", audio_offset_ms=2800))  # frame 140
    assert log.replay_from("vad", 150) == 115  # the open turn from its start, model warm-up in front
    assert [t.turn_id for t in log.turns_for("vad", 115)] == ["t1"]
    log.on_vad(VadSpeechEnded(call_id=CALL, turn_id="t1", audio_offset_ms=3800, speech_ms=1000))
    fill(log, 150, 400)
    # the VAD needs nothing of an ended turn; the ASR needs it until its final
    assert log.replay_from("vad", 400) == 300 and log.replay_from("asr", 400) == 115
    assert log.frames[0][0] == 115  # kept back to there, no further
    (turn,) = log.turns_for("asr", 115)
    assert (turn.turn_id, turn.start_ms, turn.end_ms, turn.speech_ms) == ("t1", 2800, 3800, 1000)
    log.on_final(AsrFinal(call_id=CALL, turn_id="t1", text="да"))
    fill(log, 400, 401)
    assert log.replay_from("asr", 401) == 301 and log.frames[0][0] == 301


def test_a_merged_final_confirms_the_turns_it_covers() -> None:
    log = CallerAudioLog()
    for i, turn in enumerate(("t1", "t2")):
        log.on_vad(VadSpeechStarted(call_id=CALL, turn_id=turn, audio_offset_ms=1000 + i * 2000))
        log.on_vad(
            VadSpeechEnded(call_id=CALL, turn_id=turn, audio_offset_ms=2000 + i * 2000, speech_ms=1000)
        )
    log.on_final(AsrFinal(call_id=CALL, turn_id="t2", text="да", merged=["t1"]))
    assert log.turns == {}


async def test_replay_is_batched_contiguous_and_names_the_turns(broker) -> None:  # type: ignore[no-untyped-def]
    log = CallerAudioLog()
    fill(log, 0, 200)
    log.on_vad(VadSpeechStarted(call_id=CALL, turn_id="t1", audio_offset_ms=3800))  # frame 190
    fill(log, 200, 300)
    got: list[AudioReplay] = []

    async def on_replay(env: Envelope) -> None:
        assert isinstance(env.message, AudioReplay)
        got.append(env.message)

    bus = broker.bus("gw")
    await bus.subscribe(subjects.audio_replay(CALL, "vad"), on_replay)
    sent = await send_replay(bus, log, call_id=CALL, role="vad", epoch=4, sample_rate=RATE, next_seq=300)
    await wait_for(lambda: len(got) == 3)
    assert sent == 135 and [m.first_seq for m in got] == [165, 215, 265]
    assert [m.last for m in got] == [False, False, True] and got[-1].next_seq == 300
    assert [int.from_bytes(f[:4], "little") for m in got for f in m.frames] == list(range(165, 300))
    assert all(m.epoch == 4 and [t.turn_id for t in m.turns] == ["t1"] for m in got)


async def test_a_replaced_owner_is_fenced_and_the_new_one_gets_the_replay(broker, robot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    workers = broker.bus("workers")
    answers = iter(["w1", "w2", "w3", "w4"])
    requests: list[Any] = []
    seen: list[Any] = []

    async def assign(env: Envelope):  # type: ignore[no-untyped-def]
        requests.append(env.message)
        return AssignReply(call_id=CALL, role=env.message.role, accepted=True, instance_id=next(answers))

    async def record(env: Envelope) -> None:
        seen.append(env.message)

    await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
    await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
    await workers.subscribe(subjects.ALL_CALLS, record)
    gw = broker.bus("gateway")
    directory = GatewayDirectory(gw)
    await directory.start()
    session = CallSession(
        gw, robot, channel="web", sample_rate=RATE, sink=RecordingSink(), directory=directory, call_id=CALL
    )
    await session.start()
    await wait_for(lambda: len(session.owners) == 2)
    old, old_epoch = session.owners["vad"], session.epochs.current["vad"]
    for seq in range(100):
        await session.push_audio(frame(seq))
    await workers.publish(
        subjects.vad(CALL),
        VadSpeechStarted(call_id=CALL, turn_id="t1", audio_offset_ms=1800, epoch=old_epoch),
    )
    await wait_for(lambda: session.turns.get("t1") is not None)

    await workers.publish(subjects.released("vad"), OwnerReleased(call_id=CALL, role="vad", instance_id=old))
    await wait_for(lambda: session.owners.get("vad") not in (None, old))
    new_epoch = session.epochs.current["vad"]
    assert new_epoch > old_epoch and requests[-1].replay and requests[-1].epoch == new_epoch
    await wait_for(lambda: any(isinstance(m, AudioReplay) and m.last for m in seen))
    replays = [m for m in seen if isinstance(m, AudioReplay)]
    assert replays[0].first_seq == 65 and replays[-1].next_seq == 100 and replays[-1].turns[0].turn_id == "t1"
    changed = [m for m in seen if isinstance(m, OwnerChanged) and m.role == "vad"]
    assert changed[-1].epoch == new_epoch and changed[-1].instance_id == session.owners["vad"]

    # the old owner's late end is dropped; the new owner's is taken
    await workers.publish(
        subjects.vad(CALL),
        VadSpeechEnded(call_id=CALL, turn_id="t1", audio_offset_ms=1500, speech_ms=500, epoch=old_epoch),
    )
    await workers.publish(
        subjects.vad(CALL),
        VadSpeechStarted(call_id=CALL, turn_id="t-ghost", audio_offset_ms=1600, epoch=old_epoch),
    )
    await workers.publish(
        subjects.vad(CALL),
        VadSpeechEnded(call_id=CALL, turn_id="t1", audio_offset_ms=2500, speech_ms=1500, epoch=new_epoch),
    )
    await wait_for(lambda: session.streaming.audio_log.turns["t1"].end_ms == 2500)
    assert session.turns.get("t-ghost") is None
    await session.end("test")
    await directory.stop()
