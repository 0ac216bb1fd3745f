"""What the stages tell one call, applied to its turns and playout (``CallSession.inbox``).

Each handler is one subscription of the call's (vad, asr, llm sentences and done, tts audio,
control, lifecycle); a subscription delivers in order and its handler never blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from voiceplatform import metrics
from voiceplatform.bus import Envelope
from voiceplatform.clock import now_ms
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState
from voiceplatform.wire import (
    AsrFinal,
    ControlHangup,
    ControlRecord,
    ControlTransfer,
    LlmDone,
    LlmSentence,
    Message,
    PromptSwitched,
    StageError,
    TtsAudio,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
)

if TYPE_CHECKING:
    from voiceplatform.gateway.session import CallSession

log = structlog.get_logger("voiceplatform.gateway")

STALE_AUDIO = Counter(
    "vp_gateway_stale_audio_dropped_total", "TTS chunks of interrupted/unknown turns dropped"
)
COPIED_AUDIO = Counter(
    "vp_gateway_copied_audio_dropped_total", "TTS chunks dropped as copies (a retried sentence)"
)
MAX_ERROR_DETAIL = 300  # characters of a stage error's detail sent to the client


class StageInbox:
    def __init__(self, session: CallSession) -> None:
        self.session = session

    async def on_vad(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, VadSpeechStarted | VadSpeechEnded | VadSpeechPaused | VadSpeechResumed):
            if not self.session.streaming.from_owner("vad", msg.epoch):
                return None  # a replaced owner's late event
            self.session.streaming.audio_log.on_vad(msg)
        if isinstance(msg, VadSpeechStarted):
            await self.session.keeper.caller_started(msg)
            await self.session.sink.send_event({"type": "vad.speech_started", "turn_id": msg.turn_id})
        elif isinstance(msg, VadSpeechEnded):
            self.session.keeper.caller_ended(msg)
        elif isinstance(msg, VadSpeechPaused | VadSpeechResumed):
            self.session.keeper.caller_paused(msg.turn_id, isinstance(msg, VadSpeechPaused))
        return None

    async def on_asr(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, AsrFinal) and self.session.streaming.from_owner("asr", msg.epoch):
            self.session.streaming.audio_log.on_final(msg)
            await self.session.keeper.transcript(msg)
        return None

    def live_reply(self, turn_id: str) -> Turn | None:
        """The live turn a reply message belongs to, or None (stale, or the reply was replaced by
        the fallback line after a missed deadline: counted and dropped)."""
        turn = self.session.turns.get(turn_id)
        if turn is None or not turn.accepts_reply:
            return None
        if self.session.replies_held and turn.kind is not TurnKind.GREETING:
            return None
        return turn

    async def on_sentence(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, LlmSentence):
            return None
        turn = self.live_reply(msg.turn_id)
        if turn is None:
            return None
        # realtime replies may start before the caller's transcript arrives
        turn.expects_reply = True
        turn.first_sentence_ts_ms = turn.first_sentence_ts_ms or msg.ts_ms
        turn.sentences[msg.index] = msg.text
        if msg.track:
            turn.tracks[msg.index] = msg.track
        turn.clock.sentence(msg.index, now_ms())
        self.session.playout.turn(msg.turn_id).sentence(msg.index).text = msg.text
        await self.session.sink.send_event(
            {"type": "bot.sentence", "turn_id": msg.turn_id, "index": msg.index, "text": msg.text}
        )
        return None

    async def on_llm_done(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, LlmDone) or msg.interrupted:
            return None
        turn = self.live_reply(msg.turn_id)
        if turn is None:
            return None
        self.session.playout.set_expected(msg.turn_id, msg.sentences)
        turn.clock.llm_done()
        turn.hangup_after = turn.hangup_after or msg.hangup
        turn.transfer_to = turn.transfer_to or msg.transfer_to
        turn.intent = turn.intent or msg.intent
        self.session.audio_ready.set()
        return None

    async def on_tts_audio(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, TtsAudio):
            return None
        turn = self.live_reply(msg.turn_id)
        if turn is None:
            STALE_AUDIO.inc()
            return None
        turn.expects_reply = True  # a realtime reply may come before the caller's transcript
        if msg.sample_rate != self.session.sample_rate:
            metrics.MESSAGES_DROPPED.labels("gateway", "tts.audio", "wrong_sample_rate").inc()
            log.warning("call.tts_wrong_rate", turn_id=msg.turn_id, rate=msg.sample_rate)
            msg.pcm = b""
        if not self.session.playout.add_audio(msg.turn_id, msg.index, msg.pcm, msg.last, msg.text, msg.seq):
            COPIED_AUDIO.inc()
            return None
        if not turn.first_audio_ts_ms and msg.pcm:
            turn.first_audio_ts_ms = msg.ts_ms
        turn.clock.audio(msg.index, msg.last, now_ms())
        self.session.audio_ready.set()
        return None

    async def on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlHangup):
            current = self.session.playout.current
            playing = self.session.turns.get(current.turn_id) if current else None
            # graceful: the reply being heard finishes first; one not heard yet (a realtime greeting
            # its failed model will never speak) would keep the call open for nothing
            if msg.graceful and playing is not None and playing.live and playing.first_played_ts_ms:
                playing.hangup_after = True
            else:
                self.session.spawn(self.session.end(f"hangup:{msg.reason}"), "hangup")
        elif isinstance(msg, ControlTransfer | ControlRecord) and self.session.channel != "phone":
            # only a phone line can be handed over or recorded by the platform: say so, go on talking
            what, done = (
                ("transfer", "transferred") if isinstance(msg, ControlTransfer) else ("record", "recorded")
            )
            channel = self.session.channel
            kind, detail = f"{what}_unsupported", f"a {channel} call cannot be {done} by the platform"
            if isinstance(msg, ControlRecord):  # control.record drives FreeSWITCH's own recorder
                recorded = self.session.recording is not None
                kept = "is recorded by the gateway" if recorded else "is not recorded"
                detail = f"control.record is FreeSWITCH's recorder; this {channel} call {kept}"
            log.warning("call.control_unsupported", kind=kind)
            await self.session.publish_error(self.session.channel_stage, kind, detail)
        return None

    async def on_lifecycle(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, PromptSwitched):  # a topic robot changed its prompt: the client shows it
            event = {"type": "prompt.switched", "turn_id": msg.turn_id, "prompt": msg.to_prompt}
            event |= {"from_prompt": msg.from_prompt, "matched": msg.matched}
            await self.session.sink.send_event(event)
            return None
        if isinstance(msg, StageError):
            # the detail is the stage's own one-line cause (providers keep secrets out of it)
            event = {"type": "error", "stage": msg.stage, "kind": msg.kind, "turn_id": msg.turn_id}
            await self.session.sink.send_event(
                {**event, "detail": msg.detail[:MAX_ERROR_DETAIL], "retryable": msg.retryable}
            )
            turn = self.live_reply(msg.turn_id) if msg.turn_id else None
            if turn is None:
                return None
            if msg.stage == "asr" and not turn.expects_reply:
                if turn.state is TurnState.LISTENING:
                    turn.advance(TurnState.THINKING)
                turn.advance(TurnState.DONE, "no_reply")  # nothing recognized: no bot turn follows
            elif msg.stage in ("llm", "prompt-router", "router") and not turn.sentences:
                # the whole reply is lost: the caller hears the fallback line, not silence
                await self.session.keeper.fall_back(turn, msg.stage, failed=True)
            elif msg.stage in ("llm", "prompt-router", "router"):
                # the reply stops where it failed: play what was said, then the turn is done
                self.session.playout.set_expected(msg.turn_id, len(turn.sentences))
                turn.clock.llm_done()
                self.session.audio_ready.set()
        return None
