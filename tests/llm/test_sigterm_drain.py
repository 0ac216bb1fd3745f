"""SIGTERM drains: a worker process finishes the turn it is generating before it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.stand_ins.openai_server import OpenAIStandIn
from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import LlmDone, LlmRequest, LlmSentence, WorkerHeartbeat
from voiceplatform_devstack.devinfra import EmbeddedNats


async def test_sigterm_finishes_the_in_flight_turn_then_exits_cleanly(
    tmp_path: Path, robots_dir: Path, openai_server: OpenAIStandIn, make_openai_robot
) -> None:
    robot = make_openai_robot()
    reply = "Первое предложение ответа. Второе предложение ответа. Третье предложение ответа."
    openai_server.behavior.reply = reply
    openai_server.behavior.chunk_delay_s = 0.15  # ~1.5 s of streaming: SIGTERM lands mid-turn
    nats = EmbeddedNats.start(tmp_path / "nats")  # private: no other worker shares the queue group
    proc = None
    bus = await NatsBus.connect(nats.url, "test")
    try:
        got: list = []
        alive = asyncio.Event()

        async def collect(env: Envelope) -> None:
            got.append(env.message)

        async def presence(env: Envelope) -> None:
            if isinstance(env.message, WorkerHeartbeat):
                alive.set()

        await bus.subscribe(subjects.llm_sentence("c1"), collect)
        await bus.subscribe(subjects.llm_done("c1"), collect)
        await bus.subscribe(subjects.presence("llm"), presence)
        env = {**os.environ, "NATS_URL": nats.url, "ROBOTS_DIR": str(robots_dir), "VP_HTTP_PORT": "0"}
        log_path = tmp_path / "llm.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vp_llm", env=env, stdout=log_file, stderr=log_file
            )
        await asyncio.wait_for(alive.wait(), 30)
        await bus.publish(
            subjects.llm_request("c1"),
            LlmRequest(
                call_id="c1",
                turn_id="t1",
                robot=robot,
                prompt_id="default",
                system_prompt="",
                history=[],
                user_text="Расскажите",
                sample_rate=16000,
            ),
        )
        while not any(isinstance(m, LlmSentence) for m in got):
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # the turn is mid-stream now
        rc = await asyncio.wait_for(proc.wait(), 30)
        done = [m for m in got if isinstance(m, LlmDone)]
        assert rc == 0, log_path.read_text()[-2000:]
        assert len(done) == 1 and not done[0].interrupted and done[0].text == reply
        assert [m.index for m in got if isinstance(m, LlmSentence)] == [0, 1, 2]
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bus.close()
        nats.stop()
