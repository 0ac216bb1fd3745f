"""One segment through a call's provider chain, without publishing anything.

The chain is the robot's ``asr.provider`` then ``asr.fallback``, run by the shared
``ProviderChain``: when one fails on a segment (any error, a bad key included, or its own stall
timeout) the same segment goes to the next one; once a provider has produced a final transcript with
words the chain stops there. Every attempt (failed and cancelled ones too) is recorded as a
``UsageReport`` with the audio the provider took; the session publishes them as ``provider.usage``
once it knows whether the result was used (a discarded speculative result counts as ``cancelled``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import structlog

from voiceplatform.providers import AsrProvider, Transcript
from voiceplatform.providers.chain import Attempt, ProviderChain, UsageReport
from vp_asr.metrics import FALLBACKS, INFERENCE_MS, REAL_TIME_FACTOR, SERVICE

log = structlog.get_logger("vp_asr.recognition")


async def recognize(
    provider: AsrProvider,
    pcm: bytes,
    sample_rate: int,
    language: str,
    finals: list[Transcript] | None = None,
    sent: list[int] | None = None,
) -> Transcript:
    """Run one segment through a provider; finals are joined (a streaming provider may give several).

    ``finals``, when given, collects each final as it arrives, so a caller still has them when the
    provider fails after producing some; ``sent`` likewise collects the byte counts of the audio the
    provider took (what it was sent, for usage), a failed or cancelled attempt included.
    """

    async def segment() -> AsyncIterator[bytes]:
        if sent is not None:
            sent.append(len(pcm))
        yield pcm

    heard: list[Transcript] = [] if finals is None else finals
    stream = provider.stream_recognize(segment(), sample_rate, language)
    async with contextlib.aclosing(cast(AsyncGenerator[Transcript, None], stream)) as transcripts:
        async for transcript in transcripts:
            if transcript.is_final:
                heard.append(transcript)
    return joined(heard)


def joined(finals: list[Transcript]) -> Transcript:
    text = " ".join(t.text for t in finals if t.text).strip()
    language = next((t.language for t in reversed(finals) if t.language), "")
    return Transcript(text=text, is_final=True, language=language)


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str
    detail: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the chain made of a segment: text from ``provider``, or the chain's failure."""

    audio_ms: int
    text: str = ""
    language: str = ""
    provider: str = ""
    inference_ms: float = 0.0
    too_short: bool = False
    failure: Failure | None = None


async def run_chain(
    chain: Sequence[AsrProvider],
    pcm: bytes,
    sample_rate: int,
    language: str,
    usage: list[UsageReport],
) -> Outcome:
    """One segment through the shared provider chain (``voiceplatform.providers.chain``); each
    attempt's usage (the audio the provider took) lands in ``usage`` for the session to publish."""
    audio_ms = len(pcm) * 1000 // (2 * sample_rate)
    finals: list[Transcript] = []
    started = time.monotonic()

    def open_stream(attempt: Attempt[AsrProvider]) -> AsyncIterator[Transcript]:
        nonlocal started
        finals.clear()
        started = time.monotonic()

        async def segment() -> AsyncIterator[bytes]:
            attempt.usage.audio_ms = audio_ms  # the provider took the segment
            yield pcm

        return attempt.provider.stream_recognize(segment(), sample_rate, language)

    async def heard(attempt: Attempt[AsrProvider], transcript: Transcript) -> None:
        if transcript.is_final:
            finals.append(transcript)

    async def collect(report: UsageReport) -> None:
        usage.append(report)

    runner: ProviderChain[AsrProvider] = ProviderChain(
        "asr", chain, service=SERVICE, usage_sink=collect, fallbacks=FALLBACKS
    )
    # a provider that already heard words of the turn keeps them: the turn is not transcribed twice
    outcome = await runner.run(open_stream, heard, committed=lambda: any(t.text for t in finals))
    if not outcome.provider:
        failure = outcome.summary()
        assert failure is not None
        return Outcome(audio_ms, failure=Failure(failure.kind, failure.detail, failure.retryable))
    if not outcome.finished:
        log.warning("asr.final_kept_after_failure", provider=outcome.provider, kind=outcome.failures[-1].kind)
    transcript = joined(finals)
    inference_ms = (time.monotonic() - started) * 1000
    INFERENCE_MS.labels(outcome.provider).observe(inference_ms)
    REAL_TIME_FACTOR.labels(outcome.provider).observe(inference_ms / max(audio_ms, 1))
    return Outcome(audio_ms, transcript.text, transcript.language, outcome.provider, inference_ms)
