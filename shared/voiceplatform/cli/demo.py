"""A recorded Russian caller for the demo, synthesized locally with Festival (no download)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from voiceplatform.audio import read_wav, resample, write_wav

DEMO_PHRASES = (
    "Здравствуйте! У меня есть собака, что вы можете предложить?",
    "Сколько стоит доставка?",
)


def festival_say(text: str, rate: int = 16000) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        subprocess.run(
            ["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", "-o", str(out)],
            input=text.encode("utf-8"),
            check=True,
            capture_output=True,
            timeout=60,
        )
        samples, wav_rate = read_wav(out)
    return resample(samples, wav_rate, rate)


def demo_caller_wav(path: Path, phrases: tuple[str, ...] = DEMO_PHRASES, gap_s: float = 10.0) -> Path:
    """Silence, then each phrase followed by ``gap_s`` of silence for the robot to answer."""
    if path.is_file():
        return path
    rate = 16000
    parts = [np.zeros(int(rate * 1.5), np.int16)]
    for text in phrases:
        parts += [festival_say(text, rate), np.zeros(int(rate * gap_s), np.int16)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.concatenate(parts), rate)
    return path
