"""Robot folders built in tmp dirs (one mistake each), and gateway-web on a private NATS with
stand-in VAD/ASR owners for `vp call` (no models: the stand-ins accept the call and say nothing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway_web.helpers import Gateway, serving
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import AssignReply, StageError
from voiceplatform_devstack.devinfra import free_port
from vp_gateway_web.app import GatewayWeb
from vp_gateway_web.settings import GatewayWebSettings

DIALOG = {
    "start": "main",
    "states": {
        "main": {
            "intents": [{"keywords": ["привет"], "reply": "Здравствуйте!"}],
            "fallback": "Не поняла, повторите.",
        }
    },
}
# a robot every check passes: the offline brain and the local voice
CONFIG = {"llm": {"provider": "script"}, "tts": {"provider": "espeak", "fallback": []}}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def make_robot(
    robots: Path, name: str = "bot", config: dict[str, Any] | None = None, dialog: Any = DIALOG
) -> Path:
    """A good robot folder (config.json with one key per line, dialog.json, prompt.txt)."""
    folder = robots / name
    folder.mkdir(parents=True)
    write_json(folder / "config.json", CONFIG if config is None else config)
    if dialog is not None:
        write_json(folder / "dialog.json", dialog)
    (folder / "prompt.txt").write_text("Ты вежливый помощник магазина.\n", encoding="utf-8")
    return folder


def known(role: str) -> str:
    """The provider names of ``role`` as a problem line lists them (a bench's stand-in engines,
    added to the process's registry by another test, included)."""
    from voiceplatform.providers import catalog

    return ", ".join(catalog.registry(role).names())


def tone(seconds: float = 1.0, rate: int = 16000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


@pytest.fixture
def robots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``<tmp>/robots``, with the working directory at ``<tmp>`` (problem lines read ``robots/...``)."""
    monkeypatch.chdir(tmp_path)
    for key in ("ROBOTS_DIR", "YANDEX_API_KEY", "YANDEX_IAM_TOKEN", "GEMINI_API_KEY", "GEMINI_API_KEYS"):
        monkeypatch.delenv(key, raising=False)
    root = tmp_path / "robots"
    root.mkdir()
    return root


@pytest.fixture(scope="package")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def gateway_factory(private_nats: str, robots: Path) -> Callable[..., AbstractAsyncContextManager[Gateway]]:
    """gateway-web serving ``robots``; ``asr_error`` (kind, detail): the ASR stand-in reports that
    stage error for every call it is given (as an ASR left without a usable provider does)."""

    @asynccontextmanager
    async def make(asr_error: tuple[str, str] | None = None) -> AsyncIterator[Gateway]:
        port = free_port()
        settings = GatewayWebSettings(
            nats_url=private_nats,
            robots_dir=robots,
            http_port=port,
            default_robot="bot",
            start_timeout_s=1.0,
            drain_timeout_s=0.5,
        )
        service = GatewayWeb(settings)
        workers = await NatsBus.connect(private_nats, "stand-in-workers")
        gateway = Gateway(f"127.0.0.1:{port}", service)
        reported: set[str] = set()

        async def assign(env: Envelope) -> AssignReply:
            call_id, role = env.message.call_id, env.message.role
            if role == "asr" and asr_error is not None and call_id not in reported:
                reported.add(call_id)
                kind, detail = asr_error
                error = StageError(call_id=call_id, stage="asr", kind=kind, detail=detail)
                asyncio.get_running_loop().call_later(
                    0.2, lambda: asyncio.ensure_future(workers.publish(subjects.lifecycle(call_id), error))
                )
            return AssignReply(call_id=call_id, role=role, accepted=True, instance_id="w")

        await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
        await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
        async with serving(gateway, settings, workers):
            yield gateway

    return make


@pytest.fixture
def greeting_robot(robots: Path) -> Path:
    """A robot with a recorded greeting (no greeting_text) the gateway plays at once."""
    folder = make_robot(robots)
    write_wav(folder / "greeting.wav", tone(0.2), 16000)
    return folder
