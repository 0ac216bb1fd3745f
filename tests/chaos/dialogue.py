"""A caller that holds a conversation: says one utterance, waits until the robot's reply has been
heard to its end, then says the next; 20 ms frames paced at real time like a microphone.

Unlike ``place_call`` (one WAV played straight through), a reply that comes late (a worker died and
its work went to another instance) never makes the caller talk over the robot, so what is measured
is the fault and not an accidental barge-in. Hooks let a test act at a chosen moment of a turn.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from voiceplatform.audio import Int16Array, frames
from voiceplatform.cli.web_token import fetch_call_token

RATE = 16000
FRAME = RATE // 50
SILENCE = np.zeros(FRAME, dtype=np.int16).tobytes()
IDLE_S = 1.0  # robot audio silent this long after it played: the reply was heard to its end

# hook(dialogue, turn_index, moment): moment is "speaking" (half of the utterance sent) or "spoken"
# (all of it sent). A hook must return at once (start a task for anything slow): the caller is live.
Hook = Callable[["Dialogue", int, str], Awaitable[None]]


@dataclass
class DialogueTurn:
    index: int
    spoken_at: float = 0.0  # seconds into the call when the utterance's last frame was sent
    reply_audio_at: float | None = None  # first robot audio after that
    metrics: list[dict[str, Any]] = field(default_factory=list)  # turn.metrics of replies heard

    @property
    def gap_s(self) -> float | None:
        """End of the caller's utterance → first robot audio (what the caller waits)."""
        return None if self.reply_audio_at is None else self.reply_audio_at - self.spoken_at


@dataclass
class Dialogue:
    call_id: str = ""
    turns: list[DialogueTurn] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str = ""
    greeting_heard: bool = False

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


async def hold_dialogue(
    url: str,
    robot: str,
    utterances: list[Int16Array],
    hook: Hook | None = None,
    reply_timeout_s: float = 30.0,
    start_message: dict[str, Any] | None = None,
    connect_kwargs: dict[str, Any] | None = None,
) -> Dialogue:
    """Call ``robot`` at ``url`` and say ``utterances`` one reply at a time; hang up at the end."""
    result = Dialogue()
    t0 = time.monotonic()
    last_audio_at = -1.0
    audio_since = -1.0  # when the current stretch of robot audio began

    def now() -> float:
        return time.monotonic() - t0

    token = await fetch_call_token(url, robot)  # a page token, as the bundled page gets one
    start = {"type": "start", "token": token, "robot": robot, "sample_rate": RATE, "caller": "vp-chaos"}
    start.update(start_message or {})
    async with connect(url, max_size=2**22, **(connect_kwargs or {})) as ws:
        await ws.send(json.dumps(start))
        current: DialogueTurn | None = None

        async def receive() -> None:
            nonlocal last_audio_at, audio_since
            async for message in ws:
                t = now()
                if isinstance(message, bytes):
                    if t - last_audio_at > 0.1:
                        audio_since = t
                        if current is not None and current.reply_audio_at is None and t > current.spoken_at:
                            current.reply_audio_at = t
                    last_audio_at = t
                    result.greeting_heard = True
                    continue
                event = json.loads(message)
                event["t_s"] = round(t, 3)
                result.events.append(event)
                kind = event.get("type")
                if kind == "call.started":
                    result.call_id = str(event.get("call_id", ""))
                elif kind == "turn.metrics" and current is not None:
                    current.metrics.append(event)
                elif kind == "call.ended":
                    result.end_reason = str(event.get("reason", ""))
                    return

        receiver = asyncio.create_task(receive())
        paced_start = time.monotonic()
        sent = 0

        async def send(chunk: bytes) -> None:
            nonlocal sent
            await ws.send(chunk)
            sent += 1
            delay = paced_start + sent * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

        async def until_robot_quiet(after: float, deadline: float, turn: DialogueTurn | None = None) -> None:
            """Silence until robot audio started after ``after`` and then stopped for IDLE_S, and (for a
            caller turn) the gateway said the reply is over: a reply whose next sentence is being
            redone by another instance pauses for a moment, and a caller who spoke into that pause
            would cut it."""
            while not receiver.done() and time.monotonic() < deadline:
                t = now()
                finished = turn is None or bool(turn.metrics)
                if finished and last_audio_at > after and t - last_audio_at > IDLE_S:
                    return
                await send(SILENCE)

        try:
            await until_robot_quiet(0.0, time.monotonic() + reply_timeout_s)  # the greeting
            for index, samples in enumerate(utterances):
                if receiver.done():
                    break
                current = DialogueTurn(index)
                result.turns.append(current)
                chunks = [f.tobytes() for f in frames(samples, FRAME)]
                half = len(chunks) // 2
                for n, chunk in enumerate(chunks):
                    if n == half and hook is not None:
                        await hook(result, index, "speaking")
                    await send(chunk)
                current.spoken_at = now()
                if hook is not None:
                    await hook(result, index, "spoken")
                await until_robot_quiet(current.spoken_at, time.monotonic() + reply_timeout_s, current)
        finally:
            if not receiver.done():
                await ws.send(json.dumps({"type": "hangup"}))
                try:
                    await asyncio.wait_for(receiver, 5.0)
                except TimeoutError:
                    receiver.cancel()
    return result
