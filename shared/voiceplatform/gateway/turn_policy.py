"""The barge-in / continuation / backchannel policy: pure functions of the turn table and a clock.

The gateway's call session asks these functions what to do and carries the answer out; nothing here
publishes, sleeps or reads a clock, so every rule is tested on an injected time.

When the caller starts speaking (new utterance ``Y``), each live robot turn ``X`` is judged:

- ``X`` not heard yet (thinking): if ``X`` answers a caller utterance that ended at most
  ``continuation_gap_ms`` before ``Y`` began, the caller is going on with the same utterance:
  ``X`` is cut as *continued* and ``Y`` is recognized from ``X``'s start (one utterance, one reply).
  Otherwise ``X`` is *superseded*: a newer caller turn always wins over a reply not yet heard, so
  replies never queue behind stale ones.
- ``X`` speaking: the robot is *paused* at once (as fast as a barge-in) and the decision waits. A
  backchannel ("угу") or noise resumes ``X`` and ``Y`` leaves the dialogue. Caller speech past
  ``backchannel_max_ms`` cuts ``X``: as *continued* when ``X`` answers a caller utterance and had
  played for at most ``continuation_played_ms`` (the caller had only paused; ``Y`` is still being
  spoken, so the ASR can still merge it), else as a *barge-in*. A short utterance with real words
  is a barge-in (its transcript is out: too late to merge). Without ``resume_on_backchannel`` the
  cut is immediate.

When an utterance's transcript ends unfinished ("... и", "... что", "э-э"), its reply is held for
``incomplete_hold_ms`` so a caller who goes on is continued before the robot says anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from voiceplatform.config import TurnsConfig
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState
from voiceplatform.turntaking import ends_incomplete, is_backchannel


@dataclass(frozen=True, slots=True)
class Cut:
    turn_id: str
    reason: str  # a ControlInterrupt reason
    by_turn_id: str = ""


@dataclass(frozen=True, slots=True)
class Pause:
    turn_id: str
    by_turn_id: str
    # the reply had only just started: long speech continues the caller's utterance (not a barge-in)
    continues: bool = False


@dataclass(frozen=True, slots=True)
class Resume:
    turn_id: str


Action = Cut | Pause | Resume


@dataclass(frozen=True, slots=True)
class Policy:
    cfg: TurnsConfig
    barge_in: bool = True
    # realtime models merge and judge turns themselves: only plain barge-in applies
    realtime: bool = False

    def on_caller_speech(self, live: Iterable[Turn], new: Turn, now_ms: int) -> list[Action]:
        """The caller started utterance ``new`` at ``now_ms``: what happens to each live robot turn."""
        actions: list[Action] = []
        for turn in live:
            if turn.turn_id == new.turn_id:
                continue
            action = self._judge(turn, new, now_ms)
            if action is not None:
                actions.append(action)
        return actions

    def _judge(self, turn: Turn, new: Turn, now_ms: int) -> Action | None:
        cfg = self.cfg
        if self.realtime:
            if turn.state is TurnState.SPEAKING or (turn.kind is not TurnKind.CALLER and turn.live):
                return Cut(turn.turn_id, "barge_in", new.turn_id) if self.barge_in else None
            return None
        gap_ok = (
            turn.kind is TurnKind.CALLER
            and turn.speech_end_ts_ms > 0
            and now_ms - turn.speech_end_ts_ms <= cfg.continuation_gap_ms
        )
        if turn.state in (TurnState.LISTENING, TurnState.THINKING):
            return Cut(turn.turn_id, "continued" if gap_ok else "superseded", new.turn_id)
        # speaking
        heard_ms = now_ms - turn.first_played_ts_ms if turn.first_played_ts_ms else 0
        just_started = turn.kind is TurnKind.CALLER and heard_ms <= cfg.continuation_played_ms
        if cfg.resume_on_backchannel and not turn.paused_by and (just_started or self.barge_in):
            # silent at once; "ага" resumes it, more speech continues or interrupts it
            return Pause(turn.turn_id, new.turn_id, continues=just_started)
        if just_started:
            return Cut(turn.turn_id, "continued", new.turn_id)
        return Cut(turn.turn_id, "barge_in", new.turn_id) if self.barge_in else None

    def on_caller_speaking(self, paused: Iterable[Turn], caller: Turn, now_ms: int) -> list[Action]:
        """Checked while ``caller`` keeps speaking over paused turns: long speech is a barge-in."""
        if caller.state is not TurnState.LISTENING or caller.speech_paused:
            return []  # the caller stopped: the transcript decides
        if now_ms - caller.speech_start_ts_ms < self.cfg.backchannel_max_ms:
            return []
        return [Cut(t.turn_id, _long_speech_cut(t), caller.turn_id) for t in paused]

    def on_transcript(self, paused: Iterable[Turn], caller: Turn) -> list[Action]:
        """``caller``'s transcript arrived while it pauses ``paused``: backchannel or barge-in."""
        turns = list(paused)
        if not turns:
            return []
        text = caller.user_text
        if not text.strip() or is_backchannel(text):
            actions: list[Action] = [Resume(t.turn_id) for t in turns]
            actions.append(Cut(caller.turn_id, "backchannel"))
            return actions
        # words that came after their own transcript: too late to merge, so a barge-in either way
        return [Cut(t.turn_id, "barge_in", caller.turn_id) for t in turns]

    def on_transcript_timeout(self, paused: Iterable[Turn], caller: Turn) -> list[Action]:
        """No transcript in time: never leave the robot silent, treat it as more than a backchannel."""
        return [Cut(t.turn_id, _long_speech_cut(t), caller.turn_id) for t in paused]

    def hold_ms(self, text: str) -> int:
        """How long the reply to an utterance with this transcript waits for the caller to go on."""
        if self.realtime or not text.strip():
            return 0
        return self.cfg.incomplete_hold_ms if ends_incomplete(text) else 0


def _long_speech_cut(turn: Turn) -> str:
    """Speech that is more than a backchannel over a paused reply: the caller going on with the
    utterance the reply had just started to answer, or a barge-in."""
    return "continued" if turn.pause_continues else "barge_in"
