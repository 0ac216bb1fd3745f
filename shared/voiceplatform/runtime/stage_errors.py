"""The one way a stage reports a failed turn: a ``stage.error`` on the call's lifecycle subject.

Every service (and the gateways) publish through :func:`publish_stage_error`: the message is built in
one place, its detail is masked and cut (it is recorded and shown to operators), it is counted in
``vp_stage_errors_total`` and logged with the call id. A failed publish is logged, never raised: the
caller is usually in the middle of failing a turn and must still finish it.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.providers.errors import safe_text
from voiceplatform.wire import StageError

log = structlog.get_logger("voiceplatform.stage_errors")

STAGE_ERRORS = Counter(
    "vp_stage_errors_total",
    "stage.error messages published (a stage failed a turn or a call), by stage and kind",
    ["stage", "kind"],
)


def stage_error(
    *, call_id: str, stage: str, kind: str, detail: str, turn_id: str = "", retryable: bool = False
) -> StageError:
    """The wire message, detail masked and cut."""
    return StageError(
        call_id=call_id,
        stage=stage,
        kind=kind,
        detail=safe_text(detail),
        turn_id=turn_id,
        retryable=retryable,
    )


async def publish_stage_error(
    bus: Bus,
    *,
    call_id: str,
    stage: str,
    kind: str,
    detail: str,
    turn_id: str = "",
    retryable: bool = False,
) -> StageError:
    """Count, log and publish one ``stage.error``; returns the message as published."""
    msg = stage_error(
        call_id=call_id, stage=stage, kind=kind, detail=detail, turn_id=turn_id, retryable=retryable
    )
    STAGE_ERRORS.labels(stage, kind).inc()
    log.warning(
        "stage.error",
        call_id=call_id,
        turn_id=turn_id,
        stage=stage,
        kind=kind,
        retryable=retryable,
        detail=msg.detail,
    )
    try:
        await bus.publish(subjects.lifecycle(call_id), msg)
    except Exception as exc:
        log.error(
            "stage.error_publish_failed", call_id=call_id, stage=stage, kind=kind, error=type(exc).__name__
        )
    return msg
