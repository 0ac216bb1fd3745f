"""The recorder API routes of the operator console, in process on the recorder test stack: /calls
filters and search, UTF-8 JSON, a call's recording (served, role-checked, kept inside the recordings
folder), the retention sweeper, latency percentiles, the live event feed and the static console."""

from __future__ import annotations

import asyncio
import json
import os
import wave
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import numpy as np

from tests.recorder.conftest import READONLY_TOKEN, new_call_id, settle
from tests.recorder.test_api import app_of, client_of, list_ids, short_call
from tests.recorder.test_recorder import T0, call_sequence, play
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallEnded, CallRecording, CallStarted, Message, StageError
from vp_recorder.app import RecorderService
from vp_recorder.recordings import RecordingSweeper
from vp_recorder.settings import RecorderSettings

StartRecorder = Callable[[RecorderSettings], Awaitable[RecorderService]]


def ended_with(
    call_id: str, robot: str, start_ms: int, reason: str, errors: int = 0
) -> list[tuple[str, Message]]:
    lc = subjects.lifecycle(call_id)
    events: list[tuple[str, Message]] = [
        (
            lc,
            CallStarted(
                call_id=call_id,
                robot=robot,
                channel="phone",
                caller="+7111",
                sample_rate=8000,
                ts_ms=start_ms,
            ),
        )
    ]
    events += [
        (lc, StageError(call_id=call_id, stage="asr", kind="timeout", detail="", ts_ms=start_ms + 10))
    ] * errors
    events.append((lc, CallEnded(call_id=call_id, reason=reason, duration_ms=500, ts_ms=start_ms + 500)))
    return events


async def test_filters_search_and_utf8(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService
) -> None:
    full, a, b, c = (new_call_id() for _ in range(4))
    played = [
        *call_sequence(full),  # T0, web, +7999, one stage error, "хочу купить", ended "hangup"
        *ended_with(a, "alpha", T0 + 60_000, "robot_hangup"),
        *ended_with(b, "alpha", T0 + 120_000, "hangup", errors=2),
        *short_call(c, "beta", "web", "", T0 + 180_000, ended=False),
    ]
    await play(gateway_bus, played)
    await settle(recorder, js_nats_url, len(played))
    async with client_of(app_of(recorder)) as client:
        assert await list_ids(client, end_reason="hangup") == [b, full]
        assert await list_ids(client, has_errors="true") == [b, full]
        assert await list_ids(client, has_errors="false") == [c, a]
        assert await list_ids(client, **{"from": str(T0 + 60_000), "to": str(T0 + 180_000)}) == [b, a]
        frm = datetime.fromtimestamp((T0 + 120_000) / 1000, UTC).isoformat()
        assert await list_ids(client, **{"from": frm}) == [c, b]
        assert await list_ids(client, q="КУПИТЬ") == [full]  # words of a turn, any case
        assert await list_ids(client, q="7111") == [b, a]  # the caller's number
        assert await list_ids(client, q=a[-6:]) == [a]  # the call id
        assert await list_ids(client, q="%") == []  # a literal, not a pattern
        assert await list_ids(client, q="добрый", channel="web", has_errors="true") == [full]
        bad = await client.get("/calls", params={"has_errors": "maybe"})
        assert bad.status_code == 400 and "has_errors" in bad.json()["error"]
        bad = await client.get("/calls", params={"from": "yesterday"})
        assert bad.status_code == 400 and "from" in bad.json()["error"]

        turns = await client.get(f"/calls/{full}/turns")
        assert turns.headers["content-type"] == "application/json; charset=utf-8"
        assert "здравствуйте".encode() in turns.content and b"\\u" not in turns.content
        assert turns.json()["call"]["caller"] == "+7999" and turns.json()["call"]["errors"] == 1
        transcript = await client.get(f"/calls/{full}")
        assert "Добрый день".encode() in transcript.content and b"\\u04" not in transcript.content
        assert (await client.get("/whoami")).json() == {"role": "operator"}

    async with client_of(app_of(recorder), READONLY_TOKEN) as client:
        refused = await client.get("/calls", params={"q": "купить"})
        assert refused.status_code == 403 and "operator" in refused.json()["error"]
        assert await list_ids(client, end_reason="robot_hangup") == [a]
        assert (await client.get(f"/calls/{full}/turns")).json()["call"]["caller"] is None
        assert (await client.get("/whoami")).json() == {"role": "readonly"}


def write_wav(path: Path, seconds: float = 0.5) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.arange(int(16000 * seconds) * 2, dtype=np.int16).tobytes())
    return path.read_bytes()


def recorded_call(call_id: str, path: Path, start_ms: int) -> list[tuple[str, Message]]:
    lc = subjects.lifecycle(call_id)
    c = {"call_id": call_id, "path": str(path), "format": "wav", "channels": 2}
    return [
        (lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=start_ms)),
        (lc, CallRecording(**c, action="start", ts_ms=start_ms + 5)),  # type: ignore[arg-type]
        (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=500, ts_ms=start_ms + 500)),
        (lc, CallRecording(**c, action="stop", duration_ms=500, ts_ms=start_ms + 510)),  # type: ignore[arg-type]
    ]


async def test_recording_served_to_the_operator_then_deleted_by_retention(
    gateway_bus: NatsBus,
    js_nats_url: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    pg: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    root = tmp_path / "recordings"
    recorder = await start_recorder(settings.model_copy(update={"recordings_dir": root}))
    kept, outside, none = new_call_id(), new_call_id(), new_call_id()
    kept_path = root / "2025-11-21" / f"{kept}.wav"
    content = write_wav(kept_path)
    elsewhere = tmp_path / "elsewhere" / f"{outside}.wav"
    write_wav(elsewhere)
    played = [
        *recorded_call(kept, kept_path, T0),
        *recorded_call(outside, elsewhere, T0 + 1000),  # announced, but not in the recordings folder
        *short_call(none, "demo", "web", "", T0 + 2000, ended=True),
    ]
    await play(gateway_bus, played)
    await settle(recorder, js_nats_url, len(played))

    async with client_of(app_of(recorder)) as client:
        doc = (await client.get(f"/calls/{kept}")).json()
        (listed,) = doc["recordings"]
        assert listed["path"] == str(kept_path) and listed["url"] == f"/calls/{kept}/recording"
        assert (listed["format"], listed["channels"], listed["duration_ms"], listed["deleted_at"]) == (
            "wav", 2, 500, None,
        )  # fmt: skip
        served = await client.get(f"/calls/{kept}/recording")
        assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
        assert served.content == content
        part = await client.get(f"/calls/{kept}/recording", headers={"Range": "bytes=0-43"})
        assert part.status_code == 206 and part.content == content[:44]  # the WAV header: seekable
        assert (await client.get(f"/calls/{outside}/recording")).status_code == 404
        assert (await client.get(f"/calls/{outside}")).json()["recordings"][0]["url"] is None
        assert (await client.get(f"/calls/{none}/recording")).status_code == 404
        assert (await client.get("/calls/rec-nobody/recording")).status_code == 404

    async with client_of(app_of(recorder), READONLY_TOKEN) as client:
        refused = await client.get(f"/calls/{kept}/recording")
        assert refused.status_code == 403
        listing = (await client.get(f"/calls/{kept}/recordings")).json()
        assert [r["path"] for r in listing["recordings"]] == [str(kept_path)]

    # a gateway died mid-call long ago: its unfinished file goes by its age on disk
    stale_part = root / "2025-11-20" / "web-dead.wav.part"
    write_wav(stale_part)
    os.utime(stale_part, (0, 0))
    sweeper = RecordingSweeper(recorder.api.run, recorder.api.files, retention_days=30, every_s=3600)
    called_at = datetime.fromtimestamp(T0 / 1000, UTC)
    assert await sweeper.sweep(now=called_at + timedelta(days=29)) == []  # within retention: kept
    assert kept_path.exists()
    assert await sweeper.sweep(now=called_at + timedelta(days=31)) == [str(kept_path)]
    assert not kept_path.exists() and not stale_part.exists()
    assert elsewhere.exists()  # never touched: outside the folder
    assert await sweeper.sweep(now=called_at + timedelta(days=31)) == []  # marked gone: once
    assert (
        await pg.fetchval("SELECT reason FROM recording_deletions WHERE path = $1", str(kept_path))
        == "retention"
    )

    async with client_of(app_of(recorder)) as client:
        assert (await client.get(f"/calls/{kept}/recording")).status_code == 404
        (listed,) = (await client.get(f"/calls/{kept}")).json()["recordings"]
        assert listed["deleted_at"] is not None and listed["url"] is None


async def test_latency_percentiles_per_bucket(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService
) -> None:
    call_id = new_call_id()
    played = call_sequence(call_id)  # two turns in the minute from T0: asr 700 and 600, v2v 1100 both
    await play(gateway_bus, played)
    await settle(recorder, js_nats_url, len(played))
    window = {"bucket": "minute", "from": str(T0), "to": str(T0 + 3_600_000)}
    async with client_of(app_of(recorder), READONLY_TOKEN) as client:
        body = (await client.get("/stats/latency", params=window)).json()
        (point,) = body["points"]
        assert point["bucket"] == datetime.fromtimestamp(T0 / 1000, UTC).isoformat(timespec="seconds")
        assert (point["turns"], point["voice_to_voice_p50"], point["voice_to_voice_p95"]) == (2, 1100, 1100)
        assert (point["asr_p50"], point["asr_p95"]) == (650, 695)  # interpolated between 600 and 700
        other = (await client.get("/stats/latency", params={**window, "robot": "nobody"})).json()
        assert other["points"] == []
        too_many = await client.get("/stats/latency", params={**window, "to": str(T0 + 10 * 86_400_000)})
        assert too_many.status_code == 400 and "buckets" in too_many.json()["error"]
        backwards = await client.get("/stats/latency", params={**window, "to": str(T0 - 1)})
        assert backwards.status_code == 400


async def test_live_feed_follows_public_events_without_personal_data_for_readonly(
    gateway_bus: NatsBus, recorder: RecorderService
) -> None:
    operator, readonly = recorder.live.stream("operator"), recorder.live.stream("readonly")
    assert (await anext(operator)).startswith(b"retry:") and (await anext(readonly)).startswith(b"retry:")
    call_id = new_call_id()
    await play(gateway_bus, call_sequence(call_id))

    async def first_of(stream: object, kind: str) -> dict[str, object]:
        while True:
            chunk = (await asyncio.wait_for(anext(stream), 10)).decode()  # type: ignore[call-overload]
            if chunk.startswith("event: call_event"):
                event = json.loads(chunk.split("data: ", 1)[1])
                if event["type"] == kind:
                    return dict(event)

    seen = await first_of(operator, "turn.completed")
    assert seen["call_id"] == call_id and seen["data"]["user_text"] == "здравствуйте"  # type: ignore[index]
    hidden = await first_of(readonly, "call.started")
    assert hidden["call_id"] == call_id and "caller" not in hidden["data"]  # type: ignore[operator]
    hidden = await first_of(readonly, "turn.completed")
    assert "user_text" not in hidden["data"] and hidden["data"]["latency"]  # type: ignore[index, operator]
    await readonly.aclose()
    assert recorder.live.listening == 1
    # a recorder that stops ends the streams still open (else its HTTP server waits for them)
    await recorder.live.stop()
    events_left = [chunk async for chunk in operator]
    assert all(b"call_event" in c or b"dropped" in c for c in events_left)
    assert recorder.live.listening == 0


async def test_console_is_served_and_the_root_leads_there(recorder: RecorderService) -> None:
    async with client_of(app_of(recorder), token=None) as client:
        root = await client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console/"
        page = await client.get("/console/")  # static files hold no data: no token needed
        assert page.status_code == 200 and b'type="module"' in page.content and b"token" in page.content
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert page.headers["referrer-policy"] == "no-referrer"
        module = await client.get("/console/js/main.js")
        assert module.status_code == 200 and "javascript" in module.headers["content-type"]
        assert (await client.get("/calls")).status_code == 401  # the data still needs a token
        assert (await client.get("/live")).status_code == 401


async def test_recordings_of_a_call_not_in_postgres_is_404(recorder: RecorderService) -> None:
    async with client_of(app_of(recorder)) as client:
        response: httpx.Response = await client.get("/calls/rec-none/recordings")
        assert response.status_code == 404
