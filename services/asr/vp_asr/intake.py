"""An ASR session's intake as a call owner: fencing of VAD events, and taking a call over.

Fencing: VAD events carry their owner's assignment epoch; once a newer VAD owner was heard (its
events, ``assign.changed`` on lifecycle, or the fence of this session's own assignment), events of
an older one are dropped: a frozen VAD waking up cannot end or start turns any more.

Take-over (``replay``): the gateway replays the caller audio from the oldest turn it has no
``asr.final`` for, and names those turns. VAD events wait until the replay is in, so no recognition
cuts audio that is still being replayed; then the turns the old owner never finished are
recognized here (an ended one at once, an open one when its end comes live).
"""

from __future__ import annotations

import structlog

from voiceplatform import metrics
from voiceplatform.runtime.replay import ReplayGate
from voiceplatform.wire import (
    Message,
    OwnerChanged,
    ResumeTurn,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
)

log = structlog.get_logger("vp_asr.intake")

VadEvent = VadSpeechStarted | VadSpeechEnded | VadSpeechPaused | VadSpeechResumed
# VAD events held while a replay runs (it takes milliseconds; this is a bound)
MAX_HELD_EVENTS = 64


class OwnerIntake:
    def __init__(self, call_id: str, epoch: int, vad_epoch: int, replay: bool) -> None:
        self.call_id = call_id
        self.epoch = epoch
        self.vad_epoch = vad_epoch
        self.gate = ReplayGate("asr", epoch, replay)
        self.moved = False  # a newer ASR owner has the call
        self._held: list[VadEvent] = []

    def vad_current(self, msg: VadEvent) -> bool:
        """Whether a VAD event comes from the newest VAD owner heard of (counted when not)."""
        if msg.epoch and msg.epoch < self.vad_epoch:
            metrics.MESSAGES_DROPPED.labels("asr", "vad", "stale_owner").inc()
            log.info("asr.stale_vad_event", call_id=self.call_id, type=msg.type_name, epoch=msg.epoch)
            return False
        self.vad_epoch = max(self.vad_epoch, msg.epoch)
        return True

    def hold(self, msg: VadEvent) -> bool:
        """Keep a VAD event for after the replay (True: held)."""
        if not self.gate.replaying:
            return False
        if len(self._held) < MAX_HELD_EVENTS:
            self._held.append(msg)
        return True

    def release(self, outcome: str) -> list[VadEvent]:
        """End the replay: the VAD events held meanwhile, in arrival order."""
        self.gate.finish(outcome)
        held, self._held = self._held, []
        return held

    def owner_changed(self, msg: Message) -> bool:
        """Track ``assign.changed``; True when it says this session's call moved to a newer owner."""
        if not isinstance(msg, OwnerChanged):
            return False
        if msg.role == "vad":
            self.vad_epoch = max(self.vad_epoch, msg.epoch)
        elif msg.role == "asr" and msg.epoch > self.epoch and not self.moved:
            self.moved = True
            log.warning("asr.call_moved", call_id=self.call_id, epoch=self.epoch, new_epoch=msg.epoch)
            return True
        return False


def ended_of(call_id: str, turn: ResumeTurn) -> VadSpeechEnded:
    """The ``vad.speech_ended`` the old owner had for a turn the gateway names as ended."""
    ended = VadSpeechEnded(
        call_id=call_id,
        turn_id=turn.turn_id,
        audio_offset_ms=turn.end_ms,
        speech_ms=turn.speech_ms,
        eot_probability=turn.eot_probability,
        truncated=turn.truncated,
    )
    if turn.ended_ts_ms:
        ended.ts_ms = turn.ended_ts_ms
    return ended
