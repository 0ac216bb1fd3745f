"""Russian test utterances for bench_hearing: synthesized with what is installed, cached on disk.

Voices: Festival's msu_ru_nsh (16 kHz) and espeak-ng ``ru`` with a few variants and speeds. Every clip
gets light white noise (well under the energy VAD's threshold) and silence around it; some clips have
a pause of 0.4-1.2 s in the middle of the sentence (two halves synthesized apart), as a caller who
stops to think. Noise-only clips (loud enough for the VAD to open) must come out empty.

Word error rate is computed with jiwer after normalization: lower case, ё→е, punctuation dropped,
numbers written as words (num2words, Russian) on both sides.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from voiceplatform.audio import Int16Array, read_wav, write_wav

RATE = 16000

SENTENCES = [
    "Здравствуйте, я хочу узнать баланс моей карты.",
    "Сколько стоит доставка до Москвы?",
    "Мне нужно перенести запись на четверг.",
    "Подскажите, пожалуйста, где ближайший офис.",
    "У меня не работает интернет уже второй день.",
    "Я хотел бы оформить кредит на покупку машины.",
    "Можно поговорить с оператором?",
    "Нет, спасибо, мне это не интересно.",
    "Да, меня всё устраивает, давайте оформим.",
    "Перезвоните мне вечером после шести.",
]
# sentences with the robot's own words: the vocabulary bench (hotwords) looks at these
VOCAB_SENTENCES = [
    "Подключите мне тариф Смарт Безлимит.",
    "Я клиент Газпромбанка, карта Мир Супрем.",
    "Хочу заказать пиццу Маргарита и Пепперони.",
    "Соедините меня с Ариной Викторовной.",
]
VOCABULARY = ["Смарт Безлимит", "Газпромбанк", "Мир Супрем", "Маргарита", "Пепперони", "Арина Викторовна"]
PAUSED = [
    ("Я хотел бы узнать", "сколько стоит подключение", 0.5),
    ("Мой номер договора", "пятьсот двадцать три", 0.8),
    ("Запишите меня на приём", "в пятницу утром", 1.2),
    ("Скажите пожалуйста", "когда придёт курьер", 0.7),
    ("Я уже звонил вам", "но мне никто не ответил", 0.4),
    ("Мне нужна справка", "для налоговой", 1.0),
]
# (name, tool, voice, speed in words per minute for espeak, sox effects after synthesis); the
# Festival voice is varied with sox (faster; higher and slower). espeak's Russian is hard for
# whisper-base (a third of the words come out wrong even alone): its clips are scored apart.
VOICES = [
    ("fest", "festival", "msu_ru_nsh", 0, ()),
    ("fest-fast", "festival", "msu_ru_nsh", 0, ("tempo", "1.15")),
    ("fest-high", "festival", "msu_ru_nsh", 0, ("pitch", "300", "tempo", "0.92")),
    ("espeak", "espeak", "ru", 140, ()),
]
NOISE_RMS = 40.0  # about -58 dBFS: a quiet line; the energy VAD opens at RMS 200


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    reference: str  # "" for a noise-only clip
    samples: Int16Array  # 16 kHz, speech with light noise, silence around it
    kind: str  # plain | vocab | paused (Festival voices) | espeak | noise


def _cache_dir() -> Path:
    env = os.environ.get("VP_BENCH_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "voice-platform" / "bench-hearing"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _synth(text: str, tool: str, voice: str, speed: int, effects: tuple[str, ...]) -> Int16Array:
    key = hashlib.sha1(f"{tool}|{voice}|{speed}|{effects}|{text}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"{key}.wav"
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.wav"
            if tool == "festival":
                subprocess.run(
                    ["text2wave", "-eval", f"(voice_{voice}_clunits)", "-o", str(raw)],
                    input=text.encode(),
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            else:
                subprocess.run(
                    ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
            if effects:
                shaped = Path(tmp) / "shaped.wav"
                subprocess.run(["sox", str(raw), str(shaped), *effects], check=True, capture_output=True)
                raw = shaped
            samples, rate = read_wav(raw)
            if rate != RATE:
                samples = to_rate(samples, rate, RATE)
            write_wav(path, _trim(samples), RATE)
    return read_wav(path)[0]


def _trim(samples: Int16Array, threshold: int = 300) -> Int16Array:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def to_rate(samples: Int16Array, from_rate: int, to_rate_hz: int) -> Int16Array:
    """A proper band-limited conversion (what a phone line's codec path does to the caller)."""
    if from_rate == to_rate_hz:
        return samples
    out = soxr.resample(samples.astype(np.float32), from_rate, to_rate_hz, quality="VHQ")
    result: Int16Array = np.clip(np.round(out), -32768, 32767).astype(np.int16)
    return result


def _with_noise(speech: Int16Array, seed: int, lead_s: float = 0.6, trail_s: float = 0.8) -> Int16Array:
    lead, trail = np.zeros(int(RATE * lead_s)), np.zeros(int(RATE * trail_s))
    signal = np.concatenate([lead, speech.astype(np.float64), trail])
    noise = np.random.default_rng(seed).normal(0.0, NOISE_RMS, signal.size)
    out: Int16Array = np.clip(np.round(signal + noise), -32768, 32767).astype(np.int16)
    return out


def _noise_only(seed: int, kind: str, seconds: float = 2.0) -> Int16Array:
    rng = np.random.default_rng(seed)
    n = int(RATE * seconds)
    if kind == "hiss":
        body = rng.normal(0.0, 900.0, n)
    else:  # "music": a few chords of sines with a beat
        t = np.arange(n) / RATE
        body = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0)) * 1500.0
        body *= 0.6 + 0.4 * (np.sin(2 * np.pi * 2.0 * t) > 0)
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.05 * RATE))
    return _with_noise((body * fade).astype(np.int16), seed)


def tools_available() -> bool:
    return shutil.which("text2wave") is not None and shutil.which("espeak-ng") is not None


def corpus(limit: int = 0) -> list[Clip]:
    clips: list[Clip] = []
    seed = 0
    for index, text in enumerate(SENTENCES + VOCAB_SENTENCES):
        kind = "plain" if index < len(SENTENCES) else "vocab"
        for name, tool, voice, speed, effects in VOICES:
            seed += 1
            speech = _synth(text, tool, voice, speed, effects)
            clip_kind = "espeak" if tool == "espeak" else kind
            clips.append(Clip(f"{kind}{index:02d}-{name}", text, _with_noise(speech, seed), clip_kind))
    for index, (first, second, pause_s) in enumerate(PAUSED):
        for name, tool, voice, speed, effects in VOICES[:3]:
            seed += 1
            gap = np.zeros(int(RATE * pause_s), dtype=np.int16)
            halves = [_synth(half, tool, voice, speed, effects) for half in (first, second)]
            speech = np.concatenate([halves[0], gap, halves[1]])
            name = f"paused{index:02d}-{name}-{int(pause_s * 1000)}ms"
            clips.append(Clip(name, f"{first} {second}", _with_noise(speech, seed), "paused"))
    for index, kind in enumerate(("hiss", "music", "hiss", "music")):
        clips.append(Clip(f"noise{index}-{kind}", "", _noise_only(1000 + index, kind), "noise"))
    return clips[:limit] if limit else clips


# ---- scoring ------------------------------------------------------------------------------------
_NUMBER = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    from num2words import num2words

    text = text.lower().replace("ё", "е")
    text = _NUMBER.sub(lambda m: f" {num2words(int(m.group()), lang='ru')} ", text)
    text = _NOT_WORD.sub(" ", text.replace("-", " "))
    return " ".join(text.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (errors over all reference words) of the clips that have a reference."""
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True) if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0
