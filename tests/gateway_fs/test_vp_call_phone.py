"""`vp call --phone`: a WAV caller through the FreeSWITCH peer, gateway-fs and the real pipeline services.

The services run in this process on the instant engines of bench/ (ASR and TTS answer at once), the
script LLM and the energy VAD, over a private NATS; the turn the report shows went through all of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from bench.instant_engines import ASR_TEXT
from bench.platform_stack import ROBOT, InProcessStack, make_robot
from tests.waiting import wait_for
from voiceplatform.audio import read_wav, write_wav
from voiceplatform.bus.nats import NatsBus
from voiceplatform.cli.call_phone import place_phone_call
from voiceplatform.runtime import run_service
from voiceplatform_devstack.devinfra import free_port
from vp_gateway_fs.app import GatewayFs
from vp_gateway_fs.settings import GatewayFsSettings

PASSWORD = "vp-call-phone-secret"
STREAM_SECRET = "vp-call-phone-stream-secret"
REPO = Path(__file__).resolve().parents[2]


def caller_wav(path: Path) -> Path:
    """0.4 s of silence, 1 s of a loud tone (speech to the energy VAD), 0.8 s of silence; 16 kHz."""
    rate = 16000
    t = np.arange(rate) / rate
    speech = (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16)
    samples = np.concatenate(
        [np.zeros(int(rate * 0.6), np.int16), speech, np.zeros(int(rate * 1.5), np.int16)]
    )
    write_wav(path, samples, rate)
    return path


@dataclass
class Platform:
    ws_url: str
    esl_port: int
    robots: Path


@pytest.fixture
async def platform(private_nats: str, tmp_path: Path) -> AsyncIterator[Platform]:
    robots = make_robot(tmp_path / "robots", silence_frames=10)
    pipeline = InProcessStack(robots, private_nats)
    await pipeline.start()
    esl_port, http_port, stream_port = free_port(), free_port(), free_port()
    settings = GatewayFsSettings(
        http_port=http_port,
        fs_stream_port=stream_port,
        robots_dir=robots,
        fs_esl_port=esl_port,
        fs_esl_password=SecretStr(PASSWORD),
        fs_stream_secret=SecretStr(STREAM_SECRET),
        fs_esl_reconnect_max_s=0.2,
        drain_timeout_s=1.0,
    )
    service = GatewayFs(settings)
    bus = await NatsBus.connect(private_nats, "gateway-fs")
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, settings, bus=bus, stop=stop))
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(f"http://127.0.0.1:{http_port}/metrics")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.02)
    await wait_for(lambda: service.stream_server is not None, 5)
    try:
        yield Platform(f"ws://127.0.0.1:{stream_port}/call", esl_port, robots)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await pipeline.stop()


async def test_place_phone_call_reports_the_turn_like_web_mode(platform: Platform, tmp_path: Path) -> None:
    samples, _ = read_wav(caller_wav(tmp_path / "caller.wav"))
    from voiceplatform.audio import resample

    result = await place_phone_call(
        platform.ws_url,
        ROBOT,
        resample(samples, 16000, 8000),
        esl_port=platform.esl_port,
        esl_password=PASSWORD,
        stream_secret=STREAM_SECRET,
        tail_s=5,
    )
    assert result.call_id.startswith("phone-")
    assert len(result.turns) == 1, result.events
    turn = result.turns[0]
    assert turn["user_text"] == ASR_TEXT and turn["bot_text"] and not turn["interrupted"]
    # measured and after the caller's speech end (its size is the benches' figure, not a limit here)
    assert turn["voice_to_voice_ms"] is not None and turn["voice_to_voice_ms"] >= 0
    assert result.audio_starts and len(result.robot_audio) > 0  # the reply was heard on the phone
    assert result.end_reason == "caller_hangup"


@pytest.mark.slow
async def test_vp_call_phone_command_prints_the_same_report(platform: Platform, tmp_path: Path) -> None:
    wav = caller_wav(tmp_path / "caller.wav")
    out = tmp_path / "reply.wav"
    secrets = {"VP_FS_ESL_PASSWORD": PASSWORD, "VP_FS_STREAM_SECRET": STREAM_SECRET}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # the robots folder the platform serves: vp call calls a robot folder only from there
    env = {**os.environ, **secrets, "PYTHONPATH": path, "ROBOTS_DIR": str(platform.robots)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voiceplatform.cli.main",
        "call",
        "--phone",
        "--robot",
        ROBOT,  # by name: its folder's instant engines exist only in the platform's processes
        "--wav",
        str(wav),
        "--out",
        str(out),
        "--json",
        "--tail-s",
        "5",
        "--esl-port",
        str(platform.esl_port),
        "--url",
        platform.ws_url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout)
    assert set(report) == {
        "call_id",
        "robot",
        "end_reason",
        "greeting_first_audio_ms",
        "barge_ins",
        "reply_wav",
        "turns",
        "client_voice_to_voice_ms",
        "failures",
    }
    assert report["failures"] == []
    assert report["robot"] == ROBOT and report["call_id"].startswith("phone-")
    assert [t["user_text"] for t in report["turns"]] == [ASR_TEXT]
    assert len(report["client_voice_to_voice_ms"]) == 1 and report["client_voice_to_voice_ms"][0] is not None
    reply, rate = read_wav(out)
    assert rate == 8000 and reply.size > 0
