"""Load on the bus: each process's presence carries its load per stage (``StageLoad``), and `vp load`
lists every instance from it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest

from voiceplatform import load, subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.cli import load_view
from voiceplatform.cli.main import main
from voiceplatform.config import ServiceSettings
from voiceplatform.runtime.service import _announce
from voiceplatform.wire import StageLoad, WorkerHeartbeat


def test_turn_percentiles_cover_the_last_minute_only(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = f"lp{uuid.uuid4().hex[:6]}"
    clock = [1000.0]
    monkeypatch.setattr(load.time, "monotonic", lambda: clock[0])
    for ms in (900, 900, 900):  # more than a minute ago: not in the figures
        load.observe_turn(stage, ms / 1000)
    clock[0] += load.TURN_WINDOW_S + 1
    for ms in range(10, 210, 10):  # 20 turns: 10 .. 200 ms
        load.observe_turn(stage, ms / 1000)
    found = next(s for s in load.stage_loads() if s.stage == stage)
    assert (found.turns, found.turn_p50_ms, found.turn_p95_ms) == (20, 100, 190)
    assert (found.calls_owned, found.capacity, found.queue_pending) == (0, 0, -1)


def test_a_stage_with_calls_and_a_queue_reports_both() -> None:
    stage = f"lq{uuid.uuid4().hex[:6]}"
    load.track_calls(stage, lambda: 3, 8)
    load.record_queue(stage, f"{stage}-c", pending=5, ack_pending=2)
    found = next(s for s in load.stage_loads() if s.stage == stage)
    assert (found.calls_owned, found.capacity, found.queue_pending, found.queue_ack_pending) == (3, 8, 5, 2)
    assert found.turns == 0 and found.turn_p50_ms is None


class _Service:
    name = "tts"

    def ready(self) -> bool:
        return True


async def test_presence_carries_the_process_load(broker: MemoryBroker) -> None:
    stage = f"la{uuid.uuid4().hex[:6]}"
    load.track_calls(stage, lambda: 2, 4)
    listener = broker.bus("listener")
    heard = asyncio.create_task(load_view.collect(listener, 1.5))
    await asyncio.sleep(0.05)  # subscribed
    settings = ServiceSettings(instance_id="tts-7")
    announcing = asyncio.create_task(_announce(broker.bus("tts"), _Service(), settings, {"phase": "running"}))  # type: ignore[arg-type]
    try:
        found = await heard
    finally:
        announcing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcing
    beat = found[("tts", "tts-7")]
    assert beat.ready
    mine = next(s for s in beat.load if s.stage == stage)
    assert (mine.calls_owned, mine.capacity) == (2, 4)


def test_rows_and_table_show_every_instance_and_stage() -> None:
    heard = {
        ("asr", "asr-1"): WorkerHeartbeat(
            call_id="", role="asr", instance_id="asr-1",
            load=[StageLoad(stage="asr", calls_owned=12, capacity=50, turns=40,
                            turn_p50_ms=180, turn_p95_ms=420)],
        ),
        ("llm", "llm-1"): WorkerHeartbeat(
            call_id="", role="llm", instance_id="llm-1", ready=False,
            load=[StageLoad(stage="llm", queue_pending=7, queue_ack_pending=3)],
        ),
        ("recorder", "rec-1"): WorkerHeartbeat(call_id="", role="recorder", instance_id="rec-1"),
    }  # fmt: skip
    rows = load_view.rows(heard)
    assert [(r["service"], r["stage"]) for r in rows] == [
        ("asr", "asr"),
        ("llm", "llm"),
        ("recorder", "recorder"),
    ]
    text = load_view.table(rows).splitlines()
    assert text[0].split()[:4] == ["service", "instance", "ready", "stage"]
    asr = text[1].split()
    assert asr[:5] == ["asr", "asr-1", "yes", "asr", "12/50"] and asr[-2:] == ["40", "180/420"]
    assert "7 waiting, 3 taken" in text[2] and text[2].split()[2] == "no"
    assert text[3].split()[-4:] == ["-", "-", "0", "-"]


def test_vp_load_says_so_when_nothing_answers(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("NATS_URL", nats_url)
    # a private subject prefix: whatever else runs on this NATS is not heard
    monkeypatch.setattr(subjects, "ANY_PRESENCE", f"vp.test{uuid.uuid4().hex[:6]}.svc.*.presence")
    assert main(["load", "--seconds", "0.3"]) == 1
    assert "no service announced itself within 0.3 s" in capsys.readouterr().err


async def test_vp_load_lists_what_it_hears_on_nats(
    nats_url: str, nats_bus: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("NATS_URL", nats_url)
    prefix = f"vp.test{uuid.uuid4().hex[:6]}.svc"
    monkeypatch.setattr(subjects, "ANY_PRESENCE", f"{prefix}.*.presence")
    beat = WorkerHeartbeat(
        call_id="", role="vad", instance_id="vad-2", load=[StageLoad(stage="vad", calls_owned=1, capacity=9)]
    )

    async def announce() -> None:
        while True:
            await nats_bus.publish(f"{prefix}.vad.presence", beat)
            await asyncio.sleep(0.2)

    announcing = asyncio.create_task(announce())
    try:
        assert await asyncio.to_thread(main, ["load", "--json", "--seconds", "1.5"]) == 0
    finally:
        announcing.cancel()
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (row["service"], row["instance"], row["stage"]) == ("vad", "vad-2", "vad")
    assert (row["calls_owned"], row["capacity"], row["queue_pending"]) == (1, 9, -1)
