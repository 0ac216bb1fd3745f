"""A web call through the real gateway-web server is recorded: a stereo WAV with the caller's frames
on the left and the robot's greeting on the right, announced as call.recording (start, then stop)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from tests.waiting import wait_for
from voiceplatform.gateway.turns import TurnState
from voiceplatform.wire import CallRecording

CALLER = np.full(320, 1200, dtype="<i2").tobytes()  # 20 ms at 16 kHz, a level the robot never sends


async def test_a_web_call_leaves_a_stereo_recording(gateway_factory, tmp_path: Path) -> None:
    async with gateway_factory(recordings_dir=tmp_path / "rec") as gw:
        ws, resumable = await gw.call()
        call_id = resumable["call_id"]
        for _ in range(25):
            await ws.send(CALLER)
        await wait_for(lambda: len(gw.chunks(call_id)) >= 25)
        # the robot's greeting (100 ms of 500s) has been played out before the caller hangs up
        greeting = gw.service.sessions[call_id].turns.get(f"{call_id}-greeting")
        await wait_for(lambda: greeting is not None and greeting.state is TurnState.DONE)
        await ws.send(json.dumps({"type": "hangup"}))
        await wait_for(lambda: len(gw.lifecycle(call_id, CallRecording)) == 2)

    start, stop = gw.lifecycle(call_id, CallRecording)
    assert (start.action, stop.action) == ("start", "stop") and start.path == stop.path
    assert (stop.format, stop.channels) == ("wav", 2) and stop.duration_ms > 0
    path = Path(stop.path)
    assert path.is_relative_to((tmp_path / "rec").resolve()) and path.name == f"{call_id}.wav"
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 16000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    left, right = frames[0::2], frames[1::2]
    assert np.count_nonzero(left == 1200) == 25 * 320 and not np.any(right == 1200)
    assert np.count_nonzero(right == 500) == 1600 and not np.any(left == 500)
    assert not list(path.parent.glob("*.part"))
