"""TTS provider usage: one ``provider.usage`` per sentence attempt, with the characters sent to it.

A failed primary and a stalled one are counted next to the fallback that spoke; a sentence cut off
by barge-in is counted as cancelled. The providers are test doubles (no engine needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.llm.helpers import Collector
from tests.tts.conftest import write_robot
from tests.tts.stand_in_providers import RATE, LocalFake, SlowTts, tone
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.providers import ProviderRegistry
from voiceplatform.wire import ControlInterrupt, ProviderUsage, TtsAudio
from vp_tts.app import PROVIDER_ENTRIES, TtsService
from vp_tts.settings import TtsSettings
from vp_tts.text import normalize_text

from .helpers import sentence

# markdown is dropped before synthesis: what a provider is sent (and bills) is the normalized text
TEXT = "**Добрый день!** Чем могу помочь?"
SENT = normalize_text(TEXT)


class QuickTts(LocalFake):
    """Two short chunks at once."""

    name = "quick"
    sample_rate = RATE

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        yield tone(40)
        yield tone(40)


class SilentTts(LocalFake):
    """Opens its stream and never sends audio (until closed)."""

    name = "silent"
    sample_rate = RATE

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""  # pragma: no cover - never reached


REGISTRY_ENTRIES = ProviderRegistry(
    "tts",
    {
        **PROVIDER_ENTRIES,
        "failing": "tests.tts.stand_in_providers:FailingTts",
        "slow": "tests.tts.stand_in_providers:SlowTts",
        "quick": "tests.tts.test_usage:QuickTts",
        "silent": "tests.tts.test_usage:SilentTts",
    },
)


def usage_metric(provider: str, unit: str) -> float:
    labels = {"stage": "tts", "provider": provider, "unit": unit}
    return REGISTRY.get_sample_value("vp_provider_usage_total", labels) or 0.0


@pytest.fixture
async def service(broker: MemoryBroker, settings: TtsSettings) -> AsyncIterator[TtsService]:
    started = TtsService(settings.model_copy(update={"festival_preload": False}), registry=REGISTRY_ENTRIES)
    await started.start(broker.bus("tts"))
    yield started
    await started.drain(2.0)


Say = Callable[[str, str, str], Awaitable[Collector]]


@pytest.fixture
def say(broker: MemoryBroker, service: TtsService) -> Say:
    async def send(call_id: str, turn_id: str, robot: str) -> Collector:
        client = broker.bus("llm")
        out = await Collector.on(client, subjects.call_events_of(call_id))
        await client.publish(subjects.llm_sentence(call_id), sentence(call_id, turn_id, 0, TEXT, robot))
        return out

    return send


async def test_a_failed_primary_and_the_fallback_that_spoke_are_both_counted(
    say: Say, robots_dir: Path
) -> None:
    robot = write_robot(robots_dir, "usage_failing_bot", {"provider": "failing", "fallback": ["quick"]})
    chars_before = usage_metric("quick", "characters")
    failed_before = usage_metric("failing", "failed_requests")
    out = await say("usage-1", "t1", robot)
    failed, spoke = await out.wait(ProviderUsage, count=2, turn_id="t1")
    await out.wait_until(lambda: any(m.last for m in out.of(TtsAudio, turn_id="t1")))

    assert (failed.stage, failed.provider, failed.outcome) == ("tts", "failing", "failed")
    assert (spoke.stage, spoke.provider, spoke.outcome) == ("tts", "quick", "ok")
    assert failed.characters == spoke.characters == len(SENT) < len(TEXT)
    assert {u.call_id for u in (failed, spoke)} == {"usage-1"}
    assert usage_metric("quick", "characters") == chars_before + len(SENT)
    assert usage_metric("failing", "failed_requests") == failed_before + 1
    assert all(s == subjects.usage("usage-1") for _, s, m in out.items if isinstance(m, ProviderUsage))


async def test_a_stalled_primary_is_counted_as_timeout(say: Say, robots_dir: Path) -> None:
    tts = {"provider": "silent", "fallback": ["quick"], "first_audio_timeout_s": 0.2}
    robot = write_robot(robots_dir, "usage_silent_bot", tts)
    out = await say("usage-2", "t1", robot)
    stalled, spoke = await out.wait(ProviderUsage, count=2, turn_id="t1")
    assert [(u.provider, u.outcome, u.characters) for u in (stalled, spoke)] == [
        ("silent", "timeout", len(SENT)),
        ("quick", "ok", len(SENT)),
    ]


async def test_a_sentence_cut_off_by_barge_in_is_counted_as_cancelled(
    broker: MemoryBroker, say: Say, robots_dir: Path
) -> None:
    robot = write_robot(robots_dir, "usage_slow_bot", {"provider": "slow"})
    started = SlowTts.started
    out = await say("usage-3", "t1", robot)
    await out.wait(TtsAudio, turn_id="t1")
    assert SlowTts.started == started + 1
    interrupt = ControlInterrupt(call_id="usage-3", turn_id="t1", by_turn_id="t2")
    await broker.bus("gateway").publish(subjects.control("usage-3"), interrupt)
    (usage,) = await out.wait(ProviderUsage, turn_id="t1")
    assert (usage.provider, usage.outcome, usage.characters) == ("slow", "cancelled", len(SENT))
