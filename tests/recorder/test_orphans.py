"""Orphaned calls: a gateway that dies without ``call.ended`` has its calls closed as ``gateway_lost``
in every store (real NATS JetStream, PostgreSQL, Redis), its dialogue state deleted; calls of a live
gateway, and the new calls of a gateway restarted under the same id, are left alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg
from websockets.asyncio.client import connect

from tests.recorder.conftest import new_call_id
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.cli.web_token import fetch_call_token
from voiceplatform.clock import now_ms
from voiceplatform.wire import GATEWAY_LOST, CallEnded, CallStarted, WorkerHeartbeat, decode
from voiceplatform_devstack.devinfra import free_port
from vp_recorder.app import RecorderService
from vp_recorder.orphans import ActiveCall, PresenceBook
from vp_recorder.settings import RecorderSettings

ROBOTS = Path(__file__).resolve().parents[2] / "robots"
StartRecorder = Callable[[RecorderSettings], Awaitable[RecorderService]]
WITHIN_S = 30.0  # a generous bound for a busy machine; the sweeper's own bound is ~lost_after + 2 s


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---- the policy, on a fake clock ----------------------------------------------------------------


def test_silent_gateway_is_lost_only_after_listening_time() -> None:
    clock = FakeClock()
    book = PresenceBook(lost_after_s=10.0, clock=clock)
    call = ActiveCall("c1", "gw-1", started_ms=5)
    book.heard("gw-1", since_ms=1)
    assert book.orphaned(call) is None
    # nobody heard at all (NATS down, recorder cut off): silence does not count
    for _ in range(30):
        clock.t += 1.0
        book.tick()
    assert book.orphaned(call) is None
    # others are heard, gw-1 is not
    for _ in range(12):
        clock.t += 1.0
        book.heard("recorder-1", since_ms=1)
        book.tick()
    assert book.orphaned(call) == "silent"


def test_live_gateway_keeps_its_calls_and_unknown_gateway_needs_time() -> None:
    clock = FakeClock()
    book = PresenceBook(lost_after_s=10.0, clock=clock)
    live = ActiveCall("c1", "gw-live", started_ms=100)
    unknown = ActiveCall("c2", "gw-gone", started_ms=100)
    assert book.orphaned(unknown) is None  # learnt from the store: its silence starts now
    for _ in range(20):
        clock.t += 1.0
        book.heard("gw-live", since_ms=50)
        book.tick()
        assert book.orphaned(live) is None
    assert book.orphaned(unknown) == "silent"


def test_restarted_gateway_loses_old_calls_only() -> None:
    clock = FakeClock()
    book = PresenceBook(lost_after_s=10.0, clock=clock)
    book.heard("gw", since_ms=1000)
    old = ActiveCall("old", "gw", started_ms=2000)
    assert book.orphaned(old) is None
    book.heard("gw", since_ms=5000)  # same instance id, a new process
    assert book.orphaned(old) == "restarted"
    assert book.orphaned(ActiveCall("new", "gw", started_ms=5200)) is None


# ---- the recorder, for real ---------------------------------------------------------------------


class Gateway:
    """Presence of one gateway instance, as ``runtime.service`` announces it."""

    def __init__(self, bus: NatsBus, instance_id: str) -> None:
        self.bus = bus
        self.instance_id = instance_id
        self.since_ms = now_ms()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.since_ms = now_ms()
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        beat = WorkerHeartbeat(
            call_id="", role="gateway-web", instance_id=self.instance_id, since_ms=self.since_ms
        )
        while True:
            await self.bus.publish(subjects.presence("gateway-web"), beat)
            await asyncio.sleep(0.2)

    async def start_call(self, call_id: str) -> None:
        started = CallStarted(
            call_id=call_id,
            robot="demo",
            channel="phone",
            caller="+79990001122",
            sample_rate=8000,
            gateway_id=self.instance_id,
        )
        await self.bus.publish(subjects.lifecycle(call_id), started)


@pytest.fixture
async def gateways(gateway_bus: NatsBus) -> AsyncIterator[Callable[[str], Gateway]]:
    made: list[Gateway] = []

    def make(instance_id: str) -> Gateway:
        gw = Gateway(gateway_bus, instance_id)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.stop()


@pytest.fixture
async def dialog_kv(js_nats_url: str) -> AsyncIterator[object]:
    nc = await nats.connect(js_nats_url)
    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.DIALOG_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(bucket=subjects.DIALOG_BUCKET, history=1)
    yield kv
    await nc.close()


async def call_row(pg: asyncpg.Connection, call_id: str) -> asyncpg.Record | None:
    with contextlib.suppress(asyncpg.exceptions.UndefinedTableError):
        return await pg.fetchrow("SELECT status, end_reason FROM calls WHERE call_id = $1", call_id)
    return None


async def until(check: Callable[[], Awaitable[bool]], within_s: float = WITHIN_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def kv_has(kv: object, key: str) -> bool:
    try:
        entry = await kv.get(key)  # type: ignore[attr-defined]
    except nats.js.errors.KeyNotFoundError:
        return False
    return bool(entry.value)


async def test_dead_gateway_calls_closed_everywhere_live_ones_untouched(
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    gateways: Callable[[str], Gateway],
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    dialog_kv: object,
    js_nats_url: str,
) -> None:
    fast = settings.model_copy(update={"orphan_after_s": 1.0, "orphan_sweep_every_s": 0.2})
    # two recorders sweep the same calls: the close must happen once
    first = await start_recorder(fast)
    second = await start_recorder(fast)
    public: list[dict[str, object]] = []
    nc = await nats.connect(js_nats_url)

    async def on_public(msg: Msg) -> None:
        public.append(json.loads(msg.data))

    await nc.subscribe(subjects.call_event("call.ended"), cb=on_public)
    try:
        dead, live = gateways("gw-dead"), gateways("gw-live")
        dead.start()
        live.start()
        lost_call, live_call = new_call_id(), new_call_id()
        await dead.start_call(lost_call)
        await live.start_call(live_call)
        for call_id in (lost_call, live_call):
            await dialog_kv.put(call_id, b"state")  # type: ignore[attr-defined]

        async def both_active() -> bool:
            rows = [await call_row(pg, c) for c in (lost_call, live_call)]
            return all(r is not None and r["status"] == "active" for r in rows)

        await until(both_active)
        await dead.stop()  # kill -9: no call.ended, presence stops

        async def closed() -> bool:
            row = await call_row(pg, lost_call)
            return row is not None and row["status"] == "ended"

        await until(closed)
        row = await call_row(pg, lost_call)
        assert row is not None and row["end_reason"] == GATEWAY_LOST

        async def redis_closed() -> bool:
            return await redis_client.hget(f"call:{lost_call}", "end_reason") == GATEWAY_LOST

        await until(redis_closed)
        assert await redis_client.hget(f"call:{lost_call}", "status") == "ended"

        async def public_seen() -> bool:
            return any(e.get("call_id") == lost_call for e in public)

        await until(public_seen)
        event = next(e for e in public if e.get("call_id") == lost_call)
        assert event["data"]["reason"] == GATEWAY_LOST  # type: ignore[index]
        assert not await kv_has(dialog_kv, lost_call)

        # the live gateway's call: still active, state kept (it had many sweeps to be wrongly closed)
        await asyncio.sleep(1.5)
        live_row = await call_row(pg, live_call)
        assert live_row is not None and live_row["status"] == "active"
        assert await kv_has(dialog_kv, live_call)
        assert await redis_client.hget(f"call:{live_call}", "status") == "active"

        # exactly one call.ended in the stream although two recorders swept
        js = nc.jetstream()
        psub = await js.pull_subscribe(subjects.lifecycle(lost_call), stream=settings.stream_name)
        msgs = await psub.fetch(10, timeout=2)
        ends = [m for m in msgs if isinstance(decode(m.data), CallEnded)]
        assert len(ends) == 1
        assert first.sweeper is not None and second.sweeper is not None
        assert first.sweeper.closed + second.sweeper.closed == 1
        await psub.unsubscribe()
    finally:
        await nc.close()


async def test_gateway_restarted_under_same_id_keeps_new_calls(
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    gateways: Callable[[str], Gateway],
    pg: asyncpg.Connection,
) -> None:
    fast = settings.model_copy(update={"orphan_after_s": 30.0, "orphan_sweep_every_s": 0.2})
    await start_recorder(fast)
    gw = gateways("gw-same")
    gw.start()
    before = new_call_id()
    await gw.start_call(before)

    async def active(call_id: str) -> bool:
        row = await call_row(pg, call_id)
        return row is not None and row["status"] == "active"

    await until(lambda: active(before))
    await gw.stop()
    await asyncio.sleep(0.05)
    gw.start()  # the same instance id, a new process (later since_ms), within orphan_after_s
    after = new_call_id()
    await gw.start_call(after)

    async def old_closed() -> bool:
        row = await call_row(pg, before)
        return row is not None and row["status"] == "ended" and row["end_reason"] == GATEWAY_LOST

    await until(old_closed)
    await until(lambda: active(after))
    await asyncio.sleep(1.0)
    assert await active(after)


# ---- real processes: gateway-web killed with SIGKILL mid-call -----------------------------------


def _service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_gateway_process_killed_mid_call_is_closed_as_gateway_lost(
    settings: RecorderSettings,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    js_nats_url: str,
    tmp_path: Path,
) -> None:
    """The recorder and gateway-web as processes (as `vp up` runs them); the gateway dies without a
    word; the recorder, hearing only its own presence, closes the call."""
    gateway_port, recorder_port = free_port(), free_port()
    env = {
        **os.environ,
        "NATS_URL": js_nats_url,
        "POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "ROBOTS_DIR": str(ROBOTS),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "VP_HTTP_PORT": "0",
        "VP_POSTGRES_SCHEMA": settings.postgres_schema,
        "VP_STREAM_NAME": settings.stream_name,
        "VP_PARKED_STREAM_NAME": settings.parked_stream_name,
        "VP_CALL_LOGS": "false",
        "VP_ORPHAN_AFTER_S": "2",
        "VP_ORPHAN_SWEEP_EVERY_S": "0.5",
    }
    recorder = _service("vp_recorder", {**env, "VP_HTTP_PORT": str(recorder_port)}, tmp_path / "recorder.log")
    gateway = _service("vp_gateway_web", {**env, "VP_HTTP_PORT": str(gateway_port)}, tmp_path / "gw.log")
    logs = lambda: (tmp_path / "recorder.log").read_text() + (tmp_path / "gw.log").read_text()  # noqa: E731
    try:

        async def both_up() -> bool:
            assert gateway.poll() is None and recorder.poll() is None, logs()
            async with httpx.AsyncClient() as client:
                try:
                    # the recorder records (stream made) once its /health is 200; the gateway may
                    # still miss pipeline stages (503), but it takes calls
                    rec = await client.get(f"http://127.0.0.1:{recorder_port}/health")
                    await client.get(f"http://127.0.0.1:{gateway_port}/health")
                except httpx.TransportError:
                    return False
            return rec.status_code == 200

        await until(both_up, 90)
        url = f"ws://127.0.0.1:{gateway_port}/ws"
        token = await fetch_call_token(url, "pipeline_russian")  # a page token, as the bundled page gets
        ws = await connect(url)
        await ws.send(json.dumps({"type": "start", "token": token, "robot": "pipeline_russian"}))
        started = json.loads(await ws.recv())
        assert started["type"] == "call.started", started
        call_id = started["call_id"]

        async def active() -> bool:
            row = await call_row(pg, call_id)
            return row is not None and row["status"] == "active"

        await until(active, 60)
        assert await pg.fetchval("SELECT gateway_id FROM calls WHERE call_id = $1", call_id)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        ws.transport.abort()

        async def closed() -> bool:
            row = await call_row(pg, call_id)
            return row is not None and row["status"] == "ended"

        await until(closed, 60)
        row = await call_row(pg, call_id)
        assert row is not None and row["end_reason"] == GATEWAY_LOST, logs()

        async def redis_closed() -> bool:
            return await redis_client.hget(f"call:{call_id}", "end_reason") == GATEWAY_LOST

        await until(redis_closed, 30)
        assert "recorder.call_orphaned" in (tmp_path / "recorder.log").read_text()
    finally:
        for proc in (gateway, recorder):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
