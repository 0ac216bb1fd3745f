"""The channels our FreeSWITCH has announced on the Event Socket: the only ones a stream may serve.

Every channel event carries the channel's data (``switch_channel_event_set_data``): ``Unique-ID``,
``Caller-Caller-ID-Number``, ``Caller-Destination-Number``, ``variable_*``. The registry keeps the
latest facts per live channel, from ``CHANNEL_CREATE`` (or any later channel event) to
``CHANNEL_HANGUP``; a hung-up channel is remembered briefly so that a late stream is refused as
``channel_ended`` rather than ``unknown_channel``.

A stream may reach gateway-fs before its channel's events do (the ESL and the WebSocket are two
sockets): ``wait`` gives the announcement a short time. Channels created while the ESL was down
were never announced: ``lookup`` then asks FreeSWITCH itself (``uuid_dump``), which only the
holder of the stream secret can make us do.

Bounded: at most ``MAX_CHANNELS`` live entries (the oldest are dropped first, counted) with at most
``MAX_VARIABLES`` variables each; a live entry older than ``MAX_AGE_S`` without a hangup is
forgotten (an event lost in an outage), an ended one after ``ENDED_MEMORY_S``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import unquote

import structlog
from prometheus_client import Counter, Histogram

from voiceplatform import metrics
from vp_gateway_fs.esl_frames import EslEvent, parse_headers

log = structlog.get_logger("vp_gateway_fs.channels")

MAX_CHANNELS = 5000
MAX_VARIABLES = 64
MAX_AGE_S = 4 * 3600.0
ENDED_MEMORY_S = 60.0
ENDED_EVENTS = ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY")
# a stream's channel: known at once (event), after a wait (waited), from uuid_dump (asked), or not
LOOKUPS = Counter("vp_gateway_fs_channel_lookup_total", "How a stream's channel was found", ["how"])
WAIT_MS = Histogram(
    "vp_gateway_fs_channel_wait_ms",
    "How long a stream waited for its channel's announcement on the Event Socket",
    buckets=metrics.LATENCY_BUCKETS_MS,
)
EVICTED = Counter("vp_gateway_fs_channels_evicted_total", "Channel entries dropped to stay bounded")


@dataclass(frozen=True)
class ChannelFacts:
    """What FreeSWITCH says about a channel (never what the stream's metadata claims)."""

    uuid: str
    caller: str = ""  # Caller-Caller-ID-Number
    caller_name: str = ""  # Caller-Caller-ID-Name
    destination: str = ""  # Caller-Destination-Number: the dialled number
    direction: str = ""  # Call-Direction
    answered: bool = False
    variables: dict[str, str] = field(default_factory=dict)  # variable_* without the prefix

    @classmethod
    def from_headers(cls, uuid: str, headers: dict[str, str]) -> ChannelFacts:
        return cls(
            uuid=uuid,
            caller=headers.get("Caller-Caller-ID-Number", "")[:64],
            caller_name=headers.get("Caller-Caller-ID-Name", "")[:64],
            destination=headers.get("Caller-Destination-Number", "")[:64],
            direction=headers.get("Call-Direction", ""),
            answered=headers.get("Answer-State", "") == "answered",
            variables=dict(
                itertools.islice(
                    ((k[9:], v[:256]) for k, v in headers.items() if k.startswith("variable_")), MAX_VARIABLES
                )
            ),
        )


@dataclass
class _Entry:
    facts: ChannelFacts
    seen: float


class ChannelRegistry:
    def __init__(self, max_channels: int = MAX_CHANNELS) -> None:
        self.max_channels = max_channels
        self._live: OrderedDict[str, _Entry] = OrderedDict()  # in order of first announcement
        self._ended: OrderedDict[str, float] = OrderedDict()  # in order of hangup
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._live)

    # ---- from the ESL reader ------------------------------------------------------------------------
    def on_event(self, event: EslEvent) -> None:
        uuid = event.uuid
        has_channel_data = event.name.startswith("CHANNEL_") or "Caller-Destination-Number" in event.headers
        if not uuid or not has_channel_data:
            return  # not a channel event (heartbeats, BACKGROUND_JOB, ...)
        if event.name in ENDED_EVENTS:
            self._end(uuid, event.received)
        elif uuid not in self._ended:  # a late event of a hung-up channel (CUSTOM, ...) changes nothing
            self._learn(ChannelFacts.from_headers(uuid, event.headers), event.received)

    def _learn(self, facts: ChannelFacts, now: float) -> None:
        uuid = facts.uuid
        entry = self._live.get(uuid)
        if entry is not None:
            entry.facts, entry.seen = facts, now
        else:
            self._live[uuid] = _Entry(facts, now)
            while len(self._live) > self.max_channels:
                self._live.popitem(last=False)
                EVICTED.inc()
            while self._live:  # a channel whose hangup we missed (an ESL outage) is forgotten in time
                oldest = next(iter(self._live.values()))
                if now - oldest.seen <= MAX_AGE_S:
                    break
                self._live.popitem(last=False)
        for waiter in self._waiters.pop(uuid, []):
            if not waiter.done():
                waiter.set_result(None)

    def _end(self, uuid: str, now: float) -> None:
        self._live.pop(uuid, None)
        self._ended[uuid] = now
        self._ended.move_to_end(uuid)
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if now - oldest <= ENDED_MEMORY_S and len(self._ended) <= self.max_channels:
                break
            self._ended.popitem(last=False)
        for waiter in self._waiters.pop(uuid, []):
            if not waiter.done():
                waiter.set_result(None)

    # ---- for streams ----------------------------------------------------------------------------------
    def live(self, uuid: str) -> ChannelFacts | None:
        entry = self._live.get(uuid)
        return entry.facts if entry is not None else None

    def ended(self, uuid: str) -> bool:
        return uuid in self._ended

    async def wait(self, uuid: str, timeout: float) -> ChannelFacts | None:
        """The live channel's facts, waiting up to ``timeout`` for its announcement."""
        if self.live(uuid) is not None or self.ended(uuid):
            LOOKUPS.labels("event").inc()
            return self.live(uuid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(uuid, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(uuid)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[uuid]
        WAIT_MS.observe((loop.time() - started) * 1000)
        LOOKUPS.labels("waited").inc()
        return self.live(uuid)

    def learn_from_dump(self, uuid: str, text: str) -> ChannelFacts | None:
        """``uuid_dump <uuid>`` output (URL-encoded ``Name: value`` lines) → facts, or None (-ERR)."""
        if not text.strip() or text.lstrip().startswith("-"):
            return None
        headers = {
            name: "" if value == "_undef_" else unquote(value) for name, value in parse_headers(text).items()
        }
        if headers.get("Unique-ID", uuid) != uuid:
            return None
        facts = ChannelFacts.from_headers(uuid, headers)
        self._learn(facts, time.monotonic())
        LOOKUPS.labels("asked").inc()
        return facts
