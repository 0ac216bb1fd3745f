"""Per-stage deadlines of one robot turn: what the gateway is waiting for, since when.

Each reply is a chain of stages the gateway can see arrive: its first ``llm.sentence`` after the
caller's turn ended, each next sentence or ``llm.done``, and every sentence's ``tts.audio`` until
its last chunk. ``StageClock`` (one per ``Turn``) notes when each wait began and, given the robot's
``DeadlinesConfig`` and a clock reading, names the first wait that has run past its limit. Nothing
here reads a clock, sleeps or publishes: ``TurnKeeper.check_deadlines`` acts on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceplatform.config import DeadlinesConfig


@dataclass(frozen=True, slots=True)
class Missed:
    """A stage that missed its deadline: what was awaited, for how long, and the limit."""

    stage: str  # "llm" (prompt router and llm) or "tts"
    awaited: str  # e.g. "first llm.sentence", "tts.audio of sentence 1"
    waited_ms: int
    limit_ms: int

    @property
    def detail(self) -> str:
        return f"no {self.awaited} after {self.waited_ms} ms (deadline {self.limit_ms} ms)"


@dataclass
class StageClock:
    # wall-clock ms since which the next llm message (a sentence or llm.done) is awaited, else None
    llm_since_ms: int | None = None
    # sentences already announced by the llm (the first one has its own deadline)
    sentences_seen: int = 0
    # llm.done arrived: no more sentences are awaited (it may overtake the last sentence)
    llm_finished: bool = False
    # sentence index → wall-clock ms since which its next tts.audio chunk is awaited
    audio_since_ms: dict[int, int] = field(default_factory=dict)
    # sentences whose last chunk arrived (a repeat of one, from a retried request, awaits nothing)
    audio_done: set[int] = field(default_factory=set)

    def reply_expected(self, now_ms: int) -> None:
        """The caller's turn ended with words (or a re-prompt began): the reply is awaited."""
        if self.llm_since_ms is None and not self.sentences_seen and not self.llm_finished:
            self.llm_since_ms = now_ms

    def sentence(self, index: int, now_ms: int) -> None:
        """``llm.sentence`` ``index`` arrived: its audio and (until llm.done) the next one are awaited."""
        self.sentences_seen += 1
        if not self.llm_finished:
            self.llm_since_ms = now_ms
        if index not in self.audio_done:
            self.audio_since_ms.setdefault(index, now_ms)

    def llm_done(self) -> None:
        """``llm.done`` (or the llm's own stage.error): nothing more comes from the llm."""
        self.llm_finished = True
        self.llm_since_ms = None

    def audio(self, index: int, last: bool, now_ms: int) -> None:
        """A ``tts.audio`` chunk of sentence ``index``; its last chunk ends the wait for it."""
        if last:
            self.audio_done.add(index)
            self.audio_since_ms.pop(index, None)
        elif index not in self.audio_done:
            self.audio_since_ms[index] = now_ms

    def missed(self, now_ms: int, cfg: DeadlinesConfig) -> Missed | None:
        """The first wait past its deadline at ``now_ms``, or None."""
        if self.llm_since_ms is not None:
            limit = cfg.sentence_ms if self.sentences_seen else cfg.reply_ms
            waited = now_ms - self.llm_since_ms
            if waited > limit:
                awaited = "llm.sentence or llm.done" if self.sentences_seen else "first llm.sentence"
                return Missed("llm", awaited, waited, limit)
        for index, since in sorted(self.audio_since_ms.items()):
            if now_ms - since > cfg.audio_ms:
                return Missed("tts", f"tts.audio of sentence {index}", now_ms - since, cfg.audio_ms)
        return None
