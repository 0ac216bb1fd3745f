"""The services under benchmark: a robot that selects the instant engines, and the pipeline services
run either in this process (one NATS connection each) or one child process per service.

Both layouts build each service with its own package's ``build()`` (settings from the environment,
as ``python -m vp_<pkg>`` does) after ``register_instant_engines()``; product code is not edited.
The recorder is left out: it is off the reply path (it only persists lifecycle events).

Child process entry (used by the ``procs`` layout)::

    python -m bench.platform_stack --serve asr
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.instant_engines import INSTANT, InstantTtsStage, register_instant_engines, tts_service_available
from voiceplatform.bus.nats import NatsBus
from voiceplatform.runtime import Service, run_event_loop, run_service

REPO = Path(__file__).resolve().parent.parent
ROBOT = "bench_instant"
# role -> candidate "module:function" returning (service, settings), first importable wins
BUILDERS: dict[str, tuple[str, ...]] = {
    "vad": ("vp_vad.__main__:build",),
    "asr": ("vp_asr.__main__:build",),
    "prompt-router": ("vp_router.app:build",),
    "llm": ("vp_llm.app:build",),
    "tts": ("vp_tts.app:build", "vp_tts.__main__:build"),
}
ROLES = tuple(BUILDERS)
# gateways check a robot's provider names before a call: theirs must know the instant ones too
GATEWAY_BUILDERS: dict[str, tuple[str, ...]] = {
    "gateway-web": ("vp_gateway_web.app:build",),
    "gateway-fs": ("vp_gateway_fs.app:build",),
}


def make_robot(root: Path, silence_frames: int) -> Path:
    """A robots dir with one robot on instant engines, the script LLM, energy VAD and no greeting."""
    folder = root / ROBOT
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "mode": "pipeline",
        "asr": {"provider": INSTANT, "language": "ru-RU"},
        "llm": {"provider": "script"},
        "tts": {"provider": INSTANT, "sample_rate": 16000},
        "vad": {
            "enabled": True,
            "provider": "energy",
            "energy_threshold": 200,
            "silence_frames": silence_frames,
            "min_speech_frames": 5,
        },
        "greeting_text": "",
        "max_call_s": 900,
    }
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    shutil.copy(REPO / "robots" / "pipeline_russian" / "dialog.json", folder / "dialog.json")
    return root


def service_env(robots_dir: Path, nats_url: str) -> dict[str, str]:
    """Environment the services read their settings from (no model preloading, room for 50+ calls)."""
    return {
        "NATS_URL": nats_url,
        "ROBOTS_DIR": str(robots_dir),
        "VP_PRELOAD_PROVIDERS": "[]",
        "VP_PRELOAD_SILERO": "false",
        "VP_TTS_FESTIVAL_PRELOAD": "false",
        "VP_MAX_CALLS": "1000",
        "VP_HTTP_PORT": "0",
    }


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_service(role: str) -> tuple[Service, Any]:
    if role == "tts" and not tts_service_available():
        from voiceplatform.config import ServiceSettings

        return InstantTtsStage(), ServiceSettings()
    errors = []
    for target in {**BUILDERS, **GATEWAY_BUILDERS}[role]:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{target}: {exc}")
            continue
        if hasattr(module, attr):
            service, settings = getattr(module, attr)()
            return service, settings
    raise RuntimeError(f"cannot build {role}: {errors}")


def tts_mode() -> str:
    return "vp_tts service + instant provider" if tts_service_available() else "bench stand-in stage"


@dataclass
class InProcessStack:
    """Every service in this event loop, each with its own NATS connection."""

    robots_dir: Path
    nats_url: str
    services: list[tuple[Service, NatsBus]] = field(default_factory=list)

    async def start(self) -> None:
        register_instant_engines()
        for role in ROLES:
            with patched_environ(service_env(self.robots_dir, self.nats_url)):
                service, _ = build_service(role)  # settings are read from the environment here
            bus = await NatsBus.connect(self.nats_url, f"bench-{role}")
            await service.start(bus)
            self.services.append((service, bus))

    async def stop(self) -> None:
        for service, bus in reversed(self.services):
            await service.drain(2.0)
            await bus.drain()
        self.services.clear()

    def pids(self) -> list[int]:
        return []


@dataclass
class ProcessStack:
    """One child process per service (like ``vp up``); readiness is their presence heartbeat."""

    robots_dir: Path
    nats_url: str
    log_dir: Path
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **service_env(self.robots_dir, self.nats_url),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "VP_LOG_FORMAT": "json",
        }
        for role in ROLES:
            with (self.log_dir / f"{role}.log").open("wb") as log:
                self.procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.platform_stack",
                        "--serve",
                        role,
                        env=env,
                        cwd=REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs.clear()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.returncode is None]

    def exited(self) -> list[str]:
        return [
            f"{role} ({p.returncode})"
            for role, p in zip(ROLES, self.procs, strict=True)
            if p.returncode is not None
        ]


def _serve(role: str) -> None:
    from voiceplatform.logging import configure_logging

    register_instant_engines()
    service, settings = build_service(role)
    configure_logging(service.name, os.environ.get("VP_LOG_LEVEL", "INFO"))
    run_event_loop(
        run_service(service, settings, settle_heap=True), getattr(settings, "event_loop", "asyncio")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=(*ROLES, *GATEWAY_BUILDERS), required=True)
    _serve(parser.parse_args().serve)


if __name__ == "__main__":
    main()
