"""A robot's recorded greeting, decoded and resampled once per robot and call rate."""

from __future__ import annotations

from pathlib import Path

from voiceplatform.audio import read_wav, resample
from voiceplatform.config import RobotConfig

_cache: dict[tuple[str, int, float], bytes] = {}


def greeting_pcm(robot: RobotConfig, rate: int) -> bytes | None:
    """16-bit PCM of ``greeting.wav`` at ``rate``, or None when the robot has no recording."""
    path = robot.greeting_wav
    return None if path is None else wav_pcm(path, rate)


def wav_pcm(path: Path, rate: int) -> bytes:
    """16-bit PCM of a WAV file at ``rate`` (decoded once per file version and rate)."""
    key = (str(path), rate, path.stat().st_mtime)
    cached = _cache.get(key)
    if cached is None:
        samples, wav_rate = read_wav(path)
        cached = resample(samples, wav_rate, rate).astype("<i2").tobytes()
        _cache[key] = cached
    return cached
