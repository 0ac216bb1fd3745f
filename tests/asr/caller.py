"""A minimal gateway + VAD stand-in for ASR service tests: assigns a call, streams frames, says where
speech starts and ends, and collects what the ASR publishes for the call."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from tests.audio_fixtures import pcm_frames
from voiceplatform import subjects
from voiceplatform.audio import Int16Array
from voiceplatform.bus import Bus, Envelope, NoResponders
from voiceplatform.wire import (
    AsrFinal,
    AssignReply,
    AssignRequest,
    AudioChunk,
    CallEnded,
    StageError,
    VadSpeechEnded,
    VadSpeechStarted,
)


class FakeCaller:
    def __init__(self, bus: Bus, robot: str = "testbot", sample_rate: int = 16000) -> None:
        self.bus = bus
        self.robot = robot
        self.rate = sample_rate
        self.call_id = f"call-{uuid.uuid4().hex[:10]}"
        self.finals: asyncio.Queue[AsrFinal] = asyncio.Queue()
        self.errors: asyncio.Queue[StageError] = asyncio.Queue()
        self.seq = 0
        self._subs: list[Any] = []

    async def assign(self, retries: int = 20) -> AssignReply:
        self._subs.append(await self.bus.subscribe(subjects.asr(self.call_id), self._on_asr))
        self._subs.append(await self.bus.subscribe(subjects.lifecycle(self.call_id), self._on_lifecycle))
        request = AssignRequest(call_id=self.call_id, role="asr", robot=self.robot, sample_rate=self.rate)
        for attempt in range(retries + 1):
            try:
                reply = await self.bus.request(subjects.assign("asr"), request, timeout=5.0)
                break
            except NoResponders:
                # a just-started worker's subscription may not have reached the server yet
                if attempt == retries:
                    raise
                await asyncio.sleep(0.05)
        assert isinstance(reply, AssignReply)
        return reply

    async def _on_asr(self, env: Envelope) -> None:
        if isinstance(env.message, AsrFinal):
            self.finals.put_nowait(env.message)

    async def _on_lifecycle(self, env: Envelope) -> None:
        if isinstance(env.message, StageError):
            self.errors.put_nowait(env.message)

    @property
    def offset_ms(self) -> int:
        return self.seq * 20

    async def send(self, samples: Int16Array) -> None:
        for pcm in pcm_frames(samples, self.rate):
            await self.send_frame(pcm)

    async def send_frame(self, pcm: bytes, sample_rate: int | None = None) -> None:
        chunk = AudioChunk(call_id=self.call_id, seq=self.seq, sample_rate=sample_rate or self.rate, pcm=pcm)
        await self.bus.publish(subjects.audio_in(self.call_id), chunk)
        self.seq += 1

    async def speech_started(self, turn_id: str, offset_ms: int) -> None:
        msg = VadSpeechStarted(call_id=self.call_id, turn_id=turn_id, audio_offset_ms=offset_ms)
        await self.bus.publish(subjects.vad(self.call_id), msg)

    async def speech_ended(self, turn_id: str, offset_ms: int, speech_ms: int) -> VadSpeechEnded:
        msg = VadSpeechEnded(
            call_id=self.call_id, turn_id=turn_id, audio_offset_ms=offset_ms, speech_ms=speech_ms
        )
        await self.bus.publish(subjects.vad(self.call_id), msg)
        return msg

    async def say(
        self, turn_id: str, speech: Int16Array, lead_ms: int = 300, trail_ms: int = 300
    ) -> VadSpeechEnded:
        """Silence, the utterance, silence; VAD events around the speech (started 100 ms late, as a
        real VAD confirms speech after a few frames)."""
        await self.send(self.silence(lead_ms))
        start = self.offset_ms
        await self.speech_started(turn_id, start + 100)
        await self.send(speech)
        end = self.offset_ms
        await self.send(self.silence(trail_ms))
        return await self.speech_ended(turn_id, end, end - start)

    def silence(self, ms: int) -> Int16Array:
        return np.zeros(self.rate * ms // 1000, dtype=np.int16)

    async def hang_up(self) -> None:
        await self.bus.publish(
            subjects.lifecycle(self.call_id), CallEnded(call_id=self.call_id, reason="hangup")
        )

    async def next_final(self, wait_s: float = 10.0) -> AsrFinal:
        return await asyncio.wait_for(self.finals.get(), wait_s)

    async def next_error(self, wait_s: float = 5.0) -> StageError:
        return await asyncio.wait_for(self.errors.get(), wait_s)

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
