"""Outbound dialling rate gateway-fs sustains: campaigns → bgapi originate → outcome → call.dialed.

Everything in this process on a private embedded NATS: the FreeSWITCH peer (its ``originate`` and
scripted callees), gateway-fs (``GatewayFs`` with its HTTP API) and a stand-in for the pipeline's
assignment replies and the greeting's TTS. One campaign per step of ``--numbers`` numbers at
``--concurrency``; the step reports attempts completed per second (first originate → last outcome)
and the originate → outcome latency p50/p99 of the gateway's side (the callee's ring time, which
is the carrier's, is set to 0). Modes:

- ``busy``: every callee is busy: the ESL/originate/BACKGROUND_JOB path alone (no media);
- ``answer``: every callee answers and is hung up ``--hold`` seconds later: the stream, the
  session start, AMD (disabled: the greeting plays at once) and the record as well.

    .venv/bin/python bench/bench_dial.py [--mode busy,answer] [--numbers 200] [--concurrency 20] [--hold 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.runtime import run_service
from voiceplatform.wire import AssignReply, CallDialed, LlmSentence, Message, TtsAudio
from voiceplatform_devstack import FreeSwitchPeer
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port
from voiceplatform_devstack.freeswitch_outbound import Callee
from vp_gateway_fs.app import GatewayFs
from vp_gateway_fs.settings import GatewayFsSettings

PASSWORD = "bench-esl-password-1"
SECRET = "bench-stream-secret-0123456789"
KEY = "bench-dial-key-0123456789"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def step(
    mode: str, numbers: int, concurrency: int, hold_s: float, nats_url: str, work: Path
) -> dict[str, Any]:
    robots = work / f"robots-{mode}"
    (robots / "dialer").mkdir(parents=True)
    (robots / "dialer" / "config.json").write_text(
        json.dumps({"llm": {"provider": "openai"}, "greeting_text": "Здравствуйте, {name}!"})
    )
    peer = FreeSwitchPeer(esl_password=PASSWORD, temp_dir=work / f"fs-{mode}", history=2000)
    await peer.start()
    peer.outbound.default = Callee("busy" if mode == "busy" else "answer", ring_s=0.0)
    port, stream_port = free_port(), free_port()
    settings = GatewayFsSettings(
        http_port=port,
        fs_stream_port=stream_port,
        robots_dir=robots,
        fs_esl_port=peer.esl_port,
        fs_esl_password=SecretStr(PASSWORD),
        fs_stream_secret=SecretStr(SECRET),
        fs_dial_api_key=SecretStr(KEY),
        fs_stream_url=f"ws://127.0.0.1:{stream_port}/call",
        fs_dial_max_in_flight=max(concurrency, 1),
        drain_timeout_s=2.0,
    )
    service = GatewayFs(settings)
    workers = await NatsBus.connect(nats_url, "workers")
    outcomes: list[tuple[float, CallDialed]] = []

    async def assign(env: Envelope) -> Message:
        return AssignReply(call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id="w")

    async def seen(env: Envelope) -> None:
        if isinstance(env.message, CallDialed):
            outcomes.append((time.monotonic(), env.message))

    async def tts(env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, LlmSentence):
            pcm = np.zeros(msg.sample_rate // 5, dtype="<i2").tobytes()
            rate = msg.sample_rate
            audio = TtsAudio(
                call_id=msg.call_id, turn_id=msg.turn_id, index=0, seq=0, sample_rate=rate, pcm=pcm, last=True
            )
            await workers.publish(subjects.tts_audio(msg.call_id), audio)

    subs = [
        await workers.subscribe(subjects.assign("vad"), assign, queue="vad"),
        await workers.subscribe(subjects.assign("asr"), assign, queue="asr"),
        await workers.subscribe(subjects.ALL_CALLS, seen),
        await workers.subscribe(subjects.ANY_LLM_SENTENCE, tts, queue="tts"),
    ]
    stop = asyncio.Event()
    gw_bus = await NatsBus.connect(nats_url, "gateway-fs")
    task = asyncio.create_task(run_service(service, settings, bus=gw_bus, stop=stop))
    await asyncio.wait_for(service.esl.connected_event.wait(), 10)
    hangups: set[str] = set()

    async def hang_up_answered() -> None:
        while True:
            for call in list(peer.outbound.originated):
                if call.uuid not in hangups and call.state == "answered" and call.stream is not None:
                    hangups.add(call.uuid)
                    asyncio.get_running_loop().call_later(
                        hold_s, lambda c=call: asyncio.ensure_future(c.hangup())
                    )
            await asyncio.sleep(0.02)

    hanger = asyncio.create_task(hang_up_answered())
    body = {
        "robot": "dialer",
        "targets": [{"number": f"7999{i:07d}", "variables": {"name": "Анна"}} for i in range(numbers)],
        "concurrency": concurrency,
        "retry": {"attempts": 1},
        "amd": {"enabled": False},
    }
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                r = await client.post(
                    f"http://127.0.0.1:{port}/outbound/campaigns", json=body,
                    headers={"Authorization": f"Bearer {KEY}"},
                )  # fmt: skip
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    assert r.status_code == 201, r.text
    run = service.dialer.runs[r.json()["id"]]
    while not run.campaign.finished:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    hanger.cancel()
    latencies = []
    for state in run.campaign.states:
        attempt = state.last
        if attempt is None:
            continue
        dialed = next((t for t, d in outcomes if d.call_id == f"phone-{attempt.uuid}"), None)
        if dialed is not None:
            latencies.append((dialed - _mono_of(attempt.started)) * 1000)
    result = {
        "mode": mode,
        "numbers": numbers,
        "concurrency": concurrency,
        "completed": sum(1 for s in run.campaign.states if s.status in ("done", "gave_up")),
        "answered": sum(1 for s in run.campaign.states if s.status == "done"),
        "seconds": round(elapsed, 2),
        "attempts_per_s": round(numbers / elapsed, 1),
        "originate_to_outcome_ms_p50": round(pct(latencies, 50), 1),
        "originate_to_outcome_ms_p99": round(pct(latencies, 99), 1),
    }
    stop.set()
    await asyncio.wait_for(task, 30)
    await peer.stop()
    for sub in subs:
        await sub.unsubscribe()
    await workers.close()
    return result


_OFFSET = time.time() - time.monotonic()


def _mono_of(epoch_s: float) -> float:
    return epoch_s - _OFFSET


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="busy,answer")
    parser.add_argument("--numbers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--hold", type=float, default=1.0, help="answer mode: seconds each call stays up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vp-bench-dial-") as tmp:
        work = Path(tmp)
        nats = EmbeddedNats.start(work / "nats")
        try:
            for mode in args.mode.split(","):
                print(json.dumps(await step(mode, args.numbers, args.concurrency, args.hold, nats.url, work)))
        finally:
            nats.stop()


if __name__ == "__main__":
    asyncio.run(main())
