"""The rhvoice provider against the real libRHVoice.so.5: streaming, cancellation, voices, options."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.tts.rhvoice_fixtures import require_engine
from voiceplatform.audio import pcm_to_array, rms
from voiceplatform.config import RobotConfig
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import ProviderError
from vp_tts.providers.rhvoice import SAMPLE_RATE, RhvoiceTts
from vp_tts.providers.rhvoice_engine import RhvoiceUnavailable
from vp_tts.settings import TtsSettings

LONG = (
    "Здравствуйте! Ваш заказ на сумму 1 200 рублей будет доставлен завтра с десяти до двух часов дня, "
    "а курьер позвонит вам за час до приезда, чтобы уточнить адрес и удобное время."
)


def robot(options: dict[str, Any], voice: str = "") -> RobotConfig:
    settings = RobotSettings.model_validate(
        {
            "llm": {"provider": "openai"},
            "tts": {"provider": "rhvoice", "voice": voice, "providers": {"rhvoice": options}},
        }
    )
    return RobotConfig(name="bot", path=None, settings=settings, system_prompt="", prompts={}, env={})  # type: ignore[arg-type]


@pytest.fixture
def provider(settings: TtsSettings) -> RhvoiceTts:
    require_engine(settings)
    return RhvoiceTts(settings)


async def collect(provider: Any, text: str, voice: str = "") -> tuple[list[bytes], list[float], float]:
    started = time.monotonic()
    chunks: list[bytes] = []
    times: list[float] = []
    async for chunk in provider.stream_synthesize(text, voice):
        chunks.append(chunk)
        times.append(time.monotonic() - started)
    return chunks, times, time.monotonic() - started


async def test_streams_many_chunks_the_first_long_before_the_end(provider: RhvoiceTts) -> None:
    await provider.start()
    assert provider.ready() and provider.health()["available"]
    chunks, times, total = await collect(provider, LONG)
    samples = pcm_to_array(b"".join(chunks))
    assert provider.sample_rate == SAMPLE_RATE == 24000
    assert len(chunks) > 20 and samples.size / SAMPLE_RATE > 5.0 and rms(samples) > 300
    # streaming: the first chunk comes while most of the sentence is still being made
    assert times[0] < total / 4


async def test_closing_the_stream_stops_the_engine_at_once(provider: RhvoiceTts) -> None:
    engine = provider.engine()
    full, _, _ = await collect(provider, LONG)
    before_chunks, before_cancelled = engine.chunks, engine.cancelled
    stream = provider.stream_synthesize(LONG, "")
    assert await anext(stream)
    await stream.aclose()
    await engine.idle()  # the worker finished with the cancelled message
    # play_speech returned 0 at the next chunk: nothing like the whole sentence was made
    assert engine.chunks - before_chunks <= 3 < len(full)
    assert engine.cancelled == before_cancelled + 1


async def test_text_without_words_is_silence_not_an_error(provider: RhvoiceTts) -> None:
    for text in ("", "…", " — ", "?!"):
        chunks, _, _ = await collect(provider, text)
        assert chunks == []


async def test_voice_by_name_unknown_voice_and_other_engines_names(provider: RhvoiceTts) -> None:
    irina, _, _ = await collect(provider, "Добрый день.", "Irina")
    aleksandr, _, _ = await collect(provider, "Добрый день.", "aleksandr")  # names are case-blind
    assert irina and aleksandr and b"".join(irina) != b"".join(aleksandr)
    # festival's or espeak's voice in tts.voice means the default voice, not an error
    default, _, _ = await collect(provider, "Добрый день.", "msu_ru_nsh")
    assert b"".join(default) == b"".join(irina)
    with pytest.raises(ProviderError, match=r"unknown RHVoice voice 'Nobody'; installed: .*Irina") as caught:
        await collect(provider, "Добрый день.", "Nobody")
    assert not caught.value.retryable


async def test_non_commercial_voices_need_an_explicit_opt_in(provider: RhvoiceTts) -> None:
    with pytest.raises(ProviderError, match="non-commercial use only"):
        await collect(provider.for_robot(robot({"voice": "Pavel"})), "Добрый день.")
    chunks, _, _ = await collect(
        provider.for_robot(robot({"voice": "Pavel", "allow_non_commercial": True})), "Да."
    )
    assert chunks


async def test_options_are_validated_and_change_the_speech(provider: RhvoiceTts) -> None:
    with pytest.raises(ProviderError, match=r"bad tts.providers.rhvoice options: rate"):
        provider.for_robot(robot({"rate": 2}))
    with pytest.raises(ProviderError, match="speed: Extra inputs are not permitted"):
        provider.for_robot(robot({"speed": 1}))
    normal, _, _ = await collect(provider.for_robot(robot({})), LONG)
    fast, _, _ = await collect(provider.for_robot(robot({"rate": 0.8})), LONG)
    assert len(b"".join(fast)) < 0.8 * len(b"".join(normal))
    # the robot's options are validated once per loaded config
    bot = robot({"rate": 0.1})
    assert provider.for_robot(bot) is provider.for_robot(bot)


async def test_missing_library_is_reported_unavailable_with_the_reason(settings: TtsSettings) -> None:
    missing = RhvoiceTts(settings.model_copy(update={"rhvoice_library": "libRHVoice-missing.so.0"}))
    with pytest.raises(RhvoiceUnavailable, match=r"cannot load libRHVoice-missing.so.0 .*install-rhvoice.sh"):
        await missing.start()
    assert not missing.ready()
    assert missing.health() == {"available": False, "reason": missing.health()["reason"]}
    assert "cannot load" in missing.health()["reason"]
