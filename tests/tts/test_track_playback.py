"""The TTS service plays an llm_script robot's recording as a sentence's audio (LlmSentence.track)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.tts.conftest import TEST_PROVIDERS, write_robot
from tests.tts.helpers import CallOutput
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config.tracks import track_pcm
from voiceplatform.wire import ControlInterrupt, LlmSentence, Message
from vp_tts.app import TtsService
from vp_tts.settings import TtsSettings

ROBOT = "track_bot"
TEXT = "Мы работаем с девяти до шести."


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def track_robot(robots_dir: Path) -> Path:
    write_robot(robots_dir, ROBOT, {"provider": "espeak"})
    folder = robots_dir / ROBOT
    (folder / "tracks").mkdir()
    tracks = [
        {"id": "hours", "file": "hours.wav", "text": TEXT, "when": "часы работы"},
        {"id": "long", "file": "long.wav", "text": "Очень длинная запись.", "when": "долго"},
        {"id": "lost", "file": "lost.wav", "text": "Запись потерялась.", "when": "нет файла"},
    ]
    manifest = {"tracks": tracks}
    (folder / "tracks" / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), "utf-8")
    rng = np.random.default_rng(7)  # noise: every chunk differs, so order and content are checkable
    write_wav(folder / "tracks" / "hours.wav", rng.integers(-8000, 8000, 24000 * 2, dtype=np.int16), 24000)
    write_wav(folder / "tracks" / "long.wav", rng.integers(-8000, 8000, 16000 * 30, dtype=np.int16), 16000)
    return folder


@pytest.fixture
async def tts(broker: MemoryBroker, settings: TtsSettings, track_robot: Path) -> AsyncIterator[TtsService]:
    service = TtsService(settings.model_copy(update={"festival_preload": False}), registry=TEST_PROVIDERS)
    await service.start(broker.bus("tts"))
    yield service
    await service.drain(2.0)


def track_sentence(call_id: str, turn_id: str, track: str, text: str, rate: int) -> LlmSentence:
    return LlmSentence(
        call_id=call_id,
        turn_id=turn_id,
        index=0,
        text=text,
        robot=ROBOT,
        sample_rate=rate,
        last=True,
        track=track,
    )


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_the_recording_is_the_sentence_audio_at_the_call_rate(
    broker: MemoryBroker, tts: TtsService, track_robot: Path, rate: int
) -> None:
    client = broker.bus("llm")
    out = await CallOutput.on(client, f"c-{rate}")
    played = metric("vp_tts_sentences_total", outcome="track")
    await client.publish(
        subjects.llm_sentence(f"c-{rate}"), track_sentence(f"c-{rate}", "t1", "hours", TEXT, rate)
    )
    await out.wait_closed(0)
    chunks = out.chunks(0)
    assert out.pcm(0) == track_pcm(track_robot / "tracks" / "hours.wav", rate)
    assert len(out.pcm(0)) == 2 * rate * 2  # two seconds at the call's rate
    assert [c.seq for c in chunks] == list(range(len(chunks))) and chunks[-1].last
    assert {c.provider for c in chunks} == {"track"} and {c.text for c in chunks} == {TEXT}
    assert {c.sample_rate for c in chunks} == {rate}
    assert metric("vp_tts_sentences_total", outcome="track") == played + 1


async def test_a_missing_recording_is_said_from_its_text(broker: MemoryBroker, tts: TtsService) -> None:
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-lost")
    unplayable = metric("vp_tts_tracks_unplayable_total")
    await client.publish(
        subjects.llm_sentence("c-lost"), track_sentence("c-lost", "t1", "lost", "Запись потерялась.", 16000)
    )
    await client.publish(
        subjects.llm_sentence("c-lost"), track_sentence("c-lost", "t2", "nobody", "Нет такой записи.", 16000)
    )
    await out.wait_until(lambda: out.closed(0) and len([m for _, m in out.audio if m.last]) == 2)
    for turn in ("t1", "t2"):
        chunks = out.chunks(0, turn)
        assert {c.provider for c in chunks} == {"espeak"} and len(b"".join(c.pcm for c in chunks)) > 3200
    assert metric("vp_tts_tracks_unplayable_total") == unplayable + 2
    assert out.errors == []


async def test_barge_in_stops_a_recording_midway(broker: MemoryBroker, tts: TtsService) -> None:
    client = broker.bus("gateway")
    out = await CallOutput.on(client, "c-cut")
    full = 16000 * 30 * 2

    async def cut_after_first_chunks(env: Envelope) -> Message | None:
        # the gateway's barge-in: the caller speaks while the first chunks play
        if len(out.chunks(0)) == 3:
            await client.publish(
                subjects.control("c-cut"), ControlInterrupt(call_id="c-cut", turn_id="t1", played_ms=200)
            )
        return None

    await client.subscribe(subjects.tts_audio("c-cut"), cut_after_first_chunks)
    cancelled = metric("vp_tts_sentences_total", outcome="interrupted")
    await client.publish(
        subjects.llm_sentence("c-cut"), track_sentence("c-cut", "t1", "long", "Очень длинная запись.", 16000)
    )
    await out.wait_until(lambda: metric("vp_tts_sentences_total", outcome="interrupted") == cancelled + 1)
    heard = len(out.pcm(0))
    assert 0 < heard < full and not out.closed(0)
    # the same turn's next sentence is dropped: the caller moved on
    dropped = metric("vp_tts_sentences_dropped_total", reason="interrupted")
    await client.publish(subjects.llm_sentence("c-cut"), track_sentence("c-cut", "t1", "hours", TEXT, 16000))
    await out.wait_until(
        lambda: metric("vp_tts_sentences_dropped_total", reason="interrupted") == dropped + 1, timeout_s=2.0
    )
    assert len(out.pcm(0)) == heard
