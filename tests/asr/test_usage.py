"""ASR provider usage: one ``provider.usage`` per provider attempt on a segment, with the audio sent.

Local test providers (no model, no server): a primary that times out after taking the segment, one
refused before it took any audio, a fallback that answers, and one that hangs until the call ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.asr.caller import FakeCaller
from tests.asr.local import LocalAsr
from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker, MemoryBus
from voiceplatform.config import AsrConfig
from voiceplatform.providers import ProviderRegistry, ProviderStatusError, ProviderTimeoutError, Transcript
from voiceplatform.wire import ProviderUsage
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings

RATE = 16000


class _Local(LocalAsr):
    sample_rates = (8000, 16000)

    def __init__(self, config: AsrConfig) -> None:
        self.config = config


class StalledAsr(_Local):
    """Takes the whole segment, then its watchdog gives up (as Yandex does on a silent stream)."""

    name = "stalled"

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        async for _ in audio:
            pass
        raise ProviderTimeoutError(self.name, "no result")
        yield Transcript("", True)  # pragma: no cover - makes this an async generator


class RefusedAsr(_Local):
    """Rejected before any audio went out (a bad key)."""

    name = "refused"

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        raise ProviderStatusError(self.name, 401, "unauthenticated", retryable=False)
        yield Transcript("", True)  # pragma: no cover - makes this an async generator


class AnswerAsr(_Local):
    name = "answer"

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        pcm = b"".join([chunk async for chunk in audio])
        yield Transcript(f"слышу {len(pcm)}", is_final=True, language="ru")


class HangingAsr(_Local):
    """Takes the segment and never answers; records being closed."""

    name = "hanging"
    took_audio: ClassVar[asyncio.Event]
    closed: ClassVar[asyncio.Event]

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        try:
            async for _ in audio:
                pass
            HangingAsr.took_audio.set()
            await asyncio.Event().wait()
            yield Transcript("", True)  # pragma: no cover - never reached
        finally:
            HangingAsr.closed.set()


PROVIDERS = ProviderRegistry(
    "asr",
    {
        "stalled": "tests.asr.test_usage:StalledAsr",
        "refused": "tests.asr.test_usage:RefusedAsr",
        "answer": "tests.asr.test_usage:AnswerAsr",
        "hanging": "tests.asr.test_usage:HangingAsr",
    },
)


def usage_metric(provider: str, unit: str) -> float:
    labels = {"stage": "asr", "provider": provider, "unit": unit}
    return REGISTRY.get_sample_value("vp_provider_usage_total", labels) or 0.0


@pytest.fixture
def make_robot(tmp_path: Path) -> Callable[[str, str, list[str]], str]:
    (tmp_path / "robots").mkdir()

    def make(name: str, provider: str, fallback: list[str]) -> str:
        folder = tmp_path / "robots" / name
        folder.mkdir()
        asr = {"provider": provider, "fallback": fallback}
        config = {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": asr}
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return name

    return make


@pytest.fixture
async def asr(broker: MemoryBroker, tmp_path: Path) -> AsyncIterator[AsrService]:
    settings = AsrSettings(
        robots_dir=tmp_path / "robots", instance_id="asr-usage-1", preload_providers=[], drain_timeout_s=5
    )
    service = AsrService(settings, providers=PROVIDERS)
    await service.start(broker.bus("asr"))
    HangingAsr.took_audio, HangingAsr.closed = asyncio.Event(), asyncio.Event()
    yield service
    await service.drain(2.0)


async def start_call(gateway_bus: MemoryBus, robot: str) -> tuple[FakeCaller, Collector]:
    caller = FakeCaller(gateway_bus, robot=robot, sample_rate=RATE)
    usage = await Collector.on(gateway_bus, subjects.usage(caller.call_id))
    assert (await caller.assign()).accepted
    return caller, usage


def speech(seconds: float) -> np.ndarray:
    return np.random.default_rng(7).integers(-8000, 8000, int(RATE * seconds), dtype=np.int16)


async def test_a_timed_out_primary_and_the_fallback_are_both_counted_with_the_segment(
    asr: AsrService, gateway_bus: MemoryBus, make_robot: Callable[[str, str, list[str]], str]
) -> None:
    caller, lifecycle = await start_call(gateway_bus, make_robot("usage_stall", "stalled", ["answer"]))
    seconds_before = usage_metric("answer", "audio_seconds")
    failed_before = usage_metric("stalled", "failed_requests")
    await caller.say("u1", speech(1.0))
    final = await caller.next_final()
    stalled, answered = await lifecycle.wait(ProviderUsage, count=2, turn_id="u1")

    assert final.provider == "answer" and final.audio_ms >= 1000
    assert (stalled.stage, stalled.provider, stalled.outcome) == ("asr", "stalled", "timeout")
    assert (answered.stage, answered.provider, answered.outcome) == ("asr", "answer", "ok")
    # both were sent the same buffered segment: the one the final reports
    assert stalled.audio_ms == answered.audio_ms == final.audio_ms
    assert final.text == f"слышу {final.audio_ms * RATE // 1000 * 2}"
    assert answered.prompt_tokens == answered.characters == 0
    assert usage_metric("answer", "audio_seconds") == pytest.approx(seconds_before + final.audio_ms / 1000)
    assert usage_metric("stalled", "failed_requests") == failed_before + 1


async def test_a_provider_refused_before_any_audio_counts_a_request_without_seconds(
    asr: AsrService, gateway_bus: MemoryBus, make_robot: Callable[[str, str, list[str]], str]
) -> None:
    caller, lifecycle = await start_call(gateway_bus, make_robot("usage_refused", "refused", ["answer"]))
    await caller.say("u1", speech(0.6))
    final = await caller.next_final()
    refused, answered = await lifecycle.wait(ProviderUsage, count=2, turn_id="u1")
    assert (refused.provider, refused.outcome, refused.audio_ms) == ("refused", "failed", 0)
    assert (answered.provider, answered.outcome, answered.audio_ms) == ("answer", "ok", final.audio_ms)
    assert final.audio_ms > 0


async def test_a_recognition_cut_off_by_the_call_end_is_counted_as_cancelled(
    asr: AsrService, gateway_bus: MemoryBus, make_robot: Callable[[str, str, list[str]], str]
) -> None:
    caller, lifecycle = await start_call(gateway_bus, make_robot("usage_hang", "hanging", ["answer"]))
    await caller.say("u1", speech(0.6))
    await asyncio.wait_for(HangingAsr.took_audio.wait(), 5.0)
    await caller.hang_up()
    (usage,) = await lifecycle.wait(ProviderUsage, turn_id="u1")
    await asyncio.wait_for(HangingAsr.closed.wait(), 2.0)
    assert (usage.provider, usage.outcome) == ("hanging", "cancelled")
    assert usage.audio_ms >= 600  # it had taken the segment (pre-roll included)
    assert caller.finals.empty(), "the fallback is not asked once the call is over"
