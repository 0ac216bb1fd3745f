"""A peer channel's application queue: ``uuid_broadcast`` and ``sendmsg execute`` run one at a time.

Both go through the channel's private event queue in FreeSWITCH, so they share one FIFO here:
``uuid_break`` stops the current playback (``PLAYBACK_STOP`` with ``Playback-Status: break``) and
the next item starts; ``uuid_break all`` also flushes what is queued. Every application fires
``CHANNEL_EXECUTE`` and ``CHANNEL_EXECUTE_COMPLETE`` (``Application-Response``: ``FILE PLAYED`` /
``FILE NOT FOUND`` for playback, as mod_dptools sets it).

Timing, as a real FreeSWITCH 1.10 plays (modelled on a timeline, so a busy test machine does not
move it; a gateway that queues a file late still shows the gap it caused):
- ``uuid_broadcast`` queues its application with ``lead-frames: 5`` (``switch_ivr_broadcast``):
  the channel reads 5 frames (100 ms) before the file starts, so files broadcast back to back play
  with a 100 ms hole between them (``BROADCAST_LEAD_FRAMES``).
- ``sendmsg <uuid>`` + ``execute playback`` carries no lead frames: a queued file starts
  ``APP_GAP_S`` (1-2 ms measured) after the previous one stopped.
- playback runs in real time from its start; the audio counts as heard from ``PLAYBACK_START`` on,
  and a break keeps exactly the samples whose time had come.
- a file FreeSWITCH cannot open (missing, unreadable, or one ``fail_open`` names) fires neither
  ``PLAYBACK_START`` nor ``PLAYBACK_STOP``, only ``CHANNEL_EXECUTE_COMPLETE`` with ``FILE NOT FOUND``.
Not modelled: the 20 ms frame rounding of a file's last frame, codec/jitter-buffer delay after the
playback application (the caller's phone hears it some tens of ms later), ``event-lock``, and the
media bug's mix of robot audio into ``mixed`` streams beyond the running playback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from voiceplatform_devstack.freeswitch_media import Track, load_audio

FRAME_S = 0.02
BROADCAST_LEAD_FRAMES = 5  # switch_ivr_broadcast's "lead-frames" header
APP_GAP_S = 0.0015  # between two queued applications (1-2 ms on a real FreeSWITCH)


@dataclass
class Playback:
    """One queued playback: what was asked, when it ran, how it ended and what the caller heard."""

    path: str
    queued_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    status: str = "queued"  # done | break | hangup (cut by the hangup) | flushed (break all) | notfound
    pcm: bytes = b""  # at the call rate, truncated at a break
    lead_frames: int = 0  # frames the channel read before the file started (uuid_broadcast: 5)
    via: str = "execute"  # broadcast | execute


@dataclass
class AppItem:
    app: str
    arg: str
    playback: Playback | None = None
    loops: int = 1
    lead_frames: int = 0
    queued_at: float = 0.0


class PlayerHost(Protocol):
    rate: int
    robot_track: Track

    def fire(self, name: str, extra: list[tuple[str, str]]) -> None: ...
    def media_index(self) -> int: ...
    def recording(self) -> bool: ...
    async def run_app(self, app: str, arg: str) -> str: ...


def split_app(path: str) -> tuple[str, str]:
    """``uuid_broadcast`` paths: ``app::args`` runs that app; a plain path means ``playback``."""
    app, sep, arg = path.partition("::")
    return (app, arg) if sep else ("playback", path)


class Player:
    def __init__(self, host: PlayerHost, plays: list[Playback]) -> None:
        self.host = host
        self.plays = plays
        self.queue: asyncio.Queue[AppItem | None] = asyncio.Queue()
        self.current: Playback | None = None
        self._running: AppItem | None = None
        self._segment: tuple[int, bytes, float] | None = None  # start index, pcm, started_at
        self._break = asyncio.Event()
        self._hangup = False
        self._free_at = 0.0  # when the channel's thread is free for the next application (timeline)
        self.broadcast_lead_frames = BROADCAST_LEAD_FRAMES
        self.app_gap_s = APP_GAP_S
        self.fail_open: Callable[[str], bool] | None = None  # files FreeSWITCH "cannot open"

    def broadcast(self, path: str) -> None:
        app, arg = split_app(path)
        self.execute(app, arg, lead_frames=self.broadcast_lead_frames, via="broadcast")

    def execute(
        self, app: str, arg: str, loops: int = 1, *, lead_frames: int = 0, via: str = "execute"
    ) -> None:
        now = time.monotonic()
        playback = None
        if app == "playback":
            playback = Playback(path=arg, queued_at=now, lead_frames=lead_frames, via=via)
            self.plays.append(playback)
        self.queue.put_nowait(AppItem(app, arg, playback, max(1, loops), lead_frames, now))

    def break_(self, flush: bool) -> None:
        if flush:
            self.flush()
        if self._running is not None:  # CF_BREAK stops playback, sleep, ...
            self._break.set()

    def flush(self) -> None:
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None and item.playback is not None:
                item.playback.status = "flushed"

    def stop_for_hangup(self) -> None:
        self._hangup = True
        self.flush()
        self._break.set()
        self.queue.put_nowait(None)

    def heard(self) -> bytes:
        done = b"".join(p.pcm for p in self.plays)
        return done + self.playing_now()[1]

    def playing_now(self) -> tuple[int, bytes]:
        """The running playback's start index and the part already heard."""
        if self._segment is None:
            return 0, b""
        start, pcm, started_at = self._segment
        return start, pcm[: self._heard_bytes(len(pcm), started_at, time.monotonic())]

    def robot_audio(self, start: int, samples: int) -> bytes:
        """What the robot plays over [start, start + samples) of the timeline (for mixed streams)."""
        if self._segment is None:
            return bytes(samples * 2)
        seg_start, pcm, _ = self._segment
        offset = (start - seg_start) * 2
        chunk = pcm[max(offset, 0) : max(offset + samples * 2, 0)]
        if offset < 0:
            chunk = bytes(min(-offset, samples * 2)) + chunk
        return chunk + bytes(samples * 2 - len(chunk))

    def _heard_bytes(self, total: int, started_at: float, now: float) -> int:
        return min(total, max(0, round((now - started_at) * self.host.rate)) * 2)

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None or self._hangup:
                if item is not None and item.playback is not None:
                    item.playback.status = "flushed"
                return
            for _ in range(item.loops):
                if self._hangup:
                    break
                await self._run_item(item)

    async def sleep(self, seconds: float) -> None:
        """The ``sleep`` application: ends early on a break or a hangup."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._break.wait(), seconds)

    async def _run_item(self, item: AppItem) -> None:
        self._break.clear()
        self._running = item
        # the thread takes the item once it is queued and the previous one is done, then reads
        # the lead frames (uuid_broadcast) before it runs the application
        begin = max(item.queued_at, self._free_at) + item.lead_frames * FRAME_S
        try:
            await self._until(begin)
            await self._execute(item, begin)
        finally:
            self._running = None
            if item.app != "playback":  # a playback sets it: when its audio ended on the timeline
                self._free_at = time.monotonic()
            self._free_at += self.app_gap_s

    async def _until(self, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _execute(self, item: AppItem, begin: float) -> None:
        app_uuid = str(uuidlib.uuid4())
        data = [("Application", item.app), ("Application-Data", item.arg), ("Application-UUID", app_uuid)]
        self.host.fire("CHANNEL_EXECUTE", data)
        if item.app == "playback":
            playback = item.playback or Playback(path=item.arg, queued_at=time.monotonic())
            response = await self._play(playback, item.arg, begin)
        else:
            response = await self.host.run_app(item.app, item.arg)
        self.host.fire("CHANNEL_EXECUTE_COMPLETE", [*data, ("Application-Response", response)])

    async def _play(self, playback: Playback, path: str, begin: float) -> str:
        failing = self.fail_open is not None and self.fail_open(path)
        pcm = None if failing else load_audio(path, self.host.rate)
        if pcm is None:  # switch_ivr_play_file returns before PLAYBACK_START: no STOP either
            playback.status = "notfound"
            self._free_at = time.monotonic()
            return "FILE NOT FOUND"
        started = begin
        playback.started_at = started
        self.current = playback
        start_index = self.host.media_index()
        self._segment = (start_index, pcm, started)
        self.host.fire("PLAYBACK_START", [("Playback-File-Path", playback.path)])
        duration = len(pcm) / 2 / self.host.rate
        try:
            await asyncio.wait_for(
                self._break.wait(), timeout=max(0.0, started + duration - time.monotonic())
            )
            broke = True
        except TimeoutError:
            broke = False
        now = time.monotonic() if broke else started + duration
        playback.stopped_at = now
        self._free_at = now
        if broke:
            playback.status = "hangup" if self._hangup else "break"
            playback.pcm = pcm[: self._heard_bytes(len(pcm), started, now)]
        else:
            playback.status, playback.pcm = "done", pcm
        self._segment = None
        self.current = None
        if self.host.recording():
            self.host.robot_track.write(start_index, playback.pcm)
        status = "break" if playback.status == "break" else "done"  # play_file: only a BREAK says break
        self.host.fire("PLAYBACK_STOP", [("Playback-File-Path", playback.path), ("Playback-Status", status)])
        return "FILE PLAYED"
