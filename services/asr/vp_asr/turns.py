"""Where each recent caller turn's audio starts, continuation chains included.

A turn normally starts at its own ``vad.speech_started`` offset. When the gateway says turn Y
continues turn X (``control.interrupt`` reason ``continued``), Y is recognized from X's start, and X
may itself continue W: Y then covers W, X and Y, and its final names ``merged = [W, X]``. The book
keeps the last ``keep`` turns only: a chain reaching further back than that (or than the audio
buffer) is cut there.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True)
class TurnSpan:
    start_ms: int  # this turn's own speech start
    from_ms: int  # where its audio starts: the start of the oldest turn it continues
    merged: list[str] = field(default_factory=list)  # earlier turns it covers, oldest first


class TurnBook:
    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._spans: OrderedDict[str, TurnSpan] = OrderedDict()
        # continuations heard before the continuing turn's speech_started (separate subjects)
        self._pending: OrderedDict[str, str] = OrderedDict()

    def started(self, turn_id: str, start_ms: int) -> TurnSpan:
        span = TurnSpan(start_ms, start_ms)
        self._spans[turn_id] = span
        self._trim(self._spans)
        earlier = self._pending.pop(turn_id, None)
        if earlier is not None:
            self.continued(earlier, turn_id)
        return span

    def continued(self, turn_id: str, by_turn_id: str) -> TurnSpan | None:
        """``by_turn_id`` continues ``turn_id``: its new span, or None when it is not known (yet) or
        the earlier turn was forgotten (then nothing changes)."""
        span = self._spans.get(by_turn_id)
        if span is None:
            self._pending[by_turn_id] = turn_id
            self._trim(self._pending)
            return None
        earlier = self._spans.get(turn_id)
        if earlier is None or turn_id == by_turn_id or turn_id in span.merged:
            return None
        span.from_ms = min(span.start_ms, earlier.from_ms)
        span.merged = [*earlier.merged, turn_id]
        return span

    def span(self, turn_id: str) -> TurnSpan | None:
        return self._spans.get(turn_id)

    def _trim(self, table: OrderedDict[str, TurnSpan] | OrderedDict[str, str]) -> None:
        while len(table) > self.keep:
            table.popitem(last=False)
