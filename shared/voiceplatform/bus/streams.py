"""The platform's JetStream streams, found or created by whichever service starts first.

``VP_CALL_EVENTS`` captures the recorded per-call subjects (the recorder's source, and the work
queue of the router and TTS); ``VP_WORK`` holds what only workers read (``llm.request``). Streams
may not overlap subjects, so a service looks a subject's stream up before creating one: an
operator who renamed the recorder's stream keeps one stream per subject.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy

from voiceplatform import subjects
from voiceplatform.bus.jetstream import StreamSpec
from voiceplatform.bus.unanswered import retry_unanswered, start_retry_s

CALL_EVENTS_STREAM = "VP_CALL_EVENTS"
CALL_EVENTS_MAX_AGE_S = 3 * 24 * 3600.0
CALL_EVENTS_MAX_BYTES = 1024**3

CALL_EVENTS = StreamSpec(
    name=CALL_EVENTS_STREAM,
    subjects=subjects.RECORDED,
    max_age_s=CALL_EVENTS_MAX_AGE_S,
    max_bytes=CALL_EVENTS_MAX_BYTES,
)

# work that is worth nothing a minute later: kept that long at most, removed once acked
WORK = StreamSpec(
    name="VP_WORK",
    subjects=(subjects.ANY_LLM_REQUEST,),
    max_age_s=120.0,
    duplicate_window_s=120.0,
    retention=RetentionPolicy.WORK_QUEUE,
)


async def stream_for(js: JetStreamContext, spec: StreamSpec) -> str:
    """The name of the stream holding ``spec``'s subjects, created from ``spec`` when there is none.

    Never changes an existing stream (its owner, e.g. the recorder with its settings, does that);
    instances racing to create it all end up with the one that won. Retried on a cluster while
    JetStream does not answer, as ``ensure_stream`` is.
    """
    return await retry_unanswered(lambda: _stream_for(js, spec), start_retry_s(spec.replicas))


async def _stream_for(js: JetStreamContext, spec: StreamSpec) -> str:
    subject = spec.subjects[0]
    try:
        return str(await js.find_stream_name_by_subject(subject))
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(spec.config())
        return spec.name
    except nats.js.errors.BadRequestError:
        # created by another instance in between (or an overlapping stream exists): use that one
        return str(await js.find_stream_name_by_subject(subject))
