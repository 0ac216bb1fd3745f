"""Calls for the console tests, as the pipeline would publish them: a realistic two-turn Russian call
with a prompt switch, a barge-in, a stage error, provider usage and a stereo recording made by the
gateways' own writer (``StereoRecording`` on a fake clock)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voiceplatform import subjects
from voiceplatform.gateway.recording import StereoRecording, recording_path
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallRecording,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    Message,
    PlaybackStarted,
    PromptSwitched,
    ProviderUsage,
    StageError,
    TurnMetrics,
)

RATE = 16000
CALLER = "+79990001122"


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def tone(ms: int, hz: float, level: int) -> list[bytes]:
    """20 ms frames of a sine tone."""
    n = ms * RATE // 1000
    wave = (np.sin(2 * np.pi * hz * np.arange(n) / RATE) * level).astype("<i2").tobytes()
    return [wave[i : i + 640] for i in range(0, len(wave), 640)]


def make_recording(recordings_dir: Path, call_id: str, seconds: int = 4) -> tuple[Path, int]:
    """A stereo WAV: the caller speaks at 0.5 s, the robot answers at 1.5 s (cut at 2.3 s)."""
    clock = _Clock()
    rec = StereoRecording(recording_path(recordings_dir, call_id), RATE, clock=clock)
    caller = tone(800, 220, 6000)
    robot = tone(1500, 440, 5000)
    for i in range(seconds * 50):
        clock.t = i * 0.02
        if 25 <= i < 25 + len(caller):
            rec.caller(caller[i - 25])
        else:
            rec.caller(b"\0" * 640)
        if 75 <= i < 75 + len(robot):
            rec.robot(robot[i - 75])
        if i == 115:
            rec.clear_robot()  # the caller barged in
    return rec.path, rec.close()


def demo_call(
    call_id: str, t0: int, recordings_dir: Path | None, robot: str = "pipeline_russian"
) -> list[tuple[str, Message]]:
    t1, t2 = f"{call_id}-t1", f"{call_id}-t2"
    c = {"call_id": call_id}
    lc, us, tr, asr, llm, ctl = (
        subjects.lifecycle(call_id),
        subjects.usage(call_id),
        subjects.turn_report(call_id),
        subjects.asr(call_id),
        subjects.llm_done(call_id),
        subjects.control(call_id),
    )
    events: list[tuple[str, Message]] = [
        (lc, CallStarted(**c, robot=robot, channel="web", sample_rate=RATE, caller=CALLER, ts_ms=t0)),
    ]
    path: Path | None = None
    duration = 0
    if recordings_dir is not None:
        path, duration = make_recording(recordings_dir, call_id)
        rec = {"path": str(path), "format": "wav", "channels": 2}
        events.append((lc, CallRecording(**c, **rec, action="start", ts_ms=t0 + 1)))  # type: ignore[arg-type]
    events += [
        (asr, AsrFinal(**c, turn_id=t1, text="здравствуйте, сколько стоит доставка", provider="whisper",
                       ts_ms=t0 + 1400)),
        (us, ProviderUsage(**c, turn_id=t1, stage="asr", provider="whisper", audio_ms=1800, ts_ms=t0 + 1400)),
        (llm, LlmDone(**c, turn_id=t1, text="Доставка по городу бесплатная.", sentences=1, provider="script",
                      prompt_tokens=120, completion_tokens=14, ts_ms=t0 + 1700)),
        (us, ProviderUsage(**c, turn_id=t1, stage="llm", provider="script", prompt_tokens=120,
                           completion_tokens=14, ts_ms=t0 + 1700)),
        (us, ProviderUsage(**c, turn_id=t1, stage="tts", provider="festival", characters=30,
                           ts_ms=t0 + 1800)),
        (tr, PlaybackStarted(**c, turn_id=t1, ts_ms=t0 + 1950)),
        (tr, TurnMetrics(**c, turn_id=t1, user_text="здравствуйте, сколько стоит доставка",
                         bot_text="Доставка по городу бесплатная.", speech_end_ts_ms=t0 + 1000,
                         asr_final_ts_ms=t0 + 1380, first_sentence_ts_ms=t0 + 1690,
                         first_audio_ts_ms=t0 + 1800, first_played_ts_ms=t0 + 1950, outcome="played",
                         ts_ms=t0 + 3500)),
        (lc, PromptSwitched(**c, turn_id=t2, from_prompt="main", to_prompt="orders", matched="заказ",
                            ts_ms=t0 + 4550)),
        (asr, AsrFinal(**c, turn_id=t2, text="а где мой заказ", provider="whisper", ts_ms=t0 + 4420)),
        (llm, LlmDone(**c, turn_id=t2, text="Сейчас проверю ваш заказ, назовите номер.", sentences=1,
                      provider="script", ts_ms=t0 + 4800)),
        (tr, PlaybackStarted(**c, turn_id=t2, ts_ms=t0 + 5020)),
        (ctl, ControlInterrupt(**c, turn_id=t2, by_turn_id=f"{call_id}-t3", played_ms=600,
                               played_text="Сейчас проверю", ts_ms=t0 + 5600)),
        (tr, TurnMetrics(**c, turn_id=t2, user_text="а где мой заказ",
                         bot_text="Сейчас проверю ваш заказ, назовите номер.", speech_end_ts_ms=t0 + 4000,
                         asr_final_ts_ms=t0 + 4420, first_sentence_ts_ms=t0 + 4780,
                         first_audio_ts_ms=t0 + 4900,
                         first_played_ts_ms=t0 + 5020, interrupted=True, played_text="Сейчас проверю",
                         outcome="cut", ts_ms=t0 + 5650)),
        (lc, StageError(**c, stage="tts", kind="timeout", detail="festival did not answer in 3 s",
                        retryable=True, turn_id=f"{call_id}-t3", ts_ms=t0 + 6000)),
        (lc, CallEnded(**c, reason="caller_hangup", duration_ms=7000, turns=2, ts_ms=t0 + 7000)),
    ]  # fmt: skip
    if path is not None:
        rec = {"path": str(path), "format": "wav", "channels": 2}
        events.append(
            (lc, CallRecording(**c, **rec, action="stop", duration_ms=duration, ts_ms=t0 + 7001))  # type: ignore[arg-type]
        )
    return events
