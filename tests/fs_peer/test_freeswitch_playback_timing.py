"""The peer plays files with a real FreeSWITCH's timing: broadcast lead frames, the playback
application's gaps, and no PLAYBACK_STOP for a file that cannot be opened.

The peer keeps these on its own timeline (start = queued or previous stop, plus lead frames or the
application gap), so the figures below are exact even on a busy machine.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fs_peer.helpers import PASSWORD, RawEsl, WsRecorder, ramp_pcm
from voiceplatform_devstack import FreeSwitchPeer
from voiceplatform_devstack.freeswitch_player import APP_GAP_S, BROADCAST_LEAD_FRAMES, FRAME_S


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[FreeSwitchPeer]:
    async with FreeSwitchPeer(esl_password=PASSWORD, temp_dir=tmp_path / "fs-tmp") as fs:
        yield fs


@pytest.fixture
async def ws() -> AsyncIterator[WsRecorder]:
    async with WsRecorder() as server:
        yield server


def segments(tmp_path: Path, count: int, seconds: float = 0.4) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        pcm = ramp_pcm(seconds, seed=i)
        path = tmp_path / f"seg{i}.r8"
        path.write_bytes(pcm)
        out.append((str(path), pcm))
    return out


def execute(uuid: str, path: str) -> str:
    return f"sendmsg {uuid}\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: {path}"


async def test_each_broadcast_waits_five_lead_frames_so_back_to_back_files_leave_holes(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP")
    call = await peer.place_call(ws.url, destination="7000")
    files = segments(tmp_path, 3)
    for path, _ in files:
        assert await esl.api(f"uuid_broadcast {call.uuid} {path} aleg") == "+OK Message sent\n"
    for _ in files:
        await esl.event("PLAYBACK_STOP", call.uuid)
    plays = call.plays
    assert [p.pcm for p in plays] == [pcm for _, pcm in files]  # every byte, in order
    assert all(p.via == "broadcast" and p.lead_frames == BROADCAST_LEAD_FRAMES == 5 for p in plays)
    lead = BROADCAST_LEAD_FRAMES * FRAME_S
    assert plays[0].started_at == pytest.approx(plays[0].queued_at + lead, abs=1e-6)
    for before, after in itertools.pairwise(plays):
        assert before.stopped_at is not None and after.started_at is not None
        assert after.started_at - before.stopped_at == pytest.approx(lead + APP_GAP_S, abs=1e-6)
    # 1.2 s of audio takes 1.5 s: the 25 % slow-down a real FreeSWITCH showed with 400 ms segments
    total = (plays[-1].stopped_at or 0) - (plays[0].started_at or 0)
    assert total == pytest.approx(1.2 + 2 * (lead + APP_GAP_S), abs=1e-3)
    await call.hangup()
    await esl.close()


async def test_playback_queued_with_sendmsg_runs_back_to_back_in_real_time(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP CHANNEL_EXECUTE_COMPLETE")
    call = await peer.place_call(ws.url, destination="7000")
    files = segments(tmp_path, 4)
    for path, _ in files:
        assert await esl.command(execute(call.uuid, path)) == "+OK"
    for _ in files:
        stop = await esl.event("PLAYBACK_STOP", call.uuid)
        assert stop.headers["Playback-Status"] == "done"
    plays = call.plays
    assert call.heard() == b"".join(pcm for _, pcm in files)
    assert all(p.via == "execute" and p.lead_frames == 0 for p in plays)
    assert plays[0].started_at == pytest.approx(plays[0].queued_at, abs=1e-6)  # no lead frames
    gaps = [(b.started_at or 0) - (a.stopped_at or 0) for a, b in itertools.pairwise(plays)]
    assert all(g == pytest.approx(APP_GAP_S, abs=1e-6) for g in gaps) and max(gaps) < 0.005
    for play, (_, pcm) in zip(plays, files, strict=True):  # each plays for exactly its length
        assert (play.stopped_at or 0) - (play.started_at or 0) == pytest.approx(len(pcm) / 16000, abs=1e-6)
    await call.hangup()
    await esl.close()


async def test_break_all_stops_a_sendmsg_queue_at_the_current_sample(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP")
    call = await peer.place_call(ws.url, destination="7000")
    files = segments(tmp_path, 3, seconds=1.0)
    for path, _ in files:
        await esl.command(execute(call.uuid, path))
    await esl.event("PLAYBACK_START", call.uuid)
    assert await esl.api(f"uuid_break {call.uuid} all") == "+OK\n"
    stop = await esl.event("PLAYBACK_STOP", call.uuid)
    assert stop.headers["Playback-Status"] == "break"
    assert [p.status for p in call.plays] == ["break", "flushed", "flushed"]
    first = call.plays[0]
    assert files[0][1].startswith(first.pcm) and call.heard() == first.pcm
    heard_s = len(first.pcm) / 16000
    assert heard_s == pytest.approx((first.stopped_at or 0) - (first.started_at or 0), abs=1 / 8000)
    await call.hangup()
    await esl.close()


async def test_a_file_that_cannot_be_opened_gives_no_playback_events_only_execute_complete(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP CHANNEL_EXECUTE_COMPLETE")
    call = await peer.place_call(ws.url, destination="7000")
    (bad, _), (good, good_pcm) = segments(tmp_path, 2)
    call.player.fail_open = lambda path: path == bad
    await esl.command(execute(call.uuid, bad))
    await esl.command(execute(call.uuid, good))
    failed = await esl.event("CHANNEL_EXECUTE_COMPLETE", call.uuid)
    assert failed.headers["Application-Data"] == bad
    assert failed.headers["Application-Response"] == "FILE NOT FOUND"
    start = await esl.event("PLAYBACK_START", call.uuid)
    stop = await esl.event("PLAYBACK_STOP", call.uuid)
    assert start.headers["Playback-File-Path"] == stop.headers["Playback-File-Path"] == good
    assert not [e for e in esl.events if e.name.startswith("PLAYBACK")]  # nothing for the bad file
    assert [p.status for p in call.plays] == ["notfound", "done"] and call.heard() == good_pcm
    await call.hangup()
    await esl.close()
