"""A platform of its own for fault injection: every service a process, two instances of each worker,
over a private NATS and the test Postgres/Redis. Faults kill processes, so no other test shares it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.faults import restore
from voiceplatform.cli.up import ServiceProcess, start_services, stop_services, wait_ready
from voiceplatform.devinfra import free_port

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("vad", "asr", "prompt-router", "llm", "tts")


@dataclass
class ChaosPlatform:
    url: str
    health: str
    procs: list[ServiceProcess]
    env: dict[str, str]

    def role(self, name: str) -> list[ServiceProcess]:
        return [p for p in self.procs if p.name.rsplit("-", 1)[0] == name]

    def logs_text(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in self.procs)

    def restore(self, timeout_s: float = 120.0) -> None:
        """Every instance running again (frozen ones killed first) and the pipeline ready."""
        restarted = {p.name: _log_size(p) for p in self.procs if p.name in restore(self.procs)}
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            if p.name not in restarted:
                continue
            while b"service.started" not in _log_tail(p, restarted[p.name]):
                if time.monotonic() > deadline:
                    pytest.fail(f"{p.name} did not start again:\n{p.tail()}")
                time.sleep(0.2)
        if not wait_ready(self.health, max(1.0, deadline - time.monotonic()), self.procs):
            pytest.fail(f"platform not ready after restore:\n{self.logs_text()}")


def _log_size(p: ServiceProcess) -> int:
    try:
        return p.log_path.stat().st_size
    except OSError:
        return 0


def _log_tail(p: ServiceProcess, offset: int) -> bytes:
    try:
        with p.log_path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


@pytest.fixture(scope="package")
def chaos_platform(postgres_dsn: str, redis_url: str, tmp_path_factory) -> Iterator[ChaosPlatform]:
    from voiceplatform.devinfra import EmbeddedNats

    nats = EmbeddedNats.start(tmp_path_factory.mktemp("chaos-nats"))
    logs = tmp_path_factory.mktemp("chaos-logs")
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats.url,
        "POSTGRES_DSN": postgres_dsn,
        "REDIS_URL": redis_url,
        "ROBOTS_DIR": str(REPO / "robots"),
        "VP_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    scale = {name: 2 for name in WORKERS}
    procs = start_services(env, logs, port, scale=scale, first_port=free_port())
    platform = ChaosPlatform(f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/health", procs, env)
    try:
        if not wait_ready(platform.health, 180, procs):
            pytest.fail(f"platform did not become ready:\n{platform.logs_text()}")
        yield platform
    finally:
        stop_services(procs)
        nats.stop()
