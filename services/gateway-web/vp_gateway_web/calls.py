"""A web call that outlives its socket: admission slots, resume tokens, idle/length limits, grace."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from voiceplatform.gateway import CallSession, FrameAssembler
from vp_gateway_web.guard import AudioRate
from vp_gateway_web.sink import WebSocketSink


class Admission:
    """Concurrent calls on this gateway, in total and per robot; a refusal names its scope."""

    def __init__(self, max_calls: int, max_per_robot: int) -> None:
        self.max_calls = max_calls
        self.max_per_robot = max_per_robot or max_calls
        self.per_robot: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.per_robot.values())

    def admit(self, robot: str) -> str | None:
        """Take a slot, or return the scope that is full ("gateway" or "robot")."""
        if self.total >= self.max_calls:
            return "gateway"
        if self.per_robot.get(robot, 0) >= self.max_per_robot:
            return "robot"
        self.per_robot[robot] = self.per_robot.get(robot, 0) + 1
        return None

    def release(self, robot: str) -> None:
        left = self.per_robot.get(robot, 0) - 1
        if left > 0:
            self.per_robot[robot] = left
        else:
            self.per_robot.pop(robot, None)


class EndedCalls:
    """Why recent calls ended, so a client resuming too late is told (bounded, oldest forgotten)."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._reasons: OrderedDict[str, str] = OrderedDict()

    def add(self, call_id: str, reason: str) -> None:
        self._reasons[call_id] = reason
        while len(self._reasons) > self.keep:
            self._reasons.popitem(last=False)

    def get(self, call_id: str) -> str:
        return self._reasons.get(call_id, "unknown_call")


@dataclass
class WebCall:
    session: CallSession
    sink: WebSocketSink
    assembler: FrameAssembler
    rate: AudioRate
    robot: str
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    last_audio: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    warned_fast_audio: bool = False
    grace: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    reaper: asyncio.Task[None] | None = None

    @property
    def call_id(self) -> str:
        return self.session.call_id

    @property
    def attached(self) -> bool:
        return self.sink.ws is not None

    def spend_resume_token(self, token: str) -> bool:
        """True (and a fresh token issued) when ``token`` is the current one: each works once."""
        if not token or not hmac.compare_digest(token.encode(), self.resume_token.encode()):
            return False
        self.resume_token = secrets.token_urlsafe(24)
        return True

    def start_watchdog(self, idle_s: float, max_s: float) -> None:
        self.watchdog = asyncio.create_task(self._watch(idle_s, max_s), name=f"{self.call_id}-limits")

    async def _watch(self, idle_s: float, max_s: float) -> None:
        """End the call when the caller sent no audio for ``idle_s`` (while attached) or at ``max_s``."""
        step = min(1.0, idle_s / 4, max_s / 4)
        while not self.session.ended:
            await asyncio.sleep(step)
            now = time.monotonic()
            if now - self.started >= max_s:
                await self.session.end("max_duration")
            elif self.attached and now - self.last_audio >= idle_s:
                await self.session.end("idle_timeout")

    def lost(self, grace_s: float) -> None:
        """The socket dropped: end the call as ``client_lost`` unless it is resumed within ``grace_s``."""
        self.cancel_grace()
        self.grace = asyncio.create_task(self._grace_end(grace_s), name=f"{self.call_id}-grace")

    async def _grace_end(self, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        if not self.attached:
            await self.session.end("client_lost")

    def cancel_grace(self) -> None:
        if self.grace is not None and self.grace is not asyncio.current_task():
            self.grace.cancel()
        self.grace = None

    async def stop_tasks(self) -> None:
        current = asyncio.current_task()
        for task in (self.grace, self.watchdog):
            if task is not None and task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
