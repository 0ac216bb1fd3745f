"""The whole platform as separate processes over real NATS, Postgres and Redis (the `vp up` launcher)."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from voiceplatform.cli.up import SERVICES, ServiceProcess, start_services, stop_services, wait_ready
from voiceplatform.credentials import LocalCredentials
from voiceplatform_devstack.devinfra import free_port, free_port_block

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Platform:
    url: str
    health: str
    procs: list[ServiceProcess]
    env: dict[str, str]
    logs: Path
    phone_url: str = ""  # gateway-fs: where mod_audio_stream connects (ws://…/call)
    esl_port: int = 0  # where gateway-fs expects FreeSWITCH's Event Socket (the test's peer)
    esl_password: str = ""
    stream_secret: str = ""  # the key gateway-fs requires in the stream URL
    # connect options of the NATS operator user, for a test that watches the bus (NatsBus.connect)
    nats_admin: dict[str, Any] = field(default_factory=dict, repr=False)

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(30)}" for p in self.procs)


@pytest.fixture(scope="package")
def credentials(tmp_path_factory) -> LocalCredentials:
    return LocalCredentials.load_or_create(tmp_path_factory.mktemp("vp-data"))


@pytest.fixture(scope="package")
def private_nats(tmp_path_factory, credentials: LocalCredentials) -> Iterator[str]:
    """A NATS server of the platform's own: no queue group on it is shared with other tests or tools.
    Security on, as under `vp up`: every service logs in as its own user, held to its subjects."""
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats"), passwords=credentials.nats)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="package")
def platform(
    private_nats: str, credentials: LocalCredentials, postgres_dsn: str, redis_url: str, tmp_path_factory
) -> Iterator[Platform]:
    nats_url = private_nats
    logs = tmp_path_factory.mktemp("platform-logs")
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "POSTGRES_DSN": postgres_dsn,
        "REDIS_URL": redis_url,
        "ROBOTS_DIR": str(REPO / "robots"),
        "VP_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # gateway-fs logs in to the FreeSWITCH peer a phone test starts on this port
        "VP_FS_ESL_PASSWORD": "e2e-esl-secret-not-cluecon",
        "VP_FS_STREAM_SECRET": "e2e-stream-secret-0123456789",
        "VP_FS_ESL_PORT": str(free_port()),
        "VP_GATEWAY_FS_PORT": str(free_port()),  # the stream; its HTTP: VP_GATEWAY_FS_HTTP_PORT
        "VP_GATEWAY_FS_HTTP_PORT": str(free_port()),
    }
    # two instances of every worker: assignment, queue groups and KV state must hold across instances
    scale = {name: 2 for name in ("vad", "asr", "prompt-router", "llm", "tts", "recorder")}
    logins = {name: credentials.nats_env(name) for name, _ in SERVICES}
    procs = start_services(env, logs, port, scale=scale, first_port=free_port_block(), extra_env=logins)
    platform = Platform(
        f"ws://127.0.0.1:{port}/ws",
        f"http://127.0.0.1:{port}/health",
        procs,
        env,
        logs,
        phone_url=f"ws://127.0.0.1:{env['VP_GATEWAY_FS_PORT']}/call",
        esl_port=int(env["VP_FS_ESL_PORT"]),
        esl_password=env["VP_FS_ESL_PASSWORD"],
        stream_secret=env["VP_FS_STREAM_SECRET"],
        nats_admin=credentials.admin_options(),
    )
    try:
        if not wait_ready(platform.health, 180, procs):
            pytest.fail(f"platform did not become ready:\n{platform.logs_text()}")
        yield platform
    finally:
        stop_services(procs)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def turns_summary(turns: list[dict]) -> list[tuple[str, str, str, object]]:
    """Each turn as (turn id tail, outcome, what the caller said, voice-to-voice ms): for messages."""
    return [
        (str(t["turn_id"])[-7:], t.get("outcome", ""), t.get("user_text", ""), t.get("voice_to_voice_ms"))
        for t in turns
    ]
