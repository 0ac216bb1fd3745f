"""A call's robot audio paced out to the caller, and the turns it finishes (``CallSession.pacer``)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Histogram

from voiceplatform import load, metrics, subjects
from voiceplatform.clock import now_ms
from voiceplatform.gateway.turns import TurnState
from voiceplatform.logging import bind_call
from voiceplatform.wire import ControlTransfer, PlaybackStarted

if TYPE_CHECKING:
    from voiceplatform.gateway.session import CallSession

log = structlog.get_logger("voiceplatform.gateway")

GREETING_LATENCY = Histogram(
    "vp_gateway_greeting_first_audio_ms",
    "Call start → first greeting frame sent",
    buckets=metrics.LATENCY_BUCKETS_MS,
)
VOICE_TO_VOICE = Histogram(
    "vp_gateway_voice_to_voice_ms", "Speech end → first bot frame sent", buckets=metrics.LATENCY_BUCKETS_MS
)

FRAME_S = 0.02


class PlayoutPacer:
    """Sends the front turn's frames in real time and reports each turn whose audio is all played."""

    def __init__(self, session: CallSession) -> None:
        self.session = session

    def _may_play_front(self) -> bool:
        front = self.session.playout.current
        if front is None:
            return True
        turn = self.session.turns.get(front.turn_id)
        return turn is None or turn.may_play(now_ms())

    async def run(self) -> None:
        """Send robot frames paced at real time, at most ``lead_frames`` ahead of the clock.

        The schedule survives an underrun (a streaming voice delivers a sentence in chunks): after
        one the loop may catch up to the lead again, never further, so what was sent stays close to
        what was heard. A new turn, or a paused or held one, starts a fresh schedule.
        """
        next_t: float | None = None
        playing: str | None = None
        lead_s = self.session.lead_frames * FRAME_S
        loop = asyncio.get_running_loop()
        with bind_call(call_id=self.session.call_id):
            while not self.session.ended:
                item: tuple[str, bytes] | None = None
                if self._may_play_front():
                    item = self.session.playout.next_frame()
                else:
                    playing, next_t = None, None  # the caller's side was flushed, or got nothing yet
                await self._complete_finished()
                if item is None:
                    self.session.audio_ready.clear()
                    if self.session.playout.idle:
                        # nothing queued, nothing sounding: only new audio changes that, and whatever
                        # adds it sets audio_ready (no 50 ms look-ups while the caller has the floor)
                        await self.session.audio_ready.wait()
                        continue
                    # audio is held or still sounding: wait for more, or look again in 50 ms (a held
                    # turn may play by then, a sounding one may have been heard); a timer handle, not
                    # wait_for's task: this runs 20 times a second per call
                    wake = loop.call_later(0.05, self.session.audio_ready.set)
                    try:
                        await self.session.audio_ready.wait()
                    finally:
                        wake.cancel()
                    continue
                turn_id, frame = item
                if turn_id != playing:
                    playing, next_t = turn_id, None
                    await self._first_frame(turn_id)
                await self.session.sink.send_audio(frame)
                now = time.monotonic()
                self.session.keeper.quiet_since = now
                if next_t is None or next_t < now - lead_s:
                    next_t = now - lead_s
                next_t += FRAME_S
                if next_t > now:
                    await asyncio.sleep(next_t - now)

    async def _first_frame(self, turn_id: str) -> None:
        turn = self.session.turns.get(turn_id)
        ts = now_ms()
        if turn is not None and turn.first_played_ts_ms:
            return  # resumed after a pause: the turn's playback started long ago
        if turn is not None:
            turn.first_played_ts_ms = ts
            if turn.state is TurnState.THINKING:
                turn.advance(TurnState.SPEAKING)
            if turn.speech_end_ts_ms:
                VOICE_TO_VOICE.observe(ts - turn.speech_end_ts_ms)
                load.observe_turn(load.gateway_of(self.session.channel), (ts - turn.speech_end_ts_ms) / 1000)
        if turn_id == self.session.greeting_turn:
            GREETING_LATENCY.observe(ts - self.session.started_ms)
            log.info("call.greeting_started", after_ms=ts - self.session.started_ms)
        call_id = self.session.call_id
        await self.session.bus.publish(
            subjects.turn_report(call_id), PlaybackStarted(call_id=call_id, turn_id=turn_id)
        )

    async def _complete_finished(self) -> None:
        for audio in self.session.playout.pop_finished():
            turn = self.session.turns.get(audio.turn_id)
            if turn is None or not turn.live:
                continue
            turn.played_text = turn.bot_text
            turn.played_ms = self.session.keeper.ms(audio.played_bytes)
            if turn.state is TurnState.LISTENING:
                turn.advance(TurnState.THINKING)
            turn.advance(TurnState.DONE, turn.completed_outcome(bool(audio.played_bytes)))
            await self.session.keeper.report(turn)
            if turn.transfer_to:
                await self.session.bus.publish(
                    subjects.control(self.session.call_id),
                    ControlTransfer(
                        call_id=self.session.call_id,
                        destination=turn.transfer_to,
                        reason="robot",
                        summary=self.session.summary(turn.intent, "robot"),
                    ),
                )
            if turn.hangup_after:
                self.session.spawn(self.session.end("robot_hangup"), "hangup")
