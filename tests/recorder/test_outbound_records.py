"""Outbound attempts on the record: an unanswered one is a closed call with its call.dialed event,
an answered one carries its AMD result; both go out as public events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.msg import Msg

from tests.recorder.conftest import new_call_id, settle, wait_until
from tests.recorder.test_recorder import T0, play
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallAmd, CallDialed, CallEnded, CallStarted
from vp_recorder.app import RecorderService


@pytest.fixture
async def public(gateway_bus: NatsBus) -> AsyncIterator[list[dict[str, object]]]:
    received: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    sub = await gateway_bus.client.subscribe(subjects.ALL_CALL_EVENTS, cb=collect)
    await gateway_bus.client.flush()
    yield received
    await sub.unsubscribe()


async def test_every_attempt_is_recorded_per_number(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    public: list[dict[str, object]],
) -> None:
    busy, answered = new_call_id(), new_call_id()
    dial = {"campaign_id": "dec", "number": "79990001122"}
    await play(
        gateway_bus,
        [
            (subjects.lifecycle(busy), CallDialed(call_id=busy, **dial, attempt=1, outcome="busy",
                                                  cause="USER_BUSY", ts_ms=T0)),
            (subjects.lifecycle(busy), CallEnded(call_id=busy, reason="dial_busy", ts_ms=T0 + 1)),
            (subjects.lifecycle(answered), CallDialed(call_id=answered, **dial, attempt=2, outcome="answered",
                                                      ts_ms=T0 + 600_000)),
            (subjects.lifecycle(answered), CallStarted(call_id=answered, robot="collector", channel="phone",
                                                       sample_rate=8000, variables={"name": "Анна"},
                                                       ts_ms=T0 + 600_100)),
            (subjects.lifecycle(answered), CallAmd(call_id=answered, result="human", reason="short_hello",
                                                   after_ms=1400, action="greeting", ts_ms=T0 + 601_500)),
            (subjects.lifecycle(answered), CallEnded(call_id=answered, reason="caller_hangup",
                                                     duration_ms=30_000, ts_ms=T0 + 630_100)),
        ],
    )  # fmt: skip
    await settle(recorder, js_nats_url, 6)
    row = await pg.fetchrow("SELECT status, end_reason FROM calls WHERE call_id = $1", busy)
    assert (row["status"], row["end_reason"]) == ("ended", "dial_busy")
    rows = await pg.fetch(
        "SELECT call_id, type, data FROM call_events WHERE type IN ('call.dialed', 'call.amd') ORDER BY at"
    )
    mine = [(r["call_id"], r["type"]) for r in rows if r["call_id"] in (busy, answered)]
    assert mine == [(busy, "call.dialed"), (answered, "call.dialed"), (answered, "call.amd")]
    await wait_until(lambda: sum(e["type"] in ("call.dialed", "call.amd") for e in public) == 3)
    amd = next(e for e in public if e["type"] == "call.amd")
    assert amd["call_id"] == answered and amd["data"]["result"] == "human"  # type: ignore[index]
