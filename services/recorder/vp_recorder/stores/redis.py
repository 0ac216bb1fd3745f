"""Redis: live state of each call for dashboards, and the ``call_events`` pub/sub channel.

Keys (all expire ``ttl_s`` after the last write to the call):
- ``call:{id}`` hash: robot, channel, status, started_at, turns, last_user_text, last_bot_text, prompt
  (+ ended_at, end_reason once ended);
- ``call:{id}:history`` list of JSON ``{role, text, turn_id, ts_ms, interrupted}``, one entry per role
  and turn, updated in place when a later event knows better (barge-in truncates the bot text);
- ``call:{id}:turns`` set of recorded turn ids, so a repeated turn.metrics is not counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT, FieldT

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

SOCKET_TIMEOUT_S = 5.0
# bot turns interrupted before their llm.done arrived, per call (bounded: forgotten at call end)
_MAX_PENDING_PER_CALL = 64
_MAX_PENDING_CALLS = 10_000  # calls whose call.ended never came are forgotten oldest first

HashFields = dict[FieldT, EncodableT]
# what a pipeline stage reports about a turn, before the gateway's final account (turn.metrics)
StageEvent = AsrFinal | LlmDone | ControlInterrupt

_TRANSIENT = (OSError, TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def call_key(call_id: str) -> str:
    return f"call:{call_id}"


def history_key(call_id: str) -> str:
    return f"call:{call_id}:history"


def turns_key(call_id: str) -> str:
    return f"call:{call_id}:turns"


class RedisStore:
    name = "redis"

    def __init__(
        self, url: str, public: PublicEvents | None, ttl_s: int = 1800, history_scan: int = 100
    ) -> None:
        self._url = url
        self._public = public
        self.ttl_s = ttl_s
        self.history_scan = history_scan
        self._client: aioredis.Redis | None = None
        self._interrupted: dict[str, dict[str, str]] = {}

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
            await client.ping()
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
        r = self._client
        if r is None:
            raise ConnectionError("redis not connected")
        for event in events:
            await self._write_one(r, event)

    async def _write_one(self, r: aioredis.Redis, event: StoredEvent) -> None:
        msg = event.message
        fields: HashFields = {}
        set_if_missing: HashFields = {}
        if isinstance(msg, CallStarted):
            fields = {"robot": msg.robot, "channel": msg.channel, "started_at": msg.ts_ms}
            # a late call.started must not reopen an ended call
            set_if_missing = {"status": "active", "turns": 0}
        elif isinstance(msg, CallEnded):
            fields = {"status": "ended", "ended_at": msg.ts_ms, "end_reason": msg.reason}
            self._interrupted.pop(msg.call_id, None)
        elif isinstance(msg, PromptSwitched):
            fields = {"prompt": msg.to_prompt}
        elif isinstance(msg, StageEvent):
            # once the gateway's account of the turn (turn.metrics) is stored it is final: a stage
            # event delivered again later (a recorder restart) must not overwrite it
            if not await r.sismember(turns_key(msg.call_id), msg.turn_id):
                fields = await self._record_stage(r, msg)
        elif isinstance(msg, TurnMetrics):
            fields = await self._record_turn(r, msg)
        public = await self._public.payload(event) if self._public is not None else None
        await self._finish(r, msg.call_id, fields, set_if_missing, public[1] if public else None)

    async def _record_stage(
        self, r: aioredis.Redis, msg: AsrFinal | LlmDone | ControlInterrupt
    ) -> HashFields:
        """What a stage said about a turn before the gateway's account of it arrives."""
        if isinstance(msg, AsrFinal):
            await self._put_entry(r, msg.call_id, "user", msg.turn_id, msg.text, msg.ts_ms, False)
            return {"last_user_text": msg.text}
        if isinstance(msg, LlmDone):
            played = self._interrupted.get(msg.call_id, {}).get(msg.turn_id)
            text = msg.text if played is None else played
            interrupted = msg.interrupted or played is not None
            await self._put_entry(r, msg.call_id, "assistant", msg.turn_id, text, msg.ts_ms, interrupted)
            return {"last_bot_text": text}
        found = await self._put_entry(
            r, msg.call_id, "assistant", msg.turn_id, msg.played_text, msg.ts_ms, True, append=False
        )
        if found:
            return {"last_bot_text": msg.played_text}
        self._remember_interrupt(msg)
        return {}

    async def _record_turn(self, r: aioredis.Redis, m: TurnMetrics) -> HashFields:
        """The gateway's account of a turn is final: it corrects the history entries of the turn."""
        await r.sadd(turns_key(m.call_id), m.turn_id)
        fields: HashFields = {"turns": int(await r.scard(turns_key(m.call_id)))}
        ts_ms = m.speech_end_ts_ms or m.ts_ms
        if m.user_text:
            await self._put_entry(r, m.call_id, "user", m.turn_id, m.user_text, ts_ms, False)
        bot_text = m.played_text if m.interrupted else m.bot_text
        if bot_text or m.interrupted:
            # final: a reply replaced by the fallback line after a missed deadline was stopped
            # upstream (llm.done says interrupted) but is no interruption of what the caller heard
            await self._put_entry(
                r, m.call_id, "assistant", m.turn_id, bot_text, m.ts_ms, m.interrupted, final=True
            )
            fields["last_bot_text"] = bot_text
        return fields

    def _remember_interrupt(self, msg: ControlInterrupt) -> None:
        if msg.call_id not in self._interrupted and len(self._interrupted) >= _MAX_PENDING_CALLS:
            self._interrupted.pop(next(iter(self._interrupted)))
        pending = self._interrupted.setdefault(msg.call_id, {})
        if len(pending) >= _MAX_PENDING_PER_CALL:
            pending.pop(next(iter(pending)))
        pending[msg.turn_id] = msg.played_text

    async def _put_entry(
        self,
        r: aioredis.Redis,
        call_id: str,
        role: str,
        turn_id: str,
        text: str,
        ts_ms: int,
        interrupted: bool,
        append: bool = True,
        final: bool = False,
    ) -> bool:
        """Update the history entry of (role, turn) in place, or append it. True when it existed.

        A stage's report only ever marks an entry interrupted; the gateway's ``final`` one decides."""
        key = history_key(call_id)
        async with r.pipeline(transaction=True) as pipe:
            pipe.llen(key)
            pipe.lrange(key, -self.history_scan, -1)
            length, recent = await pipe.execute()
        # absolute index: appends by other writers never shift it (a negative one would)
        first = int(length) - len(recent)
        for offset in range(len(recent) - 1, -1, -1):
            entry: dict[str, Any] = json.loads(recent[offset])
            if entry.get("role") == role and entry.get("turn_id") == turn_id:
                updated = {
                    **entry,
                    "text": text,
                    "interrupted": interrupted or (not final and bool(entry.get("interrupted"))),
                }
                if updated != entry:
                    await r.lset(key, first + offset, _entry_json(updated))
                return True
        if append:
            entry = {
                "role": role,
                "text": text,
                "turn_id": turn_id,
                "ts_ms": ts_ms,
                "interrupted": interrupted,
            }
            # in time order even when an event comes late (redelivered after a recorder restart):
            # before the first recent entry that happened after it
            later = next((raw for raw in recent if int(json.loads(raw).get("ts_ms", 0)) > ts_ms), None)
            if later is None or await r.linsert(key, "BEFORE", later, _entry_json(entry)) < 0:
                await r.rpush(key, _entry_json(entry))
        return False

    async def _finish(
        self,
        r: aioredis.Redis,
        call_id: str,
        fields: HashFields,
        set_if_missing: HashFields,
        public: bytes | None,
    ) -> None:
        """Hash fields, TTL refresh on every key of the call, then the public event (state first)."""
        async with r.pipeline(transaction=True) as pipe:
            if fields:
                pipe.hset(call_key(call_id), mapping=fields)
            for field, value in set_if_missing.items():
                pipe.hsetnx(call_key(call_id), field, value)
            for key in (call_key(call_id), history_key(call_id), turns_key(call_id)):
                pipe.expire(key, self.ttl_s)
            if public is not None:
                pipe.publish(REDIS_CHANNEL, public)
            await pipe.execute()


def _entry_json(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
