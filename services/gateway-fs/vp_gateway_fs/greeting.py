"""Greetings synthesized once per robot, so every call after the first starts speaking at once.

``CallSession`` plays the robot's ``greeting.wav`` from its first frames; a robot without one has
``greeting_text`` synthesized through TTS on every call, a TTS round trip before the first word.
For such robots this cache keeps the first call's greeting audio (the ``tts.audio`` chunks of turn
``<call_id>-greeting``, heard on the bus), writes it as a WAV at the call rate, and from the next
call on hands it to ``CallSession`` as the call's greeting audio. Entries are keyed by robot, rate,
greeting text and TTS provider/voice: an edited greeting is synthesized anew. A greeting cut by a
barge-in is not kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import structlog

from voiceplatform.audio import write_wav
from voiceplatform.config import RobotConfig
from voiceplatform.gateway.greeting import wav_pcm
from voiceplatform.outbound.template import has_placeholders
from voiceplatform.wire import TtsAudio

log = structlog.get_logger("vp_gateway_fs.greeting")
MAX_GREETING_BYTES = 60 * 16000 * 2  # a minute at 16 kHz


class GreetingCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def entry(self, robot: RobotConfig, rate: int) -> Path:
        s = robot.settings
        identity = f"{robot.name}|{rate}|{s.greeting_text}|{s.tts.provider}|{s.tts.voice}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self.folder / f"{robot.name}-{rate}-{digest}"

    def needs_synthesis(self, robot: RobotConfig) -> bool:
        text = robot.settings.greeting_text
        # a greeting with per-call variables ({name}) differs per call: never kept
        return robot.greeting_wav is None and bool(text.strip()) and not has_placeholders(text)

    def cached(self, robot: RobotConfig, rate: int) -> bytes | None:
        """The greeting kept from an earlier call of this robot at this rate, if any."""
        if not self.needs_synthesis(robot):
            return None
        wav = self.entry(robot, rate) / "greeting.wav"
        return wav_pcm(wav, rate) if wav.is_file() else None

    def capture(self, robot: RobotConfig, rate: int, call_id: str) -> GreetingCapture | None:
        """A collector for this call's synthesized greeting, or None when nothing is to be kept."""
        if not self.needs_synthesis(robot) or (self.entry(robot, rate) / "greeting.wav").is_file():
            return None
        return GreetingCapture(self.entry(robot, rate), rate, f"{call_id}-greeting")


class GreetingCapture:
    def __init__(self, entry: Path, rate: int, turn_id: str) -> None:
        self.entry, self.rate, self.turn_id = entry, rate, turn_id
        self._pcm = bytearray()
        self.done = False

    def abandon(self) -> None:
        self.done = True

    def add(self, msg: TtsAudio) -> None:
        """One chunk of the greeting turn's audio; the sentence's last chunk stores the greeting."""
        if self.done or msg.turn_id != self.turn_id:
            return
        if msg.index != 0 or msg.sample_rate != self.rate or len(self._pcm) > MAX_GREETING_BYTES:
            self.abandon()  # not the single-sentence greeting this cache understands
            return
        self._pcm += msg.pcm
        if msg.last:
            self.done = True
            if self._pcm:
                self._store()

    def _store(self) -> None:
        samples = np.frombuffer(bytes(self._pcm), dtype="<i2").astype(np.int16)
        self.entry.mkdir(parents=True, exist_ok=True)
        partial = self.entry / f".greeting.{os.getpid()}.wav"
        try:
            write_wav(partial, samples, self.rate)
            partial.replace(self.entry / "greeting.wav")  # atomic: a concurrent call sees all or nothing
        except OSError as exc:
            log.warning("fs.greeting_cache_failed", entry=str(self.entry), error=type(exc).__name__)
            with contextlib.suppress(OSError):
                partial.unlink()
            return
        log.info("fs.greeting_cached", entry=self.entry.name, ms=samples.size * 1000 // self.rate)
