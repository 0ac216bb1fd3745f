"""The shared provider chain: fall-over rules, first-chunk deadline, cancellation, usage, error mapping.

Small fake providers with knobs stand in for the stages' engines; the usage of the default sink is
checked as published on the call's usage subject (memory bus).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.providers import ProviderConnectionError, ProviderStatusError
from voiceplatform.providers.chain import (
    Attempt,
    Failure,
    Lazy,
    ProviderChain,
    UsageReport,
    map_error,
)
from voiceplatform.providers.registry import UnknownProvider
from voiceplatform.wire import ProviderUsage


@dataclass(eq=False)
class Fake:
    """Yields ``chunks`` words; knobs: wait before the first, fail at chunk n, hang forever."""

    name: str
    chunks: int = 3
    first_delay_s: float = 0.0
    fail_at: int | None = None  # raise ``error`` before yielding chunk ``fail_at``
    error: BaseException = field(default_factory=lambda: ProviderConnectionError("x", "reset"))
    hang_at: int | None = None  # wait forever before chunk ``hang_at``
    opened: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)

    async def stream(self) -> AsyncIterator[str]:
        self.opened += 1
        try:
            if self.first_delay_s:
                await asyncio.sleep(self.first_delay_s)
            for n in range(self.chunks):
                if n == self.fail_at:
                    raise self.error
                if n == self.hang_at:
                    self.hanging.set()
                    await asyncio.Event().wait()
                yield f"{self.name}-{n}"
        finally:
            self.closed.set()


@dataclass
class Run:
    """One stage's consumer: what it received, the usage it reported, the failures it saw."""

    got: list[str] = field(default_factory=list)
    reports: list[UsageReport] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def chain(self, entries: list[Fake | Lazy[Fake]], timeout_s: float | None = None) -> ProviderChain[Fake]:
        return ProviderChain("tts", entries, first_chunk_timeout_s=timeout_s, usage_sink=self.sink)

    async def sink(self, report: UsageReport) -> None:
        self.reports.append(report)

    async def consume(self, attempt: Attempt[Fake], chunk: str) -> None:
        attempt.usage.characters += len(chunk)
        self.got.append(chunk)

    async def on_failure(self, failure: Failure) -> None:
        self.failures.append(failure)

    @property
    def usage(self) -> list[tuple[str, str]]:
        return [(r.provider, r.outcome) for r in self.reports]


async def test_a_failure_before_the_first_chunk_falls_over_to_the_next_provider() -> None:
    run = Run()
    primary = Fake("a", fail_at=0, error=ProviderStatusError("a", 503, retryable=True))
    outcome = await run.chain([primary, Fake("b")]).run(
        lambda a: a.provider.stream(), run.consume, on_failure=run.on_failure
    )
    assert outcome.finished and outcome.provider == "b"
    assert run.got == ["b-0", "b-1", "b-2"]
    assert [(f.provider, f.kind, f.retryable) for f in run.failures] == [("a", "status", True)]
    assert outcome.failures == run.failures and outcome.failure is None
    assert primary.closed.is_set()


async def test_no_fallback_once_a_chunk_went_out() -> None:
    run = Run()
    second = Fake("b")
    outcome = await run.chain([Fake("a", fail_at=2), second]).run(lambda a: a.provider.stream(), run.consume)
    assert run.got == ["a-0", "a-1"]  # the rest is never said in another voice
    assert second.opened == 0
    assert outcome.provider == "a" and not outcome.finished
    assert outcome.failure is not None and outcome.failure.kind == "connection"


async def test_the_stage_decides_what_committed_means() -> None:
    """LLM: text chunks before a sentence went out may still fall over (the stage resets)."""
    run = Run()
    outcome = await run.chain([Fake("a", fail_at=1), Fake("b")]).run(
        lambda a: a.provider.stream(), run.consume, committed=lambda: False
    )
    assert outcome.finished and outcome.provider == "b"
    assert run.got == ["a-0", "b-0", "b-1", "b-2"]


async def test_a_provider_silent_past_the_deadline_fails_over_as_timeout() -> None:
    run = Run()
    stalled = Fake("a", hang_at=0)
    outcome = await run.chain([stalled, Fake("b")], timeout_s=0.05).run(
        lambda a: a.provider.stream(), run.consume, on_failure=run.on_failure
    )
    assert outcome.provider == "b" and outcome.finished
    assert [(f.kind, f.retryable) for f in run.failures] == [("timeout", True)]
    assert "no output within 0.05 s" in run.failures[0].detail
    assert stalled.closed.is_set()
    assert run.usage == [("a", "timeout"), ("b", "ok")]


async def test_the_deadline_covers_only_the_first_chunk() -> None:
    """A provider slower than the deadline between later chunks is not cut by it."""
    run = Run()
    late = Fake("c", hang_at=1)
    task = asyncio.create_task(
        run.chain([late], timeout_s=0.01).run(lambda a: a.provider.stream(), run.consume)
    )
    await late.hanging.wait()
    await asyncio.sleep(0.05)  # well past the first-chunk deadline: still streaming
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_closes_the_stream_and_reports_a_cancelled_attempt() -> None:
    run = Run()
    hung = Fake("a", hang_at=1)
    task = asyncio.create_task(run.chain([hung, Fake("b")]).run(lambda a: a.provider.stream(), run.consume))
    await hung.hanging.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hung.closed.is_set()
    assert run.usage == [("a", "cancelled")]
    assert run.reports[0].usage.characters == len("a-0")


async def test_cancelled_while_the_stage_consumes_a_chunk_closes_the_stream() -> None:
    run = Run()
    provider = Fake("a")
    blocked = asyncio.Event()

    async def slow_consume(attempt: Attempt[Fake], chunk: str) -> None:
        blocked.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(run.chain([provider]).run(lambda a: a.provider.stream(), slow_consume))
    await blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.closed.is_set()


async def test_one_usage_report_per_attempt_that_reached_a_provider() -> None:
    run = Run()

    def unknown() -> Fake:
        raise UnknownProvider("unknown tts provider 'nope'")

    entries: list[Fake | Lazy[Fake]] = [
        Lazy("nope", unknown),  # never reached a provider: no usage
        Fake("a", fail_at=0),
        Lazy("b", lambda: Fake("b", chunks=2)),
    ]
    outcome = await run.chain(entries).run(lambda a: a.provider.stream(), run.consume)
    assert outcome.finished and outcome.provider == "b"
    assert run.usage == [("a", "failed"), ("b", "ok")]
    assert run.reports[1].usage.characters == len("b-0b-1")
    assert [f.kind for f in outcome.failures] == ["unknown_provider", "connection"]


async def test_usage_is_published_on_the_usage_subject_by_default(broker: MemoryBroker) -> None:
    watch = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    chain: ProviderChain[Fake] = ProviderChain(
        "llm", [Fake("a", fail_at=0), Fake("b")], bus=broker.bus("llm"), call_id="c1", turn_id="t1"
    )

    async def consume(attempt: Attempt[Fake], chunk: str) -> None:
        attempt.usage.completion_tokens += 1

    await chain.run(lambda a: a.provider.stream(), consume)
    usage = await watch.wait(ProviderUsage, count=2, turn_id="t1")
    seen = [(u.provider, u.outcome, u.completion_tokens) for u in usage]
    assert seen == [("a", "failed", 0), ("b", "ok", 3)]


def errors(provider: str, kind: str) -> float:
    labels = {"service": "tts", "provider": provider, "kind": kind}
    return REGISTRY.get_sample_value("vp_provider_errors_total", labels) or 0.0


async def test_an_unexpected_exception_is_internal_retryable_and_published_safely() -> None:
    from voiceplatform.logging import register_secret

    register_secret("sk-chain-test-0123456789")
    run = Run()
    bug = RuntimeError("boom with sk-chain-test-0123456789 and https://x?key=AIzaLEAK\nTraceback dump")
    before = errors("buggy", "internal")
    outcome = await run.chain([Fake("buggy", fail_at=0, error=bug), Fake("b")]).run(
        lambda a: a.provider.stream(), run.consume, on_failure=run.on_failure
    )
    assert outcome.finished and outcome.provider == "b"  # the next provider was tried
    (failure,) = run.failures
    assert (failure.kind, failure.retryable) == ("internal", True)
    assert failure.detail.startswith("buggy: RuntimeError: boom")
    assert "sk-chain-test" not in failure.detail and "AIzaLEAK" not in failure.detail
    assert "\n" not in failure.detail and len(failure.detail) <= 160
    assert errors("buggy", "internal") == before + 1


@pytest.mark.parametrize(
    ("exc", "kind", "retryable"),
    [
        (ProviderStatusError("p", 401, retryable=False), "status", False),
        (ProviderStatusError("p", 429, retryable=True), "status", True),
        (ProviderConnectionError("p"), "connection", True),
        (UnknownProvider("unknown tts provider 'p'"), "unknown_provider", False),
        (KeyError("k"), "internal", True),
        (ValueError("v"), "internal", True),
    ],
)
def test_one_error_mapping(exc: Exception, kind: str, retryable: bool) -> None:
    failure = map_error("p", exc)
    assert (failure.provider, failure.kind, failure.retryable) == ("p", kind, retryable)


async def test_a_chain_that_never_finished_summarises_every_failure() -> None:
    run = Run()
    outcome = await run.chain(
        [
            Fake("a", fail_at=0, error=ProviderStatusError("a", 401, retryable=False)),
            Fake("b", fail_at=0, error=ProviderConnectionError("b")),
        ]
    ).run(lambda a: a.provider.stream(), run.consume)
    assert not outcome.finished and outcome.provider == ""
    summary = outcome.summary()
    assert summary is not None
    assert (summary.kind, summary.retryable) == ("connection", True)
    assert "HTTP 401" in summary.detail and "connection failed" in summary.detail


class Plain:
    """Not a ProviderBase: the registry refuses it instead of guessing how to build it."""

    name = "plain"


def test_the_registry_builds_by_one_convention_and_refuses_other_classes() -> None:
    from tests.asr.local import LocalAsr
    from voiceplatform.config import AsrConfig
    from voiceplatform.providers import ProviderRegistry
    from voiceplatform.providers.base import ProviderContext

    registry = ProviderRegistry(
        "asr", {"local": "tests.asr.local:LocalAsr", "plain": "tests.shared.test_provider_chain:Plain"}
    )
    config = AsrConfig(language="en-US")
    built = registry.build("local", ProviderContext(options=config))
    assert isinstance(built, LocalAsr) and built.config is config and built.scope == "call"
    with pytest.raises(TypeError, match="not a ProviderBase"):
        registry.load("plain")
    with pytest.raises(UnknownProvider):
        registry.load("missing")
