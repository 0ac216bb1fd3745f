"""The platform-overhead benchmark's calls, run through pipecat (runs in pipecat's own venv).

``bench/bench_pipecat.py`` installs pipecat into a separate virtual environment and starts this
script there; nothing here imports voiceplatform. Each simulated call is one pipecat pipeline in this
one process, the way a pipecat deployment runs its bots:

    input → user aggregator (energy VAD) → instant STT → instant LLM → instant TTS → output (20 ms clock)

with the same instant engines as ``bench/instant_engines.py``: the STT returns a fixed Russian text
for the segment at once, the LLM a fixed sentence, the TTS 200 ms of 440 Hz tone. The VAD is an
energy VAD with the platform robot's settings (start 0.1 s, stop 0.5 s). The caller pushes 20 ms
frames on an absolute schedule (``bench/caller_signal.py``); the output transport plays 20 ms chunks
on a real-time clock, like an audio device.

Prints one JSON object per level on stdout: overhead (last speech frame pushed → first reply frame
written, minus the VAD's 0.5 s stop time), frame lag (lateness of each reply frame against the
playout clock) and caller lag (lateness of each caller push), plus CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from caller_signal import FRAME_S, GAP_FRAMES, RATE, caller_frames
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

ASR_TEXT = "Сколько стоит доставка?"
REPLY_TEXT = "Доставка стоит триста рублей."
TONE_MS = 200
HANGOVER_S = 0.5  # the platform robot's silence_frames=25 × 20 ms
TURN_TIMEOUT_S = 6.0
MIN_TURNS = 15


def tone_pcm(sample_rate: int, ms: int = TONE_MS) -> bytes:
    t = np.arange(sample_rate * ms // 1000) / sample_rate
    return (np.sin(2 * np.pi * 440.0 * t) * 6000).astype("<i2").tobytes()


class EnergyVad(VADAnalyzer):
    """RMS threshold VAD over 20 ms windows (the platform's energy VAD does the same)."""

    def num_frames_required(self) -> int:
        return int(self.sample_rate * FRAME_S)

    def voice_confidence(self, buffer: bytes) -> float:
        pcm = np.frombuffer(buffer, dtype="<i2").astype(np.float32)
        return 1.0 if pcm.size and math.sqrt(float(np.mean(pcm * pcm))) > 500 else 0.0


class InstantStt(SegmentedSTTService):
    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        yield TranscriptionFrame(ASR_TEXT, "caller", "", finalized=True)


class InstantLlm(LLMService):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self.push_frame(LLMTextFrame(REPLY_TEXT))
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


class InstantTts(TTSService):
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        yield TTSAudioRawFrame(tone_pcm(self.sample_rate), self.sample_rate, 1, context_id=context_id)


class MemoryInput(BaseInputTransport):
    def __init__(self, params: TransportParams) -> None:
        super().__init__(params)
        self.ready = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.ready.set()


class DeviceOutput(BaseOutputTransport):
    """Writes 20 ms chunks on a real-time clock and timestamps each one."""

    def __init__(self, params: TransportParams) -> None:
        super().__init__(params)
        self.frame_times: list[float] = []
        self._next_write = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        now = time.monotonic()
        if self._next_write > now:
            await asyncio.sleep(self._next_write - now)
            now = time.monotonic()
        if not is_silence(frame.audio):
            self.frame_times.append(now)
        self._next_write = max(self._next_write, now - FRAME_S) + FRAME_S
        return True


def is_silence(pcm: bytes) -> bool:
    return not np.frombuffer(pcm, dtype="<i2").any()


class Level:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.overhead_ms: list[float] = []
        self.frame_lag_ms: list[float] = []
        self.caller_lag_ms: list[float] = []
        self.errors: dict[str, int] = {}
        self.call_seconds = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def reply_lags(times: list[float]) -> list[float]:
    if not times:
        return []
    return [max(0.0, (t - (times[0] + k * FRAME_S)) * 1000) for k, t in enumerate(times)]


async def simulated_call(turns: int, start_delay: float, level: Level | None, seed: int) -> None:
    await asyncio.sleep(start_delay)
    speech, silence = caller_frames(seed)
    params = TransportParams(
        audio_in_enabled=True,
        audio_in_sample_rate=RATE,
        audio_out_enabled=True,
        audio_out_sample_rate=RATE,
        audio_out_10ms_chunks=2,
    )
    source, sink = MemoryInput(params), DeviceOutput(params)
    vad = EnergyVad(params=VADParams(start_secs=0.1, stop_secs=HANGOVER_S, min_volume=0.0))
    aggregators = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]
            ),
        ),
    )
    pipeline = Pipeline(
        [
            source,
            InstantStt(sample_rate=RATE),
            aggregators.user(),
            InstantLlm(),
            InstantTts(sample_rate=RATE),
            sink,
            aggregators.assistant(),
        ]
    )
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False,
    )
    runner = PipelineRunner(handle_sigint=False)
    run = asyncio.create_task(runner.run(task))
    started = time.monotonic()
    try:
        await asyncio.wait_for(source.ready.wait(), 10)
        start, sent = time.monotonic(), 0
        lateness: list[float] = []

        async def push(pcm: bytes) -> float:
            nonlocal sent
            due = start + sent * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            lateness.append(max(0.0, (now - due) * 1000))
            await source.push_audio_frame(InputAudioRawFrame(pcm, RATE, 1))
            sent += 1
            return now

        for _ in range(turns):
            last_speech = 0.0
            for frame in speech:
                last_speech = await push(frame)
            first = len(sink.frame_times)
            deadline = last_speech + TURN_TIMEOUT_S
            # the reply is over once its 200 ms have been written and 5 more frames passed quietly
            while time.monotonic() < deadline:
                await push(silence)
                reply = sink.frame_times[first:]
                if len(reply) >= TONE_MS / 20 and time.monotonic() - reply[-1] > 0.1:
                    break
            reply = sink.frame_times[first:]
            if level is not None:
                if not reply:
                    level.error("no_reply_audio")
                else:
                    level.overhead_ms.append((reply[0] - last_speech - HANGOVER_S) * 1000)
                    level.frame_lag_ms.extend(reply_lags(reply))
            for _ in range(GAP_FRAMES):
                await push(silence)
        if level is not None:
            level.caller_lag_ms.extend(lateness)
    finally:
        await task.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(run, 10)
        except TimeoutError:
            await task.cancel()
        if level is not None:
            level.call_seconds += time.monotonic() - started


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_levels(levels: list[int], turns: int, min_turns: int) -> None:
    await simulated_call(1, 0.0, None, 999)  # warm-up, discarded
    for concurrency in levels:
        level = Level(concurrency)
        per_call = max(turns, math.ceil(min_turns / concurrency))
        spread = min(2.0, 0.04 * concurrency)
        cpu0 = cpu_seconds()
        await asyncio.gather(
            *(simulated_call(per_call, random.uniform(0, spread), level, i) for i in range(concurrency))
        )
        out = {
            "concurrency": concurrency,
            "overhead_ms": level.overhead_ms,
            "frame_lag_ms": level.frame_lag_ms,
            "caller_lag_ms": level.caller_lag_ms,
            "errors": level.errors,
            "call_seconds": level.call_seconds,
            "cpu_seconds": cpu_seconds() - cpu0,
        }
        print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--min-turns", type=int, default=MIN_TURNS, help="turns per level at least")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="CRITICAL")  # pipecat logs every unset setting per call
    asyncio.run(run_levels(args.levels, args.turns, args.min_turns))


if __name__ == "__main__":
    main()
