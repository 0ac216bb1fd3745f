"""The line a robot says when a stage of its reply misses its deadline (instead of silence).

A robot's own ``fallback.wav`` (its words in ``fallback_text``), else the platform's default line
shipped next to this module, synthesized once with the default local voice (RHVoice Irina).
Decoded and resampled once per file and call rate, like the greeting.
"""

from __future__ import annotations

from pathlib import Path

from voiceplatform.config import RobotConfig
from voiceplatform.gateway.greeting import wav_pcm

DEFAULT_WAV = Path(__file__).with_name("fallback.wav")
DEFAULT_TEXT = "Простите, заминка. Повторите, пожалуйста."


class FallbackLine:
    """One call's fallback line: loaded on first use (most calls never need it)."""

    def __init__(self, robot: RobotConfig, rate: int) -> None:
        self.robot = robot
        self.rate = rate

    @property
    def text(self) -> str:
        if self.robot.fallback_wav is None:
            return DEFAULT_TEXT
        return self.robot.settings.fallback_text or DEFAULT_TEXT

    def pcm(self) -> bytes:
        """16-bit PCM at the call's rate."""
        return wav_pcm(self.robot.fallback_wav or DEFAULT_WAV, self.rate)
