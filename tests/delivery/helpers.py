"""Helpers for the failover tests: worker subprocesses, stream read-back, counters."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.jetstream import read_subject
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.work import WORK
from voiceplatform.wire import Message, WorkerHeartbeat, decode


async def start_worker(
    module: str, role: str, nats_url: str, robots_dir: Path, log_path: Path, bus: NatsBus, **env: str
) -> asyncio.subprocess.Process:
    """``python -m <module>`` against ``nats_url``; returns once it announced itself."""
    alive = asyncio.Event()

    async def presence(env_: Envelope) -> None:
        if isinstance(env_.message, WorkerHeartbeat):
            alive.set()

    sub = await bus.subscribe(subjects.presence(role), presence)
    environ = {
        **os.environ,
        "NATS_URL": nats_url,
        "ROBOTS_DIR": str(robots_dir),
        "VP_HTTP_PORT": "0",
        **env,
    }
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env=environ, stdout=log_file, stderr=log_file
        )
    try:
        await asyncio.wait_for(alive.wait(), 60)
    finally:
        await sub.unsubscribe()
    return proc


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[Message]:
    """What the stream kept on ``subject`` (after its dedupe), in order."""
    return [decode(m.data) for m in await read_subject(js, stream, subject)]


async def until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.02)


def work_count(consumer: str, outcome: str) -> float:
    return float(WORK.labels(consumer, outcome)._value.get())
