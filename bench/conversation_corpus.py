"""The conversation benchmark's caller corpus: Russian shop-robot utterances synthesized locally.

Kinds: ``plain`` questions labelled with the dialogue intent they should reach, ``pause`` (the same
kind of sentence split at a clause boundary with 0.4-1.2 s of silence inside) and ``backchannel``
("угу", "ага", ...) that the caller says while the robot speaks. Voices: espeak-ng Russian variants,
Festival's msu_ru_nsh and RHVoice (through the TTS service's own binding of its library; skipped
with a note when it is not installed). whisper-base hardly
understands espeak-ng's formant Russian (engine-alone WER ~1.0) while Festival and RHVoice come out
near 0, so read WER and intent accuracy per voice (the report has them).

Every clip is levelled to one loudness, gets light white noise at ``snr_db`` and is kept
at 16 kHz and as an 8 kHz copy (the phone path); the clean clip is kept for the engine-alone WER.

Clips are generated once into ``~/.cache/voice-platform/bench-corpus/<hash of the spec>/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceplatform.audio import Int16Array, frames, read_wav, resample, rms, write_wav

CACHE_ROOT = Path.home() / ".cache" / "voice-platform" / "bench-corpus"
SPEC_VERSION = 2
RATES = (16000, 8000)
TARGET_RMS = 3000.0  # every voice levelled to this speech loudness (~ -21 dBFS)
VOICED_RMS = 300.0  # a 20 ms frame louder than this is caller speech (the bench's own VAD)


@dataclass(frozen=True)
class Utterance:
    """One thing the caller says. ``label`` names an entry of ``LABELS`` (empty for backchannels)."""

    uid: str
    kind: str  # "plain" | "pause" | "backchannel"
    text: str
    label: str = ""
    second: str = ""  # pause: the text after the pause (``text`` is then the first half)

    @property
    def full_text(self) -> str:
        return f"{self.text} {self.second}".strip()


# label -> (dialogue state, a keyword of the intent that should answer). Intents in dialog.json have
# no names, so the bench finds each one by its keyword in that state (or the global list) and
# compares the robot's reply with that intent's reply. "repeat" has no intent on main: the right
# answer to it is the robot's previous reply, or an intent whose keyword is "повтор..." if one exists.
LABELS: dict[str, tuple[str, str]] = {
    "price": ("main", "цена"),
    "delivery": ("main", "доставка"),
    "pets": ("main", "собака"),
    "pets_dog": ("pets", "щенок"),
    "children": ("main", "дети"),
    "children_age": ("children", "лет"),
    "order_yes": ("order", "да"),
    "order_no": ("order", "нет"),
    "operator": ("main", "оператор"),
    "how_are_you": ("main", "как дела"),
    "goodbye": ("global", "до свидания"),
    "repeat": ("main", "повтор"),
}

UTTERANCES: tuple[Utterance, ...] = (
    Utterance("price", "plain", "Сколько стоит ваш корм?", "price"),
    Utterance("delivery", "plain", "А вы можете доставить заказ домой?", "delivery"),
    Utterance("pets", "plain", "У меня есть собака, что вы можете предложить?", "pets"),
    Utterance("pets_dog", "plain", "У меня щенок, ему нужен корм.", "pets_dog"),
    Utterance("children", "plain", "Что вы посоветуете для детей?", "children"),
    Utterance("children_age", "plain", "Ей пять лет.", "children_age"),
    Utterance("order_yes", "plain", "Да, давайте оформим.", "order_yes"),
    Utterance("order_no", "plain", "Нет, я ещё подумаю.", "order_no"),
    Utterance("operator", "plain", "Можно поговорить с оператором?", "operator"),
    Utterance("how_are_you", "plain", "Как у вас дела?", "how_are_you"),
    Utterance("repeat", "plain", "Повторите, пожалуйста, я не расслышал.", "repeat"),
    Utterance("goodbye", "plain", "Спасибо, до свидания!", "goodbye"),
    Utterance("delivery_p", "pause", "Подскажите, пожалуйста,", "delivery", "как у вас работает доставка?"),
    Utterance("price_p", "pause", "Я хотел бы узнать,", "price", "какие у вас цены на игрушки?"),
    Utterance("pets_p", "pause", "У меня есть собака,", "pets", "что вы можете для неё предложить?"),
    Utterance("operator_p", "pause", "Мне нужно,", "operator", "чтобы со мной поговорил оператор."),
    Utterance("children_p", "pause", "Скажите, пожалуйста,", "children", "что вы посоветуете для детей?"),
    Utterance("order_no_p", "pause", "Нет,", "order_no", "я, пожалуй, ещё подумаю."),
    Utterance("bc_ugu", "backchannel", "угу"),
    Utterance("bc_aga", "backchannel", "ага"),
    Utterance("bc_dada", "backchannel", "да-да"),
    Utterance("bc_mm", "backchannel", "мм"),
)
BY_ID = {u.uid: u for u in UTTERANCES}

# A call: (utterance, backchannel said ~0.8 s into the reply to it, or ""). Each script follows the
# dialogue's states when the robot understands, and ends with goodbye (the robot hangs up).
SCRIPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("price", ""), ("delivery_p", "bc_ugu"), ("operator", ""), ("goodbye", "")),
    (("pets_p", "bc_aga"), ("pets_dog", ""), ("order_yes", ""), ("how_are_you", ""), ("goodbye", "")),
    (("children", "bc_dada"), ("children_age", ""), ("order_no_p", ""), ("price_p", ""), ("goodbye", "")),
    (("delivery", ""), ("operator_p", "bc_mm"), ("repeat", ""), ("children_p", ""), ("goodbye", "")),
    (("pets", ""), ("pets_dog", "bc_ugu"), ("order_no", ""), ("delivery_p", ""), ("goodbye", "")),
)
QUICK_SCRIPT: tuple[tuple[str, str], ...] = (("price", ""), ("delivery_p", "bc_ugu"), ("goodbye", ""))

# voice name -> (engine, engine voice, words-per-minute for espeak or 0)
VOICES: dict[str, tuple[str, str, int]] = {
    "festival": ("festival", "msu_ru_nsh", 0),
    "rhvoice-irina": ("rhvoice", "Irina", 0),
    "rhvoice-aleksandr": ("rhvoice", "Aleksandr", 0),
    "espeak-ru": ("espeak", "ru", 165),
    "rhvoice-anna": ("rhvoice", "Anna", 0),
    "espeak-f3": ("espeak", "ru+f3", 150),
    "rhvoice-elena": ("rhvoice", "Elena", 0),
    "espeak-m2-fast": ("espeak", "ru+m2", 195),
}
QUICK_VOICES = ("festival",)
PAUSES_S = (0.4, 0.6, 0.8, 1.0, 1.2)


def _rhvoice_engine() -> Any:
    """The project's own RHVoice binding (services/tts), the same engine the robot speaks with."""
    from vp_tts.providers.rhvoice_engine import RhvoiceUnavailable, shared_engine
    from vp_tts.settings import TtsSettings

    settings = TtsSettings()
    try:
        return shared_engine(
            settings.rhvoice_library, settings.rhvoice_data_path, settings.rhvoice_config_path
        )
    except RhvoiceUnavailable:
        return None


def engine_available(engine: str) -> bool:
    if engine == "rhvoice":
        return _rhvoice_engine() is not None
    binary = {"festival": "text2wave", "espeak": "espeak-ng"}[engine]
    return shutil.which(binary) is not None


def _rhvoice_say(name: str, text: str) -> tuple[Int16Array, int]:
    import asyncio

    from vp_tts.providers.rhvoice_engine import Prosody

    async def speak() -> tuple[bytes, int]:
        pcm, rates = b"", {24000}
        async for chunk_rate, chunk in _rhvoice_engine().synthesize(text, name, Prosody()):
            pcm += chunk
            rates = {chunk_rate}
        return pcm, rates.pop()

    pcm, rate = asyncio.run(speak())
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16), rate


def usable_voices(names: list[str]) -> tuple[list[str], list[str]]:
    """The voices whose engine is installed, and a note for each one skipped."""
    ok, notes = [], []
    for name in names:
        if name not in VOICES:
            notes.append(f"unknown voice {name!r} (known: {', '.join(VOICES)})")
        elif engine_available(VOICES[name][0]):
            ok.append(name)
        else:
            notes.append(f"voice {name} skipped: {VOICES[name][0]} is not installed")
    return ok, notes


def synthesize(voice: str, text: str) -> tuple[Int16Array, int]:
    engine, name, wpm = VOICES[voice]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        if engine == "rhvoice":
            return _rhvoice_say(name, text)
        if engine == "festival":
            cmd = ["text2wave", "-eval", f"(voice_{name}_clunits)", "-o", str(out)]
        else:
            cmd = ["espeak-ng", "-v", name, "-s", str(wpm), "-w", str(out)]
        subprocess.run(cmd, input=text.encode("utf-8"), check=True, capture_output=True, timeout=60)
        return read_wav(out)


def trim(samples: Int16Array, rate: int) -> Int16Array:
    """Cut leading/trailing silence (engines pad differently), keeping 40 ms either side."""
    voiced = [i for i, f in enumerate(frames(samples, rate // 50)) if rms(f) > 150]
    if not voiced:
        return samples
    pad = rate // 25
    return samples[max(0, voiced[0] * rate // 50 - pad) : (voiced[-1] + 1) * rate // 50 + pad]


def level(samples: Int16Array, rate: int) -> Int16Array:
    """Scale so the voiced frames' RMS is ``TARGET_RMS`` (voices differ by 10+ dB as synthesized)."""
    voiced = [rms(f) for f in frames(samples, rate // 50) if rms(f) > 150]
    if not voiced:
        return samples
    gain = TARGET_RMS / float(np.median(voiced))
    return np.clip(samples.astype(np.float64) * gain, -32768, 32767).astype(np.int16)


def add_noise(samples: Int16Array, snr_db: float, seed: int) -> Int16Array:
    noise_rms = TARGET_RMS / (10 ** (snr_db / 20))
    noise = np.random.default_rng(seed).normal(0.0, noise_rms, len(samples))
    return np.clip(samples.astype(np.float64) + noise, -32768, 32767).astype(np.int16)


def voiced_span(samples: Int16Array, rate: int) -> tuple[float, float]:
    """Seconds of the first and the end of the last voiced 20 ms frame (by energy)."""
    voiced = [i for i, f in enumerate(frames(samples, rate // 50)) if rms(f) > VOICED_RMS]
    if not voiced:
        return 0.0, 0.0
    return voiced[0] * 0.02, (voiced[-1] + 1) * 0.02


@dataclass
class Clip:
    uid: str
    voice: str
    rate: int
    noisy: str  # wav path (played to the platform)
    clean: str  # wav path (engine-alone reference run)
    pause_s: float = 0.0
    voiced_start_s: float = 0.0
    voiced_end_s: float = 0.0  # the caller's last voiced frame, from the clip start
    second_start_s: float = 0.0  # pause: where the second half's speech starts


@dataclass
class Corpus:
    folder: Path
    clips: dict[str, Clip] = field(default_factory=dict)  # key: f"{uid}|{voice}|{rate}"
    notes: list[str] = field(default_factory=list)

    def clip(self, uid: str, voice: str, rate: int) -> Clip:
        return self.clips[f"{uid}|{voice}|{rate}"]

    @staticmethod
    def audio(path: str) -> Int16Array:
        return read_wav(Path(path))[0]


def spec_hash(voices: list[str], snr_db: float, uids: list[str]) -> str:
    spec = {
        "version": SPEC_VERSION,
        "voices": {v: VOICES[v] for v in sorted(voices)},
        "snr_db": snr_db,
        "utterances": [asdict(BY_ID[u]) for u in sorted(uids)],
        "pauses": PAUSES_S,
        "rates": RATES,
        "target_rms": TARGET_RMS,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def build_corpus(
    voices: list[str], snr_db: float = 30.0, uids: list[str] | None = None, root: Path = CACHE_ROOT
) -> Corpus:
    """Synthesize (or load from the cache) every utterance in ``uids`` for every usable voice."""
    usable, notes = usable_voices(voices)
    wanted = sorted(uids or BY_ID)
    folder = root / spec_hash(usable, snr_db, wanted)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return Corpus(folder, {k: Clip(**v) for k, v in data.items()}, notes)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder, notes=notes)
    for v_index, voice in enumerate(usable):
        for u_index, uid in enumerate(wanted):
            _make_clips(corpus, BY_ID[uid], voice, snr_db, seed=1000 * v_index + u_index)
    manifest.write_text(
        json.dumps({k: asdict(c) for k, c in corpus.clips.items()}, ensure_ascii=False, indent=1),
        encoding="utf-8",
    )
    return corpus


def _make_clips(corpus: Corpus, utt: Utterance, voice: str, snr_db: float, seed: int) -> None:
    base = 16000

    def say(text: str) -> Int16Array:
        samples, rate = synthesize(voice, text)
        return level(trim(resample(samples, rate, base), base), base)

    pause_s = 0.0
    second_at = 0.0
    if utt.kind == "pause":
        first, second = say(utt.text), say(utt.second)
        pause_s = PAUSES_S[(seed + seed // 1000) % len(PAUSES_S)]  # varies by voice too
        second_at = (len(first) + int(pause_s * base)) / base
        speech = np.concatenate([first, np.zeros(int(pause_s * base), np.int16), second])
    else:
        speech = say(utt.text)
    lead = np.zeros(int(0.3 * base), np.int16)
    clean16 = np.concatenate([lead, speech, lead])
    for rate in RATES:
        clean = clean16 if rate == base else resample(clean16, base, rate)
        noisy = add_noise(clean, snr_db, seed)
        stem = f"{utt.uid}.{voice}.{rate // 1000}k"
        clean_path, noisy_path = corpus.folder / f"{stem}.clean.wav", corpus.folder / f"{stem}.wav"
        write_wav(clean_path, clean, rate)
        write_wav(noisy_path, noisy, rate)
        start, end = voiced_span(clean, rate)
        corpus.clips[f"{utt.uid}|{voice}|{rate}"] = Clip(
            utt.uid,
            voice,
            rate,
            str(noisy_path),
            str(clean_path),
            pause_s=pause_s,
            voiced_start_s=start,
            voiced_end_s=end,
            second_start_s=round(0.3 + second_at, 3) if second_at else 0.0,
        )


if __name__ == "__main__":
    import sys

    c = build_corpus(sys.argv[1:] or list(QUICK_VOICES))
    print(c.folder, len(c.clips), "clips;", *c.notes)
