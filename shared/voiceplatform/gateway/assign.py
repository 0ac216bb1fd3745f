"""Assigning a call's streaming stage (vad, asr) to one worker instance, retrying until one accepts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from voiceplatform import subjects
from voiceplatform.bus import Bus, NoResponders, RequestTimeout
from voiceplatform.wire import AssignReply, AssignRequest

MAX_BACKOFF_S = 1.0
QUEUE_TIMEOUT_S = 1.0
# a live instance answers in milliseconds; a busy one that misses this is asked again later
DIRECT_TIMEOUT_S = 0.3


async def assign_until_accepted(
    bus: Bus,
    request: AssignRequest,
    wanted: Callable[[], bool],
    on_first_refusal: Callable[[str], Awaitable[None]],
    *,
    stamp: Callable[[AssignRequest], None] | None = None,
    candidates: Callable[[], list[str]] | None = None,
) -> AssignReply | None:
    """Ask until an instance accepts, or the call no longer wants it.

    Each attempt is stamped anew (``stamp``: a fresh epoch, so an instance that accepts a request
    the gateway already gave up on holds a fenced, stale assignment). ``candidates`` names live
    instances to ask directly first, least loaded first (a re-assignment must not wait on the lost
    or a frozen instance, which a queue group could still pick); otherwise, and after they refused,
    the role's queue group is asked. Refusals (at capacity, draining, no instance running, timeout)
    back off from 50 ms to 1 s, so a worker that starts late, or frees a slot, still picks it up.
    """
    delay = 0.05
    refused = False
    while wanted():
        why = ""
        for instance in [*(candidates() if candidates is not None else []), ""]:
            if stamp is not None:
                stamp(request)
            subject = (
                subjects.assign_to(request.role, instance) if instance else subjects.assign(request.role)
            )
            try:
                reply = await bus.request(
                    subject, request, timeout=DIRECT_TIMEOUT_S if instance else QUEUE_TIMEOUT_S
                )
                if isinstance(reply, AssignReply) and reply.accepted:
                    return reply
                why = reply.reason if isinstance(reply, AssignReply) else "bad_reply"
            except NoResponders:
                why = "no_responders"
            except RequestTimeout:
                why = "timeout"
            if not wanted():
                return None
        if not refused:
            refused = True
            await on_first_refusal(why)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)
    return None
