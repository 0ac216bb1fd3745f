"""gateway-web as a real HTTP/WebSocket server on a private NATS, with stand-in VAD/ASR owners."""

from __future__ import annotations

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
from voiceplatform.wire import AssignReply
from voiceplatform_devstack.devinfra import free_port
from vp_gateway_web.app import GatewayWeb
from vp_gateway_web.settings import GatewayWebSettings

GREETING = "Здравствуйте! Я тестовый робот."  # the words of the robots' greeting.wav


@pytest.fixture(scope="package")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS of these tests' own: no queue group is shared with other tests on the machine."""
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    root = tmp_path / "robots"
    for name in ("bot", "bot2"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(
            json.dumps({"llm": {"provider": "openai"}, "greeting_text": GREETING})
        )
        write_wav(root / name / "greeting.wav", (np.ones(1600) * 500).astype(np.int16), 16000)
        (root / name / "greeting.wav.txt").write_text(GREETING, encoding="utf-8")  # what it says
    return root


@pytest.fixture
def gateway_factory(private_nats: str, robots: Path) -> Callable[..., AbstractAsyncContextManager[Gateway]]:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Gateway]:
        port = free_port()
        settings = GatewayWebSettings(
            nats_url=private_nats,
            robots_dir=robots,
            http_port=port,
            default_robot="bot",
            start_timeout_s=1.0,
            drain_timeout_s=0.5,
            **overrides,
        )
        service = GatewayWeb(settings)
        workers = await NatsBus.connect(private_nats, "stand-in-workers")
        gateway = Gateway(f"127.0.0.1:{port}", service)

        async def assign(env: Envelope) -> AssignReply:
            return AssignReply(
                call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id="w"
            )

        async def record(env: Envelope) -> None:
            gateway.seen.append(env.message)

        await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
        await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
        await workers.subscribe(subjects.ALL_CALLS, record)
        async with serving(gateway, settings, workers):
            yield gateway

    return make
