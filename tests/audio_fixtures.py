"""Caller audio for tests: Russian speech from Festival (msu_ru_nsh voice), which whisper-base
recognizes well (espeak's Russian voice it does not).

- ``festival_wav(text, path)``: synthesize one utterance to a 16 kHz mono 16-bit WAV.
- ``caller_audio(texts, rate, gap_s)``: utterances separated (and surrounded) by ``gap_s`` of silence,
  as int16 samples at ``rate``; each text is synthesized once per process.
- ``pcm_frames(samples, rate)``: 20 ms PCM frames, ready for ``AudioChunk``.

Needs ``apt-get install festival festvox-ru``; ``festival_available()`` lets tests skip without it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from voiceplatform.audio import Int16Array, array_to_pcm, frames, read_wav, resample, write_wav
from voiceplatform.wire import FRAME_MS

FESTIVAL_RATE = 16000
FESTIVAL_VOICE = "(voice_msu_ru_nsh_clunits)"

_utterances: dict[str, Int16Array] = {}


def festival_available() -> bool:
    return shutil.which("text2wave") is not None


def festival_wav(text: str, path: Path | str) -> Path:
    """Synthesize ``text`` (UTF-8 Russian) into a 16 kHz mono WAV at ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["text2wave", "-eval", FESTIVAL_VOICE, "-o", str(out)],
        input=text.encode("utf-8"),
        check=True,
        capture_output=True,
        timeout=60,
    )
    samples, rate = read_wav(out)
    if rate != FESTIVAL_RATE:  # the msu_ru_nsh voice is 16 kHz; normalise anyway
        write_wav(out, resample(samples, rate, FESTIVAL_RATE), FESTIVAL_RATE)
    return out


def utterance(text: str, rate: int = FESTIVAL_RATE) -> Int16Array:
    """One synthesized utterance at ``rate`` (Festival runs once per text per process)."""
    if text not in _utterances:
        with tempfile.TemporaryDirectory(prefix="vp-festival-") as tmp:
            samples, _ = read_wav(festival_wav(text, Path(tmp) / "utterance.wav"))
        _utterances[text] = samples
    return resample(_utterances[text], FESTIVAL_RATE, rate)


def caller_audio(texts: list[str], rate: int = FESTIVAL_RATE, gap_s: float = 1.0) -> Int16Array:
    """``gap_s`` silence, then each utterance followed by ``gap_s`` of silence, at ``rate``."""
    gap = np.zeros(round(gap_s * rate), dtype=np.int16)
    parts: list[Int16Array] = [gap]
    for text in texts:
        parts += [utterance(text, rate), gap]
    return np.concatenate(parts).astype(np.int16)


def pcm_frames(samples: Int16Array, rate: int) -> list[bytes]:
    """20 ms frames of PCM bytes; the tail is zero-padded to a whole frame."""
    return [array_to_pcm(f) for f in frames(samples, rate * FRAME_MS // 1000)]
