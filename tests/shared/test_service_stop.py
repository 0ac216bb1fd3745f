"""SIGTERM always ends a service: also while it cannot reach NATS (a server that is gone, a login it
refuses: nats-py retries those forever) and while its start-up hangs."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from starlette.applications import Starlette

from voiceplatform.bus import Bus
from voiceplatform.config.settings import ServiceSettings
from voiceplatform.runtime import run_service


class IdleService:
    name = "idle"

    def __init__(self, start_hangs: bool = False) -> None:
        self.start_hangs = start_hangs
        self.started = asyncio.Event()
        self.drained = False

    async def start(self, bus: Bus) -> None:
        self.started.set()
        if self.start_hangs:
            await asyncio.Event().wait()

    async def drain(self, timeout: float) -> None:
        self.drained = True

    def ready(self) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {}

    def asgi_app(self) -> Starlette | None:
        return None


def settings(nats_url: str) -> ServiceSettings:
    return ServiceSettings(nats_url=nats_url, http_port=0, drain_timeout_s=2.0)


async def test_stop_ends_a_service_whose_nats_refuses_its_login(tmp_path) -> None:
    from voiceplatform.credentials import LocalCredentials
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(tmp_path / "nats", passwords=LocalCredentials.load_or_create(tmp_path).nats)
    try:
        url = server.url.replace("nats://", "nats://vad:wrong-password@")
        stop = asyncio.Event()
        service = IdleService()
        run = asyncio.create_task(run_service(service, settings(url), stop=stop))
        await asyncio.sleep(1.0)  # a few refused attempts
        assert not run.done() and not service.started.is_set()
        stop.set()
        await asyncio.wait_for(run, 60)  # generous: what matters is that it ends at all
        assert not service.started.is_set()
    finally:
        server.stop()


async def test_stop_ends_a_service_whose_start_hangs(nats_url: str) -> None:
    stop = asyncio.Event()
    service = IdleService(start_hangs=True)
    run = asyncio.create_task(run_service(service, settings(nats_url), stop=stop))
    await asyncio.wait_for(service.started.wait(), 60)
    stop.set()
    await asyncio.wait_for(run, 60)
    assert not service.drained  # it never ran, so there was nothing to drain


async def test_a_running_service_drains_on_stop(nats_url: str) -> None:
    stop = asyncio.Event()
    service = IdleService()
    run = asyncio.create_task(run_service(service, settings(nats_url), stop=stop))
    await asyncio.wait_for(service.started.wait(), 60)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(run, 60)
    assert service.drained


async def test_a_service_in_its_own_process_keeps_its_start_up_heap_out_of_collections(
    nats_url: str,
) -> None:
    gc.unfreeze()
    stop = asyncio.Event()
    service = IdleService()
    run = asyncio.create_task(run_service(service, settings(nats_url), stop=stop, settle_heap=True))
    try:
        await asyncio.wait_for(service.started.wait(), 60)
        for _ in range(600):  # frozen once the service runs, just after start()
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.05)
        assert gc.get_freeze_count() > 0
        # what existed at start-up (here, the service) is in no generation a collection walks
        assert all(tracked is not service for tracked in gc.get_objects())
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
        gc.unfreeze()  # the other tests' collections as before


async def test_services_sharing_a_process_freeze_nothing(nats_url: str) -> None:
    gc.unfreeze()
    stop = asyncio.Event()
    service = IdleService()
    run = asyncio.create_task(run_service(service, settings(nats_url), stop=stop))
    try:
        await asyncio.wait_for(service.started.wait(), 60)
        await asyncio.sleep(0.5)  # past the moment a process of its own would have frozen its heap
        assert gc.get_freeze_count() == 0
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
