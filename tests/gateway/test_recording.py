"""The stereo call recording: caller left, robot right, placed by a (fake) clock; a flush cuts the
robot audio not yet heard; a session hooked to it announces the file on the lifecycle subject."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from tests.gateway.test_call_session import FRAME, RATE, robot, start_call
from tests.waiting import wait_for
from voiceplatform.gateway import CallSession
from voiceplatform.gateway.recording import RecordingSink, StereoRecording, recording_path
from voiceplatform.wire import CallRecording

N = FRAME // 2  # samples in a 20 ms frame at 16 kHz
__all__ = ["robot"]  # the robot fixture of the session tests


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms / 1000


def frame(value: int, frames: int = 1) -> bytes:
    return (np.full(N * frames, value, dtype=np.int16)).tobytes()


def read_stereo(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data[0::2], data[1::2], len(data) // 2


def ms(value: int) -> int:
    return value * RATE // 1000


def test_caller_left_robot_right_aligned_by_time(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "day" / "c1.wav", RATE, clock=clock)
    for _ in range(10):  # 200 ms of caller speech from 0
        rec.caller(frame(1000))
        clock.advance(20)
    clock.advance(300)  # 500 ms: the robot starts answering; the caller is silent
    for _ in range(5):
        rec.robot(frame(-2000))
        clock.advance(20)
    for _ in range(75):  # 1.5 s more, long enough for the first second to be written as the call goes
        rec.caller(frame(0))
        clock.advance(20)
    assert not (tmp_path / "day" / "c1.wav").exists() and (tmp_path / "day" / "c1.wav.part").exists()
    duration = rec.close()

    left, right, total = read_stereo(tmp_path / "day" / "c1.wav")
    assert not (tmp_path / "day" / "c1.wav.part").exists()
    assert duration == total * 1000 // RATE
    assert np.all(left[: ms(200)] == 1000) and np.all(left[ms(200) :] == 0)
    # the robot's frames sit where they were played (500-600 ms), silence elsewhere
    assert np.all(right[: ms(500)] == 0)
    assert np.all(right[ms(500) : ms(600)] == -2000)
    assert np.all(right[ms(600) :] == 0)


def test_a_flush_removes_robot_audio_sent_ahead_but_not_heard(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c2.wav", RATE, clock=clock)
    rec.robot(frame(3000, frames=10))  # 200 ms sent at once at 0 (the playout's lead)
    clock.advance(80)  # the caller barges in after 80 ms of it
    rec.clear_robot()
    clock.advance(40)
    rec.robot(frame(500))  # the next reply starts where the clock is, not after the cut audio
    rec.close()
    _, right, _ = read_stereo(tmp_path / "c2.wav")
    assert np.all(right[: ms(80)] == 3000)
    assert np.all(right[ms(80) : ms(120)] == 0)
    assert np.all(right[ms(120) : ms(140)] == 500)


def test_caller_audio_after_a_gap_starts_at_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c3.wav", RATE, clock=clock, late_s=0.5)
    rec.caller(frame(100))
    clock.advance(3000)  # a dropped socket: nothing for 3 s
    rec.caller(frame(200))
    rec.close()
    left, _, total = read_stereo(tmp_path / "c3.wav")
    assert np.all(left[: ms(20)] == 100)
    assert np.all(left[ms(20) : ms(2980)] == 0)
    assert np.all(left[ms(2980) : ms(3000)] == 200) and total == ms(3000)


async def test_a_session_records_the_call_and_announces_the_file(broker, robot, tmp_path: Path) -> None:
    session, sink, _workers, seen = await start_call(broker, robot)
    await session.end("test")  # unrecorded: no recordings dir given
    assert session.recording is None and not any(isinstance(m, CallRecording) for m in seen)

    gateway = broker.bus("gateway")
    recorded = CallSession(
        gateway, robot, channel="web", sample_rate=RATE, sink=sink, recordings_dir=tmp_path / "rec"
    )
    assert isinstance(recorded.sink, RecordingSink)
    await recorded.start()
    await wait_for(lambda: len(sink.audio) >= 10)  # the 200 ms greeting was played (and recorded)
    for _ in range(5):
        await recorded.push_audio(frame(700))
    await recorded.end("test")
    await wait_for(lambda: len([m for m in seen if isinstance(m, CallRecording)]) == 2)
    announced = [m for m in seen if isinstance(m, CallRecording)]
    path = recording_path(tmp_path / "rec", recorded.call_id)
    assert [(m.action, m.path, m.format, m.channels) for m in announced] == [
        ("start", str(path), "wav", 2),
        ("stop", str(path), "wav", 2),
    ]
    assert announced[1].duration_ms is not None and announced[1].duration_ms >= 200
    left, right, _ = read_stereo(path)
    assert np.count_nonzero(left == 700) == 5 * N  # every caller frame, on the left only
    assert np.count_nonzero(right == 1000) == ms(200)  # the greeting (robot.wav of 1000s), on the right


async def test_a_robot_can_turn_recording_off(broker, robot, tmp_path: Path) -> None:
    off = robot.settings.model_copy(
        update={"recording": robot.settings.recording.model_copy(update={"calls": False})}
    )
    robot_off = type(robot)(robot.name, robot.path, off, robot.system_prompt, robot.prompts, robot.env)
    _, sink, _, _ = await start_call(broker, robot)
    session = CallSession(
        broker.bus("gateway"),
        robot_off,
        channel="web",
        sample_rate=RATE,
        sink=sink,
        recordings_dir=tmp_path / "rec",
    )
    assert session.recording is None and session.sink is sink
    assert not (tmp_path / "rec").exists()


def test_the_file_is_written_as_the_call_goes_also_without_caller_audio(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c4.wav", RATE, clock=clock)
    for _ in range(150):  # 3 s of the robot, the caller's socket gone
        rec.robot(frame(900))
        clock.advance(20)
    part = tmp_path / "c4.wav.part"
    written = part.stat().st_size - 44  # past the WAV header
    assert written >= ms(1000) * 4  # at least a second of stereo frames is on disk already
    rec.close()
    left, right, total = read_stereo(tmp_path / "c4.wav")
    assert total == ms(3000) and np.all(right == 900) and not np.any(left)


def test_a_long_reply_sent_at_once_grows_the_buffer_and_every_sample_lands_in_place(tmp_path: Path) -> None:
    # a voice that hands over 6 s at once outgrows the 4 s the buffer starts with; then the caller
    # talks for 8 s, so settled seconds are written (and the buffer shifted) while it is grown
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c3.wav", RATE, clock=clock)
    reply = np.arange(ms(6000), dtype=np.int16) % 997
    rec.robot(reply.tobytes())
    for k in range(400):
        rec.caller(frame(k % 50 + 1))
        clock.advance(20)
    rec.close()
    left, right, n = read_stereo(tmp_path / "c3.wav")
    assert n == ms(8000)
    assert np.array_equal(right[: ms(6000)], reply) and not right[ms(6000) :].any()
    expected_left = np.repeat(np.arange(400, dtype=np.int16) % 50 + 1, N)
    assert np.array_equal(left, expected_left)


def test_audio_a_sink_reports_heard_is_placed_when_heard_and_cut_at_the_hangup(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c4.wav", RATE, clock=clock)
    start = clock.t
    for _ in range(50):  # 1 s of caller audio
        rec.caller(frame(7))
        clock.advance(20)
    rec.robot_heard(frame(-3, frames=20), start + 0.3)  # 400 ms the caller started hearing at 300 ms
    rec.clear_robot(start + 0.5)  # hung up at 500 ms: the rest was never heard
    rec.close()
    _, right, _ = read_stereo(tmp_path / "c4.wav")
    assert not right[: ms(300)].any()
    assert (right[ms(300) : ms(500)] == -3).all()
    assert not right[ms(500) :].any()


class HeardSink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.listeners: tuple[object, object] | None = None

    def report_heard(self, heard, unheard_after) -> None:  # type: ignore[no-untyped-def]
        self.listeners = (heard, unheard_after)

    async def send_audio(self, pcm: bytes) -> None:
        self.sent.append(pcm)

    async def send_event(self, event: dict) -> None:  # type: ignore[type-arg]
        pass

    async def flush(self, turn_id: str) -> None:
        pass

    async def close(self, reason: str) -> None:
        pass


async def test_a_sink_that_reports_heard_audio_places_it_not_the_send(tmp_path: Path) -> None:
    clock = FakeClock()
    rec = StereoRecording(tmp_path / "c5.wav", RATE, clock=clock)
    inner = HeardSink()
    sink = RecordingSink(inner, rec)
    assert inner.listeners == (rec.robot_heard, rec.clear_robot)
    await sink.send_audio(frame(5))  # sent at 0: not heard yet, so not placed
    clock.advance(200)
    rec.robot_heard(frame(5), clock.t)  # heard from 200 ms
    clock.advance(20)
    rec.close()
    _, right, _ = read_stereo(tmp_path / "c5.wav")
    assert inner.sent == [frame(5)]
    assert not right[: ms(200)].any() and (right[ms(200) : ms(220)] == 5).all()
