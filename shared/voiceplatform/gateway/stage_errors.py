"""The gateway's one way to record a failed stage: a ``stage.error`` on the call's lifecycle subject."""

from __future__ import annotations

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.wire import StageError


async def publish_stage_error(
    bus: Bus,
    call_id: str,
    *,
    stage: str,
    kind: str,
    detail: str,
    turn_id: str = "",
    retryable: bool = False,
) -> None:
    await bus.publish(
        subjects.lifecycle(call_id),
        StageError(
            call_id=call_id, stage=stage, kind=kind, detail=detail, turn_id=turn_id, retryable=retryable
        ),
    )
