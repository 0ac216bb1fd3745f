"""An llm.request taken by a worker process that is killed (SIGKILL) or frozen (SIGSTOP) is
answered by another instance; the stream keeps one copy of each sentence and one llm.done, also
when the frozen original wakes up and finishes after the retry."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.delivery.helpers import start_worker, stored, until, work_count
from tests.llm.helpers import Collector
from tests.stand_ins.openai_server import OpenAIStandIn
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.streams import CALL_EVENTS, stream_for
from voiceplatform.providers import LlmChunk
from voiceplatform.wire import ControlInterrupt, LlmDone, LlmRequest, LlmSentence, StageError
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings

REPLY = "Первое предложение ответа. Второе предложение ответа. Третье предложение ответа."


def request(call_id: str, turn_id: str, robot: str) -> LlmRequest:
    return LlmRequest(
        call_id=call_id,
        turn_id=turn_id,
        robot=robot,
        prompt_id="default",
        system_prompt="",
        history=[],
        user_text="Расскажите",
        sample_rate=16000,
    )


async def run_fault(
    fault: signal.Signals,
    tmp_path: Path,
    nats_url: str,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    robot: str,
    resume: bool,
) -> None:
    openai_server.behavior.reply = REPLY
    openai_server.behavior.chunk_delay_s = 0.3  # the first worker is mid-turn for ~3 s
    call_id = f"fo-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(nats_url, "test")
    js = bus.jetstream()
    events = await stream_for(js, CALL_EVENTS)  # the recorder's stream: llm.sentence is deduped there
    first = await start_worker("vp_llm", "llm", nats_url, robots_dir, tmp_path / "llm-a.log", bus)
    second_bus = await NatsBus.connect(nats_url, "llm-b")
    second = LlmService(LlmSettings(robots_dir=robots_dir))
    try:
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        await bus.publish(subjects.llm_request(call_id), request(call_id, "t1", robot))
        await out.wait(LlmSentence, timeout_s=30)  # the first worker took the turn and speaks
        await second.start(second_bus)
        retries = work_count("llm", "retry")
        first.send_signal(fault)
        faulted = time.monotonic()
        openai_server.behavior.chunk_delay_s = 0.0  # the retry streams at once: the gap is delivery's
        await until(lambda: work_count("llm", "retry") > retries, what="the redelivery")
        taken = time.monotonic()
        (done,) = await out.wait(LlmDone, timeout_s=30)
        retried = min(t for t, _, m in out.items if t > faulted and isinstance(m, LlmSentence))
        print(
            f"\n{fault.name}: fault → redelivered {1000 * (taken - faulted):.0f} ms, "
            f"→ retry's first sentence {1000 * (retried - faulted):.0f} ms"
        )
        assert done.text == REPLY and not done.interrupted
        if resume:
            said = len(out.of(LlmSentence))
            first.send_signal(signal.SIGCONT)  # the original wakes up after the retry answered
            log = tmp_path / "llm-a.log"
            await until(lambda: "llm.turn_given_away" in log.read_text(), what="the original giving up")
            await asyncio.sleep(0.3)
            assert len(out.of(LlmSentence)) == said and len(out.of(LlmDone)) == 1  # it said nothing more
        sentences = await stored(js, events, subjects.llm_sentence(call_id))
        assert [s.index for s in sentences if isinstance(s, LlmSentence)] == [0, 1, 2]
        assert " ".join(s.text for s in sentences if isinstance(s, LlmSentence)) == REPLY
        dones = await stored(js, events, subjects.llm_done(call_id))
        assert len(dones) == 1 and isinstance(dones[0], LlmDone) and dones[0].text == REPLY
        assert not out.of(StageError)
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        await second.drain(1.0)
        await second_bus.close()
        await bus.close()


async def test_a_killed_llm_worker_turn_is_answered_by_another_once(
    tmp_path: Path,
    private_nats: str,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    await run_fault(signal.SIGKILL, tmp_path, private_nats, robots_dir, openai_server, robot, resume=False)


async def test_a_frozen_llm_worker_turn_is_answered_by_another_and_its_late_copy_dropped(
    tmp_path: Path,
    private_nats: str,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    await run_fault(signal.SIGSTOP, tmp_path, private_nats, robots_dir, openai_server, robot, resume=True)


async def test_an_interrupted_turn_is_not_run_again(
    tmp_path: Path,
    private_nats: str,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    openai_server.behavior.reply = REPLY
    openai_server.behavior.chunk_delay_s = 0.3
    call_id = f"fo-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(nats_url := private_nats, "test")
    first = await start_worker("vp_llm", "llm", nats_url, robots_dir, tmp_path / "llm-a.log", bus)
    second_bus = await NatsBus.connect(nats_url, "llm-b")
    second = LlmService(LlmSettings(robots_dir=robots_dir))
    try:
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        await bus.publish(subjects.llm_request(call_id), request(call_id, "t1", robot))
        await out.wait(LlmSentence, timeout_s=30)
        await second.start(second_bus)
        retries = work_count("llm", "retry")
        first.kill()
        await first.wait()
        await bus.publish(subjects.control(call_id), ControlInterrupt(call_id=call_id, turn_id="t1"))
        # the turn comes to the second worker, which knows it was interrupted and drops it
        await until(lambda: work_count("llm", "retry") == retries + 1, what="the redelivery")
        await until(lambda: second._requests is not None and second._requests.in_flight == 0)
        # the ack is a fire-and-forget publish: the server may count it a moment after in_flight drops
        deadline = time.monotonic() + 30
        while True:
            info = await bus.jetstream().consumer_info("VP_WORK", "llm")
            if info.num_ack_pending == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.num_pending == 0  # acked: never delivered again
        assert len(out.of(LlmSentence)) == 1 and not out.of(LlmDone)  # only what the first said
    finally:
        await second.drain(1.0)
        await second_bus.close()
        await bus.close()


async def test_a_turn_no_worker_finishes_ends_in_a_stage_error(
    tmp_path: Path,
    private_nats: str,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    openai_server.behavior.reply = REPLY
    openai_server.behavior.chunk_delay_s = 0.3
    call_id = f"fo-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(private_nats, "test")
    # one delivery only: the worker that took it dies, and nobody may try again
    first = await start_worker(
        "vp_llm", "llm", private_nats, robots_dir, tmp_path / "llm-a.log", bus, VP_WORK_MAX_DELIVER="1"
    )
    second_bus = await NatsBus.connect(private_nats, "llm-b")
    second = LlmService(LlmSettings(robots_dir=robots_dir, work_max_deliver=1))
    try:
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        await bus.publish(subjects.llm_request(call_id), request(call_id, "t1", robot))
        await out.wait(LlmSentence, timeout_s=30)
        await second.start(second_bus)
        first.kill()
        await first.wait()
        (error,) = await out.wait(StageError, timeout_s=30)
        assert (error.stage, error.kind, error.turn_id) == ("llm", "worker_lost", "t1")
        await asyncio.sleep(0.5)
        assert not out.of(LlmDone)
    finally:
        await second.drain(1.0)
        await second_bus.close()
        await bus.close()


class FreezingLlm:
    """Says one sentence, then the whole process freezes once (blocks its loop), then the rest."""

    name = "freezing"
    froze = False

    async def stream_complete(self, messages: object, options: object) -> AsyncIterator[LlmChunk]:
        yield LlmChunk(text="Первое предложение. ")
        if not FreezingLlm.froze:
            FreezingLlm.froze = True
            time.sleep(1.6)  # noqa: ASYNC251 - like SIGSTOP: longer than the 1 s ack wait
        yield LlmChunk(text="Второе предложение.")


async def test_a_lone_worker_that_froze_starts_its_turn_over_and_answers_once(
    private_nats: str, robots_dir: Path, make_openai_robot: Callable[..., str]
) -> None:
    robot = make_openai_robot()
    FreezingLlm.froze = False
    call_id = f"fo-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(private_nats, "test")
    js = bus.jetstream()
    events = await stream_for(js, CALL_EVENTS)
    worker_bus = await NatsBus.connect(private_nats, "llm")
    worker = LlmService(
        LlmSettings(robots_dir=robots_dir, work_ack_wait_s=1.0),
        provider_factory=lambda name, r: FreezingLlm(),
    )
    try:
        await worker.start(worker_bus)
        given_away = work_count("llm", "given_away")
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        await bus.publish(subjects.llm_request(call_id), request(call_id, "t1", robot))
        (done,) = await out.wait(LlmDone, timeout_s=30)
        assert FreezingLlm.froze and not done.interrupted and done.sentences == 2
        await until(
            lambda: work_count("llm", "given_away") == given_away + 1, what="the stalled run giving up"
        )
        await asyncio.sleep(0.3)
        assert len(out.of(LlmDone)) == 1
        sentences = await stored(js, events, subjects.llm_sentence(call_id))
        assert [s.index for s in sentences if isinstance(s, LlmSentence)] == [0, 1]
    finally:
        await worker.drain(1.0)
        await worker_bus.close()
        await bus.close()
