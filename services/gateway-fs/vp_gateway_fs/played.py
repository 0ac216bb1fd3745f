"""The files of one channel's robot speech that FreeSWITCH has queued, and how much of each the
caller heard: a file counts from its ``PLAYBACK_START``, in real time, until its ``PLAYBACK_STOP``.

FreeSWITCH does not always report an end: a file it cannot open fires neither event (only
``CHANNEL_EXECUTE_COMPLETE``, handled by the sink), and events can be missed. So a started file is
over ``grace_s`` after its audio would have ended, and files that never start are over once nothing
has started or stopped for ``grace_s`` (``expire``). After the hangup the clock stops (``freeze``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class QueuedFile:
    nbytes: int
    seconds: float
    started_at: float | None = None  # monotonic, when its PLAYBACK_START arrived

    def heard(self, now: float, rate: int) -> int:
        if self.started_at is None:
            return 0
        return min(self.nbytes, max(0, int((now - self.started_at) * rate)) * 2)


class PlayedFiles:
    def __init__(self, rate: int, grace_s: float) -> None:
        self.rate, self.grace_s = rate, grace_s
        self.files: dict[str, QueuedFile] = {}  # queued on the channel, not yet stopped
        self.progress_at = time.monotonic()  # last queueing (into an empty queue), START or STOP
        self.frozen_at: float | None = None  # the hangup: nothing is heard after it

    def __bool__(self) -> bool:
        return bool(self.files)

    def queue(self, path: str, nbytes: int) -> None:
        if not self.files:
            self.progress_at = time.monotonic()
        self.files[path] = QueuedFile(nbytes, nbytes / 2 / self.rate)

    def started(self, path: str, at: float) -> bool:
        """``PLAYBACK_START``; False when the file is not one of ours."""
        file = self.files.get(path)
        if file is None:
            return False
        file.started_at = at
        self.progress_at = at
        return True

    def stopped(self, path: str, at: float) -> None:
        self.progress_at = at
        self.files.pop(path, None)

    def never_started(self, path: str, at: float) -> bool:
        """Its application completed without a PLAYBACK_START: drop it; True when it was ours."""
        file = self.files.get(path)
        if file is None or file.started_at is not None:
            return False
        del self.files[path]
        self.progress_at = at
        return True

    def forget(self, path: str) -> None:
        self.files.pop(path, None)

    def clear(self) -> None:
        self.files.clear()

    def freeze(self, at: float) -> None:
        self.frozen_at = self.frozen_at or at

    def unheard(self, now: float) -> int:
        now = min(now, self.frozen_at) if self.frozen_at is not None else now
        return sum(f.nbytes - f.heard(now, self.rate) for f in self.files.values())

    def expire(self, now: float) -> int:
        """Drop the files whose end will not be reported any more; returns how many."""
        if self.frozen_at is not None:
            return 0
        grace = self.grace_s
        playing = any(
            f.started_at is not None and now <= f.started_at + f.seconds for f in self.files.values()
        )
        stalled = not playing and now > self.progress_at + grace  # nothing starts any more
        lapsed = [
            path
            for path, f in self.files.items()
            if (f.started_at is None and stalled)
            or (f.started_at is not None and now > f.started_at + f.seconds + grace)
        ]
        for path in lapsed:
            del self.files[path]
        if lapsed:
            self.progress_at = now
        return len(lapsed)
