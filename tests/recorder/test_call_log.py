"""JSON call logs: file name, content, atomic idempotent writes, robot folder safety."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voiceplatform import subjects
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    PlaybackStarted,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
    decode,
    encode,
)
from vp_recorder.reports import call_log
from vp_recorder.reports.call_log import (
    call_log_path,
    robot_logs_dir,
    write_call_log,
    write_call_logs_async,
)
from vp_recorder.stored import StoredEvent
from vp_recorder.transcript import build_transcript

T0 = 1_772_059_439_250  # 2026-02-25 22:43:59.250 UTC
ROBOT = "pipeline_russian"


def _subject(msg: Message) -> str:
    call_id = msg.call_id
    match msg:
        case VadSpeechStarted() | VadSpeechEnded():
            return subjects.vad(call_id)
        case AsrFinal():
            return subjects.asr(call_id)
        case LlmSentence():
            return subjects.llm_sentence(call_id)
        case LlmDone():
            return subjects.llm_done(call_id)
        case ControlInterrupt():
            return subjects.control(call_id)
    return subjects.lifecycle(call_id)


def stored(messages: list[Message], first_seq: int = 1) -> list[StoredEvent]:
    """Events as the stream holds them: each message through the wire codec, numbered in order."""
    return [StoredEvent(first_seq + i, _subject(m), decode(encode(m))) for i, m in enumerate(messages)]


def call_messages(call_id: str = "web-0001", robot: str = ROBOT, caller: str = "") -> list[Message]:
    """A greeting, one answered turn, one reply the caller interrupted, then the caller hangs up."""
    g, t1, t2, t3 = (f"{call_id}-{n}" for n in ("greeting", "t1", "t2", "t3"))
    greeting = "Здравствуйте! Чем могу помочь?"
    reply1 = "Конечно, на какой день вас записать?"
    reply2 = "Конечно, в субботу мы работаем с десяти до шестнадцати часов."
    c = call_id
    return [
        CallStarted(call_id=c, ts_ms=T0, robot=robot, channel="web", sample_rate=16000, caller=caller),
        LlmSentence(
            call_id=c, ts_ms=T0 + 100, turn_id=g, index=0, text=greeting, robot=robot, sample_rate=16000
        ),
        LlmDone(call_id=c, ts_ms=T0 + 150, turn_id=g, text=greeting, sentences=1, provider="static"),
        PlaybackStarted(call_id=c, ts_ms=T0 + 400, turn_id=g),
        TurnMetrics(call_id=c, ts_ms=T0 + 2500, turn_id=g, bot_text=greeting, first_played_ts_ms=T0 + 400),
        VadSpeechStarted(call_id=c, ts_ms=T0 + 3000, turn_id=t1, audio_offset_ms=3000),
        VadSpeechEnded(call_id=c, ts_ms=T0 + 4500, turn_id=t1, audio_offset_ms=4500, speech_ms=1500),
        AsrFinal(
            call_id=c,
            ts_ms=T0 + 4800,
            turn_id=t1,
            text="Хочу записаться на приём",
            audio_ms=1500,
            speech_end_ts_ms=T0 + 4500,
            provider="whisper",
        ),
        LlmSentence(
            call_id=c, ts_ms=T0 + 5200, turn_id=t1, index=0, text=reply1, robot=robot, sample_rate=16000
        ),
        PlaybackStarted(call_id=c, ts_ms=T0 + 5500, turn_id=t1),
        LlmDone(
            call_id=c,
            ts_ms=T0 + 5600,
            turn_id=t1,
            text=reply1,
            sentences=1,
            provider="openai",
            prompt_tokens=50,
            completion_tokens=12,
        ),
        TurnMetrics(
            call_id=c,
            ts_ms=T0 + 8000,
            turn_id=t1,
            user_text="Хочу записаться на приём",
            bot_text=reply1,
            speech_end_ts_ms=T0 + 4500,
            asr_final_ts_ms=T0 + 4800,
            first_sentence_ts_ms=T0 + 5200,
            first_audio_ts_ms=T0 + 5400,
            first_played_ts_ms=T0 + 5500,  # voice to voice 1000 ms
        ),
        VadSpeechStarted(call_id=c, ts_ms=T0 + 9000, turn_id=t2, audio_offset_ms=9000),
        VadSpeechEnded(call_id=c, ts_ms=T0 + 10_000, turn_id=t2, audio_offset_ms=10_000, speech_ms=1000),
        AsrFinal(
            call_id=c,
            ts_ms=T0 + 10_300,
            turn_id=t2,
            text="А можно в субботу?",
            audio_ms=1000,
            speech_end_ts_ms=T0 + 10_000,
            provider="whisper",
        ),
        LlmSentence(
            call_id=c, ts_ms=T0 + 10_600, turn_id=t2, index=0, text=reply2, robot=robot, sample_rate=16000
        ),
        PlaybackStarted(call_id=c, ts_ms=T0 + 10_800, turn_id=t2),
        VadSpeechStarted(call_id=c, ts_ms=T0 + 11_500, turn_id=t3, audio_offset_ms=11_500),
        ControlInterrupt(
            call_id=c,
            ts_ms=T0 + 11_600,
            turn_id=t2,
            by_turn_id=t3,
            played_ms=800,
            played_text="Конечно, в субботу",
        ),
        LlmDone(
            call_id=c,
            ts_ms=T0 + 11_650,
            turn_id=t2,
            text=reply2,
            sentences=1,
            interrupted=True,
            provider="openai",
        ),
        TurnMetrics(
            call_id=c,
            ts_ms=T0 + 11_700,
            turn_id=t2,
            user_text="А можно в субботу?",
            bot_text="Конечно, в субботу",
            speech_end_ts_ms=T0 + 10_000,
            asr_final_ts_ms=T0 + 10_300,
            first_sentence_ts_ms=T0 + 10_600,
            first_audio_ts_ms=T0 + 10_700,
            first_played_ts_ms=T0 + 10_800,  # voice to voice 800 ms
            interrupted=True,
            played_text="Конечно, в субботу",
        ),
        CallEnded(call_id=c, ts_ms=T0 + 20_000, reason="hangup", duration_ms=20_000, turns=3),
    ]


def call_document(call_id: str = "web-0001", robot: str = ROBOT) -> dict[str, Any]:
    return build_transcript(stored(call_messages(call_id, robot)))


@pytest.fixture
def utc_offset_zone() -> Iterator[None]:
    """Run with a local time zone far from UTC, to show names do not depend on it."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Vladivostok"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_name_is_call_start_in_utc_channel_and_call_id(tmp_path: Path, utc_offset_zone: None) -> None:
    assert time.localtime(T0 / 1000).tm_hour != 22  # the local zone really differs
    path = write_call_log(tmp_path, call_document())
    assert path == tmp_path / ROBOT / "logs" / "20260225_224359_web_web-0001.json"
    assert path.is_file()


def test_name_falls_back_to_the_earliest_event_time(tmp_path: Path) -> None:
    doc = {
        "call_id": "fs-77",
        "channel": "phone",
        "robot": ROBOT,
        "started_at_ms": None,
        "ended_at_ms": T0 + 90_000,
        "pipeline_log": [{"seq": 5, "ts_ms": T0 + 61_000}, {"seq": 6, "ts_ms": T0 + 60_000}],
    }
    assert call_log_path(tmp_path, doc) == tmp_path / "20260225_224459_phone_fs-77.json"


def test_a_call_without_call_started_is_named_from_its_events(tmp_path: Path) -> None:
    doc = build_transcript(stored(call_messages()[1:]))  # call.started never recorded
    path = write_call_log(tmp_path, doc)
    # the robot is known from the llm.sentence events; the channel is not
    assert path == tmp_path / ROBOT / "logs" / "20260225_224359_unknown_web-0001.json"


def test_unsafe_characters_of_the_call_id_do_not_reach_the_file_name(tmp_path: Path) -> None:
    doc = {"call_id": "../../etc/passwd", "channel": "web/x", "started_at_ms": T0}
    path = call_log_path(tmp_path, doc)
    assert path.parent == tmp_path
    assert path.name == "20260225_224359_web_x_.._.._etc_passwd.json"


def test_content_is_the_document_as_readable_utf8_json(tmp_path: Path) -> None:
    doc = call_document()
    path = write_call_log(tmp_path, doc)
    raw = path.read_bytes()
    assert json.loads(raw) == doc
    assert "Хочу записаться на приём".encode() in raw  # not \u escapes
    assert raw.startswith(b'{\n  "call_id": "web-0001"')  # indent 2


def test_writing_again_replaces_the_same_file(tmp_path: Path) -> None:
    doc = call_document()
    first = write_call_log(tmp_path, doc)
    assert write_call_log(tmp_path, doc) == first  # idempotent: same call, same file
    assert first.read_bytes() == call_log.render_call_log(doc)

    # redelivered after more events were stored: the same file, the newer content
    more = build_transcript(
        stored([*call_messages(), CallEnded(call_id="web-0001", ts_ms=T0 + 21_000, reason="x")])
    )
    assert more["events"] == doc["events"] + 1
    assert write_call_log(tmp_path, more) == first
    assert json.loads(first.read_bytes()) == more
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp files left


def test_a_failed_write_keeps_the_old_log_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = call_document()
    path = write_call_log(tmp_path, doc)
    before = path.read_bytes()

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_call_log(tmp_path, {**doc, "end_reason": "changed"})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("robot", ["..", ".", "../other", "a/b", "a\\b", ".hidden", "x\0y"])
def test_unsafe_robot_names_are_rejected(tmp_path: Path, robot: str) -> None:
    robots = tmp_path / "robots"
    robots.mkdir()
    doc = {**call_document(), "robot": robot}
    with pytest.raises(ValueError, match="unsafe robot name"):
        write_call_log(robots, doc)
    assert list(tmp_path.rglob("*")) == [robots]  # nothing created anywhere


def test_a_call_without_robot_goes_to_the_unknown_folder(tmp_path: Path) -> None:
    assert robot_logs_dir(tmp_path, "") == tmp_path / "_unknown" / "logs"
    path = write_call_log(tmp_path, {**call_document(), "robot": None})
    assert path.parent == tmp_path / "_unknown" / "logs"


async def test_a_batch_of_logs_is_written_in_one_go_to_each_robots_folder(tmp_path: Path) -> None:
    doc = call_document()
    other = {**call_document(), "call_id": "web-0002", "robot": "other_bot"}
    paths = await write_call_logs_async(tmp_path, [doc, other])
    assert paths == [write_call_log(tmp_path, doc), write_call_log(tmp_path, other)]
    assert paths[0].parent != paths[1].parent
    assert (
        json.loads(paths[0].read_text(encoding="utf-8"))["segments"][0]["text"]
        == "Здравствуйте! Чем могу помочь?"
    )
    assert json.loads(paths[1].read_text(encoding="utf-8"))["call_id"] == "web-0002"
    assert not hidden_files(tmp_path)  # no temp file left behind


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]
