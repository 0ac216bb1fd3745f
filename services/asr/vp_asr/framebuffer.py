"""A call's rolling caller-audio buffer: 20 ms frames by sequence number, the newest ``buffer_ms``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import structlog

from voiceplatform.wire import FRAME_MS, frame_bytes

log = structlog.get_logger("vp_asr.framebuffer")


class FrameBuffer:
    def __init__(self, sample_rate: int, buffer_ms: int) -> None:
        self._frames: dict[int, bytes] = {}
        self.max_seq = -1
        self._oldest_seq = 0  # every buffered seq is >= this
        self._arrived = asyncio.Event()
        self._waiting = 0  # wait_for calls in progress: no event is made per frame without one
        self.silence = bytes(frame_bytes(sample_rate))
        self._keep = max(1, math.ceil(buffer_ms / FRAME_MS))

    def add(self, seq: int, pcm: bytes) -> None:
        self._frames[seq] = pcm
        if seq > self.max_seq:
            self.max_seq = seq
            self._evict_before(seq - self._keep + 1)
        if self._waiting:  # wake every waiter, then arm a fresh event for the next frame
            arrived, self._arrived = self._arrived, asyncio.Event()
            arrived.set()

    def clear(self) -> None:
        self._frames.clear()

    def _evict_before(self, oldest_kept: int) -> None:
        """Drop frames older than the rolling window; O(frames evicted) on the per-frame path."""
        if oldest_kept <= self._oldest_seq:
            return
        if oldest_kept - self._oldest_seq > len(self._frames):  # a jump in seq: rebuild once
            self._frames = {seq: pcm for seq, pcm in self._frames.items() if seq >= oldest_kept}
        else:
            for seq in range(self._oldest_seq, oldest_kept):
                self._frames.pop(seq, None)
        self._oldest_seq = oldest_kept

    async def wait_for(self, end_ms: int, timeout_s: float) -> None:
        """Until a frame at or past ``end_ms`` is buffered, or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        self._waiting += 1
        try:
            while self.max_seq * FRAME_MS < end_ms:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.debug("asr.tail_wait_expired", end_ms=end_ms, last_offset_ms=self.max_seq * FRAME_MS)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        finally:
            self._waiting -= 1

    def cut(self, from_ms: int, to_ms: int) -> bytes:
        """PCM of [from_ms, to_ms) from the buffer; frames lost inside the span become silence."""
        if not self._frames:
            return b""
        first = max(from_ms // FRAME_MS, min(self._frames))
        last = min(math.ceil(to_ms / FRAME_MS) - 1, self.max_seq)
        return b"".join(self._frames.get(seq, self.silence) for seq in range(first, last + 1))
