"""Two real instances of vad and asr as processes, a gateway call session in this process, and a
caller whose frames name themselves (see ``span_asr``): the failover tests and the bench share it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.failover.span_asr import SPEECH_BASE
from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config import load_robot
from voiceplatform.gateway import CallSession, GatewayDirectory
from voiceplatform.gateway.turns import Turn, TurnKind
from voiceplatform.wire import Message, WorkerHeartbeat

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000
FRAME_SAMPLES = RATE // 50
ROBOT = "failover_bot"
SILERO_ROBOT = "failover_silero"


def write_robot(robots_dir: Path, name: str = ROBOT, vad_provider: str = "energy") -> Path:
    folder = robots_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "mode": "pipeline",
        "llm": {"provider": "openai"},
        "vad": {"provider": vad_provider, "eot_model": "none"},
        "asr": {"provider": "span", "fallback": []},
        "turns": {"no_input_s": 0},
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def caller_frame(seq: int, speech: bool) -> bytes:
    """Speech frames carry ``SPEECH_BASE + seq`` in every sample (loud for the energy VAD)."""
    value = SPEECH_BASE + seq if speech else 0
    return np.full(FRAME_SAMPLES, value, dtype="<i2").tobytes()


class Workers:
    """Worker processes by instance id."""

    def __init__(self, nats_url: str, robots_dir: Path, log_dir: Path) -> None:
        self.nats_url = nats_url
        self.robots_dir = robots_dir
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.roles: dict[str, str] = {}

    def start(self, role: str, instance_id: str, **env_extra: str) -> None:
        paths = [str(ROOT), str(ROOT / "shared"), *(str(p) for p in sorted((ROOT / "services").iterdir()))]
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "ROBOTS_DIR": str(self.robots_dir),
            "VP_INSTANCE_ID": instance_id,
            "VP_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(paths),
            "VP_PRELOAD_SILERO": "false",
            "VP_PRELOAD_EOT": "false",
            **env_extra,
        }
        log = (self.log_dir / f"{instance_id}.log").open("wb")
        self.procs[instance_id] = subprocess.Popen(
            [sys.executable, "-m", "tests.failover.worker", role],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.roles[instance_id] = role

    def signal(self, instance_id: str, sig: signal.Signals) -> None:
        self.procs[instance_id].send_signal(sig)

    def kill(self, instance_id: str) -> None:
        proc = self.procs.pop(instance_id)
        proc.kill()
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()


@dataclass
class Beats:
    """Heartbeats seen per instance: arrival times and the calls each one listed."""

    times: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, list[str]] = field(default_factory=dict)

    async def handler(self, env: Envelope) -> Message | None:
        beat = env.message
        if isinstance(beat, WorkerHeartbeat):
            self.times.setdefault(beat.instance_id, []).append(time.monotonic())
            self.calls[beat.instance_id] = list(beat.calls)
        return None

    def alive(self, instance_ids: list[str]) -> bool:
        return all(self.times.get(i) for i in instance_ids)

    def gaps(self) -> list[float]:
        return [b - a for ts in self.times.values() for a, b in itertools.pairwise(ts)]


async def watch_heartbeats(bus: Bus) -> Beats:
    beats = Beats()
    for role in ("vad", "asr"):
        await bus.subscribe(subjects.heartbeat(role), beats.handler)
    return beats


class NullSink:
    async def send_audio(self, pcm: bytes) -> None:
        return None

    async def send_event(self, event: dict[str, Any]) -> None:
        return None

    async def flush(self, turn_id: str) -> None:
        return None

    async def close(self, reason: str) -> None:
        return None


class Gateway:
    """One gateway process's worth of state in the test: its own NATS connection and directory."""

    def __init__(self, bus: NatsBus, directory: GatewayDirectory) -> None:
        self.bus = bus
        self.directory = directory

    @classmethod
    async def connect(cls, nats_url: str) -> Gateway:
        bus = await NatsBus.connect(nats_url, "gateway")
        directory = GatewayDirectory(bus, required=())
        await directory.start()
        return cls(bus, directory)

    async def call(self, robots_dir: Path, robot: str = ROBOT) -> CallSession:
        session = CallSession(
            self.bus,
            load_robot(robots_dir / robot),
            channel="web",
            sample_rate=RATE,
            sink=NullSink(),
            directory=self.directory,
        )
        await session.start()
        return session

    async def close(self) -> None:
        await self.directory.stop()
        await self.bus.close()


def caller_turns(session: CallSession) -> list[Turn]:
    return [t for t in session.turns if t.kind is TurnKind.CALLER]


async def speak(
    session: CallSession,
    script: list[bool],
    on_frame: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Send ``script`` (speech or not, per 20 ms frame) at real time; returns the first seq used."""
    first = session._seq
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, speech in enumerate(script):
        seq = first + i
        await session.push_audio(caller_frame(seq, speech))
        if on_frame is not None:
            await on_frame(i)
        delay = t0 + (i + 1) * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return first


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
