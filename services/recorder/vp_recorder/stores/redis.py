"""Redis: live state of each call for dashboards, and the ``call_events`` pub/sub channel.

Keys (all expire ``ttl_s`` after the last write to the call):
- ``call:{id}`` hash: robot, channel, status, started_at, turns, last_user_text, last_bot_text, prompt
  (+ ended_at, end_reason once ended);
- ``call:{id}:history`` list of JSON ``{role, text, turn_id, ts_ms, interrupted}``, one entry per role
  and turn, updated in place when a later event knows better (barge-in truncates the bot text);
- ``call:{id}:turns`` set of recorded turn ids, so a repeated turn.metrics is not counted twice;
- ``call:{id}:cut`` hash turn id -> played text of bot turns interrupted before their llm.done
  (kept here, not in recorder memory, so another recorder may get the llm.done).

Events are applied on the server by a Lua script (``redis_script``), atomically, a run of events
per script; each event's public message is published once its state is written, and a whole batch
is one pipeline of these scripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from voiceplatform import subjects
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    Message,
    PromptSwitched,
    TurnMetrics,
)
from vp_recorder.events import REDIS_CHANNEL
from vp_recorder.public import PublicEvents
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.redis_script import CALL_EVENTS_SCRIPT, EVENTS_PER_SCRIPT

SOCKET_TIMEOUT_S = 5.0

# NoScriptError: the server lost its script cache (restart, SCRIPT FLUSH): connect loads it again
_TRANSIENT = (
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.NoScriptError,
)


def call_key(call_id: str) -> str:
    return f"call:{call_id}"


def history_key(call_id: str) -> str:
    return f"call:{call_id}:history"


def turns_key(call_id: str) -> str:
    return f"call:{call_id}:turns"


def cut_key(call_id: str) -> str:
    return f"call:{call_id}:cut"


def _flag(value: bool) -> str:
    return "1" if value else "0"


def event_fields(msg: Message) -> list[EncodableT] | None:
    """The script's kind and fields for one event (after kind, ttl and scan); None: nothing to do."""
    if isinstance(msg, CallStarted):
        return ["call.started", msg.robot, msg.channel, msg.ts_ms]
    if isinstance(msg, CallEnded):
        return ["call.ended", msg.ts_ms, msg.reason]
    if isinstance(msg, PromptSwitched):
        return ["prompt.switched", msg.to_prompt]
    if isinstance(msg, TurnMetrics):
        # a reply replaced by the fallback line after a missed deadline was stopped upstream
        # (llm.done says interrupted) but is no interruption of what the caller heard
        bot_text = msg.played_text if msg.interrupted else msg.bot_text
        user_ts = msg.speech_end_ts_ms or msg.ts_ms
        cut = _flag(msg.interrupted)
        return ["turn.metrics", msg.turn_id, msg.user_text, bot_text, cut, user_ts, msg.ts_ms]
    if isinstance(msg, AsrFinal):
        return ["asr.final", msg.turn_id, msg.text, msg.ts_ms]
    if isinstance(msg, LlmDone):
        return ["llm.done", msg.turn_id, msg.text, msg.ts_ms, _flag(msg.interrupted)]
    if isinstance(msg, ControlInterrupt):
        return ["control.interrupt", msg.turn_id, msg.played_text, msg.ts_ms]
    return None


class RedisStore:
    name = "redis"
    live = True
    stream_subjects = (
        subjects.ANY_LIFECYCLE,
        subjects.ANY_TURN_REPORT,
        subjects.ANY_ASR,
        subjects.ANY_LLM_DONE,
        subjects.ANY_CONTROL,
    )

    def __init__(
        self, url: str, public: PublicEvents | None, ttl_s: int = 1800, history_scan: int = 100
    ) -> None:
        self._url = url
        self._public = public
        self.ttl_s = ttl_s
        self.history_scan = history_scan
        self._client: aioredis.Redis | None = None
        self._script_sha = ""

    def accepts(self, message: Message) -> bool:
        return isinstance(
            message,
            CallStarted | CallEnded | TurnMetrics | PromptSwitched | AsrFinal | LlmDone | ControlInterrupt,
        )

    async def connect(self) -> None:
        await self.close()
        # retries are the writer's job (one retry layer): the client fails fast
        client = aioredis.from_url(
            self._url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            self._script_sha = str(await client.script_load(CALL_EVENTS_SCRIPT))
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, _TRANSIENT)

    async def write(self, events: Sequence[StoredEvent]) -> None:
        """The whole batch in one round trip: a pipeline of scripts, each applying a run of events
        in stream order (each event's state, then its public message)."""
        r = self._client
        if r is None:
            raise ConnectionError("redis not connected")
        # the calls' ends first, together: the summary of a call the recorder has not seen whole
        # is read back from the stream, and the batch's calls are read at once
        ends = [event for event in events if isinstance(event.message, CallEnded)]
        read = await asyncio.gather(*map(self._public_payload, ends))
        summed = {event.seq: public for event, public in zip(ends, read, strict=True)}
        runs: list[tuple[list[EncodableT], list[EncodableT]]] = []  # (keys, args) per script
        for n, event in enumerate(events):
            if n % EVENTS_PER_SCRIPT == 0:
                runs.append(([], []))
            public = summed[event.seq] if event.seq in summed else await self._public_payload(event)
            msg = event.message
            fields = event_fields(msg) or [""]  # kind '': no state, only the public message
            values = [fields[0], self.ttl_s, self.history_scan, *fields[1:], REDIS_CHANNEL, public or b""]
            keys, args = runs[-1]
            keys += (
                call_key(msg.call_id),
                history_key(msg.call_id),
                turns_key(msg.call_id),
                cut_key(msg.call_id),
            )
            args += (len(values), *values)
        async with r.pipeline(transaction=False) as pipe:
            for keys, args in runs:
                pipe.evalsha(self._script_sha, len(keys), *keys, *args)
            await pipe.execute()

    async def _public_payload(self, event: StoredEvent) -> bytes | None:
        public = await self._public.payload(event) if self._public is not None else None
        return public[1] if public is not None else None
