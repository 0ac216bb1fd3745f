"""What whisper is given: 8 kHz audio brought to 16 kHz without losing or inventing sound, the robot's
vocabulary as hotwords, and whisper's stock phrases over noise dropped. No model needed."""

from __future__ import annotations

import numpy as np
import pytest

from voiceplatform.audio import resample
from voiceplatform.config import AsrConfig
from vp_asr.providers.whisper import (
    WhisperAsr,
    echoes_vocabulary,
    hotwords,
    is_hallucination,
    to_whisper_rate,
)


def tone(freq: float, seconds: float = 1.0, rate: int = 8000, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def spectrum(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    window = np.hanning(audio.size)
    power = np.abs(np.fft.rfft(audio * window)) ** 2
    return np.fft.rfftfreq(audio.size, 1 / rate), power


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_an_8k_tone_keeps_its_energy_and_frequency_at_16k(freq: float) -> None:
    samples = tone(freq)
    out = to_whisper_rate(samples, 8000)
    assert out.dtype == np.float32 and out.size == 16000
    core = slice(800, -800)  # away from the filter's edge transients
    rms_in = np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2))
    rms_out = np.sqrt(np.mean(out[core].astype(np.float64) ** 2))
    assert rms_out == pytest.approx(rms_in, rel=0.02)
    freqs, power = spectrum(out[core], 16000)
    assert abs(freqs[np.argmax(power)] - freq) < 5
    # the image of the tone mirrored around 4 kHz (what interpolation leaves behind) is gone
    image = power[(freqs > 4100)].sum() / power.sum()
    assert image < 1e-4, f"image energy {image:.2e}"


def test_the_polyphase_resampler_beats_linear_interpolation_on_a_chirp() -> None:
    rate = 8000
    t = np.arange(rate * 2) / rate
    chirp = np.round(8000 * np.sin(2 * np.pi * (200 * t + (3600 - 200) / 4 * t**2))).astype(np.int16)
    polyphase = to_whisper_rate(chirp, rate)[1600:-1600]
    linear = (resample(chirp, rate, 16000).astype(np.float32) / 32768.0)[1600:-1600]
    freqs, good = spectrum(polyphase, 16000)
    _, poor = spectrum(linear, 16000)
    above = freqs > 4100
    assert good[above].sum() / good.sum() < 1e-4
    assert poor[above].sum() / poor.sum() > 100 * (good[above].sum() / good.sum())
    # the band the caller spoke in keeps its energy (a linear interpolator also dulls 3-4 kHz)
    band = (freqs > 200) & (freqs < 3600)
    assert good[band].sum() == pytest.approx(good.sum(), rel=0.01)


def test_16k_audio_is_only_scaled() -> None:
    samples = tone(440.0, rate=16000)
    assert np.array_equal(to_whisper_rate(samples, 16000), samples.astype(np.float32) / 32768.0)


def test_the_vocabulary_becomes_hotwords() -> None:
    assert WhisperAsr(AsrConfig()).hotwords is None
    provider = WhisperAsr(AsrConfig(vocabulary=["Газпромбанк", " Мир  Супрем ", "Газпромбанк", ""]))
    assert provider.hotwords == "Газпромбанк, Мир Супрем"
    assert hotwords([f"t{i}" for i in range(100)], limit=3) == "t0, t1, t2"


@pytest.mark.parametrize(
    "text",
    [
        "Продолжение следует...",
        "Субтитры сделал DimaTorzok",
        "Субтитры создавал DimaTorzok.",
        "Спасибо за просмотр!",
        "Спасибо за внимание.",
        "Редактор субтитров А.Семкин Корректор А.Егорова",
        "Продолжение следует... Спасибо за просмотр!",
        "ПОДПИСЫВАЙТЕСЬ НА КАНАЛ!",
        "Динамичная музыка",
        "ТРЕВОЖНАЯ МУЗЫКА",
        "Редактор субтитров Н. А.",
    ],
)
def test_stock_phrases_are_hallucinations(text: str) -> None:
    assert is_hallucination(text)


@pytest.mark.parametrize(
    "text",
    [
        "Спасибо",
        "Спасибо, до свидания.",
        "Продолжение следует? Нет, я хочу оформить заказ.",
        "Подскажите, где посмотреть субтитры",
        "",
    ],
)
def test_real_speech_is_kept(text: str) -> None:
    assert not is_hallucination(text)


def test_the_hotword_prompt_read_back_is_an_echo() -> None:
    terms = ["Смарт Безлимит", "Газпромбанк", "Мир Супрем", "Пепперони"]
    assert echoes_vocabulary("Смарт Безлимит, Газпромбанк, Мир Супрем, Пепперони, Мир Супрем", terms)
    assert echoes_vocabulary("Мир Супрем", terms)
    assert echoes_vocabulary("Смарт Безли", terms), "cut short by the token cap"
    assert not echoes_vocabulary("Я клиент Газпромбанка, карта Мир Супрем", terms)
    assert not echoes_vocabulary("Смарт Безлимит, Газпромбанк", [])
