"""A pool of API keys × a cascade of models, with health shared by every call and every worker.

Vendors such as Gemini count quota per (project behind the key, model), so health is kept per
(provider, key id, model): a 429 cools only that pair, a 5xx or a connection failure cools the pair
briefly, and an invalid key is disabled for every model at once through a key-wide record
(model ``ANY_MODEL``). Records live in a ``KeyHealthStore``; the NATS KV one (``BusKeyHealthStore``)
is shared by all LLM worker processes, so one worker's 429 spares the others the same round trip.

Keys are identified by ``key_id`` (a short hash): ids are safe to store and log, keys never leave
this process's memory. Cooldowns are absolute wall-clock times (``time.time``) because several
processes compare them.

If the store is slow or down, the pool keeps working from what this process has seen (a local
mirror), so an outage of the shared store never fails an LLM call.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

import structlog

from voiceplatform.bus import Bus, KeyValue
from voiceplatform.providers.errors import ProviderStatusError

log = structlog.get_logger("voiceplatform.keypool")

ANY_MODEL = "*"  # the key-wide record: an invalid key is disabled for every model
DEFAULT_BUCKET = "vp_key_health"
DEFAULT_TTL_S = 24 * 3600.0
_KV_TOKEN = re.compile(r"[^-_=/.a-zA-Z0-9]")
_T = TypeVar("_T")


def key_id(key: str) -> str:
    """A short stable id of a key (sha256 prefix): safe to log and to use as a store key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class FailureKind(StrEnum):
    QUOTA = "quota"  # 429 / RESOURCE_EXHAUSTED: that (key, model) pair is out of quota
    INVALID_KEY = "invalid_key"  # 400 API_KEY_INVALID, 401, 403: the key is bad for every model
    MODEL_NOT_FOUND = "model_not_found"  # 404: this key cannot reach this model
    SERVER = "server"  # 5xx, a stall: the model is overloaded
    CONNECTION = "connection"  # connect error or timeout: usually the network, so brief


@dataclass(frozen=True, slots=True)
class KeyHealth:
    cooldown_until: float = 0.0  # wall-clock seconds; the pair (or key) is skipped until then
    reason: str = ""
    failures: int = 0  # consecutive, reset by a success
    invalid: bool = False
    updated_at: float = 0.0

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    @property
    def clean(self) -> bool:
        return not (self.failures or self.invalid or self.cooldown_until)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "until": self.cooldown_until,
                "reason": self.reason,
                "failures": self.failures,
                "invalid": self.invalid,
                "at": self.updated_at,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyHealth | None:
        """None for a record this version cannot read (it is then treated as healthy)."""
        try:
            obj = json.loads(data)
            return cls(
                cooldown_until=float(obj.get("until", 0.0)),
                reason=str(obj.get("reason", "")),
                failures=int(obj.get("failures", 0)),
                invalid=bool(obj.get("invalid", False)),
                updated_at=float(obj.get("at", 0.0)),
            )
        except (ValueError, TypeError, AttributeError):
            return None


class KeyHealthStore(Protocol):
    async def get(self, provider: str, key_id: str, model: str) -> KeyHealth | None: ...
    async def put(self, provider: str, key_id: str, model: str, health: KeyHealth) -> None: ...


class MemoryKeyHealthStore:
    """One process only: for unit tests, and the default when no shared store is injected."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], KeyHealth] = {}

    async def get(self, provider: str, key_id: str, model: str) -> KeyHealth | None:
        return self.records.get((provider, key_id, model))

    async def put(self, provider: str, key_id: str, model: str, health: KeyHealth) -> None:
        self.records[(provider, key_id, model)] = health


class BusKeyHealthStore:
    """Health records in a KV bucket of the bus (NATS JetStream KV), shared by every worker.

    Key ``<provider>.<key_id>.<model>`` (``_any`` for the key-wide record). The bucket's TTL bounds
    how long any record can outlive its last write; a missing record means healthy.
    """

    def __init__(self, bus: Bus, bucket: str = DEFAULT_BUCKET, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._bus = bus
        self.bucket = bucket
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    @staticmethod
    def kv_key(provider: str, key_id: str, model: str) -> str:
        token = "_any" if model == ANY_MODEL else _KV_TOKEN.sub("_", model).strip(".")
        return f"{_KV_TOKEN.sub('_', provider)}.{key_id}.{token or '_'}"

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            async with self._opening:
                if self._kv is None:
                    self._kv = await self._bus.key_value(self.bucket, ttl_s=self.ttl_s)
        return self._kv

    async def get(self, provider: str, key_id: str, model: str) -> KeyHealth | None:
        found = await (await self._bucket()).get(self.kv_key(provider, key_id, model))
        return KeyHealth.from_bytes(found[0]) if found else None

    async def put(self, provider: str, key_id: str, model: str, health: KeyHealth) -> None:
        await (await self._bucket()).put(self.kv_key(provider, key_id, model), health.to_bytes())


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    quota_default_s: float = 60.0  # a 429 without RetryInfo / Retry-After; doubles while it repeats
    quota_backoff_max_s: float = 900.0
    max_s: float = 26 * 3600.0  # no hint from a server is believed beyond this (daily reset + margin)
    invalid_key_s: float = 6 * 3600.0
    model_not_found_s: float = 3600.0
    server_base_s: float = 2.0
    server_max_s: float = 60.0
    connection_base_s: float = 1.0
    connection_max_s: float = 15.0  # short: after a network blip every key must be usable again soon
    min_s: float = 1.0
    failure_memory_s: float = 600.0  # an older failure does not count as "consecutive"

    def cooldown_s(self, kind: FailureKind, failures: int, retry_after_s: float | None) -> float:
        if kind is FailureKind.INVALID_KEY:
            return self.invalid_key_s
        if kind is FailureKind.MODEL_NOT_FOUND:
            return self.model_not_found_s
        if retry_after_s is not None and retry_after_s > 0:
            return max(self.min_s, min(retry_after_s, self.max_s))
        factor = float(1 << min(max(failures - 1, 0), 16))  # doubles with each consecutive failure
        if kind is FailureKind.QUOTA:
            return min(self.quota_default_s * factor, self.quota_backoff_max_s)
        base, cap = (
            (self.server_base_s, self.server_max_s)
            if kind is FailureKind.SERVER
            else (self.connection_base_s, self.connection_max_s)
        )
        # a little jitter so the workers that share this record do not all come back at once
        return min(base * factor, cap) * random.uniform(1.0, 1.2)


@dataclass(frozen=True, slots=True)
class Attempt:
    key: str = field(repr=False)
    key_id: str
    model: str


@dataclass(frozen=True, slots=True)
class Candidates:
    """The (key, model) pairs to try now, best first, and when a cooling one is ready again."""

    attempts: tuple[Attempt, ...]
    next_ready_s: float | None  # soonest end of a cooldown among pairs of keys not disabled
    all_keys_invalid: bool

    def __iter__(self) -> Iterator[Attempt]:
        return iter(self.attempts)

    def __len__(self) -> int:
        return len(self.attempts)

    def __bool__(self) -> bool:
        return bool(self.attempts)


class KeysCoolingError(ProviderStatusError):
    """Every (key, model) pair is cooling down: retryable, after ``retry_after_s``."""

    def __init__(self, provider: str, retry_after_s: float) -> None:
        super().__init__(
            provider,
            429,
            f"all API keys × models are cooling down; the first is ready in {retry_after_s:.1f}s",
            retryable=True,
        )
        self.retry_after_s = retry_after_s


class KeyPool:
    """Ordered attempts over keys × models, honouring cooldowns shared through ``store``.

    Order: the model cascade first (a better model with any key beats a worse one), and within a
    model the keys in turn, starting one further on each call so load spreads over the projects.
    """

    def __init__(
        self,
        provider: str,
        keys: Sequence[str],
        models: Sequence[str],
        store: KeyHealthStore | None = None,
        *,
        policy: CooldownPolicy | None = None,
        clock: Callable[[], float] = time.time,
        spread: bool = True,
        store_timeout_s: float = 0.5,
        store_retry_s: float = 5.0,
    ) -> None:
        unique = list(dict.fromkeys(k for k in keys if k))
        if not unique:
            raise ValueError(f"{provider}: no API keys configured")
        if not models:
            raise ValueError(f"{provider}: no models configured")
        self.provider = provider
        self._keys = [(k, key_id(k)) for k in unique]
        self._ids = {k: kid for k, kid in self._keys}
        self.models = tuple(models)
        self.store: KeyHealthStore = store if store is not None else MemoryKeyHealthStore()
        self.policy = policy or CooldownPolicy()
        self._clock = clock
        self._spread = spread
        self._store_timeout_s = store_timeout_s
        self._store_retry_s = store_retry_s
        self._store_down_until = 0.0  # monotonic: after a store failure, calls skip it for a while
        self._turn = 0
        # what this process last read or wrote, per (key id, model): the fallback when the store fails
        self._mirror: dict[tuple[str, str], KeyHealth] = {}

    @property
    def key_ids(self) -> list[str]:
        return [kid for _, kid in self._keys]

    def key_id_of(self, key: str) -> str:
        return self._ids.get(key) or key_id(key)

    async def candidates(self, models: Sequence[str] | None = None) -> Candidates:
        """Fresh health from the store, then the usable pairs in order."""
        cascade = tuple(dict.fromkeys(models or self.models))
        scopes = [(kid, m) for _, kid in self._keys for m in (*cascade, ANY_MODEL)]
        fetched = await self._guard(
            "get", lambda: asyncio.gather(*(self.store.get(self.provider, kid, m) for kid, m in scopes))
        )
        if fetched is not None:
            for scope, health in zip(scopes, fetched, strict=True):
                self._merge(scope, health)
        start = self._turn % len(self._keys) if self._spread else 0
        self._turn += 1
        ordered = self._keys[start:] + self._keys[:start]
        now = self._clock()
        attempts: list[Attempt] = []
        waits: list[float] = []
        disabled = {kid for _, kid in self._keys if self._disabled(kid, now)}
        for model in cascade:
            for key, kid in ordered:
                if kid in disabled:
                    continue
                until = max(self._until((kid, model)), self._until((kid, ANY_MODEL)))
                if until > now:
                    waits.append(until - now)
                else:
                    attempts.append(Attempt(key, kid, model))
        return Candidates(tuple(attempts), min(waits) if waits else None, len(disabled) == len(self._keys))

    def usable(self, attempt: Attempt) -> bool:
        """Whether the pair is still usable in this process's view: a failure reported by another call
        since ``candidates`` (say, the key turned out invalid) takes it out at once, with no I/O."""
        now = self._clock()
        return (
            max(self._until((attempt.key_id, attempt.model)), self._until((attempt.key_id, ANY_MODEL))) <= now
        )

    def next_ready_s(self, models: Sequence[str] | None = None) -> float | None:
        """From this process's view: how long until some pair of a usable key stops cooling."""
        now = self._clock()
        waits = []
        for _, kid in self._keys:
            if self._disabled(kid, now):
                continue
            for model in models or self.models:
                until = max(self._until((kid, model)), self._until((kid, ANY_MODEL)))
                waits.append(max(until - now, 0.0))
        return min(waits) if waits else None

    async def report_success(self, key: str, model: str) -> None:
        """Clear the pair's (and the key's) failure record; free when there is nothing to clear."""
        kid = self.key_id_of(key)
        now = self._clock()
        for scope in ((kid, model), (kid, ANY_MODEL)):
            seen = self._mirror.get(scope)
            if seen is not None and not seen.clean:
                healthy = KeyHealth(updated_at=now)
                self._mirror[scope] = healthy
                await self._guard("put", functools.partial(self.store.put, self.provider, *scope, healthy))
                log.info("keypool.recovered", provider=self.provider, key_id=kid, model=scope[1])

    async def report_failure(
        self, key: str, model: str, kind: FailureKind, retry_after_s: float | None = None
    ) -> KeyHealth:
        kid = self.key_id_of(key)
        scope = (kid, ANY_MODEL if kind is FailureKind.INVALID_KEY else model)
        now = self._clock()
        previous = await self._guard("get", lambda: self.store.get(self.provider, *scope))
        self._merge(scope, previous)
        seen = self._mirror.get(scope)
        recent = seen is not None and now - seen.updated_at <= self.policy.failure_memory_s
        failures = (seen.failures if seen is not None and recent else 0) + 1
        cooldown_s = self.policy.cooldown_s(kind, failures, retry_after_s)
        until = now + cooldown_s
        if seen is not None and seen.cooling(now) and kind is not FailureKind.INVALID_KEY:
            until = max(until, seen.cooldown_until)  # never shorten a longer cooldown (a daily quota)
        health = KeyHealth(
            cooldown_until=until,
            reason=kind.value,
            failures=failures,
            invalid=kind is FailureKind.INVALID_KEY,
            updated_at=now,
        )
        self._mirror[scope] = health
        await self._guard("put", lambda: self.store.put(self.provider, *scope, health))
        log.warning(
            "keypool.cooling",
            provider=self.provider,
            key_id=kid,
            model=scope[1],
            reason=kind.value,
            cooldown_s=round(until - now, 1),
            failures=failures,
        )
        return health

    def _disabled(self, kid: str, now: float) -> bool:
        key_wide = self._mirror.get((kid, ANY_MODEL))
        return key_wide is not None and key_wide.invalid and key_wide.cooling(now)

    def _until(self, scope: tuple[str, str]) -> float:
        seen = self._mirror.get(scope)
        return seen.cooldown_until if seen is not None else 0.0

    def _merge(self, scope: tuple[str, str], health: KeyHealth | None) -> None:
        """The newer of the store's record and ours wins (ours is newer when a store write failed)."""
        mine = self._mirror.get(scope)
        if health is None:
            if mine is not None and not mine.cooling(self._clock()):
                del self._mirror[scope]  # expired from the store, and nothing pending here
            return
        if mine is None or health.updated_at >= mine.updated_at:
            self._mirror[scope] = health

    async def _guard(self, op: str, work: Callable[[], Awaitable[_T]]) -> _T | None:
        """Store I/O with a deadline. A failure is logged and leaves the pool on its local view; the
        store is then skipped for ``store_retry_s`` so a hanging bus does not slow every call."""
        if time.monotonic() < self._store_down_until:
            return None
        try:
            return await asyncio.wait_for(work(), self._store_timeout_s)
        except Exception as exc:  # any store failure (bus down, timeout): degrade, never fail the call
            self._store_down_until = time.monotonic() + self._store_retry_s
            log.warning("keypool.store_failed", provider=self.provider, op=op, error=type(exc).__name__)
            return None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_IN_TEXT = re.compile(r"retry in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def parse_duration(value: object) -> float | None:
    """A protobuf JSON Duration (``"12s"``, ``"0.5s"``, ``"3.000001s"``) in seconds."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    return float(match.group(1)) if match else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` header (delta-seconds or an HTTP-date) in seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def retry_in_from_text(text: str) -> float | None:
    """The "Please retry in 47.88s." hint some quota messages carry instead of RetryInfo."""
    match = _RETRY_IN_TEXT.search(text)
    if not match:
        return None
    amount = float(match.group(1))
    return amount / 1000 if match.group(2).lower() == "ms" else amount
