"""Carries out the turn policy's decisions for one call: cut, pause and resume robot turns.

The call session owns the transport and the bus handlers; this object owns the turn table and
everything done to a turn once the policy (``turn_policy``) has decided: interrupt it upstream with
its reason, flush or pause the caller's playback, resume after a backchannel, report its figures;
and the stage deadlines of every turn (``deadlines``): a missed one replaces the reply with the
robot's fallback line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter

from voiceplatform import subjects, tracing
from voiceplatform.bus import Bus
from voiceplatform.clock import now_ms
from voiceplatform.config.robot import RobotSettings
from voiceplatform.gateway.fallback_line import FallbackLine
from voiceplatform.gateway.playout import Playout
from voiceplatform.gateway.turn_policy import Action, Cut, Pause, Policy
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState, TurnTable, metrics_event
from voiceplatform.logging import bind_call
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import AsrFinal, CallNoInput, ControlInterrupt, VadSpeechEnded, VadSpeechStarted

if TYPE_CHECKING:
    from voiceplatform.gateway.session import AudioSink

log = structlog.get_logger("voiceplatform.gateway")

CUTS = Counter(
    "vp_gateway_turns_cut_total",
    "Robot turns cut before their end, by reason (barge_in, continued, superseded, backchannel, call_ended)",
    ["reason"],
)
STALE_TRANSCRIPTS = Counter(
    "vp_gateway_stale_transcripts_total", "Transcripts of caller turns already merged or cut"
)
NO_INPUT = Counter("vp_gateway_no_input_total", "Re-prompts after the caller stayed silent")
RESUMES = Counter(
    "vp_gateway_turns_resumed_total", "Robot turns resumed after a backchannel or noise paused them"
)
FALLBACKS = Counter(
    "vp_gateway_fallbacks_total",
    "Robot replies replaced by the fallback line: by stage, why (deadline, failed) and whether the "
    "line played (played, skipped: the caller was speaking)",
    ["stage", "why", "line"],
)

Spawn = Callable[[Coroutine[Any, Any, Any], str], None]


class TurnKeeper:
    def __init__(
        self,
        *,
        call_id: str,
        bus: Bus,
        sink: AudioSink,
        playout: Playout,
        settings: RobotSettings,
        sample_rate: int,
        ahead_ms: int,
        spawn: Spawn,
        wake: Callable[[], None],
        fallback_line: FallbackLine | None = None,
    ) -> None:
        self.call_id = call_id
        self.bus = bus
        self.sink = sink
        self.playout = playout
        self.settings = settings
        self.cfg = settings.turns
        self.policy = Policy(settings.turns, settings.barge_in.enabled, settings.mode == "realtime")
        self.sample_rate = sample_rate
        # audio sent to the caller's side but probably not heard yet: replayed after a pause
        self.ahead_ms = ahead_ms
        self.spawn = spawn
        self.wake = wake
        self.turns = TurnTable()
        self.turns_completed = 0
        self.quiet_since = time.monotonic()  # last moment the caller or the robot was heard
        self.no_input_count = 0  # re-prompts in a row
        self.fallback_line = fallback_line

    async def watch_silence(self, ended: Callable[[], bool]) -> None:
        """Re-prompt a caller who says nothing after the robot finished (the brain chooses the words)."""
        limit = self.cfg.no_input_s
        with bind_call(call_id=self.call_id):
            while not ended():
                await asyncio.sleep(0.25)
                if self.turns.live() or not self.playout.idle:
                    self.quiet_since = time.monotonic()
                    continue
                silence = time.monotonic() - self.quiet_since
                if silence < limit:
                    continue
                self.no_input_count += 1
                turn_id = f"{self.call_id}-n{self.no_input_count}-{uuid.uuid4().hex[:4]}"
                turn = Turn(turn_id, TurnKind.NO_INPUT, TurnState.THINKING, expects_reply=True)
                turn.clock.reply_expected(now_ms())
                self.turns.add(turn)
                self.quiet_since = time.monotonic()
                NO_INPUT.inc()
                log.info("call.no_input", turn_id=turn_id, silence_ms=int(silence * 1000))
                await self.bus.publish(
                    subjects.lifecycle(self.call_id),
                    CallNoInput(
                        call_id=self.call_id,
                        turn_id=turn_id,
                        silence_ms=int(silence * 1000),
                        count=self.no_input_count,
                    ),
                )

    # ---- caller events ---------------------------------------------------------------------------
    async def caller_started(self, msg: VadSpeechStarted) -> None:
        self.no_input_count = 0
        self.quiet_since = time.monotonic()
        turn = Turn(msg.turn_id, speech_start_ts_ms=msg.ts_ms)
        actions = self.policy.on_caller_speech(self.turns.live(), turn, msg.ts_ms)
        self.turns.add(turn)
        min_ms = self.settings.barge_in.min_speech_ms
        if min_ms and any(not isinstance(a, Cut) or a.reason == "barge_in" for a in actions):
            self.spawn(self.barge_in_after(msg.turn_id, actions, min_ms), f"barge-{msg.turn_id}")
        else:
            await self.apply(actions)  # at once: no task hop

    def caller_paused(self, turn_id: str, paused: bool) -> None:
        """``vad.speech_paused`` / ``vad.speech_resumed``: whether the caller is silent inside a turn."""
        turn = self.turns.get(turn_id)
        if turn is not None:
            turn.speech_paused = paused

    def caller_ended(self, msg: VadSpeechEnded) -> None:
        self.quiet_since = time.monotonic()
        ended = self.turns.get(msg.turn_id) or self.turns.add(Turn(msg.turn_id))
        ended.speech_end_ts_ms = msg.ts_ms
        if ended.state is TurnState.LISTENING:
            ended.advance(TurnState.THINKING)

    async def transcript(self, msg: AsrFinal) -> None:
        turn = self.turns.get(msg.turn_id) or self.turns.add(Turn(msg.turn_id, state=TurnState.THINKING))
        if not turn.live:
            STALE_TRANSCRIPTS.inc()  # merged into a later turn, or cut: its reply is not wanted
            return
        turn.asr_final_ts_ms = msg.ts_ms
        turn.speech_end_ts_ms = turn.speech_end_ts_ms or msg.speech_end_ts_ms
        turn.user_text = msg.text
        if turn.state is TurnState.LISTENING:
            turn.advance(TurnState.THINKING)
        await self.sink.send_event(
            {"type": "asr.final", "turn_id": msg.turn_id, "text": msg.text, "merged": msg.merged}
        )
        paused = self.turns.paused_by(turn.turn_id)
        if paused:
            await self.apply(self.policy.on_transcript(paused, turn))
        if not turn.live:
            return  # a backchannel: it leaves the dialogue
        if msg.text.strip() or turn.expects_reply:
            turn.expects_reply = True
            turn.clock.reply_expected(now_ms())
            hold = self.policy.hold_ms(msg.text)
            if hold:
                turn.hold_until_ms = msg.ts_ms + hold
                self.spawn(self.wake_after(hold), f"hold-{turn.turn_id}")
        else:
            turn.advance(TurnState.DONE, "no_reply")  # nothing recognized: no bot turn follows

    # ---- final turns -------------------------------------------------------------------------------
    async def report(self, turn: Turn) -> None:
        """The turn is final: publish its figures (once) and tell the client."""
        tracing.turn_finished(self.call_id, turn, self.settings.name)
        if turn.kind is TurnKind.GREETING:
            return  # the record keeps the greeting from its sentence and playback events
        if turn.state is TurnState.DONE:
            self.turns_completed += 1
        m = turn.metrics(self.call_id)
        await self.bus.publish(subjects.turn_report(self.call_id), m)
        await self.sink.send_event(metrics_event(m))

    def ms(self, nbytes: int) -> int:
        return int(nbytes / 2 / self.sample_rate * 1000)

    async def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Cut):
                await self.cut(action)
            elif isinstance(action, Pause):
                await self.pause(action)
            else:
                await self.resume(action.turn_id)

    async def cut(self, cut: Cut) -> None:
        turn = self.turns.get(cut.turn_id)
        if turn is None or not turn.live:
            return
        was_heard = turn.state is TurnState.SPEAKING
        already_silent = bool(turn.paused_by)  # a pause flushed the caller's playback already
        audio = self.playout.drop(cut.turn_id)
        turn.played_text = audio.played_text() if audio else ""
        turn.played_ms = self.ms(audio.played_bytes) if audio else 0
        turn.paused_by = ""
        turn.advance(TurnState.CUT, "cut" if cut.reason == "barge_in" else cut.reason)
        CUTS.labels(cut.reason).inc()
        await self.bus.publish(
            subjects.control(self.call_id),
            ControlInterrupt(
                call_id=self.call_id,
                turn_id=cut.turn_id,
                by_turn_id=cut.by_turn_id,
                played_ms=turn.played_ms,
                played_text=turn.played_text,
                reason=cut.reason,
            ),
        )
        if was_heard and not already_silent and cut.reason != "call_ended":
            with contextlib.suppress(Exception):
                await self.sink.flush(cut.turn_id)
        log.info(
            "call.turn_cut",
            turn_id=cut.turn_id,
            by=cut.by_turn_id,
            reason=cut.reason,
            played_ms=turn.played_ms,
        )
        await self.sink.send_event({"type": "turn.cancelled", "turn_id": cut.turn_id, "reason": cut.reason})
        if turn.sentences and cut.reason != "call_ended":
            await self.reply_cut(turn.turn_id, turn.played_text, cut.reason)
        # a caller turn is on record once its utterance ended, except a continued one the caller
        # never heard a word of: its words are the next turn's (that turn's asr.final lists it in
        # ``merged``); one cut while still listening never reached the dialogue
        merged_unheard = cut.reason == "continued" and not was_heard
        on_record = turn.speech_end_ts_ms or turn.expects_reply or was_heard
        if turn.kind is not TurnKind.CALLER or (on_record and not merged_unheard):
            await self.report(turn)

    async def reply_cut(self, turn_id: str, heard_text: str, reason: str) -> None:
        """Tell the client a reply it was shown stopped: only ``heard_text`` of it was played."""
        await self.sink.send_event(
            {"type": "reply.cut", "turn_id": turn_id, "heard_text": heard_text, "reason": reason}
        )

    async def pause(self, pause: Pause) -> None:
        """The caller spoke over the robot: silence it at once, keep the reply until it is judged."""
        turn = self.turns.get(pause.turn_id)
        if turn is None or not turn.live:
            return
        turn.paused_by = pause.by_turn_id
        turn.pause_continues = pause.continues
        # what the sink had sent ahead was probably not heard: it plays again on a resume
        ahead_ms = self.ahead_ms
        self.playout.rewind(pause.turn_id, ahead_ms * self.sample_rate // 1000 * 2)
        with contextlib.suppress(Exception):
            await self.sink.flush(pause.turn_id)
        await self.sink.send_event({"type": "playback.paused", "turn_id": pause.turn_id})
        log.info("call.turn_paused", turn_id=pause.turn_id, by=pause.by_turn_id)
        self.spawn(self._settle_pause(pause.by_turn_id), f"settle-{pause.by_turn_id}")

    async def _settle_pause(self, caller_turn_id: str) -> None:
        """Decide a pause the transcript has not decided: the caller speaking on past
        ``backchannel_max_ms`` cuts the reply; a caller who stopped (paused or ended) gets
        ``backchannel_transcript_wait_ms`` for the transcript, then the reply is cut too."""
        caller = self.turns.get(caller_turn_id)
        if caller is None:
            return
        stopped_since: int | None = None
        with bind_call(call_id=self.call_id):
            while paused := self.turns.paused_by(caller_turn_id):
                now = now_ms()
                actions = self.policy.on_caller_speaking(paused, caller, now)
                if actions:
                    await self.apply(actions)
                    return
                if caller.state is TurnState.LISTENING and not caller.speech_paused:
                    stopped_since = None
                else:
                    stopped_since = stopped_since or now
                    if now - stopped_since >= self.cfg.backchannel_transcript_wait_ms:
                        log.warning("call.backchannel_undecided", turn_id=caller_turn_id)
                        await self.apply(self.policy.on_transcript_timeout(paused, caller))
                        return
                await asyncio.sleep(0.05)

    async def resume(self, turn_id: str) -> None:
        turn = self.turns.get(turn_id)
        if turn is None or not turn.live:
            return
        turn.paused_by = ""
        RESUMES.inc()
        log.info("call.turn_resumed", turn_id=turn_id)
        await self.sink.send_event({"type": "playback.resumed", "turn_id": turn_id})
        self.wake()

    async def barge_in_after(self, caller_turn_id: str, actions: list[Action], min_ms: int) -> None:
        """``barge_in.min_speech_ms``: speech shorter than that does not touch the robot's turn."""
        await asyncio.sleep(min_ms / 1000)
        caller = self.turns.get(caller_turn_id)
        if caller is not None and caller.state is TurnState.LISTENING:
            with bind_call(call_id=self.call_id):
                await self.apply(actions)

    # ---- stage deadlines ----------------------------------------------------------------------------
    async def watch_deadlines(self, ended: Callable[[], bool], every_s: float = 0.1) -> None:
        with bind_call(call_id=self.call_id):
            while not ended():
                await asyncio.sleep(every_s)
                await self.check_deadlines(now_ms())

    async def check_deadlines(self, now: int) -> None:
        """Replace every live reply whose stage missed its deadline at ``now`` with the fallback line.

        Not for realtime robots: their model decides whether and when to answer, and voices it."""
        if not self.settings.deadlines.enabled or self.policy.realtime:
            return
        for turn in self.turns.live():
            if turn.kind is TurnKind.GREETING or turn.fallback_stage:
                continue  # the greeting has no line to fall back on; a fallback is said once
            missed = turn.clock.missed(now, self.settings.deadlines)
            if missed is None:
                continue
            log.warning(
                "call.deadline_missed",
                turn_id=turn.turn_id,
                stage=missed.stage,
                awaited=missed.awaited,
                waited_ms=missed.waited_ms,
            )
            await self.fall_back(turn, missed.stage, missed.detail)

    async def fall_back(self, turn: Turn, stage: str, detail: str = "", *, failed: bool = False) -> None:
        """``stage`` missed its deadline (``failed``: it reported its own stage.error instead, so
        none is published here): stop the reply upstream and drop its audio, then say the robot's
        fallback line in its place, unless the caller is speaking (the line would talk over them;
        their new utterance gets its own reply). The turn ends with outcome ``fallback``."""
        turn.fallback_stage = stage
        if not failed:
            await publish_stage_error(
                self.bus,
                call_id=self.call_id,
                stage=stage,
                kind="deadline",
                detail=detail,
                turn_id=turn.turn_id,
            )
        audio = self.playout.drop(turn.turn_id)
        turn.heard_before_fallback = audio.played_text() if audio else ""
        if turn.sentences:
            await self.reply_cut(turn.turn_id, turn.heard_before_fallback, "fallback")
        turn.played_ms = self.ms(audio.played_bytes) if audio else 0
        await self.bus.publish(
            subjects.control(self.call_id),
            ControlInterrupt(
                call_id=self.call_id,
                turn_id=turn.turn_id,
                played_ms=turn.played_ms,
                played_text=turn.heard_before_fallback,
                reason="deadline",
            ),
        )
        caller_speaking = bool(turn.paused_by) or self.turns.listening() is not None
        pcm = b"" if caller_speaking or self.fallback_line is None else self.fallback_line.pcm()
        FALLBACKS.labels(stage, "failed" if failed else "deadline", "played" if pcm else "skipped").inc()
        turn.paused_by = ""
        turn.hold_until_ms = 0
        if pcm and self.fallback_line is not None:
            turn.fallback_text = self.fallback_line.text
            self.playout.add_audio(turn.turn_id, 0, pcm, last=True, text=turn.fallback_text)
            self.playout.set_expected(turn.turn_id, 1)
            self.wake()  # the playout finishes the turn when the line has played
            await self.sink.send_event(
                {"type": "bot.sentence", "turn_id": turn.turn_id, "index": 0, "text": turn.fallback_text}
            )
            return
        turn.played_text = turn.heard_before_fallback
        if turn.state is TurnState.LISTENING:
            turn.advance(TurnState.THINKING)
        turn.advance(TurnState.DONE, "fallback")
        await self.report(turn)

    async def wake_after(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        self.wake()
