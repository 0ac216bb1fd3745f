"""A platform of its own for fault injection: every service a process, two instances of each worker,
over a private NATS. Faults kill processes, so nothing else shares it (tests and bench/bench_failover.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.faults import restore
from voiceplatform.cli.up import SERVICES, ServiceProcess, start_services, stop_services, wait_ready
from voiceplatform.credentials import LocalCredentials
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port, free_port_block

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("vad", "asr", "prompt-router", "llm", "tts")


class PlatformError(RuntimeError):
    pass


@dataclass
class ChaosPlatform:
    url: str
    health: str
    procs: list[ServiceProcess]
    env: dict[str, str]
    nats: EmbeddedNats | None = field(default=None, repr=False)
    # connect options of the NATS operator user, for the test's own view of the bus (NatsBus.connect)
    nats_admin: dict[str, Any] = field(default_factory=dict, repr=False)

    def role(self, name: str) -> list[ServiceProcess]:
        return [p for p in self.procs if p.name.rsplit("-", 1)[0] == name]

    def logs_text(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in self.procs)

    def restore(self, timeout_s: float = 120.0) -> None:
        """Every instance running again (frozen ones killed first) and the pipeline ready."""
        sizes = {p.name: _log_size(p) for p in self.procs}
        restarted = {name: sizes[name] for name in restore(self.procs)}
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            if p.name not in restarted:
                continue
            while b"service.started" not in _log_tail(p, restarted[p.name]):
                if time.monotonic() > deadline:
                    raise PlatformError(f"{p.name} did not start again:\n{p.tail()}")
                time.sleep(0.2)
        if not wait_ready(self.health, max(1.0, deadline - time.monotonic()), self.procs):
            raise PlatformError(f"platform not ready after restore:\n{self.logs_text()}")

    def stop(self) -> None:
        stop_services(self.procs)
        if self.nats is not None:
            self.nats.stop()


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


def launch(workdir: Path, postgres_dsn: str, redis_url: str, instances: int = 2) -> ChaosPlatform:
    """Start the platform with ``instances`` of every worker; ready when it returns."""
    credentials = LocalCredentials.load_or_create(workdir)  # NATS with its users, as `vp up` runs it
    nats = EmbeddedNats.start(workdir / "nats", passwords=credentials.nats)
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
    scale = {name: instances for name in WORKERS}
    logins = {name: credentials.nats_env(name) for name, _ in SERVICES}
    procs = start_services(
        env, workdir / "logs", port, scale=scale, first_port=free_port_block(), extra_env=logins
    )
    platform = ChaosPlatform(
        f"ws://127.0.0.1:{port}/ws",
        f"http://127.0.0.1:{port}/health",
        procs,
        env,
        nats,
        credentials.admin_options(),
    )
    if not wait_ready(platform.health, 180, procs):
        text = platform.logs_text()
        platform.stop()
        raise PlatformError(f"platform did not become ready:\n{text}")
    return platform
