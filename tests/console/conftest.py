"""The recorder as the console sees it: a real HTTP server (the runner's, as in production) over the
recorder test stack (private JetStream NATS, a Postgres schema per test, Redis), recordings in a
temporary folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.console.browser import ConsoleBrowser
from tests.gateway_web.browser import CHROMIUM
from tests.recorder.conftest import (  # noqa: F401  (fixtures)
    delete_streams,
    gateway_bus,
    js_nats_url,
    make_settings,
    pg_schema,
    wait_until,
)
from voiceplatform.runtime import run_service
from voiceplatform_devstack.devinfra import free_port
from vp_recorder.app import RecorderService


@dataclass
class Console:
    base: str
    recorder: RecorderService
    recordings: Path
    stop: asyncio.Event
    running: asyncio.Task[None]


@pytest.fixture
async def console(
    js_nats_url: str,  # noqa: F811
    postgres_dsn: str,
    redis_url: str,
    pg_schema: str,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Console]:
    port = free_port()
    settings = make_settings(
        postgres_dsn,
        redis_url,
        pg_schema,
        NATS_URL=js_nats_url,
        http_port=port,
        recordings_dir=tmp_path / "recordings",
    )
    service = RecorderService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, settings, stop=stop))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"{base}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    await wait_until(lambda: bool(service.consumers) and all(service.stores_up().values()), within_s=20)
    try:
        yield Console(base, service, settings.recordings_dir, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await delete_streams(js_nats_url, settings.stream_name, settings.parked_stream_name)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[ConsoleBrowser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    made = ConsoleBrowser(tmp_path / "profile")
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
