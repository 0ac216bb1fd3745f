"""What the bus does differently with VP_JS_REPLICAS > 1 (docs/deploy-cluster.md), on fakes: a
stream or KV bucket without a leader (its node died) answers nothing until the replicas elect one."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import pytest

from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus, _NatsKeyValue
from voiceplatform.wire import AsrFinal


class _Unanswered:
    """Fails ``failures`` times as a leaderless stream does, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise nats.errors.TimeoutError
        return 7


class _Refused:
    calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise nats.js.errors.BadRequestError


class _FakeClient:
    is_closed = False

    def __init__(self, js_failures: int) -> None:
        self.js_publish: Any = _Unanswered(js_failures)
        self.core: list[str] = []

    def jetstream(self, **_: Any) -> Any:
        return self

    async def publish(self, subject: str, data: bytes, **kwargs: Any) -> None:
        if "timeout" in kwargs:  # the JetStream context's publish
            await self.js_publish(subject, data, **kwargs)
        else:
            self.core.append(subject)


def _final() -> AsrFinal:
    return AsrFinal(call_id="c1", turn_id="c1-t1", text="да")


async def test_on_a_cluster_a_stream_subject_is_retried_until_a_stream_stores_it():
    client = _FakeClient(js_failures=2)
    bus = NatsBus(client, "asr", js_replicas=3)  # type: ignore[arg-type]
    await bus.publish(subjects.asr("c1"), _final(), msg_id="c1-t1-final")
    assert client.js_publish.calls == 3
    assert client.core == []


async def test_a_stream_that_refuses_gets_the_message_without_an_ack_at_once():
    client = _FakeClient(js_failures=0)
    client.js_publish = _Refused()
    await NatsBus(client, "asr", js_replicas=3).publish(subjects.asr("c1"), _final())  # type: ignore[arg-type]
    assert client.js_publish.calls == 1
    assert client.core == [subjects.asr("c1")]


async def test_on_one_server_and_off_the_streams_publish_stays_core():
    client = _FakeClient(js_failures=0)
    await NatsBus(client, "asr", js_replicas=1).publish(subjects.asr("c1"), _final())  # type: ignore[arg-type]
    await NatsBus(client, "gw", js_replicas=3).publish(subjects.audio_in("c1"), _final())  # type: ignore[arg-type]
    assert client.js_publish.calls == 0
    assert client.core == [subjects.asr("c1"), subjects.audio_in("c1")]


class _FakeKv:
    def __init__(self, failures: int) -> None:
        self.put = _Unanswered(failures)


async def test_a_kv_call_waits_out_a_leader_election_on_a_cluster():
    kv = _FakeKv(failures=2)
    assert await _NatsKeyValue(kv, retry_s=10.0).put("k", b"v") == 7  # type: ignore[arg-type]
    assert kv.put.calls == 3


async def test_a_kv_call_fails_at_once_on_one_server():
    kv = _FakeKv(failures=1)
    with pytest.raises(nats.errors.TimeoutError):
        await _NatsKeyValue(kv).put("k", b"v")  # type: ignore[arg-type]
    assert kv.put.calls == 1
