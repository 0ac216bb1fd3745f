"""Every NATS subject string the platform uses is built here, and only here.

Internal per-call subjects: ``vp.call.<call_id>.<stage>``. Service control: ``vp.svc.<role>.<verb>``.
Public contract for other systems: ``call_events.<type>`` (see docs/call_events.md).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PREFIX = "vp"


class SubjectError(ValueError):
    pass


def check_token(value: str) -> str:
    """Reject ids that would break subject tokenization (dots, wildcards, spaces)."""
    if not _TOKEN.match(value):
        raise SubjectError(f"not a valid subject token: {value!r}")
    return value


def _call(call_id: str, stage: str) -> str:
    return f"{PREFIX}.call.{check_token(call_id)}.{stage}"


# ---- per call ------------------------------------------------------------------------------------
def audio_in(call_id: str) -> str:
    return _call(call_id, "audio.in")


def audio_replay(call_id: str, role: str) -> str:
    """Caller audio re-sent by the gateway to a call's new owner of ``role`` (after a failover)."""
    return _call(call_id, f"audio.replay.{check_token(role)}")


def vad(call_id: str) -> str:
    return _call(call_id, "vad")


def asr(call_id: str) -> str:
    return _call(call_id, "asr")


def llm_request(call_id: str) -> str:
    return _call(call_id, "llm.request")


def llm_sentence(call_id: str) -> str:
    return _call(call_id, "llm.sentence")


def llm_done(call_id: str) -> str:
    return _call(call_id, "llm.done")


def tts_audio(call_id: str) -> str:
    return _call(call_id, "tts.audio")


def control(call_id: str) -> str:
    """Barge-in and hangup: a separate subscription everywhere, so control never waits behind data."""
    return _call(call_id, "control")


def lifecycle(call_id: str) -> str:
    """call.started / call.ended / call.no_input / prompt.switched / stage.error / call.dtmf / ..."""
    return _call(call_id, "lifecycle")


def turn_report(call_id: str) -> str:
    """The gateway's account of each turn: playback.started and turn.metrics. Only the recorder
    reads them, so they are not on ``lifecycle``, which every stage of a call listens to."""
    return _call(call_id, "turn")


def usage(call_id: str) -> str:
    """provider.usage: every provider attempt, for cost. Three or more a turn that only the recorder
    reads, so not on ``lifecycle``, which every stage of a call listens to."""
    return _call(call_id, "usage")


# ---- wildcards over all calls (for queue-group consumers and the recorder) ----------------------
def any_call(stage: str) -> str:
    return f"{PREFIX}.call.*.{stage}"


ALL_CALLS = f"{PREFIX}.call.>"
ANY_AUDIO_IN = any_call("audio.in")
# caller audio in every form (``audio.in``, and any copy a gateway re-sends): gateways alone publish it
ANY_CALLER_AUDIO = any_call("audio.>")
ANY_ASR = any_call("asr")
ANY_LLM_REQUEST = any_call("llm.request")
ANY_LLM_SENTENCE = any_call("llm.sentence")
ANY_LLM_DONE = any_call("llm.done")
ANY_CONTROL = any_call("control")
ANY_LIFECYCLE = any_call("lifecycle")
ANY_USAGE = any_call("usage")
ANY_TURN_REPORT = any_call("turn")

# What the recorder keeps: every per-call event except audio (caller frames, robot speech) and the
# LLM requests (each repeats the whole history; the router's decisions are on lifecycle).
RECORDED = (
    ANY_LIFECYCLE,
    any_call("vad"),
    ANY_ASR,
    ANY_LLM_SENTENCE,
    ANY_LLM_DONE,
    ANY_CONTROL,
    ANY_USAGE,
    ANY_TURN_REPORT,
)


def call_events_of(call_id: str) -> str:
    """Every per-call subject of one call (as a stream filter)."""
    return _call(call_id, ">")


def call_id_of(subject: str) -> str:
    """The call id token of a per-call subject."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != PREFIX or parts[1] != "call":
        raise SubjectError(f"not a per-call subject: {subject!r}")
    return parts[2]


# ---- services ------------------------------------------------------------------------------------
def assign(role: str) -> str:
    """Request/reply to the role's queue group: exactly one instance takes the call."""
    return f"{PREFIX}.svc.{check_token(role)}.assign"


def assign_to(role: str, instance_id: str) -> str:
    """Request/reply to one instance of the role (a re-assignment picks a live one, never the lost)."""
    return f"{PREFIX}.svc.{check_token(role)}.assign.{check_token(instance_id)}"


def heartbeat(role: str) -> str:
    return f"{PREFIX}.svc.{check_token(role)}.heartbeat"


def released(role: str) -> str:
    return f"{PREFIX}.svc.{check_token(role)}.released"


def presence(service: str) -> str:
    """Every service instance announces itself here each second (the gateway's /health reads it)."""
    return f"{PREFIX}.svc.{check_token(service)}.presence"


ANY_PRESENCE = f"{PREFIX}.svc.*.presence"
# every role's service subjects (the gateways' permissions: they assign and watch every role)
ANY_ASSIGN = f"{PREFIX}.svc.*.assign"
ANY_ASSIGN_TO_INSTANCE = f"{PREFIX}.svc.*.assign.*"  # an assignment addressed to one instance
ANY_HEARTBEAT = f"{PREFIX}.svc.*.heartbeat"
ANY_RELEASED = f"{PREFIX}.svc.*.released"


def assign_to_any_instance(role: str) -> str:
    """Assignments addressed to one instance of the role (what an owner may receive besides ``assign``)."""
    return f"{PREFIX}.svc.{check_token(role)}.assign.*"


def queue_group(role: str) -> str:
    return check_token(role)


# ---- public contract -----------------------------------------------------------------------------
CALL_EVENTS_PREFIX = "call_events"


def call_event(event_type: str) -> str:
    """``call_events.call.started`` etc.; the event type may contain dots (they become tokens)."""
    for token in event_type.split("."):
        check_token(token)
    return f"{CALL_EVENTS_PREFIX}.{event_type}"


ALL_CALL_EVENTS = f"{CALL_EVENTS_PREFIX}.>"


# ---- dead letters ----------------------------------------------------------------------------------
def parked(service: str) -> str:
    """Messages a service could not handle (malformed, unknown version, rejected by a store)."""
    return f"{PREFIX}.parked.{check_token(service)}"


ALL_PARKED = f"{PREFIX}.parked.>"


# ---- JetStream ---------------------------------------------------------------------------------------
def max_deliveries_advisory(stream: str, consumer: str) -> str:
    """The server's notice that a message of ``consumer`` was delivered its maximum number of times."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{check_token(stream)}.{check_token(consumer)}"


def work_msg_id(turn_id: str, what: str, index: int | None = None) -> str:
    """``Nats-Msg-Id`` of a stage's output for one turn: the stream keeps the first copy only."""
    return f"{turn_id}:{what}" if index is None else f"{turn_id}:{what}:{index}"


# JetStream KV bucket holding per-call dialogue state (history, current prompt, script state), so
# the stateless router and LLM workers can be restarted or scaled at any time.
DIALOG_BUCKET = "vp_dialog"
