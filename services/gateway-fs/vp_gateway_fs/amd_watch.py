"""Answering-machine detection on one answered outbound call, and what follows from it.

The call's greeting is held (``CallSession(hold_greeting=True)``) while ``AmdDetector`` listens to
the callee's first seconds: every caller frame (``feed``) and the call's transcripts (``asr.final``
/ ``asr.partial``, for the words). On the decision:

- ``human`` / ``silence``: the greeting starts at once: right after the hello ended, or after a
  short silence when the callee waits for us. Until then (and for good on a machine) every caller
  turn is cut as a backchannel as soon as it appears, so the hello, a machine's greeting or an
  IVR menu never gets a reply of its own: for a human the greeting is the answer to the hello;
- ``voicemail``: ``hangup`` ends the call (reason ``amd_voicemail``); ``message`` waits until the
  machine's greeting and beep are over (``BeepWait``), says ``voicemail_text`` (``{name}`` filled
  from the call's variables) and hangs up when it has been played;
- ``ivr``: hangup (reason ``amd_ivr``), or ``continue`` as with a human.

The result goes on the call's record as ``call.amd`` (``CallAmd``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from prometheus_client import Counter

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.gateway import CallSession
from voiceplatform.gateway.turn_policy import Cut
from voiceplatform.gateway.turns import TurnKind
from voiceplatform.outbound.amd import AmdConfig, AmdDecision, AmdDetector, BeepWait
from voiceplatform.outbound.template import fill
from voiceplatform.runtime import TaskRegistry
from voiceplatform.wire import AsrFinal, AsrPartial, CallAmd, Message

log = structlog.get_logger("vp_gateway_fs.amd")
MUTE_CHECK_S = 0.05
AMD_RESULTS = Counter("vp_gateway_fs_amd_total", "Answering-machine detection results", ["result", "action"])


class AmdWatch:
    def __init__(
        self,
        session: CallSession,
        bus: Bus,
        config: AmdConfig,
        rate: int,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.session = session
        self.on_result = on_result
        self.bus = bus
        self.config = config
        self.detector = AmdDetector(config, rate)
        self.beep: BeepWait | None = None
        self.beep_over = asyncio.Event()
        self.decision: AmdDecision | None = None
        self.action = ""
        self._sub: Subscription | None = None
        self._tasks = TaskRegistry()

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(subjects.asr(self.session.call_id), self._on_asr)
        self._tasks.spawn(self._keep_out_of_dialogue(), name=f"{self.session.call_id}-amd-mute")

    async def _keep_out_of_dialogue(self) -> None:
        """Until the robot greets a human, nothing the far end says gets a reply: a machine's
        greeting (or a hello) would otherwise be answered while detection or the beep wait runs."""
        while not self.session.ended and self.action != "greeting":
            await self._drop_caller_turns()
            await asyncio.sleep(MUTE_CHECK_S)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self._tasks.cancel_all(1.0)

    def feed(self, pcm: bytes) -> None:
        """One piece of caller audio (quick: called on the audio path)."""
        if self.beep is not None:
            if self.beep.feed(pcm):
                self.beep_over.set()
            return
        if self.decision is None and self.detector.feed(pcm) is not None:
            self._decided()

    async def _on_asr(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, AsrFinal | AsrPartial) or self.decision is not None:
            return None
        if self.detector.words(msg.text) is not None:
            self._decided()
        return None

    def _decided(self) -> None:
        decision = self.detector.decision
        if decision is None or self.decision is not None:
            return
        self.decision = decision
        if decision.kind == "voicemail" and self.config.on_voicemail == "message":
            self.beep = BeepWait(self.config, self.detector.rate)
        self._tasks.spawn(self._act(decision), name=f"{self.session.call_id}-amd")

    async def _act(self, decision: AmdDecision) -> None:
        session, cfg = self.session, self.config
        await self._drop_caller_turns()
        if decision.kind in ("human", "silence") or (decision.kind == "ivr" and cfg.on_ivr == "continue"):
            self.action = "greeting"
            await self._record(decision)
            await session.start_greeting()
        elif decision.kind == "voicemail" and cfg.on_voicemail == "message" and cfg.voicemail_text.strip():
            self.action = "voicemail_message"
            await self._record(decision)
            await self.beep_over.wait()
            await self._drop_caller_turns()
            await session.start_greeting(fill(cfg.voicemail_text, session.variables))
            turn = session.turns.get(session.greeting_turn)
            if turn is not None:
                turn.hangup_after = True  # the session hangs up once the message has been played
        else:
            self.action = "hangup"
            await self._record(decision)
            await session.end(f"amd_{decision.kind}")

    async def _drop_caller_turns(self) -> None:
        """What the callee said before the robot spoke is not part of the dialogue."""
        for turn in self.session.turns.live():
            if turn.kind is TurnKind.CALLER:
                await self.session.keeper.cut(Cut(turn.turn_id, "backchannel", turn.turn_id))

    async def _record(self, decision: AmdDecision) -> None:
        AMD_RESULTS.labels(decision.kind, self.action).inc()
        if self.on_result is not None:
            self.on_result(decision.kind)
        log.info(
            "fs.amd",
            result=decision.kind,
            reason=decision.reason,
            after_ms=decision.at_ms,
            action=self.action,
        )
        with contextlib.suppress(Exception):
            await self.bus.publish(
                subjects.lifecycle(self.session.call_id),
                CallAmd(
                    call_id=self.session.call_id,
                    result=decision.kind,
                    reason=decision.reason,
                    after_ms=decision.at_ms,
                    action=self.action,
                    words=decision.words,
                ),
            )
