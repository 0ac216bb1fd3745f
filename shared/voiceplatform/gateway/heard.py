"""What the caller has heard, when the far end reports it (the phone path).

The playout loop sends frames ahead of real time, and a media server may hold them longer still
(FreeSWITCH plays files it was given). A sink that knows how much of what it was given has not
been heard yet (``PlaybackClock``) lets the session keep a turn alive until it was really heard,
cut it at the word the caller heard last, and replay exactly the unheard part after a pause.

``SentLog`` remembers which turn the last bytes given to the sink belong to, so the sink's one
number (bytes not yet heard, all turns together) is split back per turn: the unheard bytes are
always the newest ones.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, runtime_checkable


@runtime_checkable
class PlaybackClock(Protocol):
    def unheard_bytes(self) -> int:
        """Bytes given to the sink that the caller has not heard yet (buffered, queued or playing)."""
        ...


class SentLog:
    """The recent bytes handed to the sink, as runs of (turn id, bytes), oldest first."""

    def __init__(self) -> None:
        self._runs: deque[list[str | int]] = deque()  # [turn_id, nbytes]
        self._total = 0

    def sent(self, turn_id: str, nbytes: int) -> None:
        if self._runs and self._runs[-1][0] == turn_id:
            self._runs[-1][1] = int(self._runs[-1][1]) + nbytes
        else:
            self._runs.append([turn_id, nbytes])
        self._total += nbytes

    def unheard(self, turn_id: str, unheard_total: int) -> int:
        """The share of ``unheard_total`` (the newest bytes sent) that belongs to ``turn_id``."""
        left, mine = unheard_total, 0
        for run_turn, run_bytes in reversed(self._runs):
            if left <= 0:
                break
            take = min(left, int(run_bytes))
            if run_turn == turn_id:
                mine += take
            left -= take
        return mine

    def trim(self, unheard_total: int) -> None:
        """Forget runs older than the unheard tail: they were heard."""
        while self._runs and self._total - int(self._runs[0][1]) >= unheard_total:
            self._total -= int(self._runs.popleft()[1])
