"""The transcript of one call: a document rebuilt from the call's stored events (a materialized view).

One document per call, the shape of MongoDB collection ``transcriptions``; the JSON call log and the
Telegram report serialize it as-is, so it holds only JSON types: times are Unix ms (``*_ms``) plus
ISO-8601 UTC strings, offsets are ms from the start of the call.

- ``segments``: one per role and turn, turns in time order, the caller's before the bot's reply.
  ``turn.metrics`` is the gateway's final account of a turn; ``asr.final``, ``llm.sentence``,
  ``llm.done``, ``control.interrupt`` and ``playback.started`` fill in what it does not say (the
  greeting has no caller speech, and a call cut off leaves turns without it). Latencies come only
  from :func:`voiceplatform.turn_figures.turn_figures` of the turn's ``turn.metrics``.
- ``pipeline_log``: every event in stream order with a small per-type ``detail`` (never audio).
- ``metadata``: prompt switches, providers, usage for cost, barge-ins and stage errors. ``usage``
  keeps its aggregate keys and adds ``by_provider``: the call's ``provider.usage`` events summed per
  stage, provider and model (:func:`vp_recorder.usage.usage_rows`), failed attempts included.

The builder is pure and total: events may be missing, repeated (same ``seq``) or out of order in
``ts_ms``; it never raises on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallRecording,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    PlaybackStarted,
    PromptSwitched,
    ProviderUsage,
    StageError,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)
from vp_recorder.pipeline_log import log_entry, offset_ms
from vp_recorder.stored import StoredEvent
from vp_recorder.usage import usage_rows

TRANSCRIPT_VERSION = 1


def iso_utc(ts_ms: int | None) -> str | None:
    """Unix ms → ISO-8601 UTC with milliseconds; None (unknown) stays None."""
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class _Turn:
    """Everything the stream says about one turn (first or last occurrence, as noted)."""

    turn_id: str
    first_seq: int
    anchor_ms: int  # earliest moment of the turn, orders the turns
    vad_started: VadSpeechStarted | None = None  # first
    vad_ended: VadSpeechEnded | None = None  # first
    asr_final: AsrFinal | None = None  # last
    sentences: dict[int, str] = field(default_factory=dict)  # by index, last text wins
    llm_done: LlmDone | None = None  # last
    playback: PlaybackStarted | None = None  # first
    interrupt: ControlInterrupt | None = None  # first: the gateway interrupts a turn once
    metrics: TurnMetrics | None = None  # last: the final account
    switches: list[PromptSwitched] = field(default_factory=list)
    errors: list[StageError] = field(default_factory=list)

    def add(self, msg: Message) -> None:
        match msg:
            case VadSpeechStarted():
                self.vad_started = self.vad_started or msg
            case VadSpeechEnded():
                self.vad_ended = self.vad_ended or msg
            case AsrFinal():
                self.asr_final = msg
            case LlmSentence():
                self.sentences[msg.index] = msg.text
            case LlmDone():
                self.llm_done = msg
            case PlaybackStarted():
                self.playback = self.playback or msg
            case ControlInterrupt():
                self.interrupt = self.interrupt or msg
            case TurnMetrics():
                self.metrics = msg
            case PromptSwitched():
                self.switches.append(msg)
            case StageError():
                self.errors.append(msg)

    @property
    def interrupted(self) -> bool:
        if self.metrics is not None:
            return self.metrics.interrupted
        return self.interrupt is not None or (self.llm_done is not None and self.llm_done.interrupted)


# cuts of a reply that the caller never heard (when nothing was played) leave no robot segment
_UNHEARD_CUTS = ("continued", "superseded", "backchannel")


def _moment_ms(msg: Message) -> int:
    """When the thing an event reports happened (turn.metrics is sent when the turn is over)."""
    if isinstance(msg, TurnMetrics):
        return msg.speech_end_ts_ms or msg.first_played_ts_ms or msg.ts_ms
    return msg.ts_ms


def _unique_in_order(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """Stream order, each sequence once; events of another call than the first one are left out."""
    by_seq: dict[int, StoredEvent] = {}
    for event in events:
        by_seq.setdefault(event.seq, event)
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    if not ordered:
        return []
    call_id = ordered[0].call_id
    return [e for e in ordered if e.call_id == call_id]


def _first(events: list[StoredEvent], kind: type[Message]) -> Any:
    return next((e.message for e in events if isinstance(e.message, kind)), None)


def build_transcript(events: Sequence[StoredEvent]) -> dict[str, Any]:
    """The transcript document of one call from its stored events (any order, repeats allowed)."""
    stream = _unique_in_order(events)
    started: CallStarted | None = _first(stream, CallStarted)
    ended: CallEnded | None = _first(stream, CallEnded)
    call_id = stream[0].call_id if stream else ""

    start_ms: int | None = None
    if started is not None:
        start_ms = started.ts_ms
    elif stream:
        # no call.started: the earliest sign of the call (the gateway measures duration from start)
        candidates = [e.message.ts_ms for e in stream if e.message.ts_ms > 0]
        if ended is not None and ended.duration_ms > 0:
            candidates.append(ended.ts_ms - ended.duration_ms)
        start_ms = min(candidates, default=None)
    end_ms = ended.ts_ms if ended is not None else None

    turns = _collect_turns(stream)
    segments = _segments(turns, start_ms, greeting_turn=f"{call_id}-greeting")
    metadata = _metadata(stream, turns, start_ms, started)

    duration_sec: float | None = None
    if ended is not None and ended.duration_ms > 0:
        duration_sec = round(ended.duration_ms / 1000, 3)
    elif end_ms is not None and start_ms is not None:
        duration_sec = round(max(0, end_ms - start_ms) / 1000, 3)
    metrics_turns = sum(1 for t in turns if t.metrics is not None)

    return {
        "call_id": call_id,
        "v": TRANSCRIPT_VERSION,
        "robot": metadata["robot"],
        "channel": started.channel if started is not None else None,
        "caller": started.caller if started is not None else None,
        "mode": started.mode if started is not None else None,
        "sample_rate": started.sample_rate if started is not None else None,
        "status": "ended" if ended is not None else "active",
        "started_at_ms": start_ms,
        "started_at": iso_utc(start_ms),
        "ended_at_ms": end_ms,
        "ended_at": iso_utc(end_ms),
        "duration_sec": duration_sec,
        "end_reason": ended.reason if ended is not None else None,
        # end reason "transferred": the destination the caller was handed over to
        "transferred_to": (ended.transfer_to or None) if ended is not None else None,
        # the call's recordings (the gateway's stereo WAV, FreeSWITCH's uuid_record files), in the
        # order they were started; the API adds ``deleted_at`` and the playable one's ``url``
        "recordings": _recordings(stream, start_ms),
        # turns completed as the gateway counts them (one turn.metrics each)
        "turns": max(metrics_turns, ended.turns if ended is not None else 0),
        "events": len(stream),
        "last_seq": stream[-1].seq if stream else None,
        "segments": segments,
        "pipeline_log": [log_entry(e, start_ms) for e in stream],
        "metadata": metadata,
    }


def _recordings(stream: list[StoredEvent], start_ms: int | None) -> list[dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for event in stream:
        msg = event.message
        if not isinstance(msg, CallRecording):
            continue
        if msg.action == "start":
            files.setdefault(
                msg.path,
                {
                    "path": msg.path,
                    "started_offset_ms": offset_ms(msg.ts_ms, start_ms),
                    "stopped_offset_ms": None,
                    # the gateways' stereo WAV says what it is; FreeSWITCH's file does not (null)
                    "format": msg.format or None,
                    "channels": msg.channels or None,
                    "duration_ms": None,
                },
            )
        elif msg.path in files:
            files[msg.path]["stopped_offset_ms"] = offset_ms(msg.ts_ms, start_ms)
            files[msg.path]["duration_ms"] = msg.duration_ms
    return list(files.values())


def _collect_turns(stream: list[StoredEvent]) -> list[_Turn]:
    turns: dict[str, _Turn] = {}
    for event in stream:
        msg = event.message
        turn_id = getattr(msg, "turn_id", "")
        if not isinstance(turn_id, str) or not turn_id:
            continue
        turn = turns.get(turn_id)
        if turn is None:
            turn = turns[turn_id] = _Turn(turn_id, event.seq, _moment_ms(msg))
        else:
            turn.anchor_ms = min(turn.anchor_ms, _moment_ms(msg))
        turn.add(msg)
    return sorted(turns.values(), key=lambda t: (t.anchor_ms, t.first_seq))


def _segments(turns: list[_Turn], start_ms: int | None, greeting_turn: str) -> list[dict[str, Any]]:
    segments: list[dict[str, Any]] = []
    # the prompt before the first switch is the one that switch left
    prompt: str | None = next((t.switches[0].from_prompt for t in turns if t.switches), None) or None
    for turn in turns:
        if turn.switches:
            prompt = turn.switches[-1].to_prompt or prompt  # the router switches before the reply
        merged = turn.interrupt is not None and turn.interrupt.reason == "continued"
        # a continued turn's words are in the transcript of the turn that went on with them
        user = None if turn.turn_id == greeting_turn or merged else _user_segment(turn, start_ms, prompt)
        if user is not None:
            segments.append(user)
        bot = _assistant_segment(turn, start_ms, prompt)
        if bot is not None:
            segments.append(bot)
    return segments


def _figures(turn: _Turn) -> Mapping[str, object]:
    """The turn's figures, measured once by the gateway; none without its turn.metrics."""
    if turn.metrics is None:
        return {}
    return turn_figures(turn.metrics)


def _user_segment(turn: _Turn, start_ms: int | None, prompt: str | None) -> dict[str, Any] | None:
    m, asr = turn.metrics, turn.asr_final
    text = (m.user_text if m is not None else "") or (asr.text if asr is not None else "")
    if not text and not turn.errors:
        return None  # noise, or speech still being recognized
    speech_end = (
        (turn.vad_ended.ts_ms if turn.vad_ended is not None else 0)
        or (m.speech_end_ts_ms if m is not None else 0)
        or (asr.speech_end_ts_ms if asr is not None else 0)
    )
    segment = {
        "turn_id": turn.turn_id,
        "role": "user",
        "text": text,
        "played_text": text,
        "interrupted": False,
        "started_offset_ms": offset_ms(turn.vad_started.ts_ms if turn.vad_started else None, start_ms),
        "ended_offset_ms": offset_ms(speech_end, start_ms),
        "asr_latency_ms": _figures(turn).get("asr_latency_ms"),
        "llm_latency_ms": None,
        "tts_latency_ms": None,
        "voice_to_voice_ms": None,
        "prompt": prompt,
        "provider": (asr.provider or None) if asr is not None else None,
    }
    if turn.interrupt is not None and turn.interrupt.reason == "backchannel":
        segment["backchannel"] = True  # said over the robot; not part of the dialogue
    if asr is not None and asr.dtmf:
        segment["dtmf"] = True  # keys the caller pressed: the text is the digits
    return segment


def _assistant_segment(turn: _Turn, start_ms: int | None, prompt: str | None) -> dict[str, Any] | None:
    m, done, interrupt = turn.metrics, turn.llm_done, turn.interrupt
    sentences = " ".join(turn.sentences[i] for i in sorted(turn.sentences))
    metrics_text = m.bot_text if m is not None else ""
    done_text = done.text if done is not None else ""
    spoke = bool(turn.sentences or done is not None or turn.playback or interrupt)
    if interrupt is not None and interrupt.reason in _UNHEARD_CUTS and turn.playback is None:
        return None  # a reply dropped before the caller heard any of it
    if not spoke and not (m is not None and (m.bot_text or m.interrupted or m.first_played_ts_ms)):
        return None
    interrupted = turn.interrupted
    if interrupted:
        # the gateway's bot_text stops at the interruption; the LLM's own account holds all it said
        text = done_text or sentences or metrics_text
        played = (m.played_text if m is not None and m.interrupted else "") or (
            interrupt.played_text if interrupt is not None else ""
        )
    else:
        text = metrics_text or done_text or sentences
        played = text
    first_played = (turn.playback.ts_ms if turn.playback is not None else 0) or (
        m.first_played_ts_ms if m is not None else 0
    )
    started = offset_ms(first_played, start_ms)
    ended: int | None = None
    if started is not None:
        if interrupted and interrupt is not None:
            ended = offset_ms(interrupt.ts_ms, start_ms)
        elif m is not None:
            ended = offset_ms(m.ts_ms, start_ms)  # sent when the turn's playout finished
    figures = _figures(turn)
    return {
        "turn_id": turn.turn_id,
        "role": "assistant",
        "text": text,
        "played_text": played,
        "interrupted": interrupted,
        "started_offset_ms": started,
        "ended_offset_ms": ended,
        "asr_latency_ms": figures.get("asr_latency_ms"),
        "llm_latency_ms": figures.get("llm_latency_ms"),
        "tts_latency_ms": figures.get("tts_latency_ms"),
        "voice_to_voice_ms": figures.get("voice_to_voice_ms"),
        "prompt": prompt,
        "provider": (done.provider or None) if done is not None else None,
    }


def _metadata(
    stream: list[StoredEvent], turns: list[_Turn], start_ms: int | None, started: CallStarted | None
) -> dict[str, Any]:
    robot = started.robot if started is not None else None
    asr_providers: list[str] = []
    llm_providers: list[str] = []
    switches: list[dict[str, Any]] = []
    stage_errors: list[dict[str, Any]] = []
    audio_ms = prompt_tokens = completion_tokens = tts_chars = 0
    tts_usage: int | None = None  # characters sent to TTS providers, when they reported usage
    for event in stream:
        match event.message:
            case AsrFinal() as msg:
                audio_ms += max(0, msg.audio_ms)
                if msg.provider and msg.provider not in asr_providers:
                    asr_providers.append(msg.provider)
            case LlmDone() as msg:
                prompt_tokens += max(0, msg.prompt_tokens)
                completion_tokens += max(0, msg.completion_tokens)
                if msg.provider and msg.provider not in llm_providers:
                    llm_providers.append(msg.provider)
            case LlmSentence() as msg:
                tts_chars += len(msg.text)  # every sentence goes to TTS (greeting included)
                robot = robot or msg.robot or None
            case ProviderUsage(stage="tts") as msg:
                tts_usage = (tts_usage or 0) + max(0, msg.characters)
            case PromptSwitched() as msg:
                switches.append(
                    {
                        "turn_id": msg.turn_id,
                        "from": msg.from_prompt,
                        "to": msg.to_prompt,
                        "matched": msg.matched,
                        "ts_ms": msg.ts_ms,
                        "offset_ms": offset_ms(msg.ts_ms, start_ms),
                    }
                )
            case StageError() as msg:
                stage_errors.append(
                    {
                        "turn_id": msg.turn_id or None,
                        "stage": msg.stage,
                        "kind": msg.kind,
                        "detail": msg.detail,
                        "retryable": msg.retryable,
                        "ts_ms": msg.ts_ms,
                        "offset_ms": offset_ms(msg.ts_ms, start_ms),
                    }
                )
    # a barge-in names the caller turn that interrupted; the end of the call interrupts without one
    barge_ins = sum(1 for t in turns if t.interrupt is not None and t.interrupt.by_turn_id)
    return {
        "robot": robot,
        "gateway_id": (started.gateway_id or None) if started is not None else None,
        "prompt_switches": switches,
        "providers": {"asr": asr_providers, "llm": llm_providers},
        "usage": {
            "asr_audio_seconds": round(audio_ms / 1000, 3),
            "llm_prompt_tokens": prompt_tokens,
            "llm_completion_tokens": completion_tokens,
            # what TTS providers were sent (every attempt) when they say; else an estimate
            "tts_characters": tts_chars if tts_usage is None else tts_usage,
            "by_provider": usage_rows(e.message for e in stream),
        },
        "barge_ins": barge_ins,
        "errors": len(stage_errors),
        "stage_errors": stage_errors,
    }
