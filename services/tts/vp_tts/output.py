"""Publishing one sentence's audio: ordered ``tts.audio`` chunks, then the ``last`` marker."""

from __future__ import annotations

import time

from voiceplatform import load, subjects, tracing
from voiceplatform.bus import Bus
from voiceplatform.bus.work import check_still_ours
from voiceplatform.wire import LlmSentence, TtsAudio

from .metrics import FIRST_AUDIO_MS


class SentenceOutput:
    """Splits audio into chunks of at most ``chunk_ms`` and numbers them 0, 1, 2… within the sentence."""

    def __init__(self, bus: Bus, sentence: LlmSentence, chunk_ms: int, received_at: float) -> None:
        self.bus = bus
        self.sentence = sentence
        self.sample_rate = sentence.sample_rate
        self.chunk_bytes = max(2, sentence.sample_rate * chunk_ms // 1000 * 2)
        self.received_at = received_at
        self.subject = subjects.tts_audio(sentence.call_id)
        self.provider = ""
        self.seq = 0
        self.audio_bytes = 0
        self.first_audio_ms: float | None = None

    @property
    def audio_out(self) -> bool:
        """Audio already reached the caller's gateway: no switching providers mid-sentence."""
        return self.audio_bytes > 0

    async def audio(self, pcm: bytes) -> None:
        for start in range(0, len(pcm), self.chunk_bytes):
            await self._publish(pcm[start : start + self.chunk_bytes], last=False)

    async def finish(self, tail: bytes = b"") -> None:
        """Publish the closing marker; ``tail`` (at most one chunk) rides on it."""
        if len(tail) > self.chunk_bytes:
            await self.audio(tail[: -self.chunk_bytes])
            tail = tail[-self.chunk_bytes :]
        await self._publish(tail, last=True)

    async def _publish(self, pcm: bytes, last: bool) -> None:
        check_still_ours()  # this process stalled and the sentence went to another: stop here
        s = self.sentence
        if pcm and self.first_audio_ms is None:
            self.first_audio_ms = (time.monotonic() - self.received_at) * 1000
            FIRST_AUDIO_MS.observe(self.first_audio_ms)
            tracing.span(
                "tts.first_audio",
                s.call_id,
                s.turn_id,
                self.first_audio_ms,
                robot=s.robot,
                provider=self.provider,
                sentence=s.index,
            )
            load.observe_turn("tts", self.first_audio_ms / 1000)
        await self.bus.publish(
            self.subject,
            TtsAudio(
                call_id=s.call_id,
                turn_id=s.turn_id,
                index=s.index,
                seq=self.seq,
                sample_rate=self.sample_rate,
                pcm=pcm,
                last=last,
                text=s.text,
                provider=self.provider,
            ),
        )
        self.seq += 1
        self.audio_bytes += len(pcm)
