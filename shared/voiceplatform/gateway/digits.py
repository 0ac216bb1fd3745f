"""Keypad digits (DTMF) as caller turns: a key press is the caller speaking, the digits its words.

The first key of a sequence opens a caller turn at once and interrupts the robot like speech does
(a key is never a backchannel: a reply being spoken is cut as a barge-in, one not yet heard is
superseded). The sequence ends at the robot's end key (``#``, left out of the digits), after
``max_digits`` keys, or ``inter_digit_ms`` after the last key. Then the gateway publishes the turn's
``asr.final`` itself with ``dtmf=True`` and the digits as its text, so the router, the recorder and
the gateway's own turn keeper treat it like any transcript (the router passes ``event="dtmf"`` on).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.clock import now_ms
from voiceplatform.config.phone import DTMF_KEYS, DtmfConfig
from voiceplatform.gateway.turn_keeper import TurnKeeper
from voiceplatform.gateway.turn_policy import Action, Cut
from voiceplatform.gateway.turns import Turn, TurnState
from voiceplatform.logging import bind_call
from voiceplatform.wire import AsrFinal

log = structlog.get_logger("voiceplatform.gateway")

DIGIT_TURNS = Counter(
    "vp_gateway_dtmf_turns_total", "Keypad sequences that became caller turns, by what ended them", ["end"]
)
KEYS_DROPPED = Counter("vp_gateway_dtmf_dropped_total", "Key presses not taken as input, by why", ["why"])


@dataclass
class _Sequence:
    turn_id: str
    keys: list[str] = field(default_factory=list)
    generation: int = 0  # bumped on every key: an older inter-digit timer finds it moved on


class DigitTurns:
    def __init__(
        self, *, call_id: str, bus: Bus, keeper: TurnKeeper, cfg: DtmfConfig, realtime: bool
    ) -> None:
        self.call_id = call_id
        self.bus = bus
        self.keeper = keeper
        self.cfg = cfg
        # a realtime model takes only audio: keys are published and recorded, not a turn
        self.enabled = cfg.enabled and not realtime
        self.open: _Sequence | None = None
        self._count = 0

    async def press(self, key: str) -> None:
        """One key the caller pressed (``DTMF-Digit``)."""
        if not self.enabled:
            KEYS_DROPPED.labels("disabled").inc()
            return
        if len(key) != 1 or key.upper() not in DTMF_KEYS:
            KEYS_DROPPED.labels("not_a_key").inc()
            log.warning("call.dtmf_not_a_key", key=key[:8])
            return
        key = key.upper()
        seq = self.open
        if seq is not None and not self._still_open(seq):
            seq = self.open = None
        if seq is None:
            if key == self.cfg.end_key:
                KEYS_DROPPED.labels("lone_end_key").inc()
                return
            seq = self.open = await self._open()
        if key == self.cfg.end_key:
            await self.finish(seq, "end_key")
            return
        seq.keys.append(key)
        if len(seq.keys) >= self.cfg.max_digits:
            await self.finish(seq, "max_digits")
            return
        seq.generation += 1
        self.keeper.spawn(self._timeout(seq, seq.generation), f"dtmf-{seq.turn_id}-{seq.generation}")

    def _still_open(self, seq: _Sequence) -> bool:
        turn = self.keeper.turns.get(seq.turn_id)
        return turn is not None and turn.state is TurnState.LISTENING

    async def _open(self) -> _Sequence:
        self._count += 1
        turn_id = f"{self.call_id}-k{self._count}-{uuid.uuid4().hex[:4]}"
        keeper = self.keeper
        keeper.no_input_count = 0
        turn = Turn(turn_id, speech_start_ts_ms=now_ms())
        actions: list[Action] = []
        for live in keeper.turns.live():
            if live.state is TurnState.SPEAKING or live.paused_by:
                if self.cfg.barge_in:
                    actions.append(Cut(live.turn_id, "barge_in", turn_id))
            else:
                actions.append(Cut(live.turn_id, "superseded", turn_id))  # a reply not heard yet
        keeper.turns.add(turn)
        log.info("call.dtmf_turn_opened", turn_id=turn_id, cuts=len(actions))
        await keeper.apply(actions)
        return _Sequence(turn_id)

    async def _timeout(self, seq: _Sequence, generation: int) -> None:
        await asyncio.sleep(self.cfg.inter_digit_ms / 1000)
        if seq.generation == generation and self.open is seq:
            with bind_call(call_id=self.call_id):
                await self.finish(seq, "timeout")

    async def finish(self, seq: _Sequence, end: str) -> None:
        """The sequence is complete: its digits become the turn's transcript."""
        if self.open is seq:
            self.open = None
        seq.generation += 1
        if not self._still_open(seq):
            return  # cut meanwhile (the call ended)
        digits = "".join(seq.keys)
        now = now_ms()
        turn = self.keeper.turns.get(seq.turn_id)
        if turn is not None:
            turn.speech_end_ts_ms = now
        DIGIT_TURNS.labels(end).inc()
        log.info("call.dtmf_turn", turn_id=seq.turn_id, keys=len(digits), end=end)
        await self.bus.publish(
            subjects.asr(self.call_id),
            AsrFinal(
                call_id=self.call_id,
                turn_id=seq.turn_id,
                text=digits,
                speech_end_ts_ms=now,
                provider="dtmf",
                dtmf=True,
            ),
        )
