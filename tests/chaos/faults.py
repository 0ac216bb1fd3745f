"""Faults an SRE injects into a running platform: kill -9 or freeze (SIGSTOP) the instance of a
worker type that holds a call or a turn, at a chosen moment, then put the platform back.

The instance is found the way an operator would: a streaming owner (vad, asr) from its heartbeat
(``worker.heartbeat`` lists the calls it owns; its instance id carries the pid), a per-turn worker
(prompt-router, llm, tts) from its own log: the instance whose log names the call after the fault
was armed is the one working on the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.cli.up import ServiceProcess
from voiceplatform.wire import Message, WorkerHeartbeat


def pid_of_instance(instance_id: str) -> int:
    """Instance ids are ``<host>-<pid>-<random>`` (config.settings)."""
    return int(instance_id.rsplit("-", 2)[-2])


@dataclass
class OwnerWatch:
    """Which instance of a streaming role owns which calls, from the heartbeats on the bus."""

    role: str
    owners: dict[str, int] = field(default_factory=dict)  # call id → pid

    async def on_heartbeat(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, WorkerHeartbeat):
            for call_id in msg.calls:
                self.owners[call_id] = pid_of_instance(msg.instance_id)
        return None

    async def owner(self, call_id: str, timeout_s: float = 5.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if call_id in self.owners:
                return self.owners[call_id]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {self.role} instance announced call {call_id} in its heartbeats")


def heartbeat_subject(role: str) -> str:
    return subjects.heartbeat(role)


@dataclass
class LogWatch:
    """Find the instance of a role whose log mentions a call after the watch was armed."""

    procs: list[ServiceProcess]
    offsets: dict[str, int] = field(default_factory=dict)

    def arm(self) -> None:
        self.offsets = {p.name: _size(p) for p in self.procs}

    async def worker_of(self, call_id: str, timeout_s: float = 15.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                with contextlib.suppress(OSError), p.log_path.open("rb") as f:
                    f.seek(self.offsets.get(p.name, 0))
                    if call_id.encode() in f.read():
                        return p
            await asyncio.sleep(0.01)
        raise AssertionError(f"no instance of {[p.name for p in self.procs]} logged call {call_id}")


def _size(p: ServiceProcess) -> int:
    try:
        return p.log_path.stat().st_size
    except OSError:
        return 0


def hit(proc: ServiceProcess, how: str) -> None:
    """``kill`` = SIGKILL; ``freeze`` = SIGSTOP (killed later by ``restore``)."""
    assert proc.proc is not None and proc.proc.poll() is None, f"{proc.name} is not running"
    os.kill(proc.proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)


def restore(procs: list[ServiceProcess]) -> list[str]:
    """Kill what is frozen, restart what is dead; returns the names restarted."""
    restarted = []
    for p in procs:
        if p.proc is None:
            continue
        if p.proc.poll() is None and _stopped(p.proc.pid):
            os.kill(p.proc.pid, signal.SIGKILL)
            p.proc.wait(10)
        if p.proc.poll() is not None:
            if p.log_file is not None:
                p.log_file.close()
            p.start()
            restarted.append(p.name)
    return restarted


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False
