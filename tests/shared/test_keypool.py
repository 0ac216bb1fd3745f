"""KeyPool: per-(key, model) cooldowns, key-wide invalidation, shared health through a store (memory,
the in-memory bus KV, and a real NATS KV bucket), degradation when the store fails, hint parsing."""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import structlog

from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.providers.keypool import (
    ANY_MODEL,
    BusKeyHealthStore,
    CooldownPolicy,
    FailureKind,
    KeyHealth,
    KeyPool,
    KeysCoolingError,
    MemoryKeyHealthStore,
    key_id,
    parse_duration,
    parse_retry_after,
    retry_in_from_text,
)

KEYS = ["AIzaSy-key-AAAA-0001", "AIzaSy-key-BBBB-0002", "AIzaSy-key-CCCC-0003"]
MODELS = ["gemini-2.5-flash", "gemini-2.0-flash"]
A, B, C = KEYS
M1, M2 = MODELS


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryKeyHealthStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.puts = 0

    async def get(self, provider: str, key_id: str, model: str) -> KeyHealth | None:
        self.gets += 1
        return await super().get(provider, key_id, model)

    async def put(self, provider: str, key_id: str, model: str, health: KeyHealth) -> None:
        self.puts += 1
        await super().put(provider, key_id, model, health)


class BrokenStore:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    async def get(self, provider: str, key_id: str, model: str) -> KeyHealth | None:
        if self.hang:
            await asyncio.sleep(10)
        raise ConnectionError("bus down")

    async def put(self, provider: str, key_id: str, model: str, health: KeyHealth) -> None:
        if self.hang:
            await asyncio.sleep(10)
        raise ConnectionError("bus down")


def pool(store: object = None, clock: FakeClock | None = None, spread: bool = False, **kw: object) -> KeyPool:
    return KeyPool("gemini", KEYS, MODELS, store, clock=clock or FakeClock(), spread=spread, **kw)  # type: ignore[arg-type]


def pairs(candidates: object) -> list[tuple[str, str]]:
    return [(a.key, a.model) for a in candidates]  # type: ignore[attr-defined]


def test_key_id_is_a_short_stable_hash_that_hides_the_key() -> None:
    kid = key_id(A)
    assert re.fullmatch(r"[0-9a-f]{12}", kid) and kid == key_id(A) and kid != key_id(B)
    assert A not in kid
    attempt_repr = repr(KeyPool("gemini", [A], [M1]).key_ids)
    assert A not in attempt_repr


async def test_order_is_model_cascade_first_and_keys_take_turns() -> None:
    plain = pool()
    assert pairs(await plain.candidates()) == [(A, M1), (B, M1), (C, M1), (A, M2), (B, M2), (C, M2)]
    spread = pool(spread=True)
    firsts = [pairs(await spread.candidates())[0] for _ in range(4)]
    assert firsts == [(A, M1), (B, M1), (C, M1), (A, M1)]
    # an explicit cascade (a model requested by the call) replaces the configured one
    assert pairs(await plain.candidates(["gemini-1.5-pro"])) == [(k, "gemini-1.5-pro") for k in KEYS]


async def test_quota_cools_only_that_pair_for_the_retry_delay() -> None:
    clock = FakeClock()
    p = pool(clock=clock)
    health = await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=30.0)
    assert health.cooldown_until == clock.now + 30.0 and health.reason == "quota" and not health.invalid
    plan = await p.candidates()
    assert (A, M1) not in pairs(plan) and (A, M2) in pairs(plan) and (B, M1) in pairs(plan)
    assert plan.next_ready_s == pytest.approx(30.0)
    clock.advance(29.0)
    assert (A, M1) not in pairs(await p.candidates())
    clock.advance(1.5)
    assert pairs(await p.candidates())[0] == (A, M1)


async def test_quota_without_a_hint_backs_off_doubling_and_forgets_old_failures() -> None:
    clock = FakeClock()
    policy = CooldownPolicy(quota_default_s=60.0, failure_memory_s=600.0)
    p = pool(clock=clock, policy=policy)
    first = await p.report_failure(A, M1, FailureKind.QUOTA)
    assert first.cooldown_until - clock.now == 60.0 and first.failures == 1
    clock.advance(61)
    second = await p.report_failure(A, M1, FailureKind.QUOTA)
    assert second.cooldown_until - clock.now == 120.0 and second.failures == 2
    clock.advance(3600)  # long after: not consecutive any more
    third = await p.report_failure(A, M1, FailureKind.QUOTA)
    assert third.failures == 1 and third.cooldown_until - clock.now == 60.0


async def test_invalid_key_is_disabled_for_every_model_for_a_long_time() -> None:
    clock = FakeClock()
    p = pool(clock=clock, policy=CooldownPolicy(invalid_key_s=6 * 3600))
    await p.report_failure(B, M1, FailureKind.INVALID_KEY)
    plan = await p.candidates()
    assert all(k != B for k, _ in pairs(plan))
    assert all(k != B for k, _ in pairs(await p.candidates(["gemini-9-unlisted"])))
    assert plan.next_ready_s is None  # a disabled key is no reason to wait
    clock.advance(5 * 3600)
    assert all(k != B for k, _ in pairs(await p.candidates()))
    clock.advance(3600 + 1)
    assert (B, M1) in pairs(await p.candidates())  # tried again, once, after the long cooldown


async def test_all_invalid_and_all_cooling_are_told_apart() -> None:
    clock = FakeClock()
    p = pool(clock=clock)
    for k in KEYS:
        await p.report_failure(k, M1, FailureKind.INVALID_KEY)
    plan = await p.candidates()
    assert not plan and plan.all_keys_invalid and plan.next_ready_s is None
    q = pool(clock=clock)
    for k in KEYS:
        for m, delay in zip(MODELS, (40.0, 12.0), strict=True):
            await q.report_failure(k, m, FailureKind.QUOTA, retry_after_s=delay)
    plan = await q.candidates()
    assert not plan and not plan.all_keys_invalid and plan.next_ready_s == pytest.approx(12.0)
    err = KeysCoolingError("gemini", plan.next_ready_s or 0)
    assert err.status == 429 and err.retryable and "12.0s" in str(err)


async def test_server_and_connection_failures_cool_briefly_with_jitter() -> None:
    clock = FakeClock()
    p = pool(clock=clock, policy=CooldownPolicy(server_base_s=2.0, server_max_s=60.0))
    first = await p.report_failure(A, M1, FailureKind.SERVER)
    assert 2.0 <= first.cooldown_until - clock.now <= 2.4
    clock.advance(3)
    second = await p.report_failure(A, M1, FailureKind.SERVER)
    assert 4.0 <= second.cooldown_until - clock.now <= 4.8
    conn = await p.report_failure(B, M1, FailureKind.CONNECTION)
    assert 1.0 <= conn.cooldown_until - clock.now <= 1.2
    hinted = await p.report_failure(C, M1, FailureKind.SERVER, retry_after_s=7.0)  # 503 + Retry-After
    assert hinted.cooldown_until - clock.now == 7.0


async def test_a_short_cooldown_never_shortens_a_longer_one() -> None:
    clock = FakeClock()
    p = pool(clock=clock)
    await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=3600)
    brief = await p.report_failure(A, M1, FailureKind.SERVER)
    assert brief.cooldown_until == clock.now + 3600


async def test_success_clears_the_record_and_costs_nothing_when_clean() -> None:
    clock = FakeClock()
    store = CountingStore()
    p = pool(store, clock=clock)
    await p.candidates()
    await p.report_success(A, M1)
    assert store.puts == 0  # nothing to clear: no write on the hot path
    await p.report_failure(A, M1, FailureKind.SERVER)
    clock.advance(10)
    await p.candidates()
    await p.report_success(A, M1)
    record = await store.get("gemini", key_id(A), M1)
    assert record is not None and record.clean
    assert (await p.report_failure(A, M1, FailureKind.SERVER)).failures == 1  # the count restarted


async def test_two_pools_share_health_through_one_store() -> None:
    clock = FakeClock()
    store = MemoryKeyHealthStore()
    worker1, worker2 = pool(store, clock=clock), pool(store, clock=clock)
    await worker1.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=60)
    await worker1.report_failure(B, M2, FailureKind.INVALID_KEY)
    seen = pairs(await worker2.candidates())
    assert (A, M1) not in seen and all(k != B for k, _ in seen)
    assert seen == [(C, M1), (A, M2), (C, M2)]
    # the store holds ids, never keys
    assert all(k not in repr(store.records) for k in KEYS)
    assert ("gemini", key_id(B), ANY_MODEL) in store.records


async def test_usable_reflects_failures_seen_after_planning() -> None:
    p = pool()
    plan = await p.candidates()
    first = plan.attempts[0]
    assert p.usable(first)
    await p.report_failure(first.key, first.model, FailureKind.INVALID_KEY)
    assert not any(p.usable(a) for a in plan if a.key == first.key)
    assert "AIzaSy" not in repr(first)  # an attempt's repr shows the key id only


@pytest.mark.parametrize("hang", [False, True])
async def test_a_failing_store_degrades_to_the_local_view(hang: bool) -> None:
    clock = FakeClock()
    store = BrokenStore(hang=hang)
    p = pool(store, clock=clock, store_timeout_s=0.05, store_retry_s=60.0)
    with structlog.testing.capture_logs() as logs:
        assert len(await p.candidates()) == 6
        started = time.monotonic()
        await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=30)
        assert (A, M1) not in pairs(await p.candidates())
        assert time.monotonic() - started < 0.04  # the failed store is skipped, not waited for again
    failed = [e for e in logs if e["event"] == "keypool.store_failed"]
    assert len(failed) == 1 and failed[0]["error"] in ("ConnectionError", "TimeoutError")


async def test_the_store_is_tried_again_after_a_pause() -> None:
    store = BrokenStore()
    p = pool(store, store_retry_s=0.05)
    await p.candidates()
    healthy = MemoryKeyHealthStore()
    p.store = healthy  # the bus came back
    await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=30)
    assert healthy.records == {}  # still within the pause
    await asyncio.sleep(0.06)
    await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=30)
    assert ("gemini", key_id(A), M1) in healthy.records


async def test_logs_carry_key_ids_never_keys() -> None:
    p = pool()
    with structlog.testing.capture_logs() as logs:
        await p.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=5)
        await p.report_failure(B, M1, FailureKind.INVALID_KEY)
        await p.candidates()
        await p.report_success(A, M1)
    assert logs and all(k not in repr(logs) for k in KEYS)
    assert {e.get("key_id") for e in logs} >= {key_id(A), key_id(B)}


def test_pool_needs_keys_and_models() -> None:
    with pytest.raises(ValueError, match="no API keys"):
        KeyPool("gemini", ["", ""], MODELS)
    with pytest.raises(ValueError, match="no models"):
        KeyPool("gemini", KEYS, [])
    assert KeyPool("gemini", [A, A, B], MODELS).key_ids == [key_id(A), key_id(B)]


def test_health_record_round_trip_and_garbage() -> None:
    h = KeyHealth(cooldown_until=12.5, reason="quota", failures=2, invalid=False, updated_at=10.0)
    assert KeyHealth.from_bytes(h.to_bytes()) == h
    assert KeyHealth.from_bytes(b"not json") is None
    assert KeyHealth.from_bytes(b'{"until": "soon"}') is None
    assert KeyHealth.from_bytes(b"[1, 2]") is None


def test_kv_keys_are_valid_nats_keys() -> None:
    valid = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
    for model in ("gemini-2.0-flash", "models/gemini-2.5-pro", "weird model:v1", ANY_MODEL):
        kv_key = BusKeyHealthStore.kv_key("gemini", key_id(A), model)
        assert valid.match(kv_key) and not kv_key.startswith(".") and not kv_key.endswith(".")
    assert BusKeyHealthStore.kv_key("gemini", "abc", ANY_MODEL) == "gemini.abc._any"


def test_retry_hints() -> None:
    assert parse_duration("12s") == 12.0 and parse_duration("0.5s") == 0.5
    assert parse_duration("3.000001s") == pytest.approx(3.000001)
    assert parse_duration("12") is None and parse_duration(None) is None
    assert parse_retry_after("7") == 7.0 and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert retry_in_from_text("You exceeded your quota. Please retry in 47.88s.") == 47.88
    assert retry_in_from_text("Please retry in 500ms") == 0.5
    assert retry_in_from_text("no hint here") is None


async def test_bus_store_over_the_in_memory_bus(broker: MemoryBroker) -> None:
    clock = FakeClock()
    w1 = pool(BusKeyHealthStore(broker.bus("llm-1")), clock=clock)
    w2 = pool(BusKeyHealthStore(broker.bus("llm-2")), clock=clock)
    await w1.report_failure(C, M2, FailureKind.QUOTA, retry_after_s=20)
    assert (C, M2) not in pairs(await w2.candidates())
    raw = broker.kv("vp_key_health")._data  # what the bucket holds
    assert f"gemini.{key_id(C)}.gemini-2.0-flash" in raw
    assert all(k not in repr(raw) for k in KEYS)


@pytest.fixture
async def two_nats_workers(nats_url: str) -> AsyncIterator[tuple[NatsBus, NatsBus, str]]:
    bucket = f"test_key_health_{uuid.uuid4().hex[:8]}"
    bus1 = await NatsBus.connect(nats_url, "llm-worker-1")
    bus2 = await NatsBus.connect(nats_url, "llm-worker-2")
    try:
        yield bus1, bus2, bucket
    finally:
        try:
            await bus1.jetstream().delete_key_value(bucket)
        finally:
            await bus1.close()
            await bus2.close()


async def test_health_is_shared_by_two_workers_through_nats_kv(
    two_nats_workers: tuple[NatsBus, NatsBus, str],
) -> None:
    bus1, bus2, bucket = two_nats_workers
    clock = FakeClock()
    w1 = pool(BusKeyHealthStore(bus1, bucket=bucket, ttl_s=3600), clock=clock)
    w2 = pool(BusKeyHealthStore(bus2, bucket=bucket, ttl_s=3600), clock=clock)
    assert len(await w2.candidates()) == 6
    await w1.report_failure(A, M1, FailureKind.QUOTA, retry_after_s=45)
    await w1.report_failure(B, M1, FailureKind.INVALID_KEY)
    seen = pairs(await w2.candidates())
    assert seen == [(C, M1), (A, M2), (C, M2)]
    # worker 2 recovers the pair after the cooldown; worker 1 sees it clean again
    clock.advance(46)
    assert (A, M1) in pairs(await w2.candidates())
    await w2.report_success(A, M1)
    kv = await bus1.key_value(bucket)
    found = await kv.get(f"gemini.{key_id(A)}.gemini-2.5-flash")
    assert found is not None and KeyHealth.from_bytes(found[0]) == KeyHealth(updated_at=clock.now)
    invalid = await kv.get(f"gemini.{key_id(B)}._any")
    assert invalid is not None and b"invalid_key" in invalid[0] and B.encode() not in invalid[0]
