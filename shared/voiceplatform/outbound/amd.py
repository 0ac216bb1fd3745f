"""Answering-machine detection from the first seconds of an answered outbound call.

Fed the callee's 20 ms frames (energy decides speech/silence: the gateway sees the raw audio) and
any transcript the ASR produces meanwhile. Decides once:

- words first: a voicemail or network announcement ("оставьте сообщение после сигнала", "абонент
  не может ответить") → ``voicemail``; a menu ("нажмите", "для связи с оператором") → ``ivr``;
- the pattern: a human answers with a short "алло?" and waits; a machine talks on without a pause.
  Speech of ``machine_speech_ms`` without a gap of ``gap_ms`` → ``voicemail`` (a long greeting);
  a short utterance (at most ``human_speech_ms``) followed by ``hello_silence_ms`` of silence →
  ``human``, decided when that silence is over, so the greeting starts right after the hello;
- nobody speaks for ``silence_ms`` after the answer → ``silence`` (the greeting starts: a human
  who waits for the caller to speak first hears it at once);
- ``max_ms`` without any of these (speech broken into several short pieces) → ``human``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

AmdKind = Literal["human", "voicemail", "ivr", "silence"]
FRAME_MS = 20

VOICEMAIL_WORDS = (
    "оставьте сообщение",
    "оставьте ваше сообщение",
    "после сигнала",
    "после звукового сигнала",
    "автоответчик",
    "голосовой почт",
    "не может ответить",
    "не может сейчас ответить",
    "вне зоны",
    "недоступен",
    "не отвечает",
    "leave a message",
    "after the tone",
    "after the beep",
)
IVR_WORDS = (
    "нажмите",
    "для связи с оператором",
    "ваш звонок очень важен",
    "оставайтесь на линии",
    "в тональном режиме",
    "press ",
)


class AmdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # frame RMS (int16) above which a frame is speech
    energy_threshold: float = Field(default=600.0, gt=0)
    gap_ms: int = Field(default=300, ge=20)  # silence shorter than this does not end an utterance
    human_speech_ms: int = Field(default=1200, ge=100)
    hello_silence_ms: int = Field(default=500, ge=100)
    machine_speech_ms: int = Field(default=2000, ge=500)
    silence_ms: int = Field(default=1500, ge=200)
    max_ms: int = Field(default=5000, ge=1000)
    # voicemail: "hangup", or "message" (voicemail_text is said after the machine's beep, then hangup)
    on_voicemail: Literal["hangup", "message"] = "hangup"
    voicemail_text: str = ""
    on_ivr: Literal["hangup", "continue"] = "hangup"
    # after a voicemail decision, the message starts once the machine has been silent this long
    # (its beep is over), or after beep_wait_max_ms at the latest
    beep_silence_ms: int = Field(default=700, ge=100)
    beep_wait_max_ms: int = Field(default=20000, ge=1000)


@dataclass(frozen=True)
class AmdDecision:
    kind: AmdKind
    reason: str  # words | long_speech | short_hello | silence | timeout
    at_ms: int  # audio time after the answer when decided
    words: str = ""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("ё", "е")).strip()


def classify_words(text: str) -> AmdKind | None:
    said = _norm(text)
    if any(w in said for w in VOICEMAIL_WORDS):
        return "voicemail"
    if any(w in said for w in IVR_WORDS):
        return "ivr"
    return None


def frame_is_speech(pcm: bytes, threshold: float) -> bool:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) >= threshold


@dataclass
class AmdDetector:
    config: AmdConfig
    rate: int = 8000
    decision: AmdDecision | None = None
    elapsed_ms: int = 0
    speech_ms: int = 0  # speech in the current utterance
    silence_run_ms: int = 0
    heard_speech: bool = False
    _pending: bytearray = field(default_factory=bytearray)

    def feed(self, pcm: bytes) -> AmdDecision | None:
        """Caller audio (any length, L16 at ``rate``); the decision once made (then always the same)."""
        if self.decision is not None:
            return self.decision
        self._pending += pcm
        frame = self.rate * FRAME_MS // 1000 * 2
        while len(self._pending) >= frame and self.decision is None:
            chunk = bytes(self._pending[:frame])
            del self._pending[:frame]
            self._frame(frame_is_speech(chunk, self.config.energy_threshold))
        return self.decision

    def words(self, text: str) -> AmdDecision | None:
        """A transcript of the callee's speech: decisive words decide at once."""
        if self.decision is None:
            kind = classify_words(text)
            if kind is not None:
                self.decision = AmdDecision(kind, "words", self.elapsed_ms, text[:200])
        return self.decision

    def _frame(self, speech: bool) -> None:
        cfg = self.config
        self.elapsed_ms += FRAME_MS
        if speech:
            inside = self.heard_speech and self.silence_run_ms < cfg.gap_ms
            # a short gap belongs to the utterance; a longer one starts a new utterance
            self.speech_ms = self.speech_ms + self.silence_run_ms + FRAME_MS if inside else FRAME_MS
            self.heard_speech = True
            self.silence_run_ms = 0
            if self.speech_ms >= cfg.machine_speech_ms:
                self.decision = AmdDecision("voicemail", "long_speech", self.elapsed_ms)
                return
        else:
            self.silence_run_ms += FRAME_MS
            if not self.heard_speech and self.elapsed_ms >= cfg.silence_ms:
                self.decision = AmdDecision("silence", "silence", self.elapsed_ms)
                return
            if (
                self.heard_speech
                and self.silence_run_ms >= cfg.hello_silence_ms
                and 0 < self.speech_ms <= cfg.human_speech_ms
            ):
                self.decision = AmdDecision("human", "short_hello", self.elapsed_ms)
                return
        if self.elapsed_ms >= cfg.max_ms:
            self.decision = AmdDecision("human", "timeout", self.elapsed_ms)


@dataclass
class BeepWait:
    """After a voicemail decision: the machine's greeting and beep are over once it is quiet."""

    config: AmdConfig
    rate: int = 8000
    quiet_ms: int = 0
    waited_ms: int = 0

    def feed(self, pcm: bytes) -> bool:
        frame = self.rate * FRAME_MS // 1000 * 2
        for i in range(0, len(pcm) - frame + 1, frame):
            self.waited_ms += FRAME_MS
            if frame_is_speech(pcm[i : i + frame], self.config.energy_threshold):
                self.quiet_ms = 0
            else:
                self.quiet_ms += FRAME_MS
        return self.quiet_ms >= self.config.beep_silence_ms or self.waited_ms >= self.config.beep_wait_max_ms
