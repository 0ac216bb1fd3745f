"""The one stage-error publisher: lifecycle subject, masked and cut detail, counted, never raises."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.logging import register_secret
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import StageError


def counted(stage: str, kind: str) -> float:
    return REGISTRY.get_sample_value("vp_stage_errors_total", {"stage": stage, "kind": kind}) or 0.0


async def test_published_on_the_lifecycle_masked_cut_and_counted(broker: MemoryBroker) -> None:
    register_secret("stage-error-secret-4711")
    watch = await Collector.on(broker.bus("watch"), subjects.lifecycle("c-se1"))
    before = counted("tts", "status")
    detail = "yandex: HTTP 500 stage-error-secret-4711\n" + "x" * 1000
    await publish_stage_error(
        broker.bus("tts"),
        call_id="c-se1",
        stage="tts",
        kind="status",
        detail=detail,
        turn_id="t1",
        retryable=True,
    )
    (msg,) = await watch.wait(StageError, turn_id="t1")
    assert (msg.call_id, msg.stage, msg.kind, msg.retryable) == ("c-se1", "tts", "status", True)
    assert "stage-error-secret-4711" not in msg.detail and "\n" not in msg.detail
    assert msg.detail.startswith("yandex: HTTP 500 ***") and len(msg.detail) == 300
    assert counted("tts", "status") == before + 1


class _DeadBus:
    async def publish(self, subject: str, msg: object) -> None:
        raise ConnectionError("bus down")


async def test_a_failed_publish_is_logged_not_raised() -> None:
    before = counted("llm", "timeout")
    msg = await publish_stage_error(_DeadBus(), call_id="c-se2", stage="llm", kind="timeout", detail="slow")  # type: ignore[arg-type]
    assert msg.kind == "timeout" and counted("llm", "timeout") == before + 1
