"""Caller frames out of a gateway process, published a few milliseconds at a time.

Each frame stays one ``audio.chunk`` message on its call's ``audio.in`` subject (the wire is
unchanged), but the frames of every call that arrive within ``batch_ms`` are published together, in
one turn of the event loop. nats-py then writes them to its socket with one system call, and the
server and the vad/asr subscribers read them in one wake-up, instead of one of each per frame: that
was the largest per-frame cost of the phone path (``bench/bench_phone_cost.py``). Frames keep their
order per call. The price is at most ``batch_ms`` more delay on the caller's audio; the frames'
``ts_ms`` still says when the gateway took them.

A publish that fails (the NATS connection is closed) drops that frame: counted in
``vp_messages_dropped_total{service, stage="audio.in", reason="publish_failed"}`` and logged once
per outage; the call goes on (the failover replay resends what an owner needs).
"""

from __future__ import annotations

import asyncio

import structlog

from voiceplatform import metrics
from voiceplatform.bus import Bus
from voiceplatform.wire import AudioChunk

log = structlog.get_logger("voiceplatform.gateway.frames")


class FrameOutbox:
    """One per gateway process: ``put`` never waits, the frames go out ``batch_ms`` later at most."""

    def __init__(self, bus: Bus, batch_ms: float, service: str = "gateway") -> None:
        self.bus = bus
        self.delay_s = batch_ms / 1000
        self._pending: list[tuple[str, AudioChunk]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._dropped = metrics.MESSAGES_DROPPED.labels(service, "audio.in", "publish_failed")
        self._failing = False
        self._lock = asyncio.Lock()  # flushes one after the other: frames never overtake each other

    def put(self, subject: str, chunk: AudioChunk) -> None:
        self._pending.append((subject, chunk))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._due)

    def _due(self) -> None:
        self._timer = None
        task = asyncio.create_task(self.flush(), name="frame-outbox")
        self._flushing.add(task)  # a reference until it is done
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Publish what is pending now (also at the end of a call, so its last frames go out)."""
        async with self._lock:
            batch, self._pending = self._pending, []
            for subject, chunk in batch:
                try:
                    await self.bus.publish(subject, chunk)
                except Exception as exc:  # connection closed or reconnecting: the frame is lost
                    self._dropped.inc()
                    if not self._failing:
                        self._failing = True
                        log.warning("gateway.frames_publish_failed", error=type(exc).__name__)
                    continue
                self._failing = False

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
