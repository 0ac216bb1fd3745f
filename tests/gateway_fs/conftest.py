"""gateway-fs in-process against the FreeSWITCH peer, over a private NATS; the test plays the workers."""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.phone_stream import stream_url
from voiceplatform.runtime import run_service
from voiceplatform.wire import AssignReply, LlmSentence, Message, TtsAudio
from voiceplatform_devstack import FreeSwitchPeer, PeerCall
from voiceplatform_devstack.devinfra import free_port
from vp_gateway_fs.app import GatewayFs
from vp_gateway_fs.settings import GatewayFsSettings

PASSWORD = "peer-esl-secret-1"
STREAM_SECRET = "stream-secret-of-the-tests-0123"
RATE = 8000
TONES = {"bot": (440.0, 0.5, "7000"), "other": (660.0, 0.5, "7001"), "long": (330.0, 3.0, "7002")}


def tone(hz: float, seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


@pytest.fixture(scope="package")
def private_nats(tmp_path_factory) -> Iterator[str]:
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats-gw-fs"))
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class Stack:
    peer: FreeSwitchPeer
    service: GatewayFs
    workers: NatsBus
    seen: list[Message]
    ws_base: str
    http: str
    recordings: Path
    synthesized: list[str]
    stop: asyncio.Event
    calls: list[PeerCall] = field(default_factory=list)

    def of(self, kind: type, call_id: str | None = None) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind) and (call_id is None or m.call_id == call_id)]

    def url(self, uuid: str, secret: str = STREAM_SECRET) -> str:
        """The stream URL the dialplan builds for channel ``uuid``."""
        return stream_url(self.ws_base, uuid, secret)

    async def call(self, destination: str = "7000", *, metadata: Any = "default", **kw: Any) -> PeerCall:
        uuid = str(uuidlib.uuid4())
        if metadata == "default":
            metadata = json.dumps({"dnis": destination, "caller": "79990001122"})
        call = await self.peer.place_call(
            self.url(uuid), destination=destination, metadata=metadata, uuid=uuid, **kw
        )
        self.calls.append(call)
        return call


@pytest.fixture
async def stack(private_nats: str, tmp_path: Path) -> AsyncIterator[Stack]:
    robots = tmp_path / "robots"
    for name, (hz, seconds, number) in TONES.items():
        (robots / name).mkdir(parents=True)
        config = {"llm": {"provider": "openai"}, "phone_numbers": [number], "barge_in": {"min_speech_ms": 0}}
        (robots / name / "config.json").write_text(json.dumps(config))
        write_wav(robots / name / "greeting.wav", tone(hz, seconds), 16000)
    (robots / "synth").mkdir()  # no greeting.wav: its greeting_text goes through TTS
    synth = {"llm": {"provider": "openai"}, "phone_numbers": ["7003"], "greeting_text": "Здравствуйте!"}
    (robots / "synth" / "config.json").write_text(json.dumps(synth))
    peer = FreeSwitchPeer(esl_password=PASSWORD, temp_dir=tmp_path / "fs")
    await peer.start()
    port = free_port()
    settings = GatewayFsSettings(
        http_port=port,
        fs_stream_port=0,  # any free port: the bound one is service.stream_port
        robots_dir=robots,
        fs_esl_port=peer.esl_port,
        fs_esl_password=SecretStr(PASSWORD),
        fs_stream_secret=SecretStr(STREAM_SECRET),
        fs_esl_reconnect_max_s=0.3,
        fs_recordings_dir=tmp_path / "recordings",
        recordings_dir=tmp_path / "stereo",  # the gateway's own WAV of every call
        fs_metadata_timeout_s=0.5,
        drain_timeout_s=1.0,
    )
    service = GatewayFs(settings)
    workers = await NatsBus.connect(private_nats, "workers")
    gateway_bus = await NatsBus.connect(private_nats, "gateway-fs")
    seen: list[Message] = []

    async def assign(env: Envelope) -> Message:
        return AssignReply(call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id="w")

    async def record(env: Envelope) -> None:
        seen.append(env.message)

    synthesized: list[str] = []

    async def tts(env: Envelope) -> None:  # the TTS worker, for greetings only (tests play the rest)
        msg = env.message
        if isinstance(msg, LlmSentence) and msg.turn_id.endswith("-greeting"):
            synthesized.append(msg.text)
            pcm = tone(550.0, 0.4, msg.sample_rate).astype("<i2").tobytes()
            audio = TtsAudio(
                call_id=msg.call_id,
                turn_id=msg.turn_id,
                index=0,
                seq=0,
                sample_rate=msg.sample_rate,
                pcm=pcm,
                last=True,
            )
            await workers.publish(subjects.tts_audio(msg.call_id), audio)

    subs = [
        await workers.subscribe(subjects.assign("vad"), assign, queue="vad"),
        await workers.subscribe(subjects.assign("asr"), assign, queue="asr"),
        await workers.subscribe(subjects.ALL_CALLS, record),
        await workers.subscribe(subjects.ANY_LLM_SENTENCE, tts, queue="tts"),
    ]
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, settings, bus=gateway_bus, stop=stop))
    http = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(f"{http}/metrics")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.02)
    await asyncio.wait_for(service.esl.connected_event.wait(), 5)
    await wait_for(lambda: service.stream_server is not None, 5)
    built = Stack(
        peer,
        service,
        workers,
        seen,
        f"ws://127.0.0.1:{service.stream_port}/call",
        http,
        tmp_path / "recordings",
        synthesized,
        stop,
    )
    try:
        yield built
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await peer.stop()
        for sub in subs:
            await sub.unsubscribe()
        await workers.close()


async def robot_quiet(stack: Stack, call: PeerCall, timeout: float = 4.0) -> None:
    """Everything the robot had to say so far was played to the caller (nothing queued anywhere)."""
    await wait_for(lambda: call.uuid in stack.service.calls, timeout)
    phone = stack.service.calls[call.uuid]

    def quiet() -> bool:
        return (
            phone.session.playout.idle
            and phone.sink.pending_audio_s() == 0
            and bool(call.plays)
            and all(p.stopped_at for p in call.plays)
        )

    await wait_for(quiet, timeout)
