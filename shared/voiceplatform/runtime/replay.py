"""A streaming owner's audio intake after a failover: the replay first, then live audio.

A call re-assigned with ``replay`` gets the caller audio since the last confirmed turn end on
``audio.replay.<role>`` (see ``voiceplatform.gateway.failover``), while live frames already arrive on
``audio.in``. The gate holds the live frames until the replay's last batch, so the session sees one
gap-free sequence; a replay that never completes (its gateway died) opens the gate after
``REPLAY_WAIT_S`` with what came.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter

from voiceplatform.wire import AudioChunk, AudioReplay, ResumeTurn

log = structlog.get_logger("voiceplatform.replay")

REPLAY_WAIT_S = 2.0
# live frames held while the replay runs (a replay is sent within milliseconds; this is a bound)
MAX_HELD_FRAMES = 500

REPLAYS = Counter("vp_owner_replays_total", "Replays a new call owner took, by outcome", ["role", "outcome"])


class ReplayGate:
    def __init__(self, role: str, epoch: int, active: bool) -> None:
        self.role = role
        self.epoch = epoch
        self.replaying = active
        self.turns: list[ResumeTurn] = []
        self.frames = 0
        self._held: list[AudioChunk] = []

    def hold(self, chunk: AudioChunk) -> bool:
        """Keep a live frame for later while the replay runs (True: held)."""
        if not self.replaying:
            return False
        if len(self._held) < MAX_HELD_FRAMES:
            self._held.append(chunk)
        return True

    def take(self, msg: AudioReplay) -> list[tuple[int, bytes]]:
        """The frames of one replay batch meant for this owner (``(seq, pcm)``), in order."""
        if not self.replaying or msg.epoch != self.epoch or msg.role != self.role:
            return []
        self.turns = list(msg.turns)
        self.frames += len(msg.frames)
        return [(msg.first_seq + i, pcm) for i, pcm in enumerate(msg.frames)]

    def finish(self, outcome: str = "complete") -> list[AudioChunk]:
        """Close the replay: the held live frames, in sequence order."""
        if not self.replaying:
            return []
        self.replaying = False
        REPLAYS.labels(self.role, outcome).inc()
        held, self._held = sorted(self._held, key=lambda c: c.seq), []
        if outcome != "complete":
            log.warning("owner.replay_incomplete", role=self.role, outcome=outcome, frames=self.frames)
        return held
