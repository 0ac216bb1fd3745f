"""The TTS service on the in-memory broker: sentences in, ordered tts.audio chunks out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from tests.tts.conftest import ROBOT, TEST_PROVIDERS
from tests.tts.helpers import CallOutput, sentence
from tests.tts.stand_in_providers import FailingTts, SlowTts
from voiceplatform import subjects
from voiceplatform.audio import pcm_to_array, rms
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.wire import ControlInterrupt
from vp_tts.app import TtsService
from vp_tts.output import SentenceOutput
from vp_tts.settings import TtsSettings

TEXT = "Добрый день! Чем я могу вам помочь сегодня?"
MAX_CHUNK_MS = 200

StartService = Callable[..., Awaitable[TtsService]]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def start_service(broker: MemoryBroker, settings: TtsSettings) -> AsyncIterator[StartService]:
    services: list[TtsService] = []

    async def start(**overrides: object) -> TtsService:
        service = TtsService(settings.model_copy(update=overrides), registry=TEST_PROVIDERS)
        await service.start(broker.bus(f"tts-{len(services)}"))
        services.append(service)
        return service

    yield start
    for service in services:
        await service.drain(2.0)


def assert_well_formed(out: CallOutput, index: int, rate: int, provider: str) -> None:
    chunks = out.chunks(index)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert {c.sample_rate for c in chunks} == {rate}
    assert all(len(c.pcm) <= rate * MAX_CHUNK_MS // 1000 * 2 for c in chunks)
    assert {c.provider for c in chunks} == {provider}


@pytest.mark.slow
async def test_sentence_becomes_ordered_chunks_at_the_call_rate(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service()
    assert service.ready()
    client = broker.bus("llm")
    web = await CallOutput.on(client, "web-call")
    phone = await CallOutput.on(client, "phone-call")
    await client.publish(subjects.llm_sentence("web-call"), sentence("web-call", "t1", 0, TEXT, ROBOT, 16000))
    await client.publish(
        subjects.llm_sentence("phone-call"), sentence("phone-call", "t2", 0, TEXT, ROBOT, 8000)
    )
    await web.wait_closed(0)
    await phone.wait_closed(0)

    assert_well_formed(web, 0, 16000, "festival")
    assert_well_formed(phone, 0, 8000, "festival")
    assert len(web.chunks(0)) > 5 and web.chunks(0)[0].text == TEXT
    web_samples = pcm_to_array(web.pcm(0))
    phone_samples = pcm_to_array(phone.pcm(0))
    assert web_samples.size / 16000 > 1.5 and rms(web_samples) > 300 and rms(phone_samples) > 300
    # festival is deterministic: the 8 kHz sentence is exactly the 16 kHz one, resampled
    assert phone_samples.size == round(web_samples.size / 2)
    assert metric("vp_stage_latency_ms_count", service="tts", stage="tts_first_audio") >= 2


async def test_empty_text_gets_only_the_closing_marker(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-empty")
    await client.publish(subjects.llm_sentence("c-empty"), sentence("c-empty", "t", 0, "  \n ", ROBOT))
    await client.publish(subjects.llm_sentence("c-empty"), sentence("c-empty", "t", 1, "**😀👍**", ROBOT))
    await out.wait_closed(0, 1)
    for index in (0, 1):
        [marker] = out.chunks(index)
        assert marker.last and marker.pcm == b"" and marker.seq == 0


async def test_interrupt_cancels_the_turn_and_drops_its_later_sentences(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("gateway")
    out = await CallOutput.on(client, "c-int")
    started, closed = SlowTts.started, SlowTts.closed
    dropped = metric("vp_tts_sentences_dropped_total", reason="interrupted")
    await client.publish(
        subjects.llm_sentence("c-int"), sentence("c-int", "turn-a", 0, "Очень длинно.", "slow_bot")
    )
    await out.wait_until(lambda: len(out.chunks(0)) >= 2)

    await client.publish(subjects.control("c-int"), ControlInterrupt(call_id="c-int", turn_id="turn-a"))
    await out.wait_until(lambda: SlowTts.closed == closed + 1, timeout_s=2.0)  # stream closed
    heard = len(out.audio)
    await client.publish(
        subjects.llm_sentence("c-int"), sentence("c-int", "turn-a", 1, "Дальше.", "slow_bot")
    )
    await asyncio.sleep(0.4)  # the slow provider would have sent ~8 more chunks by now

    assert len(out.audio) == heard
    assert heard < SlowTts.chunks and not out.closed(0)
    assert out.chunks(1) == [] and SlowTts.started == started + 1
    assert metric("vp_tts_sentences_dropped_total", reason="interrupted") == dropped + 1


async def test_interrupt_of_another_turn_leaves_this_one_alone(
    broker: MemoryBroker, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SlowTts, "chunks", 4)
    await start_service(festival_preload=False)
    client = broker.bus("gateway")
    out = await CallOutput.on(client, "c-other")
    await client.publish(
        subjects.llm_sentence("c-other"), sentence("c-other", "keep", 0, "Текст.", "slow_bot")
    )
    await client.publish(subjects.control("c-other"), ControlInterrupt(call_id="c-other", turn_id="other"))
    await out.wait_closed(0)
    assert len(out.pcm(0)) == 4 * 3200


@pytest.mark.slow
async def test_two_instances_synthesize_each_sentence_once(
    broker: MemoryBroker, start_service: StartService
) -> None:
    first, second = await asyncio.gather(start_service(), start_service())
    assert first.ready() and second.ready()
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-two")
    texts = [
        "Раз.",
        "Два слова.",
        "Третье предложение.",
        "Четыре.",
        "Пятое, самое длинное предложение.",
        "Шесть.",
    ]
    for index, text in enumerate(texts):
        await client.publish(subjects.llm_sentence("c-two"), sentence("c-two", "t", index, text, ROBOT))
    await out.wait_closed(*range(len(texts)))
    await asyncio.sleep(0.2)  # a duplicate synthesis would still be arriving
    for index in range(len(texts)):
        assert_well_formed(out, index, 16000, "festival")  # one seq run, one last marker
        assert rms(pcm_to_array(out.pcm(index))) > 300


async def test_failing_primary_falls_back_before_any_audio(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-fb")
    calls = FailingTts.calls
    errors = metric("vp_provider_errors_total", service="tts", provider="failing", kind="connection")
    await client.publish(subjects.llm_sentence("c-fb"), sentence("c-fb", "t", 0, TEXT, "failing_bot", 8000))
    await out.wait_closed(0)
    assert FailingTts.calls == calls + 1
    assert_well_formed(out, 0, 8000, "espeak")
    assert rms(pcm_to_array(out.pcm(0))) > 300
    assert out.errors == []
    assert (
        metric("vp_provider_errors_total", service="tts", provider="failing", kind="connection") == errors + 1
    )
    assert metric("vp_tts_fallbacks_total", from_provider="failing", to_provider="espeak") >= 1


async def test_unavailable_festival_falls_back_to_espeak(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service(festival_voice="voice_no_such_voice")
    assert not service.ready()  # the pool never got warm
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-nofest")
    await client.publish(subjects.llm_sentence("c-nofest"), sentence("c-nofest", "t", 0, TEXT, ROBOT))
    await out.wait_closed(0)
    assert_well_formed(out, 0, 16000, "espeak")


async def test_failure_after_audio_does_not_switch_voice(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-mid")
    await client.publish(subjects.llm_sentence("c-mid"), sentence("c-mid", "t", 0, TEXT, "midway_bot"))
    await out.wait_closed(0)
    await out.wait_until(lambda: len(out.errors) == 1)
    chunks = out.chunks(0)
    assert {c.provider for c in chunks} == {"breaks_midway"}  # espeak never started over
    assert chunks[-1].last and len(out.pcm(0)) > 0
    assert out.errors[0].stage == "tts" and out.errors[0].kind == "timeout" and out.errors[0].turn_id == "t"


async def test_no_provider_left_publishes_stage_error_and_closes_the_sentence(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-fail")
    await client.publish(
        subjects.llm_sentence("c-fail"), sentence("c-fail", "t9", 3, TEXT, "failing_only_bot")
    )
    await out.wait_closed(3)
    await out.wait_until(lambda: len(out.errors) == 1)
    [marker] = out.chunks(3)
    assert marker.last and marker.pcm == b""
    error = out.errors[0]
    assert (error.stage, error.kind, error.turn_id, error.retryable) == ("tts", "connection", "t9", True)


async def test_unsupported_sample_rate_is_refused_but_closed(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-rate")
    before = metric("vp_tts_sentences_dropped_total", reason="bad_sample_rate")
    await client.publish(
        subjects.llm_sentence("c-rate"), sentence("c-rate", "t", 0, TEXT, "espeak_bot", 44100)
    )
    await out.wait_closed(0)
    await out.wait_until(lambda: len(out.errors) == 1)
    assert out.chunks(0)[0].pcm == b"" and out.errors[0].kind == "bad_sample_rate"
    assert metric("vp_tts_sentences_dropped_total", reason="bad_sample_rate") == before + 1


async def test_unknown_robot_uses_default_voice_chain(
    broker: MemoryBroker, start_service: StartService
) -> None:
    await start_service(festival_preload=False)
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-norobot")
    await client.publish(
        subjects.llm_sentence("c-norobot"), sentence("c-norobot", "t", 0, "Да.", "no_such_robot")
    )
    await out.wait_closed(0)
    assert len(out.pcm(0)) > 0


async def test_drain_finishes_in_flight_sentences_then_stops(
    broker: MemoryBroker, settings: TtsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SlowTts, "chunks", 6)
    service = TtsService(settings, registry=TEST_PROVIDERS)
    await service.start(broker.bus("tts"))
    assert service.ready()
    festival = service.provider("festival")
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-drain")
    await client.publish(subjects.llm_sentence("c-drain"), sentence("c-drain", "t", 0, "Текст.", "slow_bot"))
    await out.wait_until(lambda: len(out.chunks(0)) >= 1)

    await service.drain(5.0)
    assert out.closed(0) and len(out.pcm(0)) == 6 * 3200  # finished, not cut
    assert not service.ready()
    assert not any(p.alive for p in festival.pool.processes)  # type: ignore[attr-defined]
    await client.publish(subjects.llm_sentence("c-drain"), sentence("c-drain", "t", 1, "Ещё.", "slow_bot"))
    await asyncio.sleep(0.1)
    assert out.chunks(1) == []


async def test_output_splits_big_provider_blocks(broker: MemoryBroker) -> None:
    client = broker.bus("llm")
    out = await CallOutput.on(client, "c-split")
    msg = sentence("c-split", "t", 0, "Текст.", ROBOT, 8000)
    publisher = SentenceOutput(broker.bus("tts"), msg, chunk_ms=200, received_at=0.0)
    await publisher.audio(b"\x01\x00" * 8000)  # one second at once
    await publisher.finish(b"\x02\x00" * 2000)  # a 250 ms tail is split too
    await out.wait_closed(0)
    sizes = [len(c.pcm) for c in out.chunks(0)]
    assert sizes == [3200] * 5 + [800, 3200]
    assert [c.seq for c in out.chunks(0)] == list(range(7))
    with pytest.raises(ValueError):
        TtsSettings(chunk_ms=250)
