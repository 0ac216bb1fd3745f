"""Failover of a call's streaming owners (vad, asr), the gateway's side: fencing and audio replay.

Fencing: every (re-)assignment of a role gets the next epoch, and the gateway takes a role's events
only under the current one (epoch 0: a producer that does not stamp, e.g. a realtime session), so a
replaced owner that wakes up (SIGSTOP, a stalled loop) cannot speak for the call any more.

Replay: the caller's audio since the last confirmed turn end stays in a bounded log. After a
re-assignment the new owner gets it on ``audio.replay.<role>`` (one-second batches, faster than real
time) with the turns not yet confirmed, then takes live audio from the frame the replay stopped at:
no gap, no duplicate. Confirmed means, for the VAD, the turn's ``vad.speech_ended`` (a turn still
open is replayed from its start, and the new VAD goes on under its ``turn_id``); for the ASR, the
turn's ``asr.final`` (every turn since is replayed and recognized by the new owner).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from prometheus_client import Counter

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.wire import (
    FRAME_MS,
    AsrFinal,
    AudioReplay,
    Message,
    ResumeTurn,
    VadSpeechEnded,
    VadSpeechStarted,
)

STALE_OWNER_EVENTS = Counter(
    "vp_gateway_stale_owner_events_dropped_total",
    "Events of a call's replaced (fenced) vad/asr owner dropped",
    ["role"],
)
REPLAYED_FRAMES = Counter(
    "vp_gateway_replayed_frames_total", "Caller frames replayed to a new vad/asr owner", ["role"]
)

REPLAY_BATCH_FRAMES = 50  # one second of audio per message
# frames replayed in front of a turn's start: the VAD model warms up on them, the ASR takes its
# pre-roll from them
LEAD_FRAMES = 25
# with nothing open, the last 2 s go to the new owner: speech the lost owner had not confirmed as a
# start yet (it takes 100-250 ms) began at most that long before the ~0.8 s failover
IDLE_REPLAY_FRAMES = 100
# the log's hard bound (a 30 s turn, whisper's window, plus its lead and the end-of-turn delay)
MAX_LOG_S = 34
# unconfirmed turns remembered (a turn whose final never comes must not pin the log)
MAX_TURNS = 8


class OwnerEpochs:
    """The current assignment epoch of each owned role of one call."""

    def __init__(self) -> None:
        self.current: dict[str, int] = {}

    def next(self, role: str) -> int:
        epoch = self.current.get(role, 0) + 1
        self.current[role] = epoch
        return epoch

    def accepts(self, role: str, epoch: int) -> bool:
        """Whether an event stamped ``epoch`` comes from the role's current owner (counted if not)."""
        if epoch == 0 or epoch == self.current.get(role, 0):
            return True
        STALE_OWNER_EVENTS.labels(role).inc()
        return False


class CallerAudioLog:
    """A call's caller frames (contiguous sequence numbers) back to what a new owner needs."""

    def __init__(self, max_s: int = MAX_LOG_S) -> None:
        self.frames: deque[tuple[int, bytes]] = deque(maxlen=max_s * 1000 // FRAME_MS)
        self.turns: OrderedDict[str, ResumeTurn] = OrderedDict()  # no asr.final yet, oldest first
        self.vad_confirmed_seq = 0  # the frame where the last vad.speech_ended put the turn's end
        # the first frames the unconfirmed turns pin (``_marks``), worked out again only when the
        # turns change (on_vad, on_final), not on each of the 50 frames a second ``keep`` trims by
        self._marks_cache: tuple[int | None, int | None] | None = None

    # ---- what the gateway sees ---------------------------------------------------------------
    def keep(self, seq: int, pcm: bytes) -> None:
        self.frames.append((seq, pcm))
        if self.turns:
            floor = min(self.replay_from("vad", seq + 1), self.replay_from("asr", seq + 1))
        else:  # the common case, once per frame: both roles need just the idle lead
            floor = seq + 1 - IDLE_REPLAY_FRAMES
        while self.frames and self.frames[0][0] < floor:
            self.frames.popleft()

    def on_vad(self, msg: Message) -> None:
        self._marks_cache = None
        if isinstance(msg, VadSpeechStarted):
            self.turns[msg.turn_id] = ResumeTurn(turn_id=msg.turn_id, start_ms=msg.audio_offset_ms)
            while len(self.turns) > MAX_TURNS:
                self.turns.popitem(last=False)
        elif isinstance(msg, VadSpeechEnded):
            turn = self.turns.get(msg.turn_id)
            if turn is None:
                turn = ResumeTurn(turn_id=msg.turn_id, start_ms=msg.audio_offset_ms - msg.speech_ms)
                self.turns[msg.turn_id] = turn
            turn.end_ms = msg.audio_offset_ms
            turn.speech_ms = msg.speech_ms
            turn.eot_probability = msg.eot_probability
            turn.truncated = msg.truncated
            turn.ended_ts_ms = msg.ts_ms
            self.vad_confirmed_seq = max(self.vad_confirmed_seq, msg.audio_offset_ms // FRAME_MS)

    def on_final(self, msg: AsrFinal) -> None:
        self._marks_cache = None
        for turn_id in (*msg.merged, msg.turn_id):
            self.turns.pop(turn_id, None)

    # ---- what a new owner gets ---------------------------------------------------------------
    def open_turn(self) -> ResumeTurn | None:
        turn = next(reversed(self.turns.values()), None)
        return turn if turn is not None and turn.end_ms < 0 else None

    def replay_from(self, role: str, next_seq: int) -> int:
        """The first frame a new owner of ``role`` needs when live audio resumes at ``next_seq``."""
        idle = next_seq - IDLE_REPLAY_FRAMES
        open_first, unconfirmed_first = self._marks()
        if role == "vad":
            # nothing open: from the last end on (earlier audio is a finished turn's, never a new one)
            first = open_first if open_first is not None else max(self.vad_confirmed_seq, idle)
        elif unconfirmed_first is not None:
            first = unconfirmed_first
        else:
            first = idle
        return max(0, min(first, next_seq))

    def _marks(self) -> tuple[int | None, int | None]:
        """The first frame the open turn needs (the VAD's replay), and the first the oldest turn
        without a final needs (the ASR's); None where there is no such turn."""
        if self._marks_cache is None:
            turn = self.open_turn()
            oldest = min((t.start_ms for t in self.turns.values()), default=None)
            self._marks_cache = (
                turn.start_ms // FRAME_MS - LEAD_FRAMES if turn is not None else None,
                oldest // FRAME_MS - LEAD_FRAMES if oldest is not None else None,
            )
        return self._marks_cache

    def turns_for(self, role: str, first_seq: int) -> list[ResumeTurn]:
        """The unconfirmed turns a new owner of ``role`` takes over (those the replay covers)."""
        if role == "vad":
            turn = self.open_turn()
            return [turn] if turn is not None and turn.start_ms // FRAME_MS >= first_seq else []
        return [t for t in self.turns.values() if t.start_ms // FRAME_MS >= first_seq]

    def between(self, first_seq: int, next_seq: int) -> tuple[int, list[bytes]]:
        """The kept frames in ``[first_seq, next_seq)``: the first one's seq and their PCM."""
        kept = [(seq, pcm) for seq, pcm in self.frames if first_seq <= seq < next_seq]
        return (kept[0][0] if kept else next_seq), [pcm for _, pcm in kept]


async def send_replay(
    bus: Bus,
    log: CallerAudioLog,
    *,
    call_id: str,
    role: str,
    epoch: int,
    sample_rate: int,
    next_seq: int,
) -> int:
    """Send the new owner of ``role`` what it needs, up to the live frame ``next_seq``; frames sent."""
    first, frames = log.between(log.replay_from(role, next_seq), next_seq)
    turns = log.turns_for(role, first)
    subject = subjects.audio_replay(call_id, role)
    batches = [frames[i : i + REPLAY_BATCH_FRAMES] for i in range(0, len(frames), REPLAY_BATCH_FRAMES)] or [
        []
    ]
    seq = first
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        await bus.publish(
            subject,
            AudioReplay(
                call_id=call_id,
                role=role,
                epoch=epoch,
                first_seq=seq,
                sample_rate=sample_rate,
                frames=batch,
                last=last,
                next_seq=next_seq,
                turns=turns,
            ),
        )
        seq += len(batch)
    REPLAYED_FRAMES.labels(role).inc(len(frames))
    return len(frames)
