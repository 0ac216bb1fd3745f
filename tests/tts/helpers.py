"""Collect what the TTS service publishes for one call and wait for sentences to close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope
from voiceplatform.wire import LlmSentence, Message, StageError, TtsAudio


class CallOutput:
    def __init__(self) -> None:
        self.audio: list[tuple[float, TtsAudio]] = []
        self.errors: list[StageError] = []
        self._changed = asyncio.Event()

    @classmethod
    async def on(cls, bus: Bus, call_id: str) -> CallOutput:
        out = cls()
        await bus.subscribe(subjects.tts_audio(call_id), out._handle)
        await bus.subscribe(subjects.lifecycle(call_id), out._handle)
        return out

    async def _handle(self, env: Envelope) -> Message | None:
        if isinstance(env.message, TtsAudio):
            self.audio.append((time.monotonic(), env.message))
        elif isinstance(env.message, StageError):
            self.errors.append(env.message)
        self._changed.set()
        return None

    def chunks(self, index: int, turn_id: str = "") -> list[TtsAudio]:
        return [m for _, m in self.audio if m.index == index and (not turn_id or m.turn_id == turn_id)]

    def pcm(self, index: int) -> bytes:
        return b"".join(m.pcm for m in self.chunks(index))

    def closed(self, index: int) -> bool:
        return any(m.last for m in self.chunks(index))

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; audio={[(m.index, m.seq, m.last) for _, m in self.audio]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                # conditions may also watch provider state: poll as well as wake on messages
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.02))

    async def wait_closed(self, *indexes: int, timeout_s: float = 10.0) -> None:
        await self.wait_until(lambda: all(self.closed(i) for i in indexes), timeout_s)


def sentence(
    call_id: str, turn_id: str, index: int, text: str, robot: str, sample_rate: int = 16000
) -> LlmSentence:
    return LlmSentence(
        call_id=call_id, turn_id=turn_id, index=index, text=text, robot=robot, sample_rate=sample_rate
    )
