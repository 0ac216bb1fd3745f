"""What the session cuts and when it decodes: pre/post-roll, speculative recognition on a pause,
continuation merges, and the vocabulary reaching the provider. The counting provider (tests/asr/
counting.py) transcribes a segment as "<first frame>-<last frame>" and counts its decodes."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.asr.caller import FakeCaller
from tests.asr.counting import CountingAsr
from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker, MemoryBus
from voiceplatform.providers import ProviderRegistry
from voiceplatform.wire import (
    AsrFinal,
    ControlInterrupt,
    Message,
    ProviderUsage,
    VadSpeechPaused,
    VadSpeechResumed,
)
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings

RATE = 16000
PRE_ROLL_MS = 200
POST_ROLL_MS = 200
PROVIDERS = ProviderRegistry("asr", {"counting": "tests.asr.counting:CountingAsr"})


def speculative(result: str) -> float:
    return REGISTRY.get_sample_value("vp_asr_speculative_total", {"result": result}) or 0.0


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    folder = tmp_path / "robots" / "counter"
    folder.mkdir(parents=True)
    config = {
        "mode": "pipeline",
        "llm": {"provider": "openai"},
        "asr": {"provider": "counting", "vocabulary": ["Смарт Безлимит"]},
        "vad": {"pre_roll_ms": PRE_ROLL_MS},
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path / "robots"


@pytest.fixture
async def asr(broker: MemoryBroker, robots: Path) -> AsyncIterator[AsrService]:
    CountingAsr.reset()
    settings = AsrSettings(
        robots_dir=robots,
        instance_id="asr-hearing",
        preload_providers=[],
        post_roll_ms=POST_ROLL_MS,
        tail_wait_ms=400,
    )
    service = AsrService(settings, providers=PROVIDERS)
    await service.start(broker.bus("asr"))
    yield service
    await service.drain(2.0)
    CountingAsr.reset()


class Line:
    """A caller whose frame ``seq`` holds the value ``seq`` in every sample."""

    def __init__(self, caller: FakeCaller) -> None:
        self.caller = caller

    async def frames_until(self, offset_ms: int) -> None:
        while self.caller.offset_ms < offset_ms:
            seq = self.caller.seq
            await self.caller.send_frame(np.full(RATE // 50, seq, dtype=np.int16).tobytes())
        await asyncio.sleep(0.02)  # audio and VAD events travel on separate subscriptions

    async def vad(self, msg: Message) -> None:
        await self.caller.bus.publish(subjects.vad(self.caller.call_id), msg)
        await asyncio.sleep(0.02)

    async def paused(self, turn_id: str, offset_ms: int, speech_ms: int, eot: float = -1.0) -> None:
        msg = VadSpeechPaused(
            call_id=self.caller.call_id,
            turn_id=turn_id,
            audio_offset_ms=offset_ms,
            speech_ms=speech_ms,
            eot_probability=eot,
        )
        await self.vad(msg)

    async def resumed(self, turn_id: str, offset_ms: int) -> None:
        msg = VadSpeechResumed(call_id=self.caller.call_id, turn_id=turn_id, audio_offset_ms=offset_ms)
        await self.vad(msg)

    async def continued(self, turn_id: str, by_turn_id: str) -> None:
        msg = ControlInterrupt(
            call_id=self.caller.call_id, turn_id=turn_id, by_turn_id=by_turn_id, reason="continued"
        )
        await self.caller.bus.publish(subjects.control(self.caller.call_id), msg)
        await asyncio.sleep(0.02)


def span(start_ms: int, end_ms: int) -> str:
    """The counting provider's transcript of a turn [start, end) with the session's rolls."""
    return f"{(start_ms - PRE_ROLL_MS) // 20}-{(end_ms + POST_ROLL_MS) // 20 - 1}"


@pytest.fixture
async def line(asr: AsrService, gateway_bus: MemoryBus) -> AsyncIterator[tuple[Line, Collector]]:
    caller = FakeCaller(gateway_bus, robot="counter", sample_rate=RATE)
    usage = await Collector.on(gateway_bus, subjects.usage(caller.call_id))
    assert (await caller.assign()).accepted
    yield Line(caller), usage
    await caller.close()


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_segment_has_pre_roll_before_the_start_and_post_roll_after_the_end(
    line: tuple[Line, Collector],
) -> None:
    ln, _ = line
    await ln.frames_until(1000)
    await ln.caller.speech_started("t1", 1000)
    await ln.frames_until(2000)
    await ln.caller.speech_ended("t1", 2000, 1000)  # the post-roll frames are not there yet
    await asyncio.sleep(0.05)
    await ln.frames_until(2600)  # they come late, within the tail wait
    final = await ln.caller.next_final()
    assert final.text == span(1000, 2000) == "40-109"
    assert final.audio_ms == 1400 and final.merged == []


async def test_a_speculative_result_is_published_at_the_end_without_a_second_decode(
    line: tuple[Line, Collector],
) -> None:
    ln, usage_seen = line
    hits = speculative("hit")
    await ln.frames_until(1000)
    await ln.caller.speech_started("t1", 1000)
    await ln.frames_until(2300)
    await ln.paused("t1", 2000, 1000)
    await until(lambda: len(CountingAsr.segments) == 1)  # decoding started during the pause
    await ln.frames_until(2500)
    await ln.caller.speech_ended("t1", 2000, 1000)
    final = await ln.caller.next_final()
    assert final.text == span(1000, 2000)
    assert len(CountingAsr.segments) == 1, "no second decode"
    assert speculative("hit") == hits + 1
    (usage,) = await usage_seen.wait(ProviderUsage, turn_id="t1")
    assert (usage.outcome, usage.audio_ms) == ("ok", 1400)


async def test_a_resumed_turn_discards_the_paused_piece(line: tuple[Line, Collector]) -> None:
    ln, usage_seen = line
    misses = speculative("miss_resumed")
    CountingAsr.gate = asyncio.Event()  # the speculative decode is still running at the resume
    await ln.frames_until(1000)
    await ln.caller.speech_started("t1", 1000)
    await ln.frames_until(2300)
    await ln.paused("t1", 2000, 1000)
    await until(lambda: len(CountingAsr.segments) == 1)
    await ln.resumed("t1", 2300)
    CountingAsr.gate.set()
    await ln.frames_until(3500)
    await ln.caller.speech_ended("t1", 3000, 2000)
    final = await ln.caller.next_final()
    assert final.text == span(1000, 3000), "the final covers the whole turn"
    with pytest.raises(TimeoutError):
        await ln.caller.next_final(wait_s=0.3)
    assert len(CountingAsr.segments) == 2
    assert speculative("miss_resumed") == misses + 1
    usages = await usage_seen.wait(ProviderUsage, count=2, turn_id="t1")
    assert sorted(u.outcome for u in usages) == ["cancelled", "ok"]
    assert {u.audio_ms for u in usages if u.outcome == "cancelled"} == {1400}


async def test_an_end_at_another_offset_discards_the_speculation(line: tuple[Line, Collector]) -> None:
    ln, _ = line
    misses = speculative("miss_offset_changed")
    await ln.frames_until(1000)
    await ln.caller.speech_started("t1", 1000)
    await ln.frames_until(2300)
    await ln.paused("t1", 2000, 1000)
    await until(lambda: len(CountingAsr.segments) == 1)
    await ln.frames_until(2900)
    await ln.caller.speech_ended("t1", 2400, 1400)
    final = await ln.caller.next_final()
    assert final.text == span(1000, 2400)
    assert len(CountingAsr.segments) == 2
    assert speculative("miss_offset_changed") == misses + 1


async def test_a_continued_chain_is_recognized_as_one_utterance(line: tuple[Line, Collector]) -> None:
    ln, _ = line
    await ln.frames_until(400)
    await ln.caller.speech_started("w", 400)
    await ln.frames_until(1600)
    await ln.caller.speech_ended("w", 1000, 600)
    assert (await ln.caller.next_final()).text == span(400, 1000)
    # the continuation may come before the turn's own start (another subscription)
    await ln.continued("w", "x")
    await ln.caller.speech_started("x", 1600)
    await ln.frames_until(2600)
    await ln.caller.speech_ended("x", 2100, 500)
    final_x = await ln.caller.next_final()
    assert (final_x.text, final_x.merged) == (span(400, 2100), ["w"])
    await ln.caller.speech_started("y", 2800)
    await ln.continued("x", "y")
    await ln.frames_until(4000)
    await ln.caller.speech_ended("y", 3400, 600)
    final_y = await ln.caller.next_final()
    assert final_y.turn_id == "y"
    assert (final_y.text, final_y.merged) == (span(400, 3400), ["w", "x"])


async def test_a_late_continuation_restarts_the_recognition_on_the_merged_audio(
    line: tuple[Line, Collector],
) -> None:
    ln, usage_seen = line
    await ln.frames_until(400)
    await ln.caller.speech_started("x", 400)
    await ln.frames_until(1600)
    await ln.caller.speech_ended("x", 1000, 600)
    await ln.caller.next_final()
    CountingAsr.gate = asyncio.Event()
    await ln.caller.speech_started("y", 1800)
    await ln.frames_until(3000)
    await ln.caller.speech_ended("y", 2400, 600)
    await until(lambda: len(CountingAsr.segments) == 2)  # y alone is being decoded
    await ln.continued("x", "y")
    CountingAsr.gate.set()
    final: AsrFinal = await ln.caller.next_final()
    assert (final.turn_id, final.text, final.merged) == ("y", span(400, 2400), ["x"])
    with pytest.raises(TimeoutError):
        await ln.caller.next_final(wait_s=0.3)
    assert len(CountingAsr.segments) == 3
    usages = await usage_seen.wait(ProviderUsage, count=2, turn_id="y")
    assert sorted(u.outcome for u in usages) == ["cancelled", "ok"]


async def test_a_merged_turn_longer_than_the_window_keeps_its_newest_30_seconds(
    line: tuple[Line, Collector],
) -> None:
    ln, _ = line
    await ln.caller.speech_started("x", 0)
    await ln.frames_until(20_600)
    await ln.caller.speech_ended("x", 20_000, 20_000)
    await ln.caller.next_final()
    await ln.caller.speech_started("y", 20_800)
    await ln.continued("x", "y")
    await ln.frames_until(34_000)
    await ln.caller.speech_ended("y", 33_400, 12_600)
    final = await ln.caller.next_final()
    assert final.merged == ["x"]
    first, last = (int(v) for v in final.text.split("-"))
    assert last == (33_400 + POST_ROLL_MS) // 20 - 1
    assert (last - first + 1) * 20 == 30_000


async def test_the_robot_vocabulary_reaches_the_provider_and_follows_the_file(
    line: tuple[Line, Collector], robots: Path, gateway_bus: MemoryBus
) -> None:
    assert CountingAsr.configs[-1].vocabulary == ["Смарт Безлимит"]
    words = robots / "counter" / "vocabulary.txt"
    words.write_text("Газпромбанк\n# a comment\n  Мир   Супрем \n\nСмарт Безлимит\n", encoding="utf-8")
    caller = FakeCaller(gateway_bus, robot="counter", sample_rate=RATE)
    assert (await caller.assign()).accepted
    assert CountingAsr.configs[-1].vocabulary == ["Смарт Безлимит", "Газпромбанк", "Мир Супрем"]
    words.write_text("Пепперони\n", encoding="utf-8")
    stat = words.stat()
    os.utime(words, (stat.st_atime, stat.st_mtime + 5))
    caller = FakeCaller(gateway_bus, robot="counter", sample_rate=RATE)
    assert (await caller.assign()).accepted
    assert CountingAsr.configs[-1].vocabulary == ["Смарт Безлимит", "Пепперони"]


async def test_a_backlog_of_ended_turns_is_never_dropped(line: tuple[Line, Collector]) -> None:
    ln, _ = line
    CountingAsr.gate = asyncio.Event()  # the model is busy: every turn waits for its decode
    for n in range(12):
        start = 1000 + n * 1000
        await ln.caller.speech_started(f"t{n}", start)
        await ln.frames_until(start + 900)
        await ln.caller.speech_ended(f"t{n}", start + 400, 400)
    CountingAsr.gate.set()
    finals = [await ln.caller.next_final() for _ in range(12)]
    assert sorted(f.turn_id for f in finals) == sorted(f"t{n}" for n in range(12))


async def test_a_pause_unlikely_to_end_the_turn_is_not_decoded(line: tuple[Line, Collector]) -> None:
    ln, _ = line
    skipped = speculative("skipped")
    await ln.frames_until(1000)
    await ln.caller.speech_started("t1", 1000)
    await ln.frames_until(2300)
    await ln.paused("t1", 2000, 1000, eot=0.05)
    await asyncio.sleep(0.1)
    assert CountingAsr.segments == [] and speculative("skipped") == skipped + 1
    await ln.caller.speech_ended("t1", 2000, 1000)
    assert (await ln.caller.next_final()).text == span(1000, 2000)
    assert len(CountingAsr.segments) == 1
