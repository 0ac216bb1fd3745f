"""Who may publish and subscribe what on the platform's NATS: one user per service, written once.

Every subject comes from ``voiceplatform.subjects``; the nats-server configuration (``vp up``,
deploy/compose/nats.conf) is generated from this table by ``voiceplatform.bus.natsconf``.

The rules that matter for a call:

- only the gateways publish caller audio (``audio.in``) and ``control`` (hangup, barge-in,
  transfer); the one exception is ``realtime``, which owns a whole realtime call and hangs it up
  when its provider is gone. Gateways also publish ``asr`` besides the asr worker: keypad digits
  as a caller turn's transcript (``voiceplatform.gateway.digits``);
- a worker publishes only its own stage's output (tts: ``tts.audio``; llm: ``llm.sentence`` and
  ``llm.done``; …) and ``lifecycle`` (stage errors, provider usage);
- ``call-events`` is the read-only user for integrators: it subscribes ``call_events.>`` and
  publishes nothing;
- request/reply goes through each user's own inbox (``_INBOX.<user>.>``, set by the client with
  ``inbox_prefix``); a responder answers only the requests it received (``allow_responses``);
- JetStream: the recorder administers streams; the workers that take work through JetStream
  (prompt-router, llm, tts) may find or create the work streams by name, create and use consumers
  on them and ack; a KV user reaches its own buckets only.
"""

from __future__ import annotations

from dataclasses import dataclass

from voiceplatform import subjects

INBOX_ROOT = "_INBOX"
# the operator's user: every subject, for the `nats` CLI and tests; never given to a service
ADMIN_USER = "vp-admin"
# the read-only user for systems that follow public call events (docs/call_events.md)
CALL_EVENTS_USER = "call-events"
# KV buckets (JetStream streams KV_<bucket>) and who uses them
KEY_HEALTH_BUCKET = "vp_key_health"  # voiceplatform.providers.keypool.DEFAULT_BUCKET

# JetStream streams the workers take work from: the recorder's capture of the call subjects (router:
# asr and lifecycle; tts: llm.sentence) and the llm request queue. Names as in bus/streams.py; an
# operator who renames a stream (VP_STREAM_NAME) renames it here too.
CALL_EVENTS_STREAM = "VP_CALL_EVENTS"
WORK_STREAM = "VP_WORK"
WORK_STREAMS = (CALL_EVENTS_STREAM, WORK_STREAM)
_JS_ADMIN = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")


def _js_worker(streams: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(publish, subscribe) to find or create these streams and take work from them with durable pull
    consumers: info, create (never update or delete), consumers, fetch, ack, read one message back,
    and the server's max-deliveries advisories. No stream of another name: a stream's config can
    republish onto any subject."""
    publish = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    subscribe = []
    for stream in streams:
        subjects.check_token(stream)
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
            f"$JS.ACK.{stream}.>",
        ]
        subscribe.append(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.>")
    return tuple(publish), tuple(subscribe)


_JS_PUB, _JS_SUB = _js_worker(WORK_STREAMS)


def inbox(user: str) -> str:
    """The inbox prefix of a user's connection (its replies arrive under ``<prefix>.>``)."""
    return f"{INBOX_ROOT}.{subjects.check_token(user)}"


def _kv(bucket: str) -> tuple[str, ...]:
    """A KV bucket: create/look it up, get (direct or message get), put and delete keys."""
    stream = f"KV_{bucket}"
    return (
        f"$KV.{bucket}.>",
        "$JS.API.INFO",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.DIRECT.GET.{stream}",
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """What one user may do. Empty ``publish`` means it publishes nothing at all."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False  # may answer requests it received (``allow_responses``)
    inbox: bool = True  # subscribes its own inbox (requests, JetStream API replies)


def _service(
    name: str,
    publish: tuple[str, ...],
    subscribe: tuple[str, ...],
    responds: bool = False,
) -> Grant:
    own = (subjects.presence(name), subjects.parked(name))
    return Grant(publish=_unique(own + publish), subscribe=_unique(subscribe), responds=responds)


def _owner(role: str, publish: tuple[str, ...], subscribe: tuple[str, ...]) -> Grant:
    """A stateful worker taking calls by assignment: answers ``assign``, heartbeats and releases."""
    return _service(
        role,
        (subjects.heartbeat(role), subjects.released(role), *publish),
        (subjects.assign(role), subjects.assign_to_any_instance(role), *subscribe),
        responds=True,
    )


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_GATEWAY = (
    (
        subjects.ANY_CALLER_AUDIO,
        subjects.ANY_CONTROL,
        subjects.ANY_LIFECYCLE,
        subjects.ANY_TURN_REPORT,
        subjects.ANY_LLM_SENTENCE,  # the greeting is spoken as a sentence of the robot
        subjects.ANY_ASR,  # keypad digits (DTMF) become a caller turn's transcript
        subjects.ANY_ASSIGN,
        subjects.ANY_ASSIGN_TO_INSTANCE,
    ),
    (
        subjects.ALL_CALLS,
        subjects.ANY_PRESENCE,
        subjects.ANY_HEARTBEAT,
        subjects.ANY_RELEASED,
    ),
)

SERVICE_GRANTS: dict[str, Grant] = {
    "gateway-web": _service("gateway-web", *_GATEWAY),
    "gateway-fs": _service("gateway-fs", *_GATEWAY),
    "vad": _owner(
        "vad",
        (subjects.any_call("vad"), subjects.ANY_LIFECYCLE),
        (subjects.ANY_CALLER_AUDIO, subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE),
    ),
    "asr": _owner(
        "asr",
        (subjects.ANY_ASR, subjects.ANY_LIFECYCLE, subjects.ANY_USAGE),
        (subjects.ANY_CALLER_AUDIO, subjects.any_call("vad"), subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE),
    ),
    "realtime": _owner(
        "realtime",
        (
            subjects.any_call("vad"),
            subjects.ANY_ASR,
            subjects.ANY_LLM_SENTENCE,
            subjects.ANY_LLM_DONE,
            subjects.any_call("tts.audio"),
            subjects.ANY_LIFECYCLE,
            subjects.ANY_USAGE,
            subjects.ANY_CONTROL,  # hangs up a call whose realtime provider is gone for good
        ),
        (subjects.ANY_CALLER_AUDIO, subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE),
    ),
    "prompt-router": _service(
        "prompt-router",
        (subjects.ANY_LLM_REQUEST, subjects.ANY_LIFECYCLE, *_JS_PUB, *_kv(subjects.DIALOG_BUCKET)),
        (subjects.ANY_ASR, subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE, subjects.ANY_LLM_DONE, *_JS_SUB),
    ),
    "llm": _service(
        "llm",
        (
            subjects.ANY_LLM_SENTENCE,
            subjects.ANY_LLM_DONE,
            subjects.ANY_LIFECYCLE,
            subjects.ANY_USAGE,
            *_JS_PUB,
            *_kv(KEY_HEALTH_BUCKET),
        ),
        (subjects.ANY_LLM_REQUEST, subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE, *_JS_SUB),
    ),
    "tts": _service(
        "tts",
        (subjects.any_call("tts.audio"), subjects.ANY_LIFECYCLE, subjects.ANY_USAGE, *_JS_PUB),
        (subjects.ANY_LLM_SENTENCE, subjects.ANY_CONTROL, subjects.ANY_LIFECYCLE, *_JS_SUB),
    ),
    "recorder": _service(
        "recorder",
        (
            subjects.ALL_CALL_EVENTS,
            subjects.ANY_LIFECYCLE,  # closes the record of a call whose gateway is gone
            *_JS_ADMIN,
            *_kv(subjects.DIALOG_BUCKET),
        ),
        # public call events: the console's live view follows them (every recorder instance)
        (subjects.ALL_CALLS, subjects.ANY_PRESENCE, subjects.ALL_CALL_EVENTS),
    ),
}

GRANTS: dict[str, Grant] = {
    **SERVICE_GRANTS,
    CALL_EVENTS_USER: Grant(publish=(), subscribe=(subjects.ALL_CALL_EVENTS,), inbox=False),
}

USERS: tuple[str, ...] = (*GRANTS, ADMIN_USER)


def subscribe_allow(user: str) -> tuple[str, ...]:
    grant = GRANTS[user]
    return (*grant.subscribe, f"{inbox(user)}.>") if grant.inbox else grant.subscribe
