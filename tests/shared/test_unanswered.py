"""Starting while JetStream does not answer (a cluster electing leaders): creating or finding a
stream and a durable consumer is retried on a cluster and not on one server, where silence does
not end by waiting (voiceplatform.bus.unanswered)."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import pytest

from voiceplatform.bus.jetstream import DurableConsumer, StreamSpec, ensure_stream
from voiceplatform.bus.streams import stream_for
from voiceplatform.bus.unanswered import CLUSTER_START_RETRY_S, start_retry_s


def spec(replicas: int) -> StreamSpec:
    return StreamSpec(name="S", subjects=("s.>",), max_age_s=60.0, replicas=replicas)


class ElectingJs:
    """A JetStream API that leaves the first ``silent`` requests unanswered, then has no streams."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.calls: list[str] = []

    def _answer(self, name: str) -> None:
        self.calls.append(name)
        if self.silent:
            self.silent -= 1
            raise nats.errors.TimeoutError

    async def stream_info(self, name: str) -> Any:
        self._answer("stream_info")
        raise nats.js.errors.NotFoundError

    async def find_stream_name_by_subject(self, subject: str) -> str:
        self._answer("find")
        raise nats.js.errors.NotFoundError

    async def add_stream(self, config: Any) -> None:
        self._answer("add_stream")

    async def add_consumer(self, stream: str, config: Any) -> None:
        self._answer("add_consumer")

    async def pull_subscribe_bind(self, durable: str, stream: str) -> object:
        return object()


def test_only_a_cluster_waits() -> None:
    assert start_retry_s(1) == 0.0
    assert start_retry_s(3) == CLUSTER_START_RETRY_S > 0


async def test_ensure_stream_waits_for_an_electing_cluster() -> None:
    js = ElectingJs(silent=2)
    assert await ensure_stream(js, spec(replicas=3)) == "S"  # type: ignore[arg-type]
    assert js.calls == ["stream_info", "stream_info", "stream_info", "add_stream"]


async def test_stream_for_waits_for_an_electing_cluster() -> None:
    js = ElectingJs(silent=1)
    assert await stream_for(js, spec(replicas=3)) == "S"  # type: ignore[arg-type]
    assert js.calls == ["find", "find", "add_stream"]


async def test_one_server_that_does_not_answer_fails_at_once() -> None:
    js = ElectingJs(silent=1)
    with pytest.raises(nats.errors.TimeoutError):
        await ensure_stream(js, spec(replicas=1))  # type: ignore[arg-type]
    assert js.calls == ["stream_info"]


async def test_a_durable_consumer_waits_when_told_to() -> None:
    js = ElectingJs(silent=1)
    consumer = DurableConsumer(js, "S", "d", start_retry_s=start_retry_s(3))  # type: ignore[arg-type]
    await consumer.start()
    assert consumer.started and js.calls == ["add_consumer", "add_consumer"]
    once = DurableConsumer(ElectingJs(silent=1), "S", "d")  # type: ignore[arg-type]
    with pytest.raises(nats.errors.TimeoutError):
        await once.start()
