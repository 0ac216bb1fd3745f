"""Assigning a call's streaming stage (vad, asr) to one worker instance, retrying until one accepts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from voiceplatform import subjects
from voiceplatform.bus import Bus, NoResponders, RequestTimeout
from voiceplatform.wire import AssignReply, AssignRequest

MAX_BACKOFF_S = 1.0


async def assign_until_accepted(
    bus: Bus,
    request: AssignRequest,
    wanted: Callable[[], bool],
    on_first_refusal: Callable[[str], Awaitable[None]],
) -> AssignReply | None:
    """Ask the role's queue group until an instance accepts, or the call no longer wants it.

    Refusals (at capacity, draining, no instance running, timeout) back off from 50 ms to 1 s, so a
    worker that starts late, or frees a slot, still picks the call up.
    """
    delay = 0.05
    refused = False
    while wanted():
        why = ""
        try:
            reply = await bus.request(subjects.assign(request.role), request, timeout=1.0)
            if isinstance(reply, AssignReply) and reply.accepted:
                return reply
            why = reply.reason if isinstance(reply, AssignReply) else "bad_reply"
        except NoResponders:
            why = "no_responders"
        except RequestTimeout:
            why = "timeout"
        if not refused:
            refused = True
            await on_first_refusal(why)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)
    return None
