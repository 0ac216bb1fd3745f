"""One segment through a call's provider chain, without publishing anything.

The chain is the robot's ``asr.provider`` then ``asr.fallback``: when one fails on a segment (any
``ProviderError``, a bad key included, or its own stall timeout) the same segment goes to the next
one; once a provider has produced a final transcript the chain stops there. Every attempt (failed and
cancelled ones too) is recorded as a ``UsageRecord`` with the audio the provider took; the session
publishes them as ``provider.usage`` once it knows whether the result was used (a discarded
speculative result counts as ``cancelled``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import structlog

from voiceplatform import metrics
from voiceplatform.providers import AsrProvider, ProviderError, Transcript
from voiceplatform.providers.usage import Outcome as UsageOutcome
from voiceplatform.providers.usage import outcome_of
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


@dataclass(slots=True)
class UsageRecord:
    provider: str
    audio_ms: int
    outcome: UsageOutcome


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
    usage: list[UsageRecord],
) -> Outcome:
    audio_ms = len(pcm) * 1000 // (2 * sample_rate)
    failures: list[Failure] = []
    for position, provider in enumerate(chain):
        if position:
            FALLBACKS.labels(chain[position - 1].name, provider.name).inc()
            log.warning(
                "asr.fallback",
                from_provider=chain[position - 1].name,
                to_provider=provider.name,
                kind=failures[-1].kind,
            )
        finals: list[Transcript] = []
        started = time.monotonic()
        failure = await _attempt(provider, pcm, sample_rate, language, finals, usage)
        if failure is not None:
            failures.append(failure)
            if not any(t.text for t in finals):
                continue
            # this provider already heard words of the turn: keep them, do not transcribe it twice
            log.warning("asr.final_kept_after_failure", provider=provider.name, kind=failure.kind)
        transcript = joined(finals)
        inference_ms = (time.monotonic() - started) * 1000
        INFERENCE_MS.labels(provider.name).observe(inference_ms)
        REAL_TIME_FACTOR.labels(provider.name).observe(inference_ms / max(audio_ms, 1))
        return Outcome(audio_ms, transcript.text, transcript.language, provider.name, inference_ms)
    detail = "; ".join(f.detail for f in failures)
    # another attempt may help when any provider of the chain failed for a passing reason
    last = failures[-1] if failures else Failure("provider_unavailable", "", False)
    return Outcome(audio_ms, failure=Failure(last.kind, detail, any(f.retryable for f in failures)))


async def _attempt(
    provider: AsrProvider,
    pcm: bytes,
    sample_rate: int,
    language: str,
    finals: list[Transcript],
    usage: list[UsageRecord],
) -> Failure | None:
    """One provider on one segment; finals land in ``finals`` as they arrive. None: it finished.

    Whatever the ending (cancellation included), the audio the provider took lands in ``usage``.
    """
    sent: list[int] = []
    ending: BaseException | None = None
    try:
        await recognize(provider, pcm, sample_rate, language, finals, sent)
    except ProviderError as exc:
        ending = exc
        metrics.PROVIDER_ERRORS.labels(SERVICE, provider.name, exc.kind).inc()
        log.warning("asr.provider_failed", provider=provider.name, kind=exc.kind, retryable=exc.retryable)
        return Failure(exc.kind, str(exc), exc.retryable)
    except Exception as exc:
        ending = exc
        # a provider bug must not silence the robot either: the next provider gets the segment
        metrics.PROVIDER_ERRORS.labels(SERVICE, provider.name, "internal").inc()
        log.exception("asr.provider_crashed", provider=provider.name)
        return Failure("internal", f"{provider.name}: {type(exc).__name__}", False)
    except BaseException as exc:  # cancelled (barge-in, call end, drain): counted, then re-raised
        ending = exc
        raise
    finally:
        audio_ms = sum(sent) * 1000 // (2 * sample_rate)
        usage.append(UsageRecord(provider.name, audio_ms, outcome_of(ending)))
    return None
