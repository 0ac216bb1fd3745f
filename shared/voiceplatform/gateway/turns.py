"""One object per robot turn, with one state machine, in one table per call.

A turn is the robot's reply to something: a caller utterance (its ``turn_id`` is the VAD's), the
greeting, or a re-prompt after the caller stayed silent. Its life::

    listening ──► thinking ──► speaking ──► done
        │             │            │
        └─────────────┴────────────┴──────► cut   (barge-in, continued, superseded, backchannel,
                                                   call ended)

``listening``: the caller is still speaking this utterance; ``thinking``: the utterance is over and
its transcript or reply is on the way; ``speaking``: the reply's audio is playing. ``done`` and
``cut`` are final: whatever arrives later for the turn is stale and dropped. Every per-turn fact of
the gateway (timestamps, texts, a pause for a possible backchannel, a hold for an unfinished
utterance, hangup or transfer after the reply, the stage deadlines of ``clock``) lives on this
object and nowhere else.

A stage that misses its deadline (``deadlines``) turns the reply into a *fallback*: the rest of the
reply is dropped, the robot's fallback line plays in its place under the same turn id (a live
turn, so the caller can still barge in), and the turn ends ``done`` with outcome ``fallback``.
Messages of the reply that arrive after that are stale (``accepts_reply`` is false).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from voiceplatform.gateway.deadlines import StageClock
from voiceplatform.wire import TurnMetrics


class TurnState(enum.StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    DONE = "done"
    CUT = "cut"


class TurnKind(enum.StrEnum):
    CALLER = "caller"  # the reply to a caller utterance
    GREETING = "greeting"
    NO_INPUT = "no_input"  # a re-prompt after the caller stayed silent


_NEXT: dict[TurnState, frozenset[TurnState]] = {
    TurnState.LISTENING: frozenset({TurnState.THINKING, TurnState.CUT}),
    TurnState.THINKING: frozenset({TurnState.SPEAKING, TurnState.DONE, TurnState.CUT}),
    TurnState.SPEAKING: frozenset({TurnState.DONE, TurnState.CUT}),
    TurnState.DONE: frozenset(),
    TurnState.CUT: frozenset(),
}

LIVE_STATES = frozenset({TurnState.LISTENING, TurnState.THINKING, TurnState.SPEAKING})


class TurnTransitionError(RuntimeError):
    pass


@dataclass
class Turn:
    turn_id: str
    kind: TurnKind = TurnKind.CALLER
    state: TurnState = TurnState.LISTENING
    # how it ended: "played", "no_reply", "fallback", or a cut reason ("cut" for a barge-in)
    outcome: str = ""
    user_text: str = ""
    speech_start_ts_ms: int = 0
    speech_end_ts_ms: int = 0
    asr_final_ts_ms: int = 0
    first_sentence_ts_ms: int = 0
    first_audio_ts_ms: int = 0
    first_played_ts_ms: int = 0
    sentences: dict[int, str] = field(default_factory=dict)
    # llm_script mode: the recorded track a sentence plays, by sentence index
    tracks: dict[int, str] = field(default_factory=dict)
    # a reply is coming: the transcript had words (or a realtime reply arrived first)
    expects_reply: bool = False
    # the caller turn whose speech paused this reply (a barge-in not yet confirmed), else ""
    paused_by: str = ""
    # that pause came just after the reply started: long speech continues the utterance
    pause_continues: bool = False
    # the caller is silent inside this utterance (vad.speech_paused, not yet resumed or ended)
    speech_paused: bool = False
    # wall-clock ms before which the reply must not start (the utterance ended unfinished)
    hold_until_ms: int = 0
    hangup_after: bool = False
    transfer_to: str = ""
    intent: str = ""  # what the dialogue engine recognized in the caller's words (LlmDone.intent)
    played_text: str = ""
    played_ms: int = 0
    # what the reply's stages are awaited for, since when (the per-stage deadlines)
    clock: StageClock = field(default_factory=StageClock)
    # the stage that missed its deadline ("" while none did): the reply became the fallback line
    fallback_stage: str = ""
    # the fallback: the part of the reply heard before it, and the line said in its place
    heard_before_fallback: str = ""
    fallback_text: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def accepts_reply(self) -> bool:
        """Whether the reply's sentences and audio are still wanted (live, not replaced by a fallback)."""
        return self.live and not self.fallback_stage

    @property
    def bot_text(self) -> str:
        if self.fallback_stage:
            return " ".join(p for p in (self.heard_before_fallback, self.fallback_text) if p)
        return " ".join(self.sentences[i] for i in sorted(self.sentences))

    @property
    def track(self) -> str:
        """The track(s) the reply played, in order ("" for a synthesized reply or a fallback)."""
        if self.fallback_stage:
            return ""
        return " ".join(self.tracks[i] for i in sorted(self.tracks))

    def completed_outcome(self, played: bool) -> str:
        """The outcome of a turn whose audio played to its end (``played``: any audio at all)."""
        if self.fallback_stage:
            return "fallback"
        return "played" if played else "no_reply"

    def advance(self, to: TurnState, outcome: str = "") -> None:
        """Move to ``to``; a move the state machine does not allow is a bug, raised loudly."""
        if to not in _NEXT[self.state]:
            raise TurnTransitionError(f"turn {self.turn_id}: {self.state} -> {to} is not allowed")
        self.state = to
        if outcome:
            self.outcome = outcome

    def may_play(self, now_ms: int) -> bool:
        """Whether the playout may send this reply's audio now."""
        return self.live and not self.paused_by and now_ms >= self.hold_until_ms

    def metrics(self, call_id: str) -> TurnMetrics:
        return TurnMetrics(
            call_id=call_id,
            turn_id=self.turn_id,
            user_text=self.user_text,
            bot_text=self.bot_text,
            speech_end_ts_ms=self.speech_end_ts_ms,
            asr_final_ts_ms=self.asr_final_ts_ms,
            first_sentence_ts_ms=self.first_sentence_ts_ms,
            first_audio_ts_ms=self.first_audio_ts_ms,
            first_played_ts_ms=self.first_played_ts_ms,
            interrupted=self.state is TurnState.CUT,
            played_text=self.played_text,
            outcome=self.outcome,
            track=self.track,
        )


class TurnTable:
    """A call's turns by id. Final turns are kept (bounded) so late messages are recognised as stale."""

    def __init__(self, keep_final: int = 64) -> None:
        self._turns: dict[str, Turn] = {}
        self._keep_final = keep_final

    def add(self, turn: Turn) -> Turn:
        self._turns[turn.turn_id] = turn
        self._forget_old()
        return turn

    def get(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def live(self) -> list[Turn]:
        return [t for t in self._turns.values() if t.live]

    def listening(self) -> Turn | None:
        return next((t for t in self._turns.values() if t.state is TurnState.LISTENING), None)

    def paused_by(self, caller_turn_id: str) -> list[Turn]:
        return [t for t in self._turns.values() if t.live and t.paused_by == caller_turn_id]

    def __iter__(self) -> Iterator[Turn]:
        return iter(list(self._turns.values()))

    def __len__(self) -> int:
        return len(self._turns)

    def _forget_old(self) -> None:
        final = [tid for tid, t in self._turns.items() if not t.live]
        for turn_id in final[: max(0, len(final) - self._keep_final)]:
            del self._turns[turn_id]


def latencies(m: TurnMetrics) -> dict[str, int | None]:
    """Milliseconds from the end of the caller's speech to each stage (None: stage did not happen)."""

    def since_speech_end(ts: int) -> int | None:
        return ts - m.speech_end_ts_ms if ts and m.speech_end_ts_ms else None

    return {
        "asr_ms": since_speech_end(m.asr_final_ts_ms),
        "llm_first_sentence_ms": since_speech_end(m.first_sentence_ts_ms),
        "tts_first_audio_ms": since_speech_end(m.first_audio_ts_ms),
        "voice_to_voice_ms": since_speech_end(m.first_played_ts_ms),
    }


def metrics_event(m: TurnMetrics) -> dict[str, Any]:
    return {
        "type": "turn.metrics",
        "turn_id": m.turn_id,
        "user_text": m.user_text,
        "bot_text": m.bot_text,
        "interrupted": m.interrupted,
        "played_text": m.played_text,
        "outcome": m.outcome,
        "track": m.track,
        **latencies(m),
    }
