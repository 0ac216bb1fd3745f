"""The one provider fallback chain every streaming stage runs (asr, llm, tts).

A chain is the robot's providers in order (``provider`` then ``fallback``). ``run`` tries them one by
one on the same input until one streams to its end:

- **Fall over only before output went out.** ``committed()`` (the stage's own test: a sentence
  published, audio sent, words heard) is asked after a failed attempt; once true the chain stops
  there (never a second voice or engine mid-output) and the outcome names that provider.
- **First-chunk deadline per attempt.** An attempt whose stream yields no output chunk (``is_output``)
  within ``first_chunk_timeout_s`` fails as ``ProviderTimeoutError``; after the first output chunk the
  provider's own timeouts govern.
- **Cancellation at once.** A cancelled ``run`` closes the provider's stream (``aclose`` aborts the
  request) and propagates; the attempt is reported as ``cancelled``.
- **Usage per attempt.** Every attempt that reached a provider (built and asked to stream: failed,
  stalled and cancelled ones included) is reported once, with the amounts the stage filled in on
  ``Attempt.usage``: published as ``provider.usage`` unless the stage collects the reports itself.
- **One error mapping.** A ``ProviderError`` keeps its ``kind`` and ``retryable``; an unknown provider
  name is ``unknown_provider`` and a provider's bad options ``robot_config`` (neither retryable); any
  other exception (a provider bug) is ``internal``, retryable (the next provider is tried), logged
  with its traceback and published with its class and a short masked message only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import structlog
from prometheus_client import Counter

from voiceplatform import metrics
from voiceplatform.bus import Bus
from voiceplatform.config import RobotConfigError
from voiceplatform.providers.errors import (
    ProviderError,
    ProviderTimeoutError,
    safe_text,
    unexpected_detail,
)
from voiceplatform.providers.registry import UnknownProvider
from voiceplatform.providers.usage import Outcome as UsageOutcome
from voiceplatform.providers.usage import Stage, outcome_of, publish_usage

log = structlog.get_logger("voiceplatform.providers.chain")

UNEXPECTED_KIND = "internal"
UNKNOWN_KIND = "unknown_provider"
CONFIG_KIND = "robot_config"


class Named(Protocol):
    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=Named)
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Lazy(Generic[P]):
    """A chain entry built only when the chain reaches it (its construction errors fail it over)."""

    name: str
    build: Callable[[], P]


@dataclass(frozen=True, slots=True)
class Failure:
    provider: str
    kind: str
    detail: str  # safe to publish: no secrets, no traceback
    retryable: bool


@dataclass(slots=True)
class Usage:
    """What one attempt consumed; the stage fills in the units it knows."""

    audio_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    characters: int = 0
    model: str = ""


@dataclass(frozen=True, slots=True)
class UsageReport:
    stage: Stage
    provider: str
    usage: Usage
    outcome: UsageOutcome


@dataclass(slots=True, eq=False)
class Attempt(Generic[P]):
    provider: P
    name: str  # the provider's name in the chain (the robot's configuration)
    position: int
    usage: Usage = field(default_factory=Usage)
    output: bool = False  # an output chunk of this attempt reached the stage


@dataclass(slots=True)
class ChainOutcome:
    """How a chain run ended. ``provider``: whose output stands ("" when none gave any)."""

    provider: str = ""
    finished: bool = False  # that provider streamed to its end
    failures: list[Failure] = field(default_factory=list)

    @property
    def failure(self) -> Failure | None:
        """The last failure, when the chain did not finish (None: it did)."""
        if self.finished:
            return None
        return self.failures[-1] if self.failures else Failure("", "no_provider", "no provider", False)

    def summary(self) -> Failure | None:
        """The chain's failure with every provider's detail: the last kind, retryable when any
        provider failed for a passing reason (another attempt may help). None when it finished."""
        last = self.failure
        if last is None or not self.failures:
            return last
        return Failure(
            last.provider,
            last.kind,
            "; ".join(f.detail for f in self.failures),
            any(f.retryable for f in self.failures),
        )


UsageSink = Callable[[UsageReport], Awaitable[None]]


def map_error(provider: str, exc: BaseException) -> Failure:
    """The one mapping from what a provider raised to a published failure."""
    if isinstance(exc, ProviderError):
        return Failure(provider, exc.kind, safe_text(str(exc)), exc.retryable)
    if isinstance(exc, RobotConfigError):  # the provider's options in the robot's config are wrong
        return Failure(provider, CONFIG_KIND, safe_text(str(exc)), False)
    if isinstance(exc, UnknownProvider):
        return Failure(provider, UNKNOWN_KIND, safe_text(str(exc.args[0] if exc.args else exc)), False)
    return Failure(provider, UNEXPECTED_KIND, unexpected_detail(provider, exc), True)


def _always(_: object) -> bool:
    return True


class ProviderChain(Generic[P]):
    """One stage's chain for one piece of work (a segment, a turn, a sentence)."""

    def __init__(
        self,
        stage: Stage,
        entries: Sequence[P | Lazy[P]],
        *,
        bus: Bus | None = None,
        call_id: str = "",
        turn_id: str = "",
        service: str = "",
        first_chunk_timeout_s: float | None = None,
        output_word: str = "output",
        usage_sink: UsageSink | None = None,
        fallbacks: Counter | None = None,
    ) -> None:
        """``usage_sink`` receives each attempt's usage (default: published as ``provider.usage``
        with ``bus``); ``fallbacks`` is the stage's ``from_provider``/``to_provider`` counter."""
        if usage_sink is None and bus is None:
            raise ValueError("a chain needs a bus or a usage sink")
        self.stage = stage
        self.entries = list(entries)
        self.bus = bus
        self.call_id = call_id
        self.turn_id = turn_id
        self.service = service or stage
        self.first_chunk_timeout_s = first_chunk_timeout_s
        self.output_word = output_word
        self._usage_sink = usage_sink
        self._fallbacks = fallbacks

    async def run(
        self,
        open_stream: Callable[[Attempt[P]], AsyncIterator[C]],
        consume: Callable[[Attempt[P], C], Awaitable[None]],
        *,
        is_output: Callable[[C], bool] = _always,
        committed: Callable[[], bool] | None = None,
        on_failure: Callable[[Failure], Awaitable[None]] | None = None,
    ) -> ChainOutcome:
        """Try the entries in order; see the module docstring. ``committed`` defaults to "an output
        chunk reached ``consume``"; ``on_failure`` runs for each failed attempt as it fails."""
        outcome = ChainOutcome()
        previous = ""
        for position, entry in enumerate(self.entries):
            name = entry.name
            if position:
                self._fell_over(previous, name, outcome.failures[-1].kind)
            previous = name
            attempt: Attempt[P] | None = None
            try:
                provider = entry.build() if isinstance(entry, Lazy) else entry
                attempt = Attempt(provider, name, position)
                await self._attempt(attempt, open_stream, consume, is_output)
            except Exception as exc:
                failure = self._failed(name, exc, attempt)
                outcome.failures.append(failure)
                if on_failure is not None:
                    await on_failure(failure)
                output_out = committed() if committed is not None else attempt is not None and attempt.output
                if output_out:
                    # part of the output was already delivered by this provider: end short, not twice
                    outcome.provider = name
                    return outcome
                continue
            outcome.provider, outcome.finished = name, True
            return outcome
        return outcome

    async def _attempt(
        self,
        attempt: Attempt[P],
        open_stream: Callable[[Attempt[P]], AsyncIterator[C]],
        consume: Callable[[Attempt[P], C], Awaitable[None]],
        is_output: Callable[[C], bool],
    ) -> None:
        ending: BaseException | None = None
        try:
            await self._stream(attempt, open_stream, consume, is_output)
        except BaseException as exc:
            ending = exc
            raise
        finally:
            await self._report_usage(attempt, outcome_of(ending))

    async def _stream(
        self,
        attempt: Attempt[P],
        open_stream: Callable[[Attempt[P]], AsyncIterator[C]],
        consume: Callable[[Attempt[P], C], Awaitable[None]],
        is_output: Callable[[C], bool],
    ) -> None:
        loop = asyncio.get_running_loop()
        timeout_s = self.first_chunk_timeout_s
        deadline = None if timeout_s is None else loop.time() + timeout_s
        async with _closing(open_stream(attempt)) as chunks:
            while True:
                try:
                    if deadline is None:
                        chunk = await anext(chunks)
                    else:
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ProviderTimeoutError(
                        attempt.name, f"no {self.output_word} within {timeout_s} s"
                    ) from None
                if is_output(chunk):
                    deadline = None  # output is flowing: the provider's own timeouts govern the rest
                    attempt.output = True
                await consume(attempt, chunk)

    def _fell_over(self, source: str, target: str, kind: str) -> None:
        if self._fallbacks is not None:
            self._fallbacks.labels(source, target).inc()
        log.warning(
            "provider.fallback",
            stage=self.stage,
            call_id=self.call_id,
            turn_id=self.turn_id,
            from_provider=source,
            to_provider=target,
            kind=kind,
        )

    def _failed(self, name: str, exc: Exception, attempt: Attempt[P] | None) -> Failure:
        failure = map_error(name, exc)
        metrics.PROVIDER_ERRORS.labels(self.service, name, failure.kind).inc()
        fields = {
            "stage": self.stage,
            "call_id": self.call_id,
            "turn_id": self.turn_id,
            "provider": name,
            "kind": failure.kind,
            "retryable": failure.retryable,
            "output_out": attempt is not None and attempt.output,
        }
        if isinstance(exc, ProviderError | UnknownProvider | RobotConfigError):
            log.warning("provider.failed", detail=failure.detail, **fields)
        else:  # a bug: the traceback goes to the log, never into a published message
            log.exception("provider.crashed", **fields)
        return failure

    async def _report_usage(self, attempt: Attempt[P], outcome: UsageOutcome) -> None:
        report = UsageReport(self.stage, attempt.name, attempt.usage, outcome)
        if self._usage_sink is not None:
            await self._usage_sink(report)
            return
        assert self.bus is not None
        await publish_report(self.bus, self.call_id, self.turn_id, report)


async def publish_report(bus: Bus, call_id: str, turn_id: str, report: UsageReport) -> None:
    """Publish one attempt's usage as ``provider.usage`` (never raises)."""
    usage = report.usage
    await publish_usage(
        bus,
        call_id,
        stage=report.stage,
        provider=report.provider,
        turn_id=turn_id,
        model=usage.model,
        audio_ms=usage.audio_ms,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        characters=usage.characters,
        outcome=report.outcome,
    )


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[C]) -> AsyncIterator[AsyncIterator[C]]:
    """Close the provider's stream however the attempt ends (error, deadline, cancellation)."""
    try:
        yield stream
    finally:
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
