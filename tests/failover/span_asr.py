"""A test-only ASR engine that says which caller frames it heard.

The failover caller (``stack.caller_frame``) fills each speech frame with ``SPEECH_BASE + seq`` and
silence with zeros, so the transcript of a segment is ``"<first>-<last>:<count>"`` of the speech
frames it held: a whole utterance reads as one unbroken span, a lost piece shows at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import numpy as np

from tests.asr.local import LocalAsr
from voiceplatform.providers import Transcript

SPEECH_BASE = 1000


class SpanAsr(LocalAsr):
    name = "span"

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        pcm = b"".join([chunk async for chunk in audio])
        yield Transcript(speech_span(pcm), is_final=True, language="ru")


def speech_span(pcm: bytes) -> str:
    samples = np.frombuffer(pcm, dtype="<i2")
    seqs = sorted(int(v) - SPEECH_BASE for v in np.unique(samples) if v >= SPEECH_BASE)
    return f"{seqs[0]}-{seqs[-1]}:{len(seqs)}" if seqs else ""


def span_text(first_seq: int, count: int) -> str:
    return f"{first_seq}-{first_seq + count - 1}:{count}"
